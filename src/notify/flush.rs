//! `mail.flush`: deliver due outbox mail; failures back off and retry until
//! `mail.max_attempts`, then the message is marked failed (and stays visible).

use std::time::Duration;

use serde::Serialize;

use crate::context::Context;
use crate::error::Result;
use crate::fence::Fence;
use crate::policy::retry_delay;

#[derive(Debug, Default, Serialize)]
pub struct FlushReport {
    pub sent: u32,
    pub retrying: u32,
    pub failed: u32,
    pub last_error: Option<String>,
}

/// Claims and sends due mail until none is due; returns what happened.
/// `fence`: the run's lease, checked before each message leaves.
pub async fn flush(ctx: &Context, batch_size: u32, fence: &Fence) -> Result<FlushReport> {
    let cfg = &ctx.config.mail;
    let owner = ctx.worker_id.as_str();
    let lease = Duration::from_secs(300);
    let mut report = FlushReport::default();
    loop {
        let batch = ctx.store.outbox_claim(owner, batch_size, lease).await?;
        if batch.is_empty() {
            break;
        }
        for mail in &batch {
            fence.check()?;
            match ctx.mailer.send(mail).await {
                Ok(()) => {
                    ctx.store.outbox_sent(mail.id, owner).await?;
                    report.sent += 1;
                    tracing::info!(mail_id = mail.id, subject = %mail.subject, "mail delivered");
                }
                Err(e) => {
                    let attempt = mail.attempts + 1;
                    let retry_at = (u32::try_from(attempt).unwrap_or(u32::MAX) < cfg.max_attempts)
                        .then(|| {
                            chrono::Utc::now()
                                + chrono::Duration::milliseconds(crate::store::millis(retry_delay(
                                    attempt,
                                    cfg.retry_base,
                                    Duration::from_secs(6 * 3600),
                                )))
                        });
                    ctx.store
                        .outbox_failed(mail.id, owner, &e.to_string(), retry_at)
                        .await?;
                    if retry_at.is_some() {
                        report.retrying += 1;
                    } else {
                        report.failed += 1;
                    }
                    tracing::warn!(mail_id = mail.id, attempt, error = %e, "mail delivery failed");
                    report.last_error = Some(e.to_string());
                }
            }
        }
        // Stop after a failing batch: the server is likely down; the backoff decides when to retry.
        if report.last_error.is_some() {
            break;
        }
    }
    Ok(report)
}
