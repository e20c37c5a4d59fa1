//! `lethe org delete|cancel|status`.

use super::out::outln;
use std::sync::Arc;

use anyhow::Result;

use crate::audit::actor_cli;
use crate::cli::OrgCommand;
use crate::context::Context;
use crate::error::Error;
use crate::org::{self, DeletionAsk};
use crate::store::OrgRequest;

fn show(r: &OrgRequest) {
    outln!(
        "org request {}: {} of org {} — {} (runs after {}, due {})",
        r.id,
        r.kind,
        r.org,
        r.state,
        r.execute_after.format("%Y-%m-%d %H:%M UTC"),
        r.due_at.format("%Y-%m-%d")
    );
}

async fn delete(ctx: Arc<Context>, ask: DeletionAsk<'_>, json_out: bool) -> Result<i32> {
    let r = org::request_deletion(&ctx, ask).await?;
    if json_out {
        super::print_json(&r)?;
    } else {
        show(&r);
        outln!("cancel before then with `lethe org cancel {}`", r.id);
    }
    Ok(0)
}

async fn status(ctx: Arc<Context>, org_id: &str, json_out: bool) -> Result<i32> {
    let v = org::status(&ctx, org_id).await?;
    if json_out {
        super::print_json(&v)?;
        return Ok(0);
    }
    if v.requests.is_empty() {
        outln!("org {org_id}: no requests");
    }
    v.requests.iter().for_each(show);
    for b in &v.backups_holding_data {
        let until = match (b.expires_at, &b.note) {
            (Some(t), _) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            (None, Some(n)) => n.clone(),
            (None, None) => "unknown".into(),
        };
        outln!("  backup {} holds its data until {until}", b.backup);
    }
    Ok(0)
}

pub async fn dispatch(ctx: Arc<Context>, command: OrgCommand) -> Result<i32> {
    match command {
        OrgCommand::Delete {
            org,
            classes,
            reason,
            after,
            contact,
            json,
        } => {
            let after = crate::policy::parse_duration(&after)
                .map_err(|e| Error::Usage(format!("--after `{after}`: {e}")))?;
            let actor = actor_cli();
            let ask = DeletionAsk {
                org: &org,
                classes: &classes,
                reason: &reason,
                after,
                contact: contact.as_deref(),
                actor: &actor,
            };
            delete(ctx, ask, json).await
        }
        OrgCommand::Cancel { id, json } => {
            let r = org::cancel(&ctx, id, &actor_cli()).await?;
            if json {
                super::print_json(&r)?;
            } else {
                show(&r);
            }
            Ok(0)
        }
        OrgCommand::Status { org, json } => status(ctx, &org, json).await,
        OrgCommand::Export { org, classes, json } => {
            let v = org::export(&ctx, &org, &classes, &actor_cli()).await?;
            if json {
                super::print_json(&v)?;
            } else {
                outln!(
                    "org {org} exported: {} ({} bytes, SHA-256 {})",
                    v["object"].as_str().unwrap_or(""),
                    v["bytes"],
                    v["sha256"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
    }
}
