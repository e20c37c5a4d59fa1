//! The RPO with the WAL archived (`backup.mode = "physical"`): a restore
//! reaches the newest archived segment, so what would be lost is what the
//! server wrote after it. The recovery point is that segment's archive time;
//! an idle server writes nothing new, so a stale segment with no WAL written
//! since (the server's position still inside it) puts nothing at risk.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Connection;

use super::physical::segment_start;
use crate::config::{format_duration, BackupMode};
use crate::context::Context;
use crate::dsr::BackupRpo;
use crate::error::Result;
use crate::notify::{Block, Message, Role, Tone};

/// The newest archived segment, as the RPO check sees it.
#[derive(Debug, Clone, Serialize)]
pub struct WalPoint {
    pub segment: String,
    pub archived_at: DateTime<Utc>,
    pub age_s: u64,
    /// The server has written WAL past this segment (`None`: it could not be asked).
    pub wal_since: Option<bool>,
    /// The longest time between two archived segments over the last 30 days
    /// (or since the first), the current wait included: the RPO achieved.
    pub achieved_30d_s: u64,
    /// The server is another cluster than the newest base backup's (a new
    /// one after an upgrade or a move): no base backup continues with its WAL.
    pub other_cluster: bool,
}

impl WalPoint {
    pub fn breached(&self, rpo: Duration) -> bool {
        self.other_cluster || (self.age_s > rpo.as_secs() && self.wal_since != Some(false))
    }
}

/// The longest stretch of [`since`, `now`] without a newer recovery point:
/// the gaps between consecutive `times` (sorted) and from the last to `now`,
/// each cut to the window (before the first point there is nothing to lose).
pub fn longest_gap(times: &[DateTime<Utc>], since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    times
        .windows(2)
        .map(|w| (w[0], w[1]))
        .chain(times.last().map(|t| (*t, now)))
        .filter_map(|(a, b)| (b.min(now) - a.max(since)).to_std().ok())
        .max()
        .unwrap_or_default()
}

/// Reads the archive (and asks the application's server how far it has written).
/// `base_system`: the newest base backup's cluster, where known.
pub async fn wal_point(
    ctx: &Context,
    segment_bytes: u64,
    base_system: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<WalPoint>> {
    let store = ctx.object_store().await?;
    let segments = super::wal::segments(&ctx.config, store.as_ref()).await?;
    let Some((segment, Some(archived_at))) = segments.last().cloned() else {
        return Ok(None);
    };
    // Only the WAL the archive keeps whole tells the gaps: older files are
    // pruned but for the spans of the base backups kept.
    let all = ctx.store.backups(false).await?;
    let spans = super::physical::spans(&all.iter().collect::<Vec<_>>())?;
    let from =
        super::physical::whole_from(&spans, ctx.config.backup.pitr_window).map_or(0, |w| w.0);
    let mut times: Vec<DateTime<Utc>> = segments
        .iter()
        .filter(|(n, _)| segment_start(n, segment_bytes).is_some_and(|p| p >= from))
        .filter_map(|(_, t)| *t)
        .collect();
    times.sort();
    let since = (now - chrono::Duration::days(30)).max(times.first().copied().unwrap_or(now));
    let end = segment_start(&segment, segment_bytes).and_then(|s| s.checked_add(segment_bytes));
    let (wal_since, system) = match end {
        Some(end) => written_past(&ctx.config.database.url, end).await,
        None => (None, None),
    };
    let other_cluster = matches!((base_system, system.as_deref()), (Some(a), Some(b)) if a != b);
    Ok(Some(WalPoint {
        age_s: (now - archived_at).to_std().unwrap_or_default().as_secs(),
        segment,
        archived_at,
        wal_since,
        achieved_30d_s: longest_gap(&times, since, now).as_secs(),
        other_cluster,
    }))
}

/// Whether the server at `url` has written WAL past `end` (a switch to a new
/// segment lands exactly on it, and writes nothing), and which cluster it is.
async fn written_past(url: &str, end: u64) -> (Option<bool>, Option<String>) {
    let Ok(mut c) = sqlx::PgConnection::connect(url).await else {
        return (None, None);
    };
    let lsn: Option<String> = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut c)
        .await
        .ok();
    let system = super::physical::system_identifier(&mut c).await;
    let _ = c.close().await;
    let past = lsn
        .and_then(|l| super::physical::parse_lsn(&l).ok())
        .map(|l| l > end);
    (past, system)
}

/// From the archive's files in physical mode, else from the catalog's backups
/// (a failed one is no recovery point); `None` with neither.
pub async fn achieved(ctx: &Context, now: DateTime<Utc>) -> Result<Option<BackupRpo>> {
    let rpo_s = ctx.config.backup.rpo.as_secs();
    let since = now - chrono::Duration::days(30);
    let backups = super::rpo::recovery_points(ctx).await?;
    let bytes = backups.first().and_then(super::rpo::segment_bytes);
    if let Some(bytes) = bytes.filter(|_| ctx.config.backup.mode == BackupMode::Physical) {
        if let Some(p) = wal_point(ctx, bytes, None, now).await? {
            return Ok(Some(BackupRpo {
                rpo_s,
                achieved_30d_s: p.achieved_30d_s,
                measured_from: "wal archive",
            }));
        }
    }
    // Pruned backups count too: they were recovery points in their time.
    let mut times: Vec<DateTime<Utc>> = ctx
        .store
        .backups(true)
        .await?
        .iter()
        .filter(|b| b.verify_ok != Some(false))
        .map(|b| b.created_at)
        .collect();
    if times.is_empty() {
        return Ok(None);
    }
    times.sort();
    let gap = longest_gap(&times, since, now);
    Ok(Some(BackupRpo {
        rpo_s,
        achieved_30d_s: gap.as_secs(),
        measured_from: "backups",
    }))
}

/// For the SLA report: `achieved` as of the store's clock; a store or
/// archive that cannot be read leaves it out of the report, not the report out.
pub async fn for_report(ctx: &Context) -> Option<BackupRpo> {
    let got = async { achieved(ctx, ctx.store.now().await?).await }.await;
    got.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the SLA report leaves out the achieved RPO");
        None
    })
}

pub fn alert(p: &WalPoint, rpo: Duration) -> Message {
    if p.other_cluster {
        return Message {
            role: Role::Ops,
            subject: "[lethe] RPO breached: no base backup of this cluster".into(),
            blocks: vec![
                Block::Notice(
                    Tone::Alert,
                    "The application's server is another PostgreSQL cluster than the newest base backup's \
                     (an upgrade or a move): its WAL continues no base backup, so nothing it wrote since \
                     could be restored."
                        .into(),
                ),
                Block::Para("Take a base backup of it now:".into()),
                Block::Command("lethe run backup.create".into()),
            ],
            attachments: vec![],
            dedupe_key: Some(format!("rpo-wal-cluster:{}", p.segment)),
        };
    }
    Message {
        role: Role::Ops,
        subject: "[lethe] RPO breached: WAL archiving has stalled".into(),
        blocks: vec![
            Block::Notice(
                Tone::Alert,
                format!(
                    "The newest archived WAL file, {}, is {} old, and the server has written since; the RPO is {}: \
                     what it wrote after that file would be lost.",
                    p.segment,
                    format_duration(Duration::from_secs(p.age_s)),
                    format_duration(rpo)
                ),
            ),
            Block::Para(
                "See whether archive_command fails (the server's log names the error) or archive_timeout is off:"
                    .into(),
            ),
            Block::Command(
                "psql -c 'SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_stat_archiver'"
                    .into(),
            ),
            Block::Command("lethe check".into()),
        ],
        attachments: vec![],
        dedupe_key: Some(format!("rpo-wal:{}", p.segment)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_counts_the_wait_since_the_last() {
        let t = |m: i64| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::minutes(m);
        let times = [t(0), t(5), t(30), t(32)];
        assert_eq!(
            longest_gap(&times, t(0), t(40)),
            Duration::from_secs(25 * 60)
        );
        assert_eq!(
            longest_gap(&times, t(0), t(90)),
            Duration::from_secs(58 * 60)
        );
        // Cut to the window: the 25 minutes from 5 to 30 count from 20 on.
        assert_eq!(
            longest_gap(&times, t(20), t(40)),
            Duration::from_secs(10 * 60)
        );
        assert_eq!(longest_gap(&[], t(0), t(1)), Duration::ZERO);
    }

    #[test]
    fn a_stale_archive_breaches_only_when_wal_was_written_since() {
        let p = |age_s, wal_since| WalPoint {
            segment: "000000010000000000000003".into(),
            archived_at: Utc::now(),
            age_s,
            wal_since,
            achieved_30d_s: 0,
            other_cluster: false,
        };
        let rpo = Duration::from_secs(900);
        assert!(!p(600, Some(true)).breached(rpo));
        assert!(p(1000, Some(true)).breached(rpo));
        assert!(
            !p(1000, Some(false)).breached(rpo),
            "an idle server loses nothing"
        );
        assert!(p(1000, None).breached(rpo), "a server that cannot be asked");
        let mut moved = p(10, Some(true));
        moved.other_cluster = true;
        assert!(moved.breached(rpo), "WAL no base backup continues");
    }
}
