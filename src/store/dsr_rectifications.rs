//! What rectifications set: kept with their request until applied, then the
//! ledger a restore re-applies (by keyed subject id, never the id or email).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::NewAuditEvent;
use crate::error::Result;

/// One column a rectification sets, to one value.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Correction {
    #[sqlx(rename = "table_name")]
    pub table: String,
    #[sqlx(rename = "column_name")]
    pub column: String,
    pub value: String,
}

/// An applied correction, as a restore re-applies it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppliedCorrection {
    pub subject_key: String,
    pub org: Option<String>,
    #[sqlx(rename = "table_name")]
    pub table: String,
    #[sqlx(rename = "column_name")]
    pub column: String,
    pub value: String,
    pub applied_at: DateTime<Utc>,
}

#[async_trait]
pub trait DsrRectifications: Send + Sync {
    /// What request `id` sets (none for other kinds).
    async fn dsr_corrections(&self, id: i64) -> Result<Vec<Correction>>;
    /// Marks request `id`'s corrections applied to the subject (keyed id and
    /// keyed email), in `org` only or everywhere, with the evidence, in one
    /// transaction.
    async fn dsr_rectified(
        &self,
        id: i64,
        (subject_key, email_key, org): (&str, &str, Option<&str>),
        event: &NewAuditEvent,
    ) -> Result<()>;
    /// Applied corrections, after `after` if given, oldest first (a later one
    /// of the same column wins when applied in this order).
    async fn corrections_applied(
        &self,
        after: Option<DateTime<Utc>>,
    ) -> Result<Vec<AppliedCorrection>>;
    /// Drops the applied corrections of an erased subject (in `org` only, or
    /// all): the values are personal data, and an erasure makes them moot.
    async fn corrections_forget(&self, subject_key: &str, org: Option<&str>) -> Result<u64>;
    /// The same, by the keyed email: an erasure finished after a crash no
    /// longer finds the subject's id.
    async fn corrections_forget_email(&self, email_key: &str) -> Result<u64>;
    /// Drops the values of rectifications that were rejected: never applied.
    async fn corrections_of_rejected_drop(&self) -> Result<u64>;
}

/// `impl DsrRectifications` for a driver.
macro_rules! impl_dsr_rectifications {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl DsrRectifications for $store {
            async fn dsr_corrections(&self, id: i64) -> Result<Vec<Correction>> {
                Ok(sqlx::query_as(
                    "SELECT table_name, column_name, value FROM dsr_rectifications
                     WHERE request_id = $1 ORDER BY table_name, column_name",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn dsr_rectified(
                &self,
                id: i64,
                (subject_key, email_key, org): (&str, &str, Option<&str>),
                event: &NewAuditEvent,
            ) -> Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "UPDATE dsr_rectifications SET subject_key = $2, org = $3, applied_at = $4, email_key = $5
                     WHERE request_id = $1",
                )
                .bind(id)
                .bind(subject_key)
                .bind(org)
                .bind(Ts::now())
                .bind(email_key)
                .execute(&mut *tx)
                .await?;
                Self::commit_with(tx, Some(event), "dsr_rectified").await
            }

            async fn corrections_applied(
                &self,
                after: Option<DateTime<Utc>>,
            ) -> Result<Vec<AppliedCorrection>> {
                Ok(sqlx::query_as(
                    "SELECT subject_key, org, table_name, column_name, value, applied_at
                     FROM dsr_rectifications
                     WHERE applied_at IS NOT NULL AND subject_key IS NOT NULL
                       AND ($1 IS NULL OR applied_at > $1)
                     ORDER BY applied_at, request_id",
                )
                .bind(after.map(Ts))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn corrections_forget(
                &self,
                subject_key: &str,
                org: Option<&str>,
            ) -> Result<u64> {
                Ok(sqlx::query(
                    "DELETE FROM dsr_rectifications
                     WHERE subject_key = $1 AND ($2 IS NULL OR org = $2)",
                )
                .bind(subject_key)
                .bind(org)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn corrections_forget_email(&self, email_key: &str) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM dsr_rectifications WHERE email_key = $1")
                    .bind(email_key)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn corrections_of_rejected_drop(&self) -> Result<u64> {
                Ok(sqlx::query(
                    "DELETE FROM dsr_rectifications WHERE applied_at IS NULL AND request_id IN
                       (SELECT id FROM dsr_requests WHERE state = 'rejected')",
                )
                .execute(&self.pool)
                .await?
                .rows_affected())
            }
        }
    };
}
pub(super) use impl_dsr_rectifications;
