//! The audit hash chain: append (serialised against concurrent appenders) and
//! read in pages. The append runs inside a caller's transaction too, so that a
//! change and its evidence commit together (`commit_with`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{AuditEvent, NewAuditEvent};
use crate::error::Result;

#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends one event to the hash chain, serialised against concurrent appenders.
    async fn append_audit(&self, event: &NewAuditEvent) -> Result<AuditEvent>;
    async fn audit_page(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>>;
    /// The newest event: the chain's head (None while the chain is empty).
    async fn audit_head(&self) -> Result<Option<AuditEvent>>;
}

/// `audit_events` as stored (`AuditEvent` lives in the leaf `chain`, without sqlx).
#[derive(sqlx::FromRow)]
pub(super) struct AuditRow {
    seq: i64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    target: String,
    details: String,
    prev_hash: String,
    hash: String,
    hash_rule: i16,
}

impl From<AuditRow> for AuditEvent {
    fn from(r: AuditRow) -> Self {
        AuditEvent {
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
            details: r.details,
            prev_hash: r.prev_hash,
            hash: r.hash,
            rule: i64::from(r.hash_rule),
        }
    }
}

/// The chain append on a connection in a transaction, `commit_with`, and
/// `impl AuditLog` for a driver. The driver provides `Db`, `audit_lock`
/// (what serialises appenders) and `write_tx`.
macro_rules! impl_audit_log {
    ($store:ty) => {
        impl $store {
            /// Appends `event` to the chain inside the caller's transaction.
            async fn append_in(
                conn: &mut <Db as sqlx::Database>::Connection,
                event: &NewAuditEvent,
            ) -> Result<AuditEvent> {
                audit_lock(&mut *conn).await?;
                let prev: Option<super::audit::AuditRow> =
                    sqlx::query_as("SELECT * FROM audit_events ORDER BY seq DESC LIMIT 1")
                        .fetch_optional(&mut *conn)
                        .await?;
                let prev = prev.map(AuditEvent::from);
                let e = crate::chain::chain_event(prev.as_ref(), event, Utc::now());
                sqlx::query(
                    "INSERT INTO audit_events (seq, at, actor, action, target, details, prev_hash, hash, hash_rule)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(e.seq)
                .bind(Ts(e.at))
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.target)
                .bind(&e.details)
                .bind(&e.prev_hash)
                .bind(&e.hash)
                .bind(i16::try_from(e.rule).unwrap_or(i16::MAX))
                .execute(&mut *conn)
                .await?;
                Ok(e)
            }

            /// Commits a change and its evidence only if it changed exactly one
            /// row; otherwise drops `tx` (rolling back) and says `false`.
            async fn commit_if_one(
                tx: sqlx::Transaction<'static, Db>,
                changed: u64,
                event: Option<&NewAuditEvent>,
                method: &str,
            ) -> Result<bool> {
                if changed != 1 {
                    return Ok(false);
                }
                Self::commit_with(tx, event, method).await?;
                Ok(true)
            }

            /// Appends `event` (if any) in `tx`, then commits the change and its evidence together.
            async fn commit_with(
                mut tx: sqlx::Transaction<'static, Db>,
                event: Option<&NewAuditEvent>,
                method: &str,
            ) -> Result<()> {
                if let Some(event) = event {
                    Self::append_in(&mut tx, event).await?;
                }
                super::crash_point(method);
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl AuditLog for $store {
            async fn append_audit(&self, event: &NewAuditEvent) -> Result<AuditEvent> {
                let mut tx = self.write_tx().await?;
                let e = Self::append_in(&mut tx, event).await?;
                tx.commit().await?;
                Ok(e)
            }

            async fn audit_page(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>> {
                let rows: Vec<super::audit::AuditRow> =
                    sqlx::query_as("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
                        .bind(after_seq)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                Ok(rows.into_iter().map(AuditEvent::from).collect())
            }

            async fn audit_head(&self) -> Result<Option<AuditEvent>> {
                let row: Option<super::audit::AuditRow> =
                    sqlx::query_as("SELECT * FROM audit_events ORDER BY seq DESC LIMIT 1")
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.map(AuditEvent::from))
            }
        }
    };
}
pub(super) use impl_audit_log;
