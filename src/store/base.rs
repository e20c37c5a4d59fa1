//! What every driver answers before any concern: which database, schema
//! state, liveness, and the clock leases are measured against.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[async_trait]
pub trait Base: Send + Sync {
    fn backend(&self) -> Backend;
    async fn migrate(&self) -> Result<()>;
    /// True when every bundled migration has been applied.
    async fn is_migrated(&self) -> Result<bool>;
    async fn ping(&self) -> Result<()>;
    /// The clock leases are measured against (the database's on PostgreSQL).
    async fn now(&self) -> Result<DateTime<Utc>>;
}
