//! Per-org keys: the KMS key-encryption key of each org and the versions of
//! its wrapped data keys. Rotations and shredding commit with their evidence.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{EventFor, NewAuditEvent};
use crate::error::Result;

/// An org's key-encryption key in the KMS.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OrgKek {
    pub org: String,
    pub kek_id: String,
    pub rotated_at: DateTime<Utc>,
    pub shredded_at: Option<DateTime<Utc>>,
    /// Why the closed org's shred waits (a hold, a class's retention), as last
    /// recorded with evidence; `None` when it does not wait.
    pub shred_postponed: Option<String>,
}

/// One version of an org's data key, as the KMS wrapped it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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

#[async_trait]
pub trait Keys: Send + Sync {
    async fn keks(&self) -> Result<Vec<OrgKek>>;
    /// Inserts or replaces an org's KEK row, with its evidence if any.
    async fn kek_put(&self, k: &OrgKek, event: Option<&NewAuditEvent>) -> Result<()>;
    async fn deks(&self, org: Option<&str>) -> Result<Vec<OrgDek>>;
    async fn dek_insert(&self, d: &OrgDek, event: &NewAuditEvent) -> Result<()>;
    /// Stores re-wrapped data keys `(version, wrapped)` of an org under
    /// `kek_version`, all with one piece of evidence.
    async fn dek_rewrapped(
        &self,
        org: &str,
        kek_version: &str,
        rewraps: &[(i32, String)],
        event: &NewAuditEvent,
    ) -> Result<()>;
    /// Shreds an org: destroys every wrapped data key and stores `kek` (now
    /// shredded), with the evidence `event` builds from how many keys went.
    async fn deks_destroy(&self, org: &str, kek: &OrgKek, event: EventFor<'_, u64>) -> Result<u64>;
}

macro_rules! impl_keys {
    ($store:ty) => {
        impl $store {
            async fn kek_upsert(conn: &mut <Db as sqlx::Database>::Connection, k: &OrgKek) -> Result<()> {
                sqlx::query(
                    "INSERT INTO org_keks (org, kek_id, rotated_at, shredded_at, shred_postponed) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (org) DO UPDATE SET kek_id = $2, rotated_at = $3, shredded_at = $4, shred_postponed = $5",
                )
                .bind(&k.org)
                .bind(&k.kek_id)
                .bind(Ts(k.rotated_at))
                .bind(k.shredded_at.map(Ts))
                .bind(&k.shred_postponed)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl Keys for $store {
            async fn keks(&self) -> Result<Vec<OrgKek>> {
                Ok(sqlx::query_as("SELECT * FROM org_keks ORDER BY org")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn kek_put(&self, k: &OrgKek, event: Option<&NewAuditEvent>) -> Result<()> {
                let mut tx = self.write_tx().await?;
                Self::kek_upsert(&mut tx, k).await?;
                Self::commit_with(tx, event, "kek_put").await
            }

            async fn deks(&self, org: Option<&str>) -> Result<Vec<OrgDek>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM org_deks WHERE ($1 IS NULL OR org = $1) ORDER BY org, version",
                )
                .bind(org)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn dek_insert(&self, d: &OrgDek, event: &NewAuditEvent) -> Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO org_deks (org, version, kek_id, kek_version, wrapped, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&d.org)
                .bind(d.version)
                .bind(&d.kek_id)
                .bind(&d.kek_version)
                .bind(&d.wrapped)
                .bind(Ts(d.created_at))
                .execute(&mut *tx)
                .await?;
                Self::commit_with(tx, Some(event), "dek_insert").await
            }

            async fn dek_rewrapped(
                &self,
                org: &str,
                kek_version: &str,
                rewraps: &[(i32, String)],
                event: &NewAuditEvent,
            ) -> Result<()> {
                let mut tx = self.write_tx().await?;
                let now = Ts::now();
                for (version, wrapped) in rewraps {
                    sqlx::query(
                        "UPDATE org_deks SET kek_version = $3, wrapped = $4, rewrapped_at = $5
                         WHERE org = $1 AND version = $2",
                    )
                    .bind(org)
                    .bind(version)
                    .bind(kek_version)
                    .bind(wrapped)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                Self::commit_with(tx, Some(event), "dek_rewrapped").await
            }

            async fn deks_destroy(
                &self,
                org: &str,
                kek: &OrgKek,
                event: EventFor<'_, u64>,
            ) -> Result<u64> {
                let mut tx = self.write_tx().await?;
                let n = sqlx::query("DELETE FROM org_deks WHERE org = $1")
                    .bind(org)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                Self::kek_upsert(&mut tx, kek).await?;
                Self::commit_with(tx, Some(&event(&n)), "deks_destroy").await?;
                Ok(n)
            }
        }
    };
}
pub(super) use impl_keys;
