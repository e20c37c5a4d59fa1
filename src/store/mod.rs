//! The worker's own state — job queue, audit chain, mail outbox — behind one
//! trait with a PostgreSQL and a SQLite driver (River's `riverdriver` is the
//! model). Every SQL difference between the two databases lives in the drivers.

mod postgres;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::chain::{AuditEvent, NewAuditEvent};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Waiting for `run_after`.
    Available,
    Running,
    /// An attempt failed; another is due at `run_after`.
    Retryable,
    Succeeded,
    /// Out of attempts.
    Dead,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Available => "available",
            RunState::Running => "running",
            RunState::Retryable => "retryable",
            RunState::Succeeded => "succeeded",
            RunState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "available" => RunState::Available,
            "running" => RunState::Running,
            "retryable" => RunState::Retryable,
            "succeeded" => RunState::Succeeded,
            "dead" => RunState::Dead,
            other => {
                return Err(Error::Failed(format!(
                    "unknown run state `{other}` in store"
                )))
            }
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Dead)
    }
}

/// A run to put in the queue. `(job, scheduled_for)` is unique.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub job: String,
    pub kind: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    pub max_attempts: i32,
    pub timeout: Duration,
    pub allow_overlap: bool,
    pub dry_run: bool,
    pub params: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: i64,
    pub job: String,
    pub kind: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    pub state: RunState,
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    pub allow_overlap: bool,
    pub dry_run: bool,
    pub params: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub run_after: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How an attempt ended; the store applies it only if the caller still holds the lease.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        result: serde_json::Value,
    },
    Retry {
        error: String,
        run_after: DateTime<Utc>,
    },
    Dead {
        error: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub job: Option<String>,
    pub state: Option<RunState>,
    pub limit: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunCount {
    pub job: String,
    pub state: RunState,
    pub count: i64,
}

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
}

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

#[derive(Debug, Clone, Serialize)]
pub struct OutboxMail {
    pub id: i64,
    pub dedupe_key: Option<String>,
    pub recipients: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub attachments: Vec<Attachment>,
    pub state: MailState,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
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

/// One stored backup in the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct BackupRecord {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub run_id: Option<i64>,
    pub object_key: String,
    pub manifest_key: String,
    pub stored_bytes: i64,
    pub raw_bytes: i64,
    pub sha256: String,
    pub manifest: serde_json::Value,
    pub verified_at: Option<DateTime<Utc>>,
    pub verify_ok: Option<bool>,
    pub restore_ms: Option<i64>,
    pub verify_error: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
}

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

#[derive(Debug, Clone, Serialize)]
pub struct DsrRequest {
    pub id: i64,
    pub kind: String,
    pub subject: String,
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
}

/// What inserting a request did.
#[derive(Debug, Clone)]
pub enum DsrInsert {
    Created(DsrRequest),
    /// The idempotency key was used before for the same request: this is that request.
    Replayed(DsrRequest),
    /// The idempotency key was used before for a different request (this one).
    KeyConflict(DsrRequest),
    /// An open request of this kind for this subject exists.
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

/// An org's key-encryption key in the KMS.
#[derive(Debug, Clone, Serialize)]
pub struct OrgKek {
    pub org: String,
    pub kek_id: String,
    pub rotated_at: DateTime<Utc>,
    pub shredded_at: Option<DateTime<Utc>>,
}

/// One version of an org's data key, as the KMS wrapped it.
#[derive(Debug, Clone, Serialize)]
pub struct OrgDek {
    pub org: String,
    pub version: i32,
    pub kek_id: String,
    pub kek_version: String,
    #[serde(skip)]
    pub wrapped: String,
    pub created_at: DateTime<Utc>,
    pub rewrapped_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreachParty {
    pub party: String,
    pub rule: String,
    pub due_at: DateTime<Utc>,
    pub notified_at: Option<DateTime<Utc>>,
    pub notified_by: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Breach {
    pub id: i64,
    pub title: String,
    pub detected_at: DateTime<Utc>,
    pub jurisdictions: serde_json::Value,
    pub orgs: serde_json::Value,
    pub subjects: i64,
    pub created_at: DateTime<Utc>,
    pub parties: Vec<BreachParty>,
}

/// Requests run `$2` may take: verified, failed, or in progress under a run
/// that is not running (crashed) or is `$2` itself (an earlier attempt).
/// The same SQL on both drivers.
const DSR_TAKEABLE: &str = "(state IN ('verified', 'failed') OR (state = 'in_progress' AND (claimed_by_run IS NULL OR claimed_by_run = $2 OR NOT EXISTS (SELECT 1 FROM job_runs r WHERE r.id = claimed_by_run AND r.state = 'running'))))";

#[async_trait]
pub trait Store: Send + Sync {
    fn backend(&self) -> Backend;
    async fn migrate(&self) -> Result<()>;
    /// True when every bundled migration has been applied.
    async fn is_migrated(&self) -> Result<bool>;
    async fn ping(&self) -> Result<()>;
    /// The clock leases are measured against (the database's on PostgreSQL).
    async fn now(&self) -> Result<DateTime<Utc>>;

    // ---- queue
    /// `Ok(None)` when `(job, scheduled_for)` is already queued: N replicas, one row.
    async fn enqueue(&self, run: &NewRun) -> Result<Option<i64>>;
    async fn latest_scheduled_for(&self, job: &str) -> Result<Option<DateTime<Utc>>>;
    /// Claims the next due run whose job is not already running (unless it allows overlap).
    async fn claim_next(&self, owner: &str, lease: Duration) -> Result<Option<Run>>;
    /// Claims one given run if it is due and claimable (for `lethe run`).
    async fn claim_run(&self, id: i64, owner: &str, lease: Duration) -> Result<Option<Run>>;
    /// Extends the lease; false when `owner` no longer holds it (the run was rescued).
    async fn heartbeat(&self, id: i64, owner: &str, lease: Duration) -> Result<bool>;
    /// Applies the outcome if `owner` still holds the lease; false otherwise.
    async fn finish(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool>;
    /// Running runs whose lease has lapsed.
    async fn expired_leases(&self) -> Result<Vec<Run>>;
    /// Applies `outcome` to a running run whose lease (held by `owner`) has lapsed.
    async fn rescue(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool>;
    async fn get_run(&self, id: i64) -> Result<Option<Run>>;
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;
    async fn run_counts(&self) -> Result<Vec<RunCount>>;
    /// Deletes up to `batch` finished runs that finished before `before`; returns how many.
    async fn prune_runs(&self, before: DateTime<Utc>, batch: u32) -> Result<u64>;
    /// How many finished runs `prune_runs` would delete (for dry runs).
    async fn count_prunable(&self, before: DateTime<Utc>) -> Result<i64>;

    // ---- audit
    /// Appends one event to the hash chain, serialised against concurrent appenders.
    async fn append_audit(&self, event: &NewAuditEvent) -> Result<AuditEvent>;
    async fn audit_page(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>>;

    // ---- mail outbox
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

    // ---- retention overrides, legal holds
    /// Inserts or replaces the override for `(class, org)`.
    async fn override_set(&self, o: &RetentionOverride) -> Result<()>;
    async fn override_unset(&self, class: &str, org: &str) -> Result<bool>;
    async fn overrides(&self) -> Result<Vec<RetentionOverride>>;
    async fn hold_add(
        &self,
        scope: HoldScope,
        value: &str,
        reason: &str,
        actor: &str,
    ) -> Result<LegalHold>;
    /// Releases an active hold; false when there is no such active hold.
    async fn hold_release(&self, id: i64, reason: &str, actor: &str) -> Result<bool>;
    async fn holds(&self, include_released: bool) -> Result<Vec<LegalHold>>;

    // ---- backup catalog
    async fn backup_insert(&self, b: &BackupRecord) -> Result<()>;
    async fn backup_verified(
        &self,
        id: &str,
        ok: bool,
        restore_ms: Option<i64>,
        error: Option<&str>,
    ) -> Result<()>;
    async fn backup_deleted(&self, id: &str) -> Result<()>;
    /// Catalog rows, newest first (deleted ones only when asked).
    async fn backups(&self, include_deleted: bool) -> Result<Vec<BackupRecord>>;

    // ---- data subject requests
    async fn dsr_insert(&self, r: &NewDsr) -> Result<DsrInsert>;
    async fn dsr_get(&self, id: i64) -> Result<Option<DsrRequest>>;
    async fn dsr_list(&self, state: Option<DsrState>, limit: u32) -> Result<Vec<DsrRequest>>;
    /// Requests run `run_id` may process, earliest deadline first: verified,
    /// failed (a retry), or left in progress by a run that is not running any
    /// more (it crashed) or that is `run_id` itself in an earlier attempt.
    async fn dsr_due(&self, limit: u32, run_id: i64) -> Result<Vec<DsrRequest>>;
    /// Takes one of those requests for `run_id` (state `in_progress`); false
    /// if another run has it.
    async fn dsr_claim(&self, id: i64, run_id: i64) -> Result<bool>;
    /// Moves a request from one state to another; false if it was not in `from`.
    async fn dsr_transition(
        &self,
        id: i64,
        from: &[DsrState],
        to: DsrState,
        reason: Option<&str>,
        result: Option<&serde_json::Value>,
    ) -> Result<bool>;
    /// Moves an open request's deadline, only while the deadline it replaces
    /// (`e.from_due_at`) is still in force and not yet passed at `e.extended_at`;
    /// false otherwise (nothing changed).
    async fn dsr_extend(&self, id: i64, e: &DsrExtension) -> Result<bool>;
    async fn ledger_add(&self, subject_key: &str, request_id: i64) -> Result<()>;
    async fn ledger_keys(&self) -> Result<Vec<String>>;
    /// The keyed check value of the pseudonym key the ledger is written with, if recorded.
    async fn ledger_check(&self) -> Result<Option<String>>;
    /// Records `value` unless a check value exists already; returns the one stored
    /// (so two first users with different keys cannot both win).
    async fn ledger_check_init(&self, value: &str) -> Result<String>;
    /// Records an export archive's object and link expiry before it is uploaded.
    async fn dsr_export_started(
        &self,
        id: i64,
        object: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()>;
    /// Export archives still stored whose link expired by `now`, or (with
    /// `subject`) every one of that subject's: (request id, object key).
    async fn dsr_exports_to_delete(
        &self,
        now: DateTime<Utc>,
        subject: Option<&str>,
    ) -> Result<Vec<(i64, String)>>;
    async fn dsr_export_deleted(&self, id: i64) -> Result<()>;
    /// Replaces an erased subject's email with its pseudonym in Lethe's own
    /// rows (requests and their detail text, released subject holds) and drops
    /// the requests' idempotency hashes; returns rows changed. An active
    /// subject hold keeps the email: it must still match it.
    async fn dsr_forget_subject(&self, email: &str, pseudonym: &str) -> Result<u64>;
    /// Emails of completed erasures not yet replaced by their pseudonym (a
    /// crash between completion and `dsr_forget_subject`).
    async fn dsr_unforgotten_erasures(&self) -> Result<Vec<String>>;

    // ---- keys
    async fn keks(&self) -> Result<Vec<OrgKek>>;
    async fn kek_put(&self, k: &OrgKek) -> Result<()>;
    async fn deks(&self, org: Option<&str>) -> Result<Vec<OrgDek>>;
    async fn dek_insert(&self, d: &OrgDek) -> Result<()>;
    async fn dek_rewrapped(
        &self,
        org: &str,
        version: i32,
        kek_version: &str,
        wrapped: &str,
    ) -> Result<()>;
    /// Destroys every wrapped data key of an org; returns how many.
    async fn deks_destroy(&self, org: &str) -> Result<u64>;

    // ---- breaches
    async fn breach_insert(&self, b: &Breach) -> Result<i64>;
    async fn breaches(&self) -> Result<Vec<Breach>>;
    async fn breach_notified(
        &self,
        id: i64,
        party: &str,
        by: &str,
        note: Option<&str>,
    ) -> Result<bool>;

    // ---- per-run resume state
    async fn checkpoint_get(&self, run_id: i64, key: &str) -> Result<Option<serde_json::Value>>;
    async fn checkpoint_put(&self, run_id: i64, key: &str, value: &serde_json::Value)
        -> Result<()>;
}

/// Opens the driver the URL names.
pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, max_connections).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else {
        Err(Error::Usage(format!(
            "store URL `{}` must start with postgres:// or sqlite://",
            crate::secret::redact_url(url)
        )))
    }
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
