use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use crate::context::Context;
use crate::runner::RunReport;
use crate::store::RunFilter;

pub async fn list(ctx: Arc<Context>, json: bool) -> Result<i32> {
    let now = ctx.store.now().await?;
    let mut out = Vec::new();
    for j in &ctx.config.jobs {
        let last = ctx
            .store
            .list_runs(&RunFilter {
                job: Some(j.name.clone()),
                state: None,
                limit: 1,
            })
            .await?
            .into_iter()
            .next();
        out.push(json!({
            "name": j.name,
            "kind": j.kind.as_str(),
            "schedule": j.schedule.expr(),
            "timezone": j.schedule.timezone().name(),
            "enabled": j.enabled,
            "next_fire": j.enabled.then(|| j.schedule.next_fire(now)).flatten(),
            "timeout": crate::config::format_duration(j.timeout),
            "max_attempts": j.max_attempts,
            "last_run": last.as_ref().map(|r| json!({"id": r.id, "state": r.state, "finished_at": r.finished_at})),
        }));
    }
    if json {
        super::print_json(&json!({ "jobs": out }))?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|j| {
            let s = |k: &str| j[k].as_str().unwrap_or("-").to_string();
            vec![
                s("name"),
                s("kind"),
                format!("{} ({})", s("schedule"), s("timezone")),
                if j["enabled"].as_bool() == Some(true) {
                    s("next_fire")
                } else {
                    "disabled".into()
                },
                j["last_run"]["state"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    super::print_table(&["JOB", "KIND", "SCHEDULE", "NEXT FIRE", "LAST RUN"], &rows);
    Ok(0)
}

pub async fn history(
    ctx: Arc<Context>,
    limit: u32,
    job: Option<String>,
    json: bool,
) -> Result<i32> {
    let runs = ctx
        .store
        .list_runs(&RunFilter {
            job,
            state: None,
            limit: limit.clamp(1, 10_000),
        })
        .await?;
    if json {
        let runs: Vec<_> = runs
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(RunReport::from_run(r)).unwrap_or_default();
                v["state"] = json!(r.state);
                v["trigger"] = json!(r.trigger);
                v
            })
            .collect();
        super::print_json(&json!({ "runs": runs }))?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.job.clone(),
                r.state.as_str().to_string(),
                format!("{}/{}", r.attempt, r.max_attempts),
                r.scheduled_for.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.finished_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "-".into()),
                r.error
                    .clone()
                    .unwrap_or_default()
                    .chars()
                    .take(60)
                    .collect(),
            ]
        })
        .collect();
    super::print_table(
        &[
            "ID",
            "JOB",
            "STATE",
            "ATTEMPT",
            "SCHEDULED",
            "FINISHED",
            "ERROR",
        ],
        &rows,
    );
    Ok(0)
}
