//! Policy state set by people: per-org retention overrides and legal holds.
//! Each change commits with its audit event.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{EventFor, NewAuditEvent};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RetentionOverride {
    pub class: String,
    pub org: String,
    /// A period as `Period::parse` reads it (`30d`, `2y`).
    pub period: String,
    pub reason: String,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldScope {
    Org,
    Subject,
}

impl HoldScope {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldScope::Org => "org",
            HoldScope::Subject => "subject",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "org" => Ok(HoldScope::Org),
            "subject" => Ok(HoldScope::Subject),
            other => Err(Error::Failed(format!(
                "unknown hold scope `{other}` in store"
            ))),
        }
    }
}

super::types::text_enum!(HoldScope);

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LegalHold {
    pub id: i64,
    pub scope: HoldScope,
    /// The org id, or the subject's email (lower case).
    pub value: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub released_by: Option<String>,
    pub release_reason: Option<String>,
}

#[async_trait]
pub trait Policy: Send + Sync {
    /// Inserts or replaces the override for `(class, org)`, with its evidence.
    async fn override_set(&self, o: &RetentionOverride, event: &NewAuditEvent) -> Result<()>;
    /// Removes an override, with its evidence; false (and no evidence) when there was none.
    async fn override_unset(&self, class: &str, org: &str, event: &NewAuditEvent) -> Result<bool>;
    async fn overrides(&self) -> Result<Vec<RetentionOverride>>;
    /// Adds a hold, with the evidence `event` builds from it.
    async fn hold_add(
        &self,
        scope: HoldScope,
        value: &str,
        reason: &str,
        actor: &str,
        event: EventFor<'_, LegalHold>,
    ) -> Result<LegalHold>;
    /// Releases an active hold, with its evidence; false (and no evidence) when
    /// there is no such active hold.
    async fn hold_release(
        &self,
        id: i64,
        reason: &str,
        actor: &str,
        event: &NewAuditEvent,
    ) -> Result<bool>;
    async fn holds(&self, include_released: bool) -> Result<Vec<LegalHold>>;
}

macro_rules! impl_policy {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl Policy for $store {
            async fn override_set(&self, o: &RetentionOverride, event: &NewAuditEvent) -> Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO retention_overrides (class, org, period, reason, set_by, set_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (class, org) DO UPDATE SET period = $3, reason = $4, set_by = $5, set_at = $6",
                )
                .bind(&o.class)
                .bind(&o.org)
                .bind(&o.period)
                .bind(&o.reason)
                .bind(&o.set_by)
                .bind(Ts(o.set_at))
                .execute(&mut *tx)
                .await?;
                Self::commit_with(tx, Some(event), "override_set").await
            }

            async fn override_unset(
                &self,
                class: &str,
                org: &str,
                event: &NewAuditEvent,
            ) -> Result<bool> {
                let mut tx = self.write_tx().await?;
                let n = sqlx::query("DELETE FROM retention_overrides WHERE class = $1 AND org = $2")
                    .bind(class)
                    .bind(org)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                Self::commit_if_one(tx, n, Some(event), "override_unset").await
            }

            async fn overrides(&self) -> Result<Vec<RetentionOverride>> {
                Ok(sqlx::query_as("SELECT * FROM retention_overrides ORDER BY class, org")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn hold_add(
                &self,
                scope: HoldScope,
                value: &str,
                reason: &str,
                actor: &str,
                event: EventFor<'_, LegalHold>,
            ) -> Result<LegalHold> {
                let mut tx = self.write_tx().await?;
                let hold: LegalHold = sqlx::query_as(
                    "INSERT INTO legal_holds (scope, value, reason, created_by, created_at)
                     VALUES ($1, $2, $3, $4, $5) RETURNING *",
                )
                .bind(scope)
                .bind(value)
                .bind(reason)
                .bind(actor)
                .bind(Ts::now())
                .fetch_one(&mut *tx)
                .await?;
                Self::commit_with(tx, Some(&event(&hold)), "hold_add").await?;
                Ok(hold)
            }

            async fn hold_release(
                &self,
                id: i64,
                reason: &str,
                actor: &str,
                event: &NewAuditEvent,
            ) -> Result<bool> {
                let mut tx = self.write_tx().await?;
                let n = sqlx::query(
                    "UPDATE legal_holds SET released_at = $4, released_by = $3, release_reason = $2
                     WHERE id = $1 AND released_at IS NULL",
                )
                .bind(id)
                .bind(reason)
                .bind(actor)
                .bind(Ts::now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Self::commit_if_one(tx, n, Some(event), "hold_release").await
            }

            async fn holds(&self, include_released: bool) -> Result<Vec<LegalHold>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM legal_holds WHERE $1 OR released_at IS NULL ORDER BY id",
                )
                .bind(include_released)
                .fetch_all(&self.pool)
                .await?)
            }
        }
    };
}
pub(super) use impl_policy;
