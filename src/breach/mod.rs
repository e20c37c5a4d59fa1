//! Personal-data breaches: deadlines per party from jurisdiction rules kept as
//! data, reminders at configurable marks before each deadline and an
//! escalation once it passes — each sent exactly once, through the outbox's
//! dedupe keys, whatever the number of replicas or retries.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::notify::{self, Role};

mod mail;
use crate::policy::DurationParam;
use crate::runner::{JobContext, JobParams};
use crate::store::{Breach, BreachParty};
use mail::mail;

/// Who must be told, by when, under which rule.
pub struct PartyRule {
    pub jurisdiction: &'static str,
    pub party: &'static str,
    pub hours: i64,
    pub rule: &'static str,
}

pub const RULES: &[PartyRule] = &[
    PartyRule {
        jurisdiction: "gdpr",
        party: "authority",
        hours: 72,
        rule: "GDPR Art. 33(1): the supervisory authority within 72 hours",
    },
    PartyRule {
        jurisdiction: "gdpr",
        party: "controller",
        hours: 72,
        rule: "GDPR Art. 33(2), as processor per contract: the controller within 72 hours",
    },
    PartyRule {
        jurisdiction: "gdpr",
        party: "subjects",
        hours: 72,
        rule: "GDPR Art. 34: the subjects without undue delay (72-hour target)",
    },
    PartyRule {
        jurisdiction: "uk_gdpr",
        party: "authority",
        hours: 72,
        rule: "UK GDPR Art. 33(1): the ICO within 72 hours",
    },
    PartyRule {
        jurisdiction: "uk_gdpr",
        party: "controller",
        hours: 72,
        rule: "UK GDPR Art. 33(2), as processor: the controller within 72 hours",
    },
    PartyRule {
        jurisdiction: "uk_gdpr",
        party: "subjects",
        hours: 72,
        rule: "UK GDPR Art. 34: the subjects without undue delay (72-hour target)",
    },
    PartyRule {
        jurisdiction: "uu_pdp",
        party: "subjects",
        hours: 72,
        rule: "UU PDP Art. 46: the subjects within 3×24 hours",
    },
    PartyRule {
        jurisdiction: "uu_pdp",
        party: "authority",
        hours: 72,
        rule: "UU PDP Art. 46: the authority within 3×24 hours",
    },
];

pub const PARTIES: &[&str] = &["authority", "controller", "subjects"];

/// Parties and deadlines for these jurisdictions: the earliest deadline per party wins.
pub fn parties(jurisdictions: &[String], detected_at: DateTime<Utc>) -> Result<Vec<BreachParty>> {
    let mut out: Vec<BreachParty> = Vec::new();
    for j in jurisdictions {
        let rules: Vec<&PartyRule> = RULES
            .iter()
            .filter(|r| r.jurisdiction == j.as_str())
            .collect();
        if rules.is_empty() {
            let known: std::collections::BTreeSet<&str> =
                RULES.iter().map(|r| r.jurisdiction).collect();
            return Err(Error::Usage(format!(
                "no breach rules for jurisdiction `{j}`; known: {}",
                known.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        for r in rules {
            let due = detected_at + Duration::hours(r.hours);
            match out.iter_mut().find(|p| p.party == r.party) {
                Some(p) if p.due_at <= due => {}
                Some(p) => {
                    p.due_at = due;
                    p.rule = r.rule.into();
                }
                None => out.push(BreachParty {
                    party: r.party.into(),
                    rule: r.rule.into(),
                    due_at: due,
                    notified_at: None,
                    notified_by: None,
                    note: None,
                }),
            }
        }
    }
    out.sort_by_key(|p| p.due_at);
    Ok(out)
}

/// The longest breach title, in characters.
const MAX_TITLE: usize = 300;

pub struct Opening {
    pub title: String,
    pub detected_at: DateTime<Utc>,
    pub jurisdictions: Vec<String>,
    pub orgs: Vec<String>,
    pub subjects: i64,
}

pub async fn open(ctx: &Context, o: Opening) -> Result<Breach> {
    // One line: a title goes into mail subjects and aligned text.
    let title = o.title.split_whitespace().collect::<Vec<_>>().join(" ");
    if title.is_empty() {
        return Err(Error::Usage("--title must say what happened".into()));
    }
    if title.chars().count() > MAX_TITLE {
        return Err(Error::Usage(format!(
            "--title is {} characters; keep it under {MAX_TITLE} (a headline: the details belong in the incident record)",
            title.chars().count()
        )));
    }
    let now = ctx.store.now().await?;
    if o.detected_at > now + Duration::minutes(5) {
        return Err(Error::Usage(format!(
            "--detected-at {} is in the future",
            o.detected_at.to_rfc3339()
        )));
    }
    let jurisdictions: Vec<String> = if o.jurisdictions.is_empty() {
        vec!["gdpr".into()]
    } else {
        o.jurisdictions
            .iter()
            .map(|j| j.trim().to_lowercase().replace('-', "_"))
            .collect()
    };
    let b = Breach {
        id: 0,
        title,
        detected_at: o.detected_at,
        jurisdictions: json!(jurisdictions),
        orgs: json!(o.orgs),
        subjects: o.subjects.max(0),
        created_at: now,
        parties: parties(&jurisdictions, o.detected_at)?,
    };
    let actor = crate::audit::actor_cli();
    let event = |id: &i64| {
        crate::store::evidence(
            &actor,
            "breach.opened",
            &format!("breach:{id}"),
            json!({"title": b.title, "detected_at": b.detected_at.to_rfc3339(), "jurisdictions": b.jurisdictions,
                   "orgs": b.orgs, "subjects": b.subjects,
                   "deadlines": b.parties.iter().map(|p| json!({"party": p.party, "due_at": p.due_at.to_rfc3339()})).collect::<Vec<_>>()}),
        )
    };
    let id = ctx.store.breach_insert(&b, &event).await?;
    let stored = get(ctx, id).await?;
    let zone = notify::zone(ctx);
    for role in [Role::Ops, Role::Dpo] {
        notify::enqueue(ctx, mail(&stored, None, "opened", role, &zone, now)).await?;
    }
    Ok(stored)
}

pub async fn get(ctx: &Context, id: i64) -> Result<Breach> {
    ctx.store
        .breaches()
        .await?
        .into_iter()
        .find(|b| b.id == id)
        .ok_or_else(|| Error::NotFound(format!("no breach {id} (see `lethe breach list`)")))
}

pub async fn notified(ctx: &Context, id: i64, party: &str, note: Option<&str>) -> Result<Breach> {
    let b = get(ctx, id).await?;
    let p = b.parties.iter().find(|p| p.party == party).ok_or_else(|| {
        Error::Usage(format!(
            "breach {id} has no party `{party}`; its parties: {}",
            b.parties
                .iter()
                .map(|p| p.party.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if p.notified_at.is_some() {
        return Err(Error::Usage(format!(
            "{party} was already recorded as notified for breach {id}"
        )));
    }
    let actor = crate::audit::actor_cli();
    let now = ctx.store.now().await?;
    let event = crate::store::evidence(
        &actor,
        "breach.notified",
        &format!("breach:{id}"),
        json!({"party": party, "due_at": p.due_at.to_rfc3339(), "on_time": now <= p.due_at, "note": note}),
    );
    ctx.store
        .breach_notified(id, party, &actor, note, &event)
        .await?;
    get(ctx, id).await
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TickParams {
    /// Marks before each deadline, e.g. ["48h", "24h", "6h"] (default: breach.reminders).
    pub reminders: Option<Vec<DurationParam>>,
}

impl JobParams for TickParams {}

/// One pass: for each party not yet notified, the most urgent mark passed gets
/// its reminder (once), and a passed deadline its escalation (once).
pub async fn tick(ctx: &Context, marks: &[std::time::Duration]) -> Result<Value> {
    let now = ctx.store.now().await?;
    let mut sent = Vec::new();
    let mut open = 0;
    for b in ctx.store.breaches().await? {
        for p in b.parties.iter().filter(|p| p.notified_at.is_none()) {
            open += 1;
            let what = if now > p.due_at {
                Some("overdue".to_string())
            } else {
                marks
                    .iter()
                    .filter(|m| now >= p.due_at - Duration::seconds(m.as_secs() as i64))
                    .min()
                    .map(|m| format!("T-{}h", m.as_secs() / 3600))
            };
            let Some(what) = what else { continue };
            for role in [Role::Ops, Role::Dpo] {
                let msg = mail(&b, Some(p), &what, role, &notify::zone(ctx), now);
                if let Some((_, true)) = notify::enqueue(ctx, msg).await? {
                    sent.push(json!({"breach": b.id, "party": p.party, "mark": what, "to": role.as_str()}));
                }
            }
        }
    }
    Ok(json!({"open_parties": open, "sent": sent}))
}

pub async fn tick_job(jc: &JobContext, p: TickParams) -> Result<Value> {
    let marks = match p.reminders {
        Some(list) => list.iter().map(DurationParam::get).collect(),
        None => jc.ctx.config.breach.reminders.clone(),
    };
    if jc.dry_run {
        return Ok(json!({"dry_run": true, "breaches": jc.ctx.store.breaches().await?.len()}));
    }
    tick(&jc.ctx, &marks).await
}
