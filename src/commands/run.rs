use super::out::outln;
use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;

use crate::config::JobSpec;
use crate::context::Context;
use crate::error::Error;
use crate::runner::{enqueue_manual, run_now, Registry};

pub async fn run(
    ctx: Arc<Context>,
    job: &str,
    dry_run: bool,
    params: &[String],
    json: bool,
) -> Result<i32> {
    let registry = crate::jobs::registry();
    let (spec, params) = prepare(&ctx, &registry, job, params).await?;
    crate::progress::enable_on_terminal();
    let report = run_now(&ctx, &registry, &spec, params, dry_run).await?;
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
    let (spec, params) = prepare(&ctx, &crate::jobs::registry(), job, params).await?;
    let (run_id, scheduled_for) = enqueue_manual(&ctx, &spec, params, dry_run).await?;
    if json {
        super::print_json(&serde_json::json!({
            "job": spec.name, "kind": spec.kind, "status": "queued",
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
/// The kind's preflight fails before a run is queued, so bad config exits 2 and records nothing.
async fn prepare(
    ctx: &Context,
    registry: &Registry,
    job: &str,
    params: &[String],
) -> Result<(JobSpec, Value), Error> {
    let spec = find_job(ctx, registry, job)?;
    let params = merge_params(registry, &spec, params)?;
    registry.preflight(&spec.kind, ctx).await?;
    Ok((spec, params))
}

/// By job name; else the one job of that kind; else an ad-hoc job of that kind with defaults.
fn find_job(ctx: &Context, registry: &Registry, name: &str) -> Result<JobSpec, Error> {
    let jobs = &ctx.config.jobs;
    if let Some(j) = jobs.iter().find(|j| j.name == name) {
        return Ok(j.clone());
    }
    let kind = registry.kind(name).map_err(|_| {
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
        [] => Ok(JobSpec::ad_hoc(kind, &ctx.config.path)),
        many => Err(Error::Usage(format!(
            "several jobs have kind {kind}: {}; name one",
            many.iter()
                .map(|j| j.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn merge_params(registry: &Registry, spec: &JobSpec, overrides: &[String]) -> Result<Value, Error> {
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
    registry
        .validate(&spec.kind, &params)
        .map_err(|m| Error::Usage(format!("--param for {}: {m}", spec.kind)))?;
    Ok(params)
}
