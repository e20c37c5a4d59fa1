//! Which backups still hold data deleted at a given time, and when each will
//! be gone: computed by running the GFS policy forward over the catalog and
//! the `backup.create` and `backup.prune` schedules, not guessed.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::gfs::{self, Candidate};
use crate::context::Context;
use crate::error::Result;

/// A backup taken before the deletion, and when pruning removes it.
#[derive(Debug, Clone, Serialize)]
pub struct HeldIn {
    pub backup: String,
    pub created_at: DateTime<Utc>,
    /// The first `backup.prune` fire after which the policy keeps it no
    /// longer; `None`: no scheduled prune or create would ever remove it.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why, when it does not expire.
    pub note: Option<String>,
}

/// Future fires this simulation looks at, at most (hourly backups for over a year).
const HORIZON: usize = 10_000;

fn schedule_of<'a>(ctx: &'a Context, kind: &str) -> Option<&'a crate::policy::Schedule> {
    ctx.config
        .jobs
        .iter()
        .find(|j| j.kind == kind && j.enabled)
        .map(|j| &j.schedule)
}

/// Backups in the catalog created before `deleted_at`, with their expiry.
pub async fn backups_holding(ctx: &Context, deleted_at: DateTime<Utc>) -> Result<Vec<HeldIn>> {
    let all = ctx.store.backups(false).await?;
    let mut candidates: Vec<Candidate> = all
        .iter()
        .map(|b| Candidate {
            id: b.id.clone(),
            created_at: b.created_at,
            verified: b.verify_ok == Some(true),
        })
        .collect();
    let mut held: Vec<HeldIn> = all
        .iter()
        .filter(|b| b.created_at <= deleted_at)
        .map(|b| HeldIn {
            backup: b.id.clone(),
            created_at: b.created_at,
            expires_at: None,
            note: None,
        })
        .collect();
    let keep = &ctx.config.backup.keep;
    let (create, prune) = (
        schedule_of(ctx, crate::backup::CREATE_KIND),
        schedule_of(ctx, "backup.prune"),
    );
    let (Some(create), Some(prune)) = (create, prune) else {
        for h in &mut held {
            h.note = Some("kept until deleted by hand: no backup.create and backup.prune jobs are both scheduled".into());
        }
        return Ok(held);
    };
    // Each future create adds a (verified, as the check assumes) backup; the
    // next prune after the policy drops a backup removes it.
    let mut t = Utc::now().max(deleted_at);
    let mut open: Vec<usize> = (0..held.len()).collect();
    for _ in 0..HORIZON {
        if open.is_empty() {
            break;
        }
        let Some(next_create) = create.next_fire(t) else {
            break;
        };
        candidates.push(Candidate {
            id: format!("future-{}", next_create.timestamp()),
            created_at: next_create,
            verified: true,
        });
        let decision = gfs::decide(&candidates, keep);
        let removal = prune.next_fire(next_create);
        if removal.is_none() {
            break; // the prune schedule never fires again: named below
        }
        open.retain(|&i| {
            let kept = decision.get(&held[i].backup).is_some_and(|r| !r.is_empty());
            if !kept {
                held[i].expires_at = removal;
            }
            kept
        });
        candidates.retain(|c| decision.get(&c.id).is_some_and(|r| !r.is_empty()));
        t = next_create;
    }
    let why = if prune.next_fire(t).is_none() {
        "kept until deleted by hand: the backup.prune schedule never fires again".to_string()
    } else if create.next_fire(t).is_none() {
        "kept until deleted by hand: the backup.create schedule never fires again, so no newer backup pushes it out".to_string()
    } else {
        format!(
            "the policy keeps it beyond the next {HORIZON} scheduled backups (a yearly keeper?)"
        )
    };
    for &i in &open {
        held[i].note = Some(why.clone());
    }
    Ok(held)
}
