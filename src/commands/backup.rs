//! `lethe backup list|verify|restore`.

use super::out::outln;
use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use crate::audit::{actor_cli, record};
use crate::backup::cluster::Target;
use crate::context::Context;

pub async fn list(ctx: Arc<Context>, all: bool, json_out: bool) -> Result<i32> {
    let backups = ctx.store.backups(all).await?;
    let rto = ctx.config.backup.rto;
    let rto_met = |b: &crate::store::BackupRecord| {
        crate::backup::rto::met(rto, b.restore_ms.filter(|_| b.verify_ok == Some(true)))
    };
    if json_out {
        let rows: Vec<_> = backups
            .iter()
            .map(|b| {
                json!({"id": b.id, "created_at": b.created_at, "object": b.object_key, "manifest": b.manifest_key,
                       "stored_bytes": b.stored_bytes, "raw_bytes": b.raw_bytes, "sha256": b.sha256,
                       "verified_at": b.verified_at, "verify_ok": b.verify_ok, "restore_ms": b.restore_ms,
                       "verify_error": b.verify_error, "rto_met": rto_met(b), "deleted_at": b.deleted_at,
                       "database": b.manifest["database"]["kind"]})
            })
            .collect();
        super::print_json(&json!({"backups": rows}))?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = backups
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                format!("{:.1} MiB", b.stored_bytes as f64 / 1048576.0),
                match (b.verify_ok, rto_met(b)) {
                    (Some(true), Some(false)) => format!(
                        "ok ({} ms restore, OVER the RTO)",
                        b.restore_ms.unwrap_or(0)
                    ),
                    (Some(true), _) => format!("ok ({} ms restore)", b.restore_ms.unwrap_or(0)),
                    (Some(false), _) => "FAILED".into(),
                    (None, _) => "not yet".into(),
                },
                if b.deleted_at.is_some() {
                    "pruned".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    super::print_table(&["ID", "CREATED", "SIZE", "VERIFIED", ""], &rows);
    Ok(0)
}

pub async fn verify(ctx: Arc<Context>, id: &str, json_out: bool) -> Result<i32> {
    let r = crate::backup::verify(&ctx, id, &actor_cli()).await?;
    if json_out {
        super::print_json(&r)?;
    } else if r.ok {
        outln!(
            "backup {id}: OK — restored and {} tables match ({} ms)",
            r.tables,
            r.restore_ms
        );
    } else {
        outln!(
            "backup {id}: FAILED — {}",
            r.error.clone().unwrap_or_else(|| r.mismatches.join("; "))
        );
    }
    Ok(if r.ok { 0 } else { 1 })
}

pub async fn restore(ctx: Arc<Context>, id: &str, to: &str, json_out: bool) -> Result<i32> {
    let v = match crate::backup::restore(&ctx, id, to).await {
        Ok(v) => v,
        Err(e) => {
            // A refused or failed restore is evidence too (it left nothing behind).
            let failed = record(
                ctx.store.as_ref(),
                &actor_cli(),
                "backup.restore_failed",
                &format!("backup:{id}"),
                json!({"restored_to": crate::config::redact_url(to), "error": e.to_string()}),
            )
            .await;
            if let Err(re) = failed {
                tracing::warn!(error = %re, "could not record the failed restore");
            }
            return Err(e.into());
        }
    };
    if !restored(&ctx, &format!("backup:{id}"), &v, json_out).await? {
        outln!(
            "backup {id} restored to {} in {} ms; {} rectification(s) and {} erasure(s) re-applied, {} subject(s) kept for legal holds; deleted orgs deleted again: {}",
            v["restored_to"].as_str().unwrap_or(""),
            v["restore_ms"],
            v["rectifications_reapplied"],
            v["erasures_reapplied"],
            v["subjects_held"],
            v["orgs_deleted_again"]
        );
    }
    Ok(0)
}

/// A restore recorded as evidence, and printed as JSON when asked (then true).
async fn restored(
    ctx: &Context,
    subject: &str,
    v: &serde_json::Value,
    json_out: bool,
) -> Result<bool> {
    record(
        ctx.store.as_ref(),
        &actor_cli(),
        "backup.restored",
        subject,
        v.clone(),
    )
    .await?;
    if json_out {
        super::print_json(v)?;
    }
    Ok(json_out)
}

fn target(time: Option<&str>, lsn: Option<&str>) -> Result<Target> {
    use crate::error::Error;
    if let Some(t) = time {
        let t = chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| {
                Error::Usage(format!(
                    "--to-time `{t}` is not RFC 3339 (like 2026-11-30T14:05:00Z): {e}"
                ))
            })?
            .with_timezone(&chrono::Utc);
        if t > chrono::Utc::now() {
            return Err(Error::Usage(format!(
                "--to-time {} is in the future: recovery could never reach it",
                t.to_rfc3339()
            ))
            .into());
        }
        return Ok(Target::Time(t));
    }
    Ok(match lsn {
        Some(l) => Target::Lsn(crate::backup::physical::parse_lsn(l)?),
        None => Target::Latest,
    })
}

/// A base backup restored into `dir` and recovered; recorded either way.
async fn restore_to_dir(
    ctx: Arc<Context>,
    id: Option<&str>,
    dir: &std::path::Path,
    target: Target,
    json_out: bool,
) -> Result<i32> {
    let r = crate::backup::pitr::restore_to_dir(&ctx, id, dir, target).await;
    let subject = format!("backup:{}", id.unwrap_or("newest-base"));
    let v = match r {
        Ok(v) => v,
        Err(e) => {
            let event = json!({"restored_to": dir.display().to_string(), "error": e.to_string()});
            if let Err(re) = record(
                ctx.store.as_ref(),
                &actor_cli(),
                "backup.restore_failed",
                &subject,
                event,
            )
            .await
            {
                tracing::warn!(error = %re, "could not record the failed restore");
            }
            return Err(e.into());
        }
    };
    let subject = format!("backup:{}", v["id"].as_str().unwrap_or_default());
    if !restored(&ctx, &subject, &v, json_out).await? {
        outln!(
            "base backup {} restored to {} and recovered to {} (WAL position {}) in {} ms; {} erasure(s) and {} rectification(s) re-applied. Its archive_command is the original's: set archive_mode = off (or another archive) before starting it anywhere but in the original's place, then: pg_ctl -D {} start",
            v["id"].as_str().unwrap_or(""),
            v["restored_to"].as_str().unwrap_or(""),
            v["target"],
            v["promoted_at_lsn"].as_str().unwrap_or(""),
            v["restore_ms"],
            v["erasures_reapplied"],
            v["rectifications_reapplied"],
            v["restored_to"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

/// `lethe backup …`: one arm a subcommand.
pub async fn dispatch(ctx: Arc<Context>, command: crate::cli::BackupCommand) -> Result<i32> {
    use crate::cli::BackupCommand;
    match command {
        BackupCommand::List { all, json } => list(ctx, all, json).await,
        BackupCommand::Verify { id, json } => verify(ctx, &id, json).await,
        BackupCommand::Restore {
            id,
            to: Some(to),
            json,
            ..
        } => {
            let id = id.ok_or_else(|| {
                anyhow::Error::new(crate::error::Error::Usage(
                    "name the backup to restore: lethe backup restore ID --to URL".into(),
                ))
            })?;
            restore(ctx, &id, &to, json).await
        }
        BackupCommand::Restore {
            id,
            to_dir,
            to_time,
            to_lsn,
            json,
            ..
        } => {
            let target = target(to_time.as_deref(), to_lsn.as_deref())?;
            let dir = to_dir.unwrap_or_default();
            restore_to_dir(ctx, id.as_deref(), &dir, target, json).await
        }
    }
}
