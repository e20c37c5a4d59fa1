//! The mail outbox: mail is queued in the store (deduplicated by key) and sent
//! by whichever worker holds its lease.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: String,
}

#[derive(Debug, Clone)]
pub struct NewMail {
    /// Makes enqueueing idempotent: a second mail with the same key is not queued again.
    pub dedupe_key: Option<String>,
    pub recipients: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub attachments: Vec<Attachment>,
    /// The body holds a secret (a one-time passphrase): wiped once delivered.
    pub secret: bool,
}

/// What a secret mail's body becomes once it is delivered, or given up on.
pub const WIPED_BODY: &str = "(removed after delivery: this message held a one-time secret)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailState {
    Pending,
    Sending,
    Sent,
    Failed,
}

impl MailState {
    pub fn as_str(self) -> &'static str {
        match self {
            MailState::Pending => "pending",
            MailState::Sending => "sending",
            MailState::Sent => "sent",
            MailState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => MailState::Pending,
            "sending" => MailState::Sending,
            "sent" => MailState::Sent,
            "failed" => MailState::Failed,
            other => {
                return Err(Error::Failed(format!(
                    "unknown mail state `{other}` in store"
                )))
            }
        })
    }
}

super::types::text_enum!(MailState);

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OutboxMail {
    pub id: i64,
    pub dedupe_key: Option<String>,
    #[sqlx(json)]
    pub recipients: Vec<String>,
    pub subject: String,
    #[sqlx(rename = "text_body")]
    pub text: String,
    #[sqlx(rename = "html_body")]
    pub html: String,
    #[sqlx(json)]
    pub attachments: Vec<Attachment>,
    pub state: MailState,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

pub(super) const MAIL_COLUMNS: &str =
    "id, dedupe_key, recipients, subject, text_body, html_body, attachments, state, \
     attempts, next_attempt_at, last_error, created_at, sent_at";

#[async_trait]
pub trait Outbox: Send + Sync {
    /// Returns the id and whether it was newly queued (false: the dedupe key existed).
    async fn outbox_enqueue(&self, mail: &NewMail) -> Result<(i64, bool)>;
    /// Claims due mail (pending, or `sending` whose sender died) under a lease.
    async fn outbox_claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxMail>>;
    async fn outbox_sent(&self, id: i64, owner: &str) -> Result<bool>;
    /// Records a failed attempt: `retry_at` Some → pending again, None → failed for good.
    async fn outbox_failed(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool>;
    async fn outbox_list(&self, limit: u32) -> Result<Vec<OutboxMail>>;
    /// Whether a mail with this dedupe key was ever queued (an alert that was raised).
    async fn outbox_has(&self, dedupe_key: &str) -> Result<bool>;
}

/// `impl Outbox` for a driver; `outbox_claim` is the driver's (lease clock, row locking).
macro_rules! impl_outbox {
    ($store:ty, { $($driver:tt)* }) => {
        #[async_trait::async_trait]
        impl Outbox for $store {
            async fn outbox_enqueue(&self, mail: &NewMail) -> Result<(i64, bool)> {
                let now = Ts::now();
                let inserted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO mail_outbox (dedupe_key, recipients, subject, text_body, html_body, attachments,
                                              next_attempt_at, created_at, secret)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
                     ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                )
                .bind(&mail.dedupe_key)
                .bind(sqlx::types::Json(&mail.recipients))
                .bind(&mail.subject)
                .bind(&mail.text)
                .bind(&mail.html)
                .bind(sqlx::types::Json(&mail.attachments))
                .bind(now)
                .bind(mail.secret)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(id) = inserted {
                    return Ok((id, true));
                }
                let id: i64 = sqlx::query_scalar("SELECT id FROM mail_outbox WHERE dedupe_key = $1")
                    .bind(&mail.dedupe_key)
                    .fetch_one(&self.pool)
                    .await?;
                Ok((id, false))
            }

            async fn outbox_sent(&self, id: i64, owner: &str) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE mail_outbox SET state = 'sent', sent_at = $3, attempts = attempts + 1,
                            lease_owner = NULL, lease_expires_at = NULL, last_error = NULL,
                            text_body = CASE WHEN secret THEN $4 ELSE text_body END,
                            html_body = CASE WHEN secret THEN $4 ELSE html_body END
                     WHERE id = $1 AND lease_owner = $2 AND state = 'sending'",
                )
                .bind(id)
                .bind(owner)
                .bind(Ts::now())
                .bind(WIPED_BODY)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn outbox_failed(
                &self,
                id: i64,
                owner: &str,
                error: &str,
                retry_at: Option<DateTime<Utc>>,
            ) -> Result<bool> {
                let n = sqlx::query(
                    "UPDATE mail_outbox SET state = CASE WHEN $4 IS NULL THEN 'failed' ELSE 'pending' END,
                            next_attempt_at = COALESCE($4, next_attempt_at), attempts = attempts + 1,
                            last_error = $3, lease_owner = NULL, lease_expires_at = NULL,
                            text_body = CASE WHEN $4 IS NULL AND secret THEN $5 ELSE text_body END,
                            html_body = CASE WHEN $4 IS NULL AND secret THEN $5 ELSE html_body END
                     WHERE id = $1 AND lease_owner = $2 AND state = 'sending'",
                )
                .bind(id)
                .bind(owner)
                .bind(error)
                .bind(retry_at.map(Ts))
                .bind(WIPED_BODY)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn outbox_list(&self, limit: u32) -> Result<Vec<OutboxMail>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {MAIL_COLUMNS} FROM mail_outbox ORDER BY id DESC LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn outbox_has(&self, dedupe_key: &str) -> Result<bool> {
                let n: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM mail_outbox WHERE dedupe_key = $1")
                        .bind(dedupe_key)
                        .fetch_one(&self.pool)
                        .await?;
                Ok(n > 0)
            }

            $($driver)*
        }
    };
}
pub(super) use impl_outbox;
