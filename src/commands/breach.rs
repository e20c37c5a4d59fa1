//! `lethe breach open|list|notify`.

use super::out::outln;
use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use crate::breach::{self, Opening};
use crate::context::Context;
use crate::error::Error;

pub async fn open(
    ctx: Arc<Context>,
    title: String,
    detected_at: &str,
    jurisdictions: Vec<String>,
    orgs: Vec<String>,
    subjects: i64,
    json_out: bool,
) -> Result<i32> {
    let detected_at = chrono::DateTime::parse_from_rfc3339(detected_at)
        .map_err(|e| {
            Error::Usage(format!(
                "--detected-at `{detected_at}` is not RFC 3339 (e.g. 2026-11-20T09:30:00Z): {e}"
            ))
        })?
        .with_timezone(&chrono::Utc);
    let b = breach::open(
        &ctx,
        Opening {
            title,
            detected_at,
            jurisdictions,
            orgs,
            subjects,
        },
    )
    .await?;
    if json_out {
        super::print_json(&b)?;
    } else {
        outln!("breach {} opened: {}", b.id, b.title);
        for p in &b.parties {
            outln!(
                "  notify {:<10} by {}  ({})",
                p.party,
                p.due_at.format("%Y-%m-%d %H:%M UTC"),
                p.rule
            );
        }
    }
    Ok(0)
}

pub async fn list(ctx: Arc<Context>, json_out: bool) -> Result<i32> {
    let now = ctx.store.now().await?;
    let all = ctx.store.breaches().await?;
    if json_out {
        let v: Vec<_> = all
            .iter()
            .map(|b| {
                let mut v = serde_json::to_value(b).unwrap_or_default();
                if let Some(ps) = v["parties"].as_array_mut() {
                    for (p, bp) in ps.iter_mut().zip(&b.parties) {
                        p["hours_left"] = json!((bp.due_at - now).num_hours());
                        p["overdue"] = json!(bp.notified_at.is_none() && now > bp.due_at);
                    }
                }
                v
            })
            .collect();
        super::print_json(&json!({"breaches": v}))?;
        return Ok(0);
    }
    let mut rows = Vec::new();
    for b in &all {
        for p in &b.parties {
            rows.push(vec![
                b.id.to_string(),
                b.title.chars().take(40).collect(),
                p.party.clone(),
                p.due_at.format("%Y-%m-%d %H:%M").to_string(),
                match p.notified_at {
                    Some(t) => format!("notified {}", t.format("%Y-%m-%d %H:%M")),
                    None if now > p.due_at => "OVERDUE".into(),
                    None => format!("{} h left", (p.due_at - now).num_hours()),
                },
            ]);
        }
    }
    super::print_table(&["ID", "TITLE", "PARTY", "DUE (UTC)", "STATE"], &rows);
    Ok(0)
}

pub async fn notify(ctx: Arc<Context>, id: i64, party: &str, note: Option<&str>) -> Result<i32> {
    let b = breach::notified(&ctx, id, party, note).await?;
    outln!(
        "breach {}: {party} recorded as notified; its reminders stop",
        b.id
    );
    Ok(0)
}

/// `lethe breach …`: one arm a subcommand.
pub async fn dispatch(ctx: Arc<Context>, command: crate::cli::BreachCommand) -> Result<i32> {
    use crate::cli::BreachCommand;
    match command {
        BreachCommand::Open {
            title,
            detected_at,
            jurisdictions,
            orgs,
            subjects,
            json,
        } => {
            open(
                ctx,
                title,
                &detected_at,
                jurisdictions,
                orgs,
                subjects,
                json,
            )
            .await
        }
        BreachCommand::List { json } => list(ctx, json).await,
        BreachCommand::Notify { id, party, note } => notify(ctx, id, &party, note.as_deref()).await,
    }
}
