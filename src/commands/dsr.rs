//! `lethe dsr submit|list|show|extend|report`.

use super::out::outln;
use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use crate::context::Context;
use crate::dsr::{self, Intake, Submission};
use crate::error::{exit, Error};
use crate::store::DsrState;

pub async fn submit(
    ctx: Arc<Context>,
    (kind, subject): (&str, &str),
    (jurisdiction, org): (Option<&str>, Option<&str>),
    (unverified, corrections): (bool, &[crate::store::Correction]),
    json_out: bool,
) -> Result<i32> {
    let actor = crate::audit::actor_cli();
    let s = Submission {
        kind,
        subject,
        jurisdiction,
        source: "cli",
        idempotency_key: None,
        actor: &actor,
        org,
        for_org: None,
        unverified,
        corrections,
    };
    let now = ctx.store.now().await?;
    let (r, blocking, accepted) = match dsr::submit(&ctx, s).await? {
        Intake::Accepted(r) | Intake::Replayed(r) => (r, vec![], true),
        Intake::Rejected {
            request,
            blocking_orgs,
        } => (request, blocking_orgs, false),
        // The CLI sends no idempotency key; kept exhaustive for the API's case.
        Intake::KeyReused(r) => {
            return Err(Error::Usage(format!(
                "the idempotency key was already used for request {}",
                r.id
            ))
            .into())
        }
    };
    if json_out {
        let mut v = dsr::view(&ctx, &r, now);
        v["blocking_orgs"] = json!(blocking);
        super::print_json(&v)?;
    } else if accepted {
        let mut scope = match &r.org {
            Some(o) => format!(" in org {o} only"),
            None => String::new(),
        };
        if r.state == DsrState::Received {
            scope.push_str(
                "; awaiting identity verification: lethe dsr verify ID --method M --by WHO",
            );
        }
        outln!(
            "request {} accepted ({} for {}{scope}, {}), due {}",
            r.id,
            r.kind,
            r.subject,
            r.jurisdiction,
            r.due_at.format("%Y-%m-%d %H:%M UTC")
        );
    } else {
        outln!(
            "request {} REJECTED: {} — {}",
            r.id,
            r.reason.as_deref().unwrap_or("?"),
            r.detail.as_deref().unwrap_or("")
        );
    }
    Ok(if accepted { exit::OK } else { exit::REFUSED })
}

pub async fn list(
    ctx: Arc<Context>,
    status: Option<&str>,
    limit: u32,
    json_out: bool,
) -> Result<i32> {
    let state = status.map(DsrState::parse).transpose()?;
    let now = ctx.store.now().await?;
    let reqs = ctx.store.dsr_list(state, limit.clamp(1, 10_000)).await?;
    if json_out {
        let v: Vec<_> = reqs.iter().map(|r| dsr::view(&ctx, r, now)).collect();
        super::print_json(&json!({"requests": v}))?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = reqs
        .iter()
        .map(|r| {
            let v = dsr::view(&ctx, r, now);
            vec![
                r.id.to_string(),
                r.kind.clone(),
                r.subject.clone(),
                r.org.clone().unwrap_or_else(|| "all".into()),
                r.jurisdiction.clone(),
                r.state.as_str().into(),
                r.due_at.format("%Y-%m-%d %H:%M").to_string(),
                v["sla"]
                    .as_str()
                    .unwrap_or(r.reason.as_deref().unwrap_or(""))
                    .to_string(),
            ]
        })
        .collect();
    super::print_table(
        &[
            "ID",
            "KIND",
            "SUBJECT",
            "ORG",
            "JURISDICTION",
            "STATE",
            "DUE (UTC)",
            "SLA / REASON",
        ],
        &rows,
    );
    Ok(0)
}

pub async fn show(ctx: Arc<Context>, id: i64, json_out: bool) -> Result<i32> {
    let r = ctx
        .store
        .dsr_get(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no request {id} (see `lethe dsr list`)")))?;
    let v = dsr::view(&ctx, &r, ctx.store.now().await?);
    if json_out {
        super::print_json(&v)?;
    } else {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(0)
}

pub async fn extend(
    ctx: Arc<Context>,
    id: i64,
    days: u32,
    reason: &str,
    notified_at: Option<&str>,
) -> Result<i32> {
    let r = dsr::extend(&ctx, id, days, reason, notified_at).await?;
    outln!(
        "request {id} now due {} ({} days of extension in total)",
        r.due_at.format("%Y-%m-%d %H:%M UTC"),
        r.extended_days
    );
    Ok(0)
}

pub async fn verify(ctx: Arc<Context>, id: i64, how: (&str, &str), json_out: bool) -> Result<i32> {
    let r = dsr::verify(&ctx, id, how, &crate::audit::actor_cli()).await?;
    if json_out {
        super::print_json(&dsr::view(&ctx, &r, ctx.store.now().await?))?;
    } else {
        outln!(
            "request {id} verified ({}, by {}), due {}",
            how.0,
            how.1,
            r.due_at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    Ok(0)
}

pub async fn report(ctx: Arc<Context>, send: bool, json_out: bool) -> Result<i32> {
    let backups = crate::backup::wal_rpo::for_report(&ctx).await;
    let (r, csv) = dsr::sla_report(&ctx, backups).await?;
    let mail = if send {
        dsr::send_report(&ctx, &r, csv).await?
    } else {
        None
    };
    if json_out {
        let mut v = serde_json::to_value(&r)?;
        v["mail_id"] = json!(mail.as_ref().map(|m| m.mail_id));
        v["already_sent"] = json!(mail.as_ref().map(|m| m.already_sent));
        super::print_json(&v)?;
    } else {
        outln!("{}", dsr::report_text(&ctx, &r));
        match mail {
            Some(m) if m.already_sent => outln!(
                "  already sent for the period from {} (mail {}); nothing new queued",
                m.period_start.format("%Y-%m-%d %H:%M UTC"),
                m.mail_id
            ),
            Some(m) => outln!(
                "  queued to the DPO as mail {}; `lethe run mail.flush` delivers it",
                m.mail_id
            ),
            None if send => outln!("  not queued: no DPO recipients in [mail.recipients]"),
            None => {}
        }
    }
    Ok(0)
}

/// `lethe dsr …`: one arm a subcommand.
pub async fn dispatch(ctx: Arc<Context>, command: crate::cli::DsrCommand) -> Result<i32> {
    use crate::cli::DsrCommand;
    match command {
        DsrCommand::Submit {
            kind,
            subject,
            jurisdiction,
            org,
            unverified,
            set,
            json,
        } => {
            let who = (kind.as_str(), subject.as_str());
            let scope = (jurisdiction.as_deref(), org.as_deref());
            let corrections = dsr::parse_set(&set)?;
            submit(ctx, who, scope, (unverified, &corrections), json).await
        }
        DsrCommand::Verify {
            id,
            method,
            by,
            json,
        } => verify(ctx, id, (&method, &by), json).await,
        DsrCommand::List {
            status,
            limit,
            json,
        } => list(ctx, status.as_deref(), limit, json).await,
        DsrCommand::Show { id, json } => show(ctx, id, json).await,
        DsrCommand::Extend {
            id,
            days,
            reason,
            notified_at,
        } => extend(ctx, id, days, &reason, notified_at.as_deref()).await,
        DsrCommand::Report { send, json } => report(ctx, send, json).await,
    }
}
