//! Personal-data breaches and the parties each must be notified by a deadline.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{EventFor, NewAuditEvent};
use crate::error::Result;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BreachParty {
    pub party: String,
    pub rule: String,
    pub due_at: DateTime<Utc>,
    pub notified_at: Option<DateTime<Utc>>,
    pub notified_by: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Breach {
    pub id: i64,
    pub title: String,
    pub detected_at: DateTime<Utc>,
    pub jurisdictions: serde_json::Value,
    pub orgs: serde_json::Value,
    pub subjects: i64,
    pub created_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub parties: Vec<BreachParty>,
}

/// A `breach_parties` row: the party and which breach it belongs to.
#[derive(sqlx::FromRow)]
pub(super) struct PartyRow {
    pub(super) breach_id: i64,
    #[sqlx(flatten)]
    pub(super) party: BreachParty,
}

#[async_trait]
pub trait Breaches: Send + Sync {
    /// Opens a breach with its parties, with the evidence `event` builds from its new id.
    async fn breach_insert(&self, b: &Breach, event: EventFor<'_, i64>) -> Result<i64>;
    async fn breaches(&self) -> Result<Vec<Breach>>;
    /// Records that `party` was notified, with its evidence; false (and no
    /// evidence) when it was already recorded.
    async fn breach_notified(
        &self,
        id: i64,
        party: &str,
        by: &str,
        note: Option<&str>,
        event: &NewAuditEvent,
    ) -> Result<bool>;
}

macro_rules! impl_breaches {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl Breaches for $store {
            async fn breach_insert(&self, b: &Breach, event: EventFor<'_, i64>) -> Result<i64> {
                let mut tx = self.write_tx().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO breaches (title, detected_at, jurisdictions, orgs, subjects, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(&b.title)
                .bind(Ts(b.detected_at))
                .bind(&b.jurisdictions)
                .bind(&b.orgs)
                .bind(b.subjects)
                .bind(Ts(b.created_at))
                .fetch_one(&mut *tx)
                .await?;
                for p in &b.parties {
                    sqlx::query(
                        "INSERT INTO breach_parties (breach_id, party, rule, due_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id)
                    .bind(&p.party)
                    .bind(&p.rule)
                    .bind(Ts(p.due_at))
                    .execute(&mut *tx)
                    .await?;
                }
                Self::commit_with(tx, Some(&event(&id)), "breach_insert").await?;
                Ok(id)
            }

            async fn breaches(&self) -> Result<Vec<Breach>> {
                let mut out: Vec<Breach> = sqlx::query_as("SELECT * FROM breaches ORDER BY id")
                    .fetch_all(&self.pool)
                    .await?;
                let parties: Vec<super::breaches::PartyRow> = sqlx::query_as(
                    "SELECT * FROM breach_parties ORDER BY breach_id, due_at, party",
                )
                .fetch_all(&self.pool)
                .await?;
                for p in parties {
                    if let Some(b) = out.iter_mut().find(|b| b.id == p.breach_id) {
                        b.parties.push(p.party);
                    }
                }
                Ok(out)
            }

            async fn breach_notified(
                &self,
                id: i64,
                party: &str,
                by: &str,
                note: Option<&str>,
                event: &NewAuditEvent,
            ) -> Result<bool> {
                let mut tx = self.write_tx().await?;
                let n = sqlx::query(
                    "UPDATE breach_parties SET notified_at = $5, notified_by = $3, note = $4
                     WHERE breach_id = $1 AND party = $2 AND notified_at IS NULL",
                )
                .bind(id)
                .bind(party)
                .bind(by)
                .bind(note)
                .bind(Ts::now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Self::commit_if_one(tx, n, Some(event), "breach_notified").await
            }
        }
    };
}
pub(super) use impl_breaches;
