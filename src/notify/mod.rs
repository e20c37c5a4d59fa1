//! Mail: every message goes through the durable outbox first, so a report or
//! reminder is never lost because SMTP was down; `mail.flush` delivers it.

mod flush;

pub use crate::mail::{
    html_escape, render_html, render_text, Bar, Bars, Block, Mailer, Row, Table, Tone, Zone,
};
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
    /// A data subject: the address is the request's, passed with the message.
    Subject,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dpo => "dpo",
            Role::Ops => "ops",
            Role::Subject => "subject",
        }
    }
}

/// A message to queue: its blocks are rendered to HTML and text alike.
pub struct Message {
    pub role: Role,
    pub subject: String,
    pub blocks: Vec<Block>,
    pub attachments: Vec<Attachment>,
    pub dedupe_key: Option<String>,
}

/// The zone dates in mail are shown in (`mail.timezone`).
pub fn zone(ctx: &Context) -> Zone {
    Zone(ctx.config.mail.timezone)
}

/// Queues a message: `Some((id, newly_queued))`; `newly_queued` is false when the
/// dedupe key was already queued. `Ok(None)` when the role has no recipients (logged).
pub async fn enqueue(ctx: &Context, msg: Message) -> Result<Option<(i64, bool)>> {
    enqueue_to(ctx, msg, &[]).await
}

/// [`enqueue`], to the role and `also` (e.g. an org's contact for its
/// certificate): one message, so it is sent once. The audit event names the
/// role only, never an address.
pub async fn enqueue_to(
    ctx: &Context,
    msg: Message,
    also: &[String],
) -> Result<Option<(i64, bool)>> {
    queue(ctx, msg, also, false).await
}

/// [`enqueue_to`] for a message that carries a secret (a one-time
/// passphrase): once delivered, its body is wiped from the outbox.
pub async fn enqueue_secret(
    ctx: &Context,
    msg: Message,
    to: &[String],
) -> Result<Option<(i64, bool)>> {
    queue(ctx, msg, to, true).await
}

async fn queue(
    ctx: &Context,
    msg: Message,
    also: &[String],
    secret: bool,
) -> Result<Option<(i64, bool)>> {
    let mut recipients = match msg.role {
        Role::Dpo => ctx.config.mail.dpo.clone(),
        Role::Ops => ctx.config.mail.ops.clone(),
        Role::Subject => Vec::new(),
    };
    for a in also {
        if !recipients.contains(a) {
            recipients.push(a.clone());
        }
    }
    if recipients.is_empty() {
        tracing::warn!(role = msg.role.as_str(), subject = %msg.subject,
                       "no recipients configured for this role; message not queued");
        return Ok(None);
    }
    let mail = NewMail {
        dedupe_key: msg.dedupe_key,
        recipients,
        text: render_text(&msg.subject, &msg.blocks, &zone(ctx)),
        html: render_html(&msg.subject, &msg.blocks, &zone(ctx)),
        subject: msg.subject,
        attachments: msg.attachments,
        secret,
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

fn attempts(n: i32) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

fn times(n: i32) -> String {
    if n == 1 {
        "once".into()
    } else {
        format!("{n} times")
    }
}

/// Tells ops a run is out of attempts (once per run).
pub async fn job_dead(ctx: &Context, run: &Run) -> Result<()> {
    let z = zone(ctx);
    enqueue(
        ctx,
        Message {
            role: Role::Ops,
            subject: format!("[lethe] job {} is dead after {}", run.job, attempts(run.attempt)),
            blocks: vec![
                Block::Notice(
                    Tone::Alert,
                    format!("Job {} failed {} and will not be retried: the work it does is not being done.", run.job, times(run.attempt)),
                ),
                Block::Facts(vec![
                    ("Job".into(), format!("{} (kind {})", run.job, run.kind)),
                    ("Run".into(), run.id.to_string()),
                    ("Scheduled for".into(), z.show(run.scheduled_for)),
                    ("Last error".into(), run.error.clone().unwrap_or_else(|| "(none recorded)".into())),
                ]),
                Block::Para("See every attempt and its error, then run it again once the cause is fixed:".into()),
                Block::Command(format!("lethe jobs history --job {}", run.job)),
                Block::Command(format!("lethe run {}", run.job)),
            ],
            attachments: vec![],
            dedupe_key: Some(format!("job-dead:{}:{}", run.job, run.id)),
        },
    )
    .await?;
    Ok(())
}
