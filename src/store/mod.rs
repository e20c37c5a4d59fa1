//! The worker's own state — job queue, audit chain, mail outbox, policy,
//! backup catalog, DSRs, keys, breaches — behind one `Store` handle made of a
//! sub-trait per concern, with a PostgreSQL and a SQLite driver (River's
//! `riverdriver` is the model).
//!
//! Layout: each concern's file holds its trait, its types and the SQL both
//! databases share (a `macro_rules!` expanded once per driver); the driver
//! files hold only what differs (leases on the database clock, `FOR UPDATE
//! SKIP LOCKED`, advisory locks, `BEGIN IMMEDIATE`), each difference commented.
//!
//! Evidence: a mutating method whose change is audited takes its audit event
//! and appends it to the hash chain in the change's own transaction, so a
//! crash leaves both or neither.

mod audit;
mod backups;
mod base;
mod breaches;
mod checkpoints;
mod dsr;
mod dsr_ledger;
mod dsr_rectifications;
mod keys;
mod object_deletes;
pub mod org_requests;
mod outbox;
mod policy;
mod postgres;
mod queue;
mod runs;
mod sqlite;
mod types;

use std::sync::Arc;
use std::time::Duration;

pub use crate::chain::{AuditEvent, NewAuditEvent};
use crate::error::{Error, Result};

pub use audit::AuditLog;
pub use backups::{BackupCatalog, BackupRecord};
pub use base::{Backend, Base};
pub use breaches::{Breach, BreachParty, Breaches};
pub use checkpoints::Checkpoints;
pub use dsr::{
    DsrExtension, DsrInsert, DsrRequest, DsrRequests, DsrState, DsrVerification, ImportedDsr,
    NewDsr,
};
pub use dsr_ledger::DsrLedger;
pub use dsr_rectifications::{AppliedCorrection, Correction, DsrRectifications};
pub use keys::{Keys, OrgDek, OrgKek};
pub use object_deletes::{NewPendingObject, ObjectDeletes, PendingObject};
pub use org_requests::{OrgRequest, OrgRequests};
pub use outbox::{Attachment, MailState, NewMail, Outbox, OutboxMail, WIPED_BODY};
pub use policy::{HoldScope, LegalHold, Policy, RetentionOverride};
pub use postgres::PgStore;
pub use queue::{NewRun, Outcome, Queue, Run, RunState};
pub use runs::{RunCount, RunFilter, RunLog};
pub use sqlite::SqliteStore;
pub use types::Ts;

/// Every sub-trait, for `use crate::store::prelude::*;` where store methods are called.
pub mod prelude {
    pub use super::{
        AuditLog as _, BackupCatalog as _, Base as _, Breaches as _, Checkpoints as _,
        DsrLedger as _, DsrRectifications as _, DsrRequests as _, Keys as _, ObjectDeletes as _,
        OrgRequests as _, Outbox as _, Policy as _, Queue as _, RunLog as _,
    };
}

/// The whole store; `Arc<dyn Store>` is the handle everywhere.
pub trait Store:
    Base
    + Queue
    + RunLog
    + AuditLog
    + Outbox
    + Policy
    + BackupCatalog
    + DsrRequests
    + DsrLedger
    + DsrRectifications
    + Keys
    + Breaches
    + Checkpoints
    + ObjectDeletes
    + OrgRequests
{
}

impl<T> Store for T where
    T: Base
        + Queue
        + RunLog
        + AuditLog
        + Outbox
        + Policy
        + BackupCatalog
        + DsrRequests
        + DsrLedger
        + DsrRectifications
        + Keys
        + Breaches
        + Checkpoints
        + ObjectDeletes
        + OrgRequests
{
}

/// A closure building an event from what the change produced (an id, a row).
pub type EventFor<'a, T> = &'a (dyn Fn(&T) -> NewAuditEvent + Send + Sync);

/// An audit event, for the store methods that commit it with their change.
pub fn evidence(
    actor: &str,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> NewAuditEvent {
    NewAuditEvent {
        actor: actor.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        details,
    }
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

/// One test for a unique-constraint violation on both drivers.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Test builds only: `LETHE_TEST_CRASH_BEFORE_COMMIT=<method>` aborts the
/// process after that method wrote its change and its evidence, before the
/// commit (the evidence-atomicity crash test).
#[cfg(feature = "testing")]
fn crash_point(method: &str) {
    if std::env::var("LETHE_TEST_CRASH_BEFORE_COMMIT").as_deref() == Ok(method) {
        std::process::abort();
    }
}

#[cfg(not(feature = "testing"))]
fn crash_point(_method: &str) {}
