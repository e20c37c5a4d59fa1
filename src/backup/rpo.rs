//! `backup.rpo_check`: two alarms, because they mean different things.
//!
//! - **RPO**: the newest backup that was stored completely (and has not
//!   failed verification) is older than `backup.rpo` — data written since
//!   would be lost. One alert per stale backup, and one recovery notice when a
//!   new backup ends the breach.
//! - **Verification lag**: the newest *verified* backup is older than the RPO
//!   plus the lag verification is allowed (`verify_lag`, default: the period
//!   of the `backup.verify` job's schedule) — backups are made but nobody has
//!   proved one restorable lately.
//!
//! A backup's age runs from its snapshot (`created_at`, when the dump
//! started). While a `backup.create` run is in flight (queued for a fire that
//! is due, or running within its timeout) the RPO is not yet breached: the
//! next recovery point is being written. With the shipped catalog (create
//! hourly at :00, verify at :20, check every 10 minutes, RPO 1h) a healthy
//! system raises neither alarm: at :00 the new backup is in flight, at :10 the
//! newest backup is 10 minutes old, though the newest verified one is 70.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CREATE_KIND, VERIFY_KIND};
use crate::config::{format_duration, BackupMode};
use crate::context::Context;
use crate::error::Result;
use crate::notify::{self, Block, Message, Role, Tone, Zone};
use crate::policy::DurationParam;
use crate::runner::{JobContext, JobParams};
use crate::store::{BackupRecord, RunFilter, RunState};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RpoParams {
    /// Overrides `backup.rpo`.
    pub rpo: Option<DurationParam>,
    /// How much later than the RPO the newest verified backup may be
    /// (default: the period of the `backup.verify` job's schedule, else the RPO).
    pub verify_lag: Option<DurationParam>,
}

impl JobParams for RpoParams {}

/// What a check found and whether it alerted; ages and limits in seconds.
#[derive(Debug, Serialize)]
pub struct RpoReport {
    pub ok: bool,
    pub rpo_ok: bool,
    pub verified_ok: bool,
    pub backup_in_flight: bool,
    pub rpo_s: u64,
    pub verify_lag_s: u64,
    pub newest: Option<String>,
    pub age_s: Option<u64>,
    pub newest_verified: Option<String>,
    pub verified_age_s: Option<u64>,
    pub alerted: bool,
    pub recovered: bool,
    /// Whether the newest verified backup's drill restored within `backup.rto`
    /// (`None`: no RTO set, or no drill yet); its alert went out with the drill.
    pub rto_ok: Option<bool>,
    pub verify_lag_alerted: bool,
    /// With `backup.mode = "physical"`: the newest archived WAL file, the
    /// recovery point a restore reaches (the base backups only start it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<super::wal_rpo::WalPoint>,
}

/// The time between two fires of the catalog's job of `kind`.
fn period(ctx: &Context, kind: &str, now: DateTime<Utc>) -> Option<Duration> {
    let job = ctx
        .config
        .jobs
        .iter()
        .find(|j| j.kind == kind && j.enabled)?;
    let a = job.schedule.next_fire(now)?;
    let b = job.schedule.next_fire(a)?;
    (b - a).to_std().ok()
}

/// Whether a `backup.create` run is being made now: queued for a due fire, or
/// running and not past its timeout.
async fn backup_in_flight(ctx: &Context, now: DateTime<Utc>) -> Result<bool> {
    for job in ctx.config.jobs.iter().filter(|j| j.kind == CREATE_KIND) {
        for state in [RunState::Running, RunState::Available] {
            let runs = ctx
                .store
                .list_runs(&RunFilter {
                    job: Some(job.name.clone()),
                    state: Some(state),
                    limit: 10,
                })
                .await?;
            let timeout = chrono::Duration::from_std(job.timeout).unwrap_or_default();
            if runs.iter().any(|r| match state {
                RunState::Running => r.started_at.is_some_and(|s| now <= s + timeout),
                _ => r.run_after <= now,
            }) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The catalog's backups, newest first, but those that failed verification: no backup.
pub(super) async fn recovery_points(ctx: &Context) -> Result<Vec<BackupRecord>> {
    Ok(ctx
        .store
        .backups(false)
        .await?
        .into_iter()
        .filter(|b| b.verify_ok != Some(false))
        .collect())
}

/// A base backup's WAL segment size: the catalog's newest decides the mode.
pub(super) fn segment_bytes(b: &BackupRecord) -> Option<u64> {
    b.manifest["physical"]["wal_segment_bytes"]
        .as_u64()
        .filter(|s| super::physical::valid_segment_bytes(*s))
}

fn age(now: DateTime<Utc>, b: Option<&BackupRecord>) -> Option<Duration> {
    b.map(|b| (now - b.created_at).to_std().unwrap_or(Duration::ZERO))
}

fn ops(subject: String, blocks: Vec<Block>, dedupe_key: String) -> Message {
    Message {
        role: Role::Ops,
        subject,
        blocks,
        attachments: vec![],
        dedupe_key: Some(dedupe_key),
    }
}

/// Queues `msg` (deduplicated); whether this call created it.
async fn send(ctx: &Context, msg: Message) -> Result<bool> {
    Ok(notify::enqueue(ctx, msg)
        .await?
        .is_some_and(|(_, created)| created))
}

pub async fn rpo_check_job(jc: &JobContext, p: RpoParams) -> Result<RpoReport> {
    let ctx = jc.ctx.as_ref();
    let rpo = p.rpo.map_or(ctx.config.backup.rpo, |d| d.get());
    let now = ctx.store.now().await?;
    let lag = match p.verify_lag {
        Some(l) => l.get(),
        None => period(ctx, VERIFY_KIND, now).unwrap_or(rpo),
    };
    // Asked before the catalog is read: a backup that completes between the
    // two reads is then either in flight or in the catalog, never neither.
    let in_flight = backup_in_flight(ctx, now).await?;
    let stored = recovery_points(ctx).await?;
    let newest = stored.first();
    let verified = stored.iter().find(|b| b.verify_ok == Some(true));
    let (newest_age, verified_age) = (age(now, newest), age(now, verified));
    let mut rpo_ok = newest_age.is_some_and(|a| a <= rpo) || (newest.is_some() && in_flight);
    let mut verified_ok = verified_age.is_some_and(|a| a <= rpo + lag);
    let wal = match newest.and_then(segment_bytes) {
        Some(bytes) if ctx.config.backup.mode == BackupMode::Physical => {
            let base = newest.and_then(|b| b.manifest["physical"]["system_identifier"].as_str());
            super::wal_rpo::wal_point(ctx, bytes, base, now).await?
        }
        _ => None,
    };
    if let Some(w) = &wal {
        // Base backups start the recovery; the archive carries it to its newest file.
        rpo_ok = !w.breached(rpo);
        // Base backups made outside the catalog: a day is the usual period.
        let base_period = period(ctx, CREATE_KIND, now).unwrap_or(Duration::from_secs(86_400));
        verified_ok = verified_age.is_some_and(|a| a <= base_period + lag);
    }
    let (mut alerted, mut recovered, mut lag_alerted) = (false, false, false);
    if !jc.dry_run {
        if let Some(w) = wal.as_ref().filter(|_| !rpo_ok) {
            alerted = send(ctx, super::wal_rpo::alert(w, rpo)).await?;
        } else if !rpo_ok {
            alerted = send(ctx, rpo_alert(newest, newest_age, rpo)).await?;
        } else if let Some(n) = newest {
            // The breach alerted before the newest backup (`rpo:PREV`) is
            // over: say so once.
            let prev = stored.get(1);
            let raised = format!("rpo:{}", prev.map_or("none", |p| p.id.as_str()));
            if ctx.store.outbox_has(&raised).await? {
                recovered = send(ctx, rpo_recovered(n, prev, rpo, &notify::zone(ctx))).await?;
            }
        }
        // With no backup at all the RPO alert says it all.
        if !verified_ok && newest.is_some() {
            lag_alerted = send(ctx, lag_alert(verified, verified_age, rpo, lag)).await?;
        }
    }
    Ok(RpoReport {
        ok: rpo_ok && verified_ok,
        rpo_ok,
        verified_ok,
        backup_in_flight: in_flight,
        rpo_s: rpo.as_secs(),
        verify_lag_s: lag.as_secs(),
        newest: newest.map(|b| b.id.clone()),
        age_s: newest_age.map(|a| a.as_secs()),
        newest_verified: verified.map(|b| b.id.clone()),
        verified_age_s: verified_age.map(|a| a.as_secs()),
        alerted,
        recovered,
        rto_ok: super::rto::met(ctx.config.backup.rto, verified.and_then(|b| b.restore_ms)),
        verify_lag_alerted: lag_alerted,
        wal,
    })
}

fn rpo_alert(newest: Option<&BackupRecord>, age: Option<Duration>, rpo: Duration) -> Message {
    let what = match (newest, age) {
        (Some(b), Some(a)) => format!(
            "The newest complete backup, {}, is {} old; the RPO is {}: data written since then would be lost.",
            b.id,
            format_duration(Duration::from_secs(a.as_secs())),
            format_duration(rpo)
        ),
        _ => format!("There is no backup at all; the RPO is {}.", format_duration(rpo)),
    };
    ops(
        "[lethe] RPO breached: no recent backup".into(),
        vec![
            Block::Notice(Tone::Alert, what),
            Block::Para("See why backup.create has not completed, then run it now:".into()),
            Block::Command("lethe jobs history --job backup.create".into()),
            Block::Command("lethe run backup.create".into()),
        ],
        // One alert per stale backup, not one per check.
        format!("rpo:{}", newest.map_or("none", |b| b.id.as_str())),
    )
}

fn rpo_recovered(
    newest: &BackupRecord,
    prev: Option<&BackupRecord>,
    rpo: Duration,
    zone: &Zone,
) -> Message {
    let since = match prev {
        Some(p) => format!(
            "a gap of {} since backup {}",
            format_duration(
                (newest.created_at - p.created_at)
                    .to_std()
                    .unwrap_or_default()
            ),
            p.id
        ),
        None => "a time without any backup".into(),
    };
    ops(
        "[lethe] RPO met again".into(),
        vec![
            Block::Notice(
                Tone::Good,
                format!(
                    "Backup {} ends {since}, longer than the RPO of {}.",
                    newest.id,
                    format_duration(rpo)
                ),
            ),
            Block::Facts(vec![("Taken".into(), zone.show(newest.created_at))]),
        ],
        format!("rpo-recovered:{}", newest.id),
    )
}

fn lag_alert(
    verified: Option<&BackupRecord>,
    age: Option<Duration>,
    rpo: Duration,
    lag: Duration,
) -> Message {
    let what = match (verified, age) {
        (Some(b), Some(a)) => format!(
            "The newest backup proved restorable, {}, is {} old (allowed: the RPO {} plus {} for verification).",
            b.id,
            format_duration(Duration::from_secs(a.as_secs())),
            format_duration(rpo),
            format_duration(lag)
        ),
        _ => "No backup has been proved restorable yet.".into(),
    };
    ops(
        "[lethe] backups are not being verified".into(),
        vec![
            Block::Notice(Tone::Alert, what),
            Block::Para("A backup that was never restored is not proven restorable. See why backup.verify has not passed:".into()),
            Block::Command("lethe jobs history --job backup.verify".into()),
            Block::Command("lethe backup verify ID".into()),
        ],
        format!("verify-lag:{}", verified.map_or("none", |b| b.id.as_str())),
    )
}
