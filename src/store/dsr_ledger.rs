//! What outlives a DSR: the erasure ledger (keyed pseudonyms that restores
//! re-apply) and its key check value, export archives tracked until deleted,
//! and replacing an erased subject's email in Lethe's own rows.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::NewAuditEvent;
use crate::error::Result;

#[async_trait]
pub trait DsrLedger: Send + Sync {
    /// Records an erasure in the ledger, with the erasure's evidence.
    async fn ledger_add(
        &self,
        subject_key: &str,
        request_id: i64,
        event: &NewAuditEvent,
    ) -> Result<()>;
    async fn ledger_keys(&self) -> Result<Vec<String>>;
    /// Records an erasure of the subject's rows in one org, with its evidence.
    async fn ledger_add_org(
        &self,
        subject_key: &str,
        org: &str,
        request_id: i64,
        event: &NewAuditEvent,
    ) -> Result<()>;
    /// The one-org erasures: (subject key, org, when).
    async fn ledger_org_entries(&self) -> Result<Vec<(String, String, DateTime<Utc>)>>;
    /// The keyed check value of the pseudonym key the ledger is written with, if recorded.
    async fn ledger_check(&self) -> Result<Option<String>>;
    /// Records `value` unless a check value exists already; returns the one stored
    /// (so two first users with different keys cannot both win).
    async fn ledger_check_init(&self, value: &str) -> Result<String>;
    /// Records an export archive's object (and the subject's copy, if one is
    /// made) and link expiry before either is uploaded.
    async fn dsr_export_started(
        &self,
        id: i64,
        (object, subject_object): (&str, Option<&str>),
        expires_at: DateTime<Utc>,
    ) -> Result<()>;
    /// Export archives still stored whose link expired by `now`, or (with
    /// `subject`) every one of that subject's: (request id, object key, the
    /// subject's copy's key).
    async fn dsr_exports_to_delete(
        &self,
        now: DateTime<Utc>,
        subject: Option<&str>,
    ) -> Result<Vec<(i64, String, Option<String>)>>;
    /// Records that the subject's copy with this SHA-256 was mailed to them.
    async fn dsr_subject_copy_mailed(&self, id: i64, sha256: &str) -> Result<()>;
    /// Marks an export archive deleted, with its evidence.
    async fn dsr_export_deleted(&self, id: i64, event: &NewAuditEvent) -> Result<()>;
    /// Replaces an erased subject's email with its pseudonym in Lethe's own
    /// rows (requests and their detail text, released subject holds) and drops
    /// the requests' idempotency hashes; returns rows changed. An active
    /// subject hold keeps the email: it must still match it.
    async fn dsr_forget_subject(&self, email: &str, pseudonym: &str) -> Result<u64>;
    /// Emails of completed whole-subject erasures not yet replaced by their
    /// pseudonym (a crash between completion and `dsr_forget_subject`); a
    /// subject erased in one org only is still a user and keeps theirs.
    async fn dsr_unforgotten_erasures(&self) -> Result<Vec<String>>;
}

/// `impl DsrLedger` for a driver, which provides `after_forget` (what must
/// follow a forget on its database).
macro_rules! impl_dsr_ledger {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl DsrLedger for $store {
            async fn ledger_add(
                &self,
                subject_key: &str,
                request_id: i64,
                event: &NewAuditEvent,
            ) -> Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO erasure_ledger (subject_key, request_id, erased_at) VALUES ($1, $2, $3)
                     ON CONFLICT (subject_key) DO UPDATE SET request_id = $2, erased_at = $3",
                )
                .bind(subject_key)
                .bind(request_id)
                .bind(Ts::now())
                .execute(&mut *tx)
                .await?;
                Self::commit_with(tx, Some(event), "ledger_add").await
            }

            async fn ledger_add_org(
                &self,
                subject_key: &str,
                org: &str,
                request_id: i64,
                event: &NewAuditEvent,
            ) -> Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO erasure_ledger_orgs (subject_key, org, request_id, erased_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (subject_key, org) DO UPDATE SET request_id = $3, erased_at = $4",
                )
                .bind(subject_key)
                .bind(org)
                .bind(request_id)
                .bind(Ts::now())
                .execute(&mut *tx)
                .await?;
                Self::commit_with(tx, Some(event), "ledger_add_org").await
            }

            async fn ledger_org_entries(&self) -> Result<Vec<(String, String, DateTime<Utc>)>> {
                let rows: Vec<(String, String, Ts)> = sqlx::query_as(
                    "SELECT subject_key, org, erased_at FROM erasure_ledger_orgs ORDER BY subject_key, org",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(|(k, o, t)| (k, o, t.0)).collect())
            }

            async fn ledger_keys(&self) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar("SELECT subject_key FROM erasure_ledger ORDER BY subject_key")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn ledger_check(&self) -> Result<Option<String>> {
                Ok(sqlx::query_scalar("SELECT check_value FROM erasure_ledger_check WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn ledger_check_init(&self, value: &str) -> Result<String> {
                sqlx::query(
                    "INSERT INTO erasure_ledger_check (id, check_value, created_at) VALUES (1, $1, $2)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(value)
                .bind(Ts::now())
                .execute(&self.pool)
                .await?;
                Ok(sqlx::query_scalar("SELECT check_value FROM erasure_ledger_check WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?)
            }

            async fn dsr_export_started(
                &self,
                id: i64,
                (object, subject_object): (&str, Option<&str>),
                expires_at: DateTime<Utc>,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE dsr_requests SET export_object = $2, export_expires_at = $3, export_deleted_at = NULL,
                            subject_object = $4
                     WHERE id = $1",
                )
                .bind(id)
                .bind(object)
                .bind(Ts(expires_at))
                .bind(subject_object)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn dsr_exports_to_delete(
                &self,
                now: DateTime<Utc>,
                subject: Option<&str>,
            ) -> Result<Vec<(i64, String, Option<String>)>> {
                Ok(sqlx::query_as(
                    "SELECT id, export_object, subject_object FROM dsr_requests
                     WHERE export_object IS NOT NULL AND export_deleted_at IS NULL
                       AND (CASE WHEN $2 IS NULL THEN export_expires_at <= $1 ELSE subject = $2 END)
                     ORDER BY id",
                )
                .bind(Ts(now))
                .bind(subject)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn dsr_subject_copy_mailed(&self, id: i64, sha256: &str) -> Result<()> {
                sqlx::query("UPDATE dsr_requests SET subject_copy_sha = $2 WHERE id = $1")
                    .bind(id)
                    .bind(sha256)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn dsr_export_deleted(&self, id: i64, event: &NewAuditEvent) -> Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query("UPDATE dsr_requests SET export_deleted_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(Ts::now())
                    .execute(&mut *tx)
                    .await?;
                Self::commit_with(tx, Some(event), "dsr_export_deleted").await
            }

            async fn dsr_forget_subject(&self, email: &str, pseudonym: &str) -> Result<u64> {
                let mut tx = self.write_tx().await?;
                let n = sqlx::query(
                    "UPDATE dsr_requests SET subject = $2, detail = replace(detail, $1, $2), request_hash = NULL
                     WHERE subject = $1",
                )
                .bind(email)
                .bind(pseudonym)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let h = sqlx::query(
                    "UPDATE legal_holds SET value = $2
                     WHERE scope = 'subject' AND value = $1 AND released_at IS NOT NULL",
                )
                .bind(email)
                .bind(pseudonym)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                self.after_forget().await?;
                Ok(n + h)
            }

            async fn dsr_unforgotten_erasures(&self) -> Result<Vec<String>> {
                let done: Vec<super::DsrRequest> = sqlx::query_as(
                    "SELECT * FROM dsr_requests
                     WHERE kind = 'erasure' AND state = 'completed' AND subject LIKE '%@%' ORDER BY subject",
                )
                .fetch_all(&self.pool)
                .await?;
                let mut emails: Vec<String> = done
                    .into_iter()
                    .filter(|r| r.org.is_none() || r.result.as_ref().is_some_and(|v| v["whole_subject"] == true))
                    .map(|r| r.subject)
                    .collect();
                emails.dedup();
                Ok(emails)
            }
        }
    };
}
pub(super) use impl_dsr_ledger;
