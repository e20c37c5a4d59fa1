//! The backup catalog: one row per stored backup, its verification and its
//! pruning, each committed with its evidence.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::NewAuditEvent;
use crate::error::Result;

/// One stored backup in the catalog.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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

#[async_trait]
pub trait BackupCatalog: Send + Sync {
    async fn backup_insert(&self, b: &BackupRecord, event: &NewAuditEvent) -> Result<()>;
    async fn backup_verified(
        &self,
        id: &str,
        ok: bool,
        restore_ms: Option<i64>,
        error: Option<&str>,
        event: &NewAuditEvent,
    ) -> Result<()>;
    async fn backup_deleted(&self, id: &str, event: &NewAuditEvent) -> Result<()>;
    /// Catalog rows, newest first (deleted ones only when asked).
    async fn backups(&self, include_deleted: bool) -> Result<Vec<BackupRecord>>;
}

macro_rules! impl_backup_catalog {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl BackupCatalog for $store {
            async fn backup_insert(&self, b: &BackupRecord, event: &NewAuditEvent) -> Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO backups (id, created_at, run_id, object_key, manifest_key, stored_bytes,
                                          raw_bytes, sha256, manifest)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&b.id)
                .bind(Ts(b.created_at))
                .bind(b.run_id)
                .bind(&b.object_key)
                .bind(&b.manifest_key)
                .bind(b.stored_bytes)
                .bind(b.raw_bytes)
                .bind(&b.sha256)
                .bind(&b.manifest)
                .execute(&mut *tx)
                .await?;
                Self::commit_with(tx, Some(event), "backup_insert").await
            }

            async fn backup_verified(
                &self,
                id: &str,
                ok: bool,
                restore_ms: Option<i64>,
                error: Option<&str>,
                event: &NewAuditEvent,
            ) -> Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "UPDATE backups SET verified_at = $5, verify_ok = $2, restore_ms = $3, verify_error = $4
                     WHERE id = $1",
                )
                .bind(id)
                .bind(ok)
                .bind(restore_ms)
                .bind(error)
                .bind(Ts::now())
                .execute(&mut *tx)
                .await?;
                Self::commit_with(tx, Some(event), "backup_verified").await
            }

            async fn backup_deleted(&self, id: &str, event: &NewAuditEvent) -> Result<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query("UPDATE backups SET deleted_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(Ts::now())
                    .execute(&mut *tx)
                    .await?;
                Self::commit_with(tx, Some(event), "backup_deleted").await
            }

            async fn backups(&self, include_deleted: bool) -> Result<Vec<BackupRecord>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM backups WHERE $1 OR deleted_at IS NULL ORDER BY created_at DESC, id DESC",
                )
                .bind(include_deleted)
                .fetch_all(&self.pool)
                .await?)
            }
        }
    };
}
pub(super) use impl_backup_catalog;
