//! `lethe retention set|list|unset` (per-org overrides) and `lethe hold add|list|release`.

use super::out::outln;
use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use crate::audit::actor_cli;
use crate::context::Context;
use crate::error::Error;
use crate::retention::Period;
use crate::store::{evidence, HoldScope, LegalHold, RetentionOverride};

fn require_reason(reason: &str) -> Result<(), Error> {
    if reason.trim().is_empty() {
        return Err(Error::Usage(
            "--reason must say why (it goes into the audit log)".into(),
        ));
    }
    Ok(())
}

async fn require_org(ctx: &Context, org: &str) -> Result<(), Error> {
    if let Some(orgs) = ctx.config.app.as_ref().and_then(|a| a.orgs.as_ref()) {
        let db = ctx.app_db().await?;
        if !db.org_exists(orgs, org).await? {
            return Err(Error::Usage(format!(
                "org `{org}` is not in `{}`.`{}`",
                orgs.table, orgs.id
            )));
        }
    }
    Ok(())
}

pub async fn set(
    ctx: Arc<Context>,
    class: &str,
    org: &str,
    period: &str,
    reason: &str,
    json_out: bool,
) -> Result<i32> {
    require_reason(reason)?;
    // Classes of tables and of files by prefix (`[[object_retention]]`).
    let cfg = &ctx.config;
    let classes: Vec<&str> = cfg
        .data_map
        .iter()
        .filter(|e| !e.retention.is_empty())
        .map(|e| e.class.as_str())
        .chain(cfg.object_retention.iter().map(|r| r.class.as_str()))
        .collect();
    if !classes.contains(&class) {
        return Err(Error::Usage(format!(
            "no data class `{class}` with a retention rule; known: {}",
            classes.join(", ")
        ))
        .into());
    }
    let p = Period::parse(period).map_err(|m| Error::Usage(format!("--period {m}")))?;
    require_org(&ctx, org).await?;
    let o = RetentionOverride {
        class: class.into(),
        org: org.into(),
        period: p.to_string(),
        reason: reason.into(),
        set_by: actor_cli(),
        set_at: chrono::Utc::now(),
    };
    let event = evidence(
        &o.set_by,
        "retention.override_set",
        &format!("org:{org}"),
        json!({"class": class, "period": o.period, "reason": reason}),
    );
    ctx.store.override_set(&o, &event).await?;
    if json_out {
        super::print_json(&o)?;
    } else {
        outln!("org {org}: class {class} now kept {} ({reason})", o.period);
    }
    Ok(0)
}

pub async fn unset(ctx: Arc<Context>, class: &str, org: &str, reason: &str) -> Result<i32> {
    require_reason(reason)?;
    let event = evidence(
        &actor_cli(),
        "retention.override_unset",
        &format!("org:{org}"),
        json!({"class": class, "reason": reason}),
    );
    if !ctx.store.override_unset(class, org, &event).await? {
        return Err(Error::NotFound(format!("no override for class {class} and org {org}")).into());
    }
    outln!("org {org}: class {class} back to the data map's retention");
    Ok(0)
}

pub async fn list(ctx: Arc<Context>, json_out: bool) -> Result<i32> {
    let overrides = ctx.store.overrides().await?;
    let classes: Vec<_> = ctx
        .config
        .data_map
        .iter()
        .map(|e| {
            json!({"class": e.class, "table": e.table,
                        "retention": e.retention.iter().map(|r| r.to_string()).collect::<Vec<_>>()})
        })
        .collect();
    if json_out {
        super::print_json(&json!({"classes": classes, "overrides": overrides}))?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = ctx
        .config
        .data_map
        .iter()
        .map(|e| {
            let rules: Vec<String> = e.retention.iter().map(|r| r.to_string()).collect();
            vec![
                e.class.clone(),
                e.table.clone(),
                if rules.is_empty() {
                    "keep".into()
                } else {
                    rules.join(", ")
                },
            ]
        })
        .collect();
    super::print_table(&["CLASS", "TABLE", "RETENTION"], &rows);
    if !overrides.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = overrides
            .iter()
            .map(|o| {
                vec![
                    o.class.clone(),
                    o.org.clone(),
                    o.period.clone(),
                    o.reason.clone(),
                    o.set_by.clone(),
                ]
            })
            .collect();
        super::print_table(&["CLASS", "ORG", "OVERRIDE", "REASON", "SET BY"], &rows);
    }
    Ok(0)
}

pub async fn hold_add(
    ctx: Arc<Context>,
    org: Option<&str>,
    subject: Option<&str>,
    reason: &str,
    json_out: bool,
) -> Result<i32> {
    require_reason(reason)?;
    let (scope, value) = match (org, subject) {
        (Some(o), None) => {
            require_org(&ctx, o).await?;
            (HoldScope::Org, o.to_string())
        }
        (None, Some(s)) => {
            s.parse::<lettre::Address>().map_err(|e| {
                Error::Usage(format!("--subject `{s}` is not an email address ({e})"))
            })?;
            (HoldScope::Subject, s.to_lowercase())
        }
        _ => {
            return Err(
                Error::Usage("give exactly one of --org ORG or --subject EMAIL".into()).into(),
            )
        }
    };
    // The chain can never forget: it names a held subject by pseudonym only.
    let target = match scope {
        HoldScope::Subject => {
            let key = crate::dsr::pseudonym_key(&ctx.config)?;
            format!("subject:{}", crate::dsr::subject_pseudonym(&key, &value))
        }
        _ => format!("{}:{value}", scope.as_str()),
    };
    let actor = actor_cli();
    let event = |hold: &LegalHold| {
        evidence(
            &actor,
            "hold.added",
            &target,
            json!({"hold_id": hold.id, "reason": reason}),
        )
    };
    let hold = ctx
        .store
        .hold_add(scope, &value, reason, &actor, &event)
        .await?;
    if json_out {
        super::print_json(&hold)?;
    } else {
        outln!("hold {} on {} {value}: {reason}", hold.id, scope.as_str());
    }
    Ok(0)
}

pub async fn hold_list(ctx: Arc<Context>, all: bool, json_out: bool) -> Result<i32> {
    let holds = ctx.store.holds(all).await?;
    if json_out {
        super::print_json(&json!({"holds": holds}))?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = holds
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                h.scope.as_str().into(),
                h.value.clone(),
                h.reason.clone(),
                h.created_at.format("%Y-%m-%d").to_string(),
                h.released_at
                    .map(|t| t.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|| "active".into()),
            ]
        })
        .collect();
    super::print_table(
        &["ID", "SCOPE", "WHO", "REASON", "SINCE", "RELEASED"],
        &rows,
    );
    Ok(0)
}

pub async fn hold_release(ctx: Arc<Context>, id: i64, reason: &str) -> Result<i32> {
    require_reason(reason)?;
    let actor = actor_cli();
    let event = evidence(
        &actor,
        "hold.released",
        &format!("hold:{id}"),
        json!({"reason": reason}),
    );
    if !ctx.store.hold_release(id, reason, &actor, &event).await? {
        return Err(
            Error::NotFound(format!("no active hold {id} (see `lethe hold list --all`)")).into(),
        );
    }
    outln!("hold {id} released");
    Ok(0)
}

/// `lethe retention …`: one arm a subcommand.
pub async fn dispatch(ctx: Arc<Context>, command: crate::cli::RetentionCommand) -> Result<i32> {
    use crate::cli::RetentionCommand;
    match command {
        RetentionCommand::Set {
            class,
            org,
            period,
            reason,
            json,
        } => set(ctx, &class, &org, &period, &reason, json).await,
        RetentionCommand::List { json } => list(ctx, json).await,
        RetentionCommand::Unset { class, org, reason } => unset(ctx, &class, &org, &reason).await,
    }
}

/// `lethe hold …`: one arm a subcommand.
pub async fn dispatch_hold(ctx: Arc<Context>, command: crate::cli::HoldCommand) -> Result<i32> {
    use crate::cli::HoldCommand;
    match command {
        HoldCommand::Add {
            org,
            subject,
            reason,
            json,
        } => hold_add(ctx, org.as_deref(), subject.as_deref(), &reason, json).await,
        HoldCommand::List { all, json } => hold_list(ctx, all, json).await,
        HoldCommand::Release { id, reason } => hold_release(ctx, id, &reason).await,
    }
}
