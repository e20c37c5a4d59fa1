//! Data subject requests: intake (idempotent, one open request per subject
//! and kind), claiming by a run, state transitions and deadline extensions.
//! Audited changes commit with their evidence.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{EventFor, NewAuditEvent};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DsrState {
    Received,
    Verified,
    InProgress,
    Completed,
    Rejected,
    Failed,
}

impl DsrState {
    pub fn as_str(self) -> &'static str {
        match self {
            DsrState::Received => "received",
            DsrState::Verified => "verified",
            DsrState::InProgress => "in_progress",
            DsrState::Completed => "completed",
            DsrState::Rejected => "rejected",
            DsrState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "received" => DsrState::Received,
            "verified" => DsrState::Verified,
            "in_progress" => DsrState::InProgress,
            "completed" => DsrState::Completed,
            "rejected" => DsrState::Rejected,
            "failed" => DsrState::Failed,
            other => return Err(Error::Usage(format!("unknown DSR state `{other}`; use received, verified, in_progress, completed, rejected or failed"))),
        })
    }
    pub fn is_open(self) -> bool {
        matches!(
            self,
            DsrState::Received | DsrState::Verified | DsrState::InProgress | DsrState::Failed
        )
    }
}

super::types::text_enum!(DsrState);

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DsrRequest {
    pub id: i64,
    pub kind: String,
    pub subject: String,
    /// The org whose workspace alone the request covers (a processor-scoped
    /// request); `None`: every org.
    pub org: Option<String>,
    pub jurisdiction: String,
    pub state: DsrState,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub source: String,
    pub idempotency_key: Option<String>,
    /// What the idempotency key was first used for (see `NewDsr::request_hash`).
    #[serde(skip)]
    pub request_hash: Option<String>,
    pub received_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub extended_days: i32,
    pub extension_reason: Option<String>,
    /// When the last extension was decided, and when the subject was told of it.
    pub extended_at: Option<DateTime<Utc>>,
    pub extension_notified_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub result: Option<serde_json::Value>,
    pub updated_at: DateTime<Utc>,
    /// When and how the subject's identity was checked, and by whom (a
    /// request that arrived unverified; `None` for one verified at intake).
    pub verified_at: Option<DateTime<Utc>>,
    pub verify_method: Option<String>,
    pub verified_by: Option<String>,
    /// The SHA-256 of the subject's copy whose mails were queued (a retry reuses it).
    pub subject_copy_sha: Option<String>,
}

/// How a request that arrived unverified was verified.
#[derive(Debug, Clone)]
pub struct DsrVerification {
    pub at: DateTime<Utc>,
    pub method: String,
    pub by: String,
    /// The deadline from now on (moved where the law starts the clock at
    /// verification), and the one it replaces: the change applies only while
    /// that is still the deadline in force (no extension in between).
    pub due_at: DateTime<Utc>,
    pub from_due_at: DateTime<Utc>,
}

/// One extension of a request's deadline.
#[derive(Debug, Clone)]
pub struct DsrExtension {
    pub from_due_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub days: i32,
    pub reason: String,
    pub extended_at: DateTime<Utc>,
    pub notified_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewDsr {
    pub kind: String,
    pub subject: String,
    pub org: Option<String>,
    pub jurisdiction: String,
    pub state: DsrState,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub source: String,
    pub idempotency_key: Option<String>,
    /// A hash of the canonical request (`scheme:hex`); a later insert under the
    /// same key must carry the same hash to be a replay.
    pub request_hash: Option<String>,
    pub received_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    /// What a rectification sets: stored with the request, in its transaction
    /// (none for a rejected request, which sets nothing).
    pub corrections: Vec<super::Correction>,
}

/// A request as another tool (or an earlier system) recorded it, imported
/// with its whole timeline so that the SLA history carries on.
#[derive(Debug, Clone)]
pub struct ImportedDsr {
    /// `state`, `reason`, `received_at` and `due_at` (the deadline in force,
    /// extensions included) as recorded; `idempotency_key` and `request_hash` as usual.
    pub request: NewDsr,
    pub extended_days: i32,
    pub extension_reason: Option<String>,
    pub extended_at: Option<DateTime<Utc>>,
    pub extension_notified_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When it was last changed (closed, rejected, extended).
    pub updated_at: DateTime<Utc>,
}

/// What inserting a request did.
#[derive(Debug, Clone)]
pub enum DsrInsert {
    Created(DsrRequest),
    /// The idempotency key was used before for the same request: this is that request.
    Replayed(DsrRequest),
    /// The idempotency key was used before for a different request (this one).
    KeyConflict(DsrRequest),
    /// An open request of this kind for this subject (and scope) exists.
    Duplicate(DsrRequest),
}

impl NewDsr {
    /// Whether `prior`, found under this request's idempotency key, is this
    /// same request (a replay) or a different one (a conflict). Hashes are
    /// compared when both have one under the same scheme; otherwise (rows from
    /// before request hashes, or the pseudonym key configured in between) the
    /// fields themselves.
    pub fn replay_of(&self, prior: DsrRequest) -> DsrInsert {
        let scheme = |h: &str| h.split_once(':').map(|(s, _)| s.to_string());
        let same = match (&prior.request_hash, &self.request_hash) {
            (Some(a), Some(b)) if scheme(a) == scheme(b) => a == b,
            _ => {
                prior.kind == self.kind
                    && prior.subject == self.subject
                    && prior.org == self.org
                    && prior.jurisdiction == self.jurisdiction
            }
        };
        if same {
            DsrInsert::Replayed(prior)
        } else {
            DsrInsert::KeyConflict(prior)
        }
    }
}

/// Requests run `$2` may take: verified, failed, or in progress under a run
/// that is not running (crashed) or is `$2` itself (an earlier attempt).
pub(super) const DSR_TAKEABLE: &str = "(state IN ('verified', 'failed') OR (state = 'in_progress' AND (claimed_by_run IS NULL OR claimed_by_run = $2 OR NOT EXISTS (SELECT 1 FROM job_runs r WHERE r.id = claimed_by_run AND r.state = 'running'))))";

#[async_trait]
pub trait DsrRequests: Send + Sync {
    /// Inserts a request; when one is created, the evidence `event` builds from
    /// it commits with it (a replay, a key conflict or a duplicate writes nothing).
    async fn dsr_insert(&self, r: &NewDsr, event: EventFor<'_, DsrRequest>) -> Result<DsrInsert>;
    /// Inserts a request with its recorded timeline, and its evidence, in one
    /// transaction. The one-open-request-per-subject rule holds as for intake
    /// (an open duplicate is an error: nothing is inserted).
    async fn dsr_import(
        &self,
        r: &ImportedDsr,
        event: EventFor<'_, DsrRequest>,
    ) -> Result<DsrRequest>;
    async fn dsr_get(&self, id: i64) -> Result<Option<DsrRequest>>;
    async fn dsr_list(&self, state: Option<DsrState>, limit: u32) -> Result<Vec<DsrRequest>>;
    /// Requests run `run_id` may process, earliest deadline first: verified,
    /// failed (a retry), or left in progress by a run that is not running any
    /// more (it crashed) or that is `run_id` itself in an earlier attempt.
    async fn dsr_due(&self, limit: u32, run_id: i64) -> Result<Vec<DsrRequest>>;
    /// Takes one of those requests for `run_id` (state `in_progress`); false
    /// if another run has it.
    async fn dsr_claim(&self, id: i64, run_id: i64) -> Result<bool>;
    /// Moves a request from one state to another, with its evidence if any;
    /// false (and no evidence) if it was not in `from`.
    async fn dsr_transition(
        &self,
        id: i64,
        from: &[DsrState],
        to: DsrState,
        reason: Option<&str>,
        result: Option<&serde_json::Value>,
        event: Option<&NewAuditEvent>,
    ) -> Result<bool>;
    /// Moves an open request's deadline, only while the deadline it replaces
    /// (`e.from_due_at`) is still in force and not yet passed at `e.extended_at`;
    /// false otherwise (nothing changed, no evidence).
    async fn dsr_extend(&self, id: i64, e: &DsrExtension, event: &NewAuditEvent) -> Result<bool>;
    /// Requests still `received` that were received at `cutoff` or earlier,
    /// oldest first, at most `limit`.
    async fn dsr_received_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DsrRequest>>;
    /// Moves a `received` request to `verified` with how its identity was
    /// checked, and its deadline; false (nothing changed, no evidence) if it
    /// was not `received`.
    async fn dsr_verify(&self, id: i64, v: &DsrVerification, event: &NewAuditEvent)
        -> Result<bool>;
}

/// Six states at most: `from` is bound as six nullable parameters (`x IN (…, NULL)`
/// matches nothing extra), so the same SQL runs on both databases.
pub(super) fn from_states(from: &[DsrState]) -> [Option<DsrState>; 6] {
    std::array::from_fn(|i| from.get(i).copied())
}

macro_rules! impl_dsr_requests {
    ($store:ty) => {
        impl $store {
            /// One row: as intake makes it (`h` none: never extended, last
            /// changed when received) or with an imported timeline.
            async fn insert_dsr_row(
                tx: &mut sqlx::Transaction<'static, Db>,
                r: &NewDsr,
                h: Option<&ImportedDsr>,
            ) -> std::result::Result<DsrRequest, sqlx::Error> {
                let created: DsrRequest = sqlx::query_as(
                    "INSERT INTO dsr_requests (kind, subject, jurisdiction, state, reason, detail, source,
                                               idempotency_key, received_at, due_at, request_hash,
                                               extended_days, extended_at, extension_notified_at,
                                               completed_at, updated_at, extension_reason, org)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
                     RETURNING *",
                )
                .bind(&r.kind)
                .bind(&r.subject)
                .bind(&r.jurisdiction)
                .bind(r.state)
                .bind(&r.reason)
                .bind(&r.detail)
                .bind(&r.source)
                .bind(&r.idempotency_key)
                .bind(Ts(r.received_at))
                .bind(Ts(r.due_at))
                .bind(&r.request_hash)
                .bind(h.map_or(0, |h| h.extended_days))
                .bind(h.and_then(|h| h.extended_at).map(Ts))
                .bind(h.and_then(|h| h.extension_notified_at).map(Ts))
                .bind(h.and_then(|h| h.completed_at).map(Ts))
                .bind(Ts(h.map_or(r.received_at, |h| h.updated_at)))
                .bind(h.and_then(|h| h.extension_reason.as_deref()))
                .bind(&r.org)
                .fetch_one(&mut **tx)
                .await?;
                if r.state != DsrState::Rejected {
                    for c in &r.corrections {
                        sqlx::query(
                            "INSERT INTO dsr_rectifications (request_id, table_name, column_name, value)
                             VALUES ($1, $2, $3, $4)",
                        )
                        .bind(created.id)
                        .bind(&c.table)
                        .bind(&c.column)
                        .bind(&c.value)
                        .execute(&mut **tx)
                        .await?;
                    }
                }
                Ok(created)
            }

            async fn dsr_by_key(&self, key: &str) -> Result<Option<DsrRequest>> {
                Ok(sqlx::query_as("SELECT * FROM dsr_requests WHERE idempotency_key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            /// After a unique violation: a racing idempotent retry, or the open-request index.
            async fn dsr_insert_conflict(&self, r: &NewDsr) -> Result<DsrInsert> {
                if let Some(key) = &r.idempotency_key {
                    if let Some(prior) = self.dsr_by_key(key).await? {
                        return Ok(r.replay_of(prior));
                    }
                }
                let open: DsrRequest = sqlx::query_as(
                    "SELECT * FROM dsr_requests WHERE subject = $1 AND kind = $2
                     AND coalesce(org, '') = coalesce($3, '')
                     AND state IN ('received', 'verified', 'in_progress', 'failed') ORDER BY id LIMIT 1",
                )
                .bind(&r.subject)
                .bind(&r.kind)
                .bind(&r.org)
                .fetch_one(&self.pool)
                .await?;
                Ok(DsrInsert::Duplicate(open))
            }
        }

        #[async_trait::async_trait]
        impl DsrRequests for $store {
            async fn dsr_insert(
                &self,
                r: &NewDsr,
                event: EventFor<'_, DsrRequest>,
            ) -> Result<DsrInsert> {
                if let Some(key) = &r.idempotency_key {
                    if let Some(prior) = self.dsr_by_key(key).await? {
                        return Ok(r.replay_of(prior));
                    }
                }
                let mut tx = self.write_tx().await?;
                let res = Self::insert_dsr_row(&mut tx, r, None).await;
                match res {
                    Ok(created) => {
                        Self::commit_with(tx, Some(&event(&created)), "dsr_insert").await?;
                        Ok(DsrInsert::Created(created))
                    }
                    Err(e) if super::is_unique_violation(&e) => {
                        // The failed statement may have aborted the transaction: look outside it.
                        drop(tx);
                        self.dsr_insert_conflict(r).await
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn dsr_import(
                &self,
                h: &ImportedDsr,
                event: EventFor<'_, DsrRequest>,
            ) -> Result<DsrRequest> {
                let r = &h.request;
                let mut tx = self.write_tx().await?;
                let created = Self::insert_dsr_row(&mut tx, r, Some(h))
                    .await
                .map_err(|e| {
                    if super::is_unique_violation(&e) {
                        Error::Refused(format!(
                            "an open {} request for this subject exists already; an open request is imported only once",
                            r.kind
                        ))
                    } else {
                        e.into()
                    }
                })?;
                Self::commit_with(tx, Some(&event(&created)), "dsr_import").await?;
                Ok(created)
            }

            async fn dsr_get(&self, id: i64) -> Result<Option<DsrRequest>> {
                Ok(sqlx::query_as("SELECT * FROM dsr_requests WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn dsr_list(&self, state: Option<DsrState>, limit: u32) -> Result<Vec<DsrRequest>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM dsr_requests WHERE ($1 IS NULL OR state = $1) ORDER BY id DESC LIMIT $2",
                )
                .bind(state)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn dsr_due(&self, limit: u32, run_id: i64) -> Result<Vec<DsrRequest>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT * FROM dsr_requests WHERE {DSR_TAKEABLE} ORDER BY due_at, id LIMIT $1"
                ))
                .bind(i64::from(limit))
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn dsr_claim(&self, id: i64, run_id: i64) -> Result<bool> {
                let n = sqlx::query(&format!(
                    "UPDATE dsr_requests SET state = 'in_progress', claimed_by_run = $2,
                            attempts = attempts + 1, updated_at = $3
                     WHERE id = $1 AND {DSR_TAKEABLE}"
                ))
                .bind(id)
                .bind(run_id)
                .bind(Ts::now())
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            }

            async fn dsr_transition(
                &self,
                id: i64,
                from: &[DsrState],
                to: DsrState,
                reason: Option<&str>,
                result: Option<&serde_json::Value>,
                event: Option<&NewAuditEvent>,
            ) -> Result<bool> {
                let mut tx = self.write_tx().await?;
                let mut q = sqlx::query(
                    "UPDATE dsr_requests SET state = $2, reason = COALESCE($3, reason), result = COALESCE($4, result),
                            attempts = attempts + CASE WHEN $2 = 'in_progress' THEN 1 ELSE 0 END,
                            completed_at = CASE WHEN $2 = 'completed' THEN $5 ELSE completed_at END, updated_at = $5
                     WHERE id = $1 AND state IN ($6, $7, $8, $9, $10, $11)",
                )
                .bind(id)
                .bind(to)
                .bind(reason)
                .bind(result)
                .bind(Ts::now());
                for s in super::dsr::from_states(from) {
                    q = q.bind(s);
                }
                let n = q.execute(&mut *tx).await?.rows_affected();
                Self::commit_if_one(tx, n, event, "dsr_transition").await
            }

            async fn dsr_extend(
                &self,
                id: i64,
                e: &DsrExtension,
                event: &NewAuditEvent,
            ) -> Result<bool> {
                let mut tx = self.write_tx().await?;
                let n = sqlx::query(
                    "UPDATE dsr_requests SET due_at = $2, extended_days = extended_days + $3,
                            extension_reason = $4, extended_at = $5, extension_notified_at = $6, updated_at = $5
                     WHERE id = $1 AND state IN ('received', 'verified', 'in_progress', 'failed')
                       AND due_at = $7 AND due_at >= $5",
                )
                .bind(id)
                .bind(Ts(e.due_at))
                .bind(e.days)
                .bind(&e.reason)
                .bind(Ts(e.extended_at))
                .bind(Ts(e.notified_at))
                .bind(Ts(e.from_due_at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Self::commit_if_one(tx, n, Some(event), "dsr_extend").await
            }

            async fn dsr_received_before(
                &self,
                cutoff: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<DsrRequest>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM dsr_requests WHERE state = 'received' AND received_at <= $1
                     ORDER BY received_at, id LIMIT $2",
                )
                .bind(Ts(cutoff))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn dsr_verify(
                &self,
                id: i64,
                v: &DsrVerification,
                event: &NewAuditEvent,
            ) -> Result<bool> {
                let mut tx = self.write_tx().await?;
                let n = sqlx::query(
                    "UPDATE dsr_requests SET state = 'verified', verified_at = $2, verify_method = $3,
                            verified_by = $4, due_at = $5, updated_at = $2
                     WHERE id = $1 AND state = 'received' AND due_at = $6",
                )
                .bind(id)
                .bind(Ts(v.at))
                .bind(&v.method)
                .bind(&v.by)
                .bind(Ts(v.due_at))
                .bind(Ts(v.from_due_at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Self::commit_if_one(tx, n, Some(event), "dsr_verify").await
            }
        }
    };
}
pub(super) use impl_dsr_requests;
