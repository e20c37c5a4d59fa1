//! Mail: every message goes through the durable outbox first, so a report or
//! reminder is never lost because SMTP was down; `mail.flush` delivers it.

mod flush;

pub use crate::mail::{html_escape, render_html, render_text, Mailer};
pub use flush::{flush, FlushReport};

use serde_json::json;

use crate::context::Context;
use crate::error::Result;
use crate::store::{Attachment, NewMail, Run};

/// Who a message is for; addresses come from `[mail.recipients]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dpo,
    Ops,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dpo => "dpo",
            Role::Ops => "ops",
        }
    }
}

/// A message to queue: rendered to HTML + text by `templates`.
pub struct Message {
    pub role: Role,
    pub subject: String,
    /// Paragraphs of plain text; HTML is escaped from them.
    pub paragraphs: Vec<String>,
    /// Optional extra HTML (e.g. a chart), already safe.
    pub html_extra: Option<String>,
    pub attachments: Vec<Attachment>,
    pub dedupe_key: Option<String>,
}

/// Queues a message: `Some((id, newly_queued))`; `newly_queued` is false when the
/// dedupe key was already queued. `Ok(None)` when the role has no recipients (logged).
pub async fn enqueue(ctx: &Context, msg: Message) -> Result<Option<(i64, bool)>> {
    let recipients = match msg.role {
        Role::Dpo => ctx.config.mail.dpo.clone(),
        Role::Ops => ctx.config.mail.ops.clone(),
    };
    if recipients.is_empty() {
        tracing::warn!(role = msg.role.as_str(), subject = %msg.subject,
                       "no recipients configured for this role; message not queued");
        return Ok(None);
    }
    let mail = NewMail {
        dedupe_key: msg.dedupe_key,
        recipients,
        text: render_text(&msg.subject, &msg.paragraphs),
        html: render_html(&msg.subject, &msg.paragraphs, msg.html_extra.as_deref()),
        subject: msg.subject,
        attachments: msg.attachments,
    };
    let (id, created) = ctx.store.outbox_enqueue(&mail).await?;
    if created {
        crate::audit::record(
            ctx.store.as_ref(),
            &format!("worker:{}", ctx.worker_id),
            "mail.queued",
            &format!("mail:{id}"),
            json!({"role": msg.role.as_str(), "subject": mail.subject, "dedupe_key": mail.dedupe_key}),
        )
        .await?;
    }
    Ok(Some((id, created)))
}

/// Tells ops a run is out of attempts (once per run).
pub async fn job_dead(ctx: &Context, run: &Run) -> Result<()> {
    enqueue(
        ctx,
        Message {
            role: Role::Ops,
            subject: format!("[lethe] job {} is dead after {} attempts", run.job, run.attempt),
            paragraphs: vec![
                format!(
                    "Run {} of job {} (kind {}), scheduled for {}, failed {} times and will not be retried.",
                    run.id, run.job, run.kind, run.scheduled_for.to_rfc3339(), run.attempt
                ),
                format!("Last error: {}", run.error.as_deref().unwrap_or("(none recorded)")),
                format!("Inspect it with `lethe jobs history --job {}` and re-run it with `lethe run {}` once fixed.", run.job, run.job),
            ],
            html_extra: None,
            attachments: vec![],
            dedupe_key: Some(format!("job-dead:{}:{}", run.job, run.id)),
        },
    )
    .await?;
    Ok(())
}
