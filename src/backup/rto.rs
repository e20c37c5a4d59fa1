//! The recovery time objective as a checked promise: a drill restores the
//! whole backup (no sample, so nothing is extrapolated) and its restore time
//! is compared with `backup.rto`. A drill over it mails ops when the drill
//! before it met the RTO (or there was none): one alert per breach, not one
//! per hourly drill; the breach stays visible in `backup list` and in
//! `backup.rpo_check`'s report until a drill meets the RTO again.

use std::time::Duration;

use crate::config::format_duration;
use crate::context::Context;
use crate::error::Result;
use crate::notify::{self, Block, Message, Role, Tone};
use crate::store::BackupRecord;

/// Whether a restore of `restore_ms` met `rto` (`None`: no RTO set).
pub fn met(rto: Option<Duration>, restore_ms: Option<i64>) -> Option<bool> {
    let (rto, ms) = (rto?, restore_ms?);
    Some(u128::try_from(ms).unwrap_or(0) <= rto.as_millis())
}

/// A successful drill of `id` that took `restore_ms`, judged before it is
/// recorded (so the catalog still holds the drill before it, of any backup,
/// this one included): whether it met the RTO, and the alert to send once it
/// is recorded when it missed and the previous drill did not.
pub async fn assess(
    ctx: &Context,
    id: &str,
    restore_ms: u64,
) -> Result<(Option<bool>, Option<Message>)> {
    let Some(rto) = ctx.config.backup.rto else {
        return Ok((None, None));
    };
    let ms = i64::try_from(restore_ms).unwrap_or(i64::MAX);
    if met(Some(rto), Some(ms)) == Some(true) {
        return Ok((Some(true), None));
    }
    let backups = ctx.store.backups(false).await?;
    let previous = backups
        .iter()
        .filter(|b| b.verify_ok == Some(true) && b.verified_at.is_some())
        .max_by_key(|b| b.verified_at);
    let already_in_breach = previous.is_some_and(|b| met(Some(rto), b.restore_ms) == Some(false));
    let now = ctx.store.now().await?;
    let alert = (!already_in_breach).then(|| alert(id, restore_ms, rto, previous, now));
    Ok((Some(false), alert))
}

/// Sends the alert `assess` made, after the drill is recorded.
pub async fn send(ctx: &Context, alert: Option<Message>) -> Result<()> {
    if let Some(m) = alert {
        notify::enqueue(ctx, m).await?;
    }
    Ok(())
}

fn alert(
    id: &str,
    restore_ms: u64,
    rto: Duration,
    previous: Option<&BackupRecord>,
    now: chrono::DateTime<chrono::Utc>,
) -> Message {
    let took = format_duration(Duration::from_millis(restore_ms));
    let mut facts = vec![
        ("Backup".into(), id.to_string()),
        ("Restore took".into(), took.clone()),
        ("RTO".into(), format_duration(rto)),
    ];
    if let Some(ms) = previous.and_then(|b| b.restore_ms) {
        let ms = u64::try_from(ms).unwrap_or(0);
        facts.push((
            "Previous drill".into(),
            format_duration(Duration::from_millis(ms)),
        ));
    }
    Message {
        role: Role::Ops,
        subject: format!("[lethe] restore drill took {took}, over the RTO"),
        blocks: vec![
            Block::Notice(
                Tone::Alert,
                format!(
                    "Restoring backup {id} took {took}; the promised recovery time is {}. A real restore would break that promise.",
                    format_duration(rto)
                ),
            ),
            Block::Facts(facts),
            Block::Para(
                "Restore in parallel (backup.verify_jobs), restore onto faster disks, or revise the RTO. See the drills:"
                    .into(),
            ),
            Block::Command("lethe backup list".into()),
        ],
        attachments: vec![],
        // Per breach: a later breach, even on the same backup, alerts again.
        dedupe_key: Some(format!("backup-rto:{id}:{}", now.timestamp())),
    }
}
