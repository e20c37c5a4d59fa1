use super::out::outln;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;

use crate::config::JobSpec;
use crate::context::Context;
use crate::error::Error;
use crate::runner::{enqueue_manual, run_now, JobKind, Schedule};

pub async fn run(
    ctx: Arc<Context>,
    job: &str,
    dry_run: bool,
    params: &[String],
    json: bool,
) -> Result<i32> {
    let (spec, params) = prepare(&ctx, job, params).await?;
    crate::progress::enable_on_terminal();
    let report = run_now(&ctx, &spec, params, dry_run).await?;
    if json {
        super::print_json(&report)?;
    } else {
        outln!(
            "{} ({}) {} after {} attempt(s){}",
            report.job,
            report.kind,
            report.status,
            report.attempts,
            if report.dry_run { " [dry run]" } else { "" }
        );
        if let Some(r) = &report.result {
            outln!("{}", serde_json::to_string_pretty(r)?);
        }
        if let Some(e) = &report.error {
            outln!("error: {e}");
        }
        if let Some(t) = report.next_attempt_at {
            outln!("the run stays queued; `lethe serve` retries it at {t}");
        }
    }
    Ok(if report.succeeded() { 0 } else { 1 })
}

/// `lethe run --detach`: queues the run for the `serve` replicas and returns at once.
pub async fn detach(
    ctx: Arc<Context>,
    job: &str,
    dry_run: bool,
    params: &[String],
    json: bool,
) -> Result<i32> {
    let (spec, params) = prepare(&ctx, job, params).await?;
    let (run_id, scheduled_for) = enqueue_manual(&ctx, &spec, params, dry_run).await?;
    if json {
        super::print_json(&serde_json::json!({
            "job": spec.name, "kind": spec.kind.to_string(), "status": "queued",
            "run_id": run_id, "scheduled_for": scheduled_for, "dry_run": dry_run,
        }))?;
    } else {
        outln!(
            "{} ({}) queued as run {run_id}; `lethe serve` takes it — follow with `lethe jobs history --job {}`",
            spec.name, spec.kind, spec.name
        );
    }
    Ok(0)
}

/// The job, its merged params, and the checks that must pass before it is queued.
async fn prepare(ctx: &Context, job: &str, params: &[String]) -> Result<(JobSpec, Value), Error> {
    let spec = find_job(ctx, job)?;
    let params = merge_params(&spec, params)?;
    preflight(ctx, spec.kind).await?;
    Ok((spec, params))
}

/// Checks that fail before a run is queued, so bad config exits 2 and records nothing.
async fn preflight(ctx: &Context, kind: JobKind) -> Result<(), Error> {
    match kind {
        // The schema check plus the timestamp columns' storage forms.
        JobKind::RetentionPurge => {
            crate::retention::preflight(&ctx.config, &ctx.app_db().await?).await?;
        }
        JobKind::DsrProcess | JobKind::KeysRotate => {
            crate::appdb::preflight(&ctx.config, &ctx.app_db().await?).await?;
        }
        _ => {}
    }
    Ok(())
}

/// By job name; else the one job of that kind; else an ad-hoc job of that kind with defaults.
fn find_job(ctx: &Context, name: &str) -> Result<JobSpec, Error> {
    let jobs = &ctx.config.jobs;
    if let Some(j) = jobs.iter().find(|j| j.name == name) {
        return Ok(j.clone());
    }
    let kind = JobKind::from_str(name).map_err(|_| {
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        Error::Usage(format!(
            "no job named `{name}` in {}; known jobs: {}",
            ctx.config.runner.jobs_dir.display(),
            if names.is_empty() {
                "(none)".to_string()
            } else {
                names.join(", ")
            }
        ))
    })?;
    let of_kind: Vec<&JobSpec> = jobs.iter().filter(|j| j.kind == kind).collect();
    match of_kind.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Ok(JobSpec {
            name: kind.to_string(),
            kind,
            schedule: Schedule::parse("0 0 0 1 1 *", chrono_tz::UTC).map_err(Error::Usage)?,
            timeout: std::time::Duration::from_secs(3600),
            max_attempts: 3,
            allow_overlap: false,
            enabled: false,
            catch_up: None,
            params: Value::Object(Default::default()),
            source: ctx.config.path.clone(),
        }),
        many => Err(Error::Usage(format!(
            "several jobs have kind {kind}: {}; name one",
            many.iter()
                .map(|j| j.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn merge_params(spec: &JobSpec, overrides: &[String]) -> Result<Value, Error> {
    let mut params = spec.params.clone();
    let Value::Object(map) = &mut params else {
        return Err(Error::Usage("job params are not a table".into()));
    };
    for kv in overrides {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--param `{kv}` must look like KEY=VALUE")))?;
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|t| t.get("v").cloned())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| Value::String(v.to_string()));
        map.insert(k.trim().to_string(), value);
    }
    spec.kind
        .validate_params(&params)
        .map_err(|m| Error::Usage(format!("--param for {}: {m}", spec.kind)))?;
    Ok(params)
}
