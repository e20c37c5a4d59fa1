//! Requests an organisation makes about all of its data: a deletion that
//! runs after a cooling-off period unless cancelled. Each change commits
//! with its evidence; one org has at most one scheduled deletion.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{EventFor, NewAuditEvent};
use crate::error::Result;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OrgRequest {
    pub id: i64,
    pub org: String,
    /// `deletion` or `export`.
    pub kind: String,
    /// The data classes to delete; empty: every class.
    pub classes: serde_json::Value,
    pub reason: String,
    /// Who at the org asked, to receive the certificate.
    pub contact: Option<String>,
    /// `scheduled`, `running`, `done`, `cancelled`, `failed` or (an export) `expired`.
    pub state: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// Not executed before this (the cooling-off period).
    pub execute_after: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub result: Option<serde_json::Value>,
}

pub const SCHEDULED: &str = "scheduled";
/// A deletion org.purge has started: no longer cancellable; a later run resumes it.
pub const RUNNING: &str = "running";
pub const DELETION: &str = "deletion";
pub const EXPORT: &str = "export";
pub const DONE: &str = "done";
pub const CANCELLED: &str = "cancelled";
/// An export that failed, or that a crashed process left behind.
pub const FAILED: &str = "failed";
/// An export whose archive was deleted (its link expired, or its org was deleted).
pub const EXPIRED: &str = "expired";

#[async_trait]
pub trait OrgRequests: Send + Sync {
    /// Records a request (state `scheduled`) with the evidence `event` builds
    /// from its id; `Refused` when the org already has one of this kind open.
    async fn org_request_insert(
        &self,
        r: &OrgRequest,
        event: EventFor<'_, i64>,
    ) -> Result<OrgRequest>;
    /// One org's requests (every org's when `None`), oldest first.
    async fn org_requests(&self, org: Option<&str>) -> Result<Vec<OrgRequest>>;
    /// Scheduled requests whose cooling-off ended by `now`, and running ones.
    async fn org_requests_due(&self, now: DateTime<Utc>) -> Result<Vec<OrgRequest>>;
    /// Moves a request from state `from` to `state` with its evidence; false
    /// (and no evidence) when it was no longer in `from`.
    async fn org_request_move(
        &self,
        id: i64,
        from: &str,
        state: &str,
        result: &serde_json::Value,
        event: &NewAuditEvent,
    ) -> Result<bool>;
    /// Records a running request's progress (its `result`, until it ends).
    async fn org_request_progress(&self, id: i64, progress: &serde_json::Value) -> Result<()>;
}

macro_rules! impl_org_requests {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl OrgRequests for $store {
            async fn org_request_insert(
                &self,
                r: &OrgRequest,
                event: EventFor<'_, i64>,
            ) -> Result<OrgRequest> {
                let mut tx = self.write_tx().await?;
                let inserted = sqlx::query_scalar(
                    "INSERT INTO org_requests (org, kind, classes, reason, contact, state, requested_by,
                         requested_at, execute_after, due_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                )
                .bind(&r.org)
                .bind(&r.kind)
                .bind(&r.classes)
                .bind(&r.reason)
                .bind(&r.contact)
                .bind(super::org_requests::SCHEDULED)
                .bind(&r.requested_by)
                .bind(Ts(r.requested_at))
                .bind(Ts(r.execute_after))
                .bind(Ts(r.due_at))
                .fetch_one(&mut *tx)
                .await;
                let id: i64 = match inserted {
                    Ok(id) => id,
                    Err(e) if super::is_unique_violation(&e) => {
                        return Err(Error::Refused(format!(
                            "org {} already has a scheduled {} (see `lethe org status --org {}`)",
                            r.org, r.kind, r.org
                        )))
                    }
                    Err(e) => return Err(e.into()),
                };
                Self::commit_with(tx, Some(&event(&id)), "org_request_insert").await?;
                let mut stored = r.clone();
                stored.id = id;
                stored.state = super::org_requests::SCHEDULED.into();
                Ok(stored)
            }

            async fn org_requests(&self, org: Option<&str>) -> Result<Vec<OrgRequest>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM org_requests WHERE $1 IS NULL OR org = $1 ORDER BY id",
                )
                .bind(org)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn org_requests_due(&self, now: DateTime<Utc>) -> Result<Vec<OrgRequest>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM org_requests
                     WHERE (state = $1 AND execute_after <= $2) OR state = $3 ORDER BY id",
                )
                .bind(super::org_requests::SCHEDULED)
                .bind(Ts(now))
                .bind(super::org_requests::RUNNING)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn org_request_move(
                &self,
                id: i64,
                from: &str,
                state: &str,
                result: &serde_json::Value,
                event: &NewAuditEvent,
            ) -> Result<bool> {
                let mut tx = self.write_tx().await?;
                // Only an end state has a completion time.
                let ends = state != super::org_requests::RUNNING;
                let n = sqlx::query(
                    "UPDATE org_requests SET state = $2, result = $3,
                         completed_at = CASE WHEN $6 THEN $4 ELSE NULL END
                     WHERE id = $1 AND state = $5",
                )
                .bind(id)
                .bind(state)
                .bind(result)
                .bind(Ts::now())
                .bind(from)
                .bind(ends)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Self::commit_if_one(tx, n, Some(event), "org_request_move").await
            }

            async fn org_request_progress(&self, id: i64, progress: &serde_json::Value) -> Result<()> {
                sqlx::query("UPDATE org_requests SET result = $2 WHERE id = $1 AND state = $3")
                    .bind(id)
                    .bind(progress)
                    .bind(super::org_requests::RUNNING)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}
pub(super) use impl_org_requests;
