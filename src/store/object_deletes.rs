//! Files that must still be deleted from the application's object stores:
//! written before the rows referencing them change, removed once the files
//! are gone. Not tied to a run, so a run that dies leaves them for the next
//! one (of the same origin) to finish, and a file that Object Lock keeps
//! waits here until its retain-until date (`not_before`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;

/// A file to delete, and what for (evidence is per class and org).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPendingObject {
    pub store_name: String,
    pub table_name: String,
    pub column_name: String,
    pub object_key: String,
    pub class: String,
    pub org: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingObject {
    pub id: i64,
    pub origin: String,
    pub store_name: String,
    pub table_name: String,
    pub column_name: String,
    pub object_key: String,
    pub class: String,
    pub org: String,
}

#[async_trait]
pub trait ObjectDeletes: Send + Sync {
    /// Records files to delete for `origin` (`retention`, `dsr:<id>`), in one transaction.
    async fn objects_pend(&self, origin: &str, items: &[NewPendingObject]) -> Result<()>;
    /// Up to `limit` of `origin`'s files due now (not deferred past `now`), oldest first.
    async fn objects_due(
        &self,
        origin: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<PendingObject>>;
    /// Forgets files that were deleted, or that a row still references.
    async fn objects_done(&self, ids: &[i64]) -> Result<()>;
    /// A file the store refused for now (Object Lock): retried after `until`.
    async fn objects_defer(&self, id: i64, until: DateTime<Utc>) -> Result<()>;
}

macro_rules! impl_object_deletes {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl ObjectDeletes for $store {
            async fn objects_pend(&self, origin: &str, items: &[NewPendingObject]) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                let now = Ts::now();
                for i in items {
                    sqlx::query(
                        "INSERT INTO pending_object_deletes
                           (origin, store_name, table_name, column_name, object_key, class, org, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(origin)
                    .bind(&i.store_name)
                    .bind(&i.table_name)
                    .bind(&i.column_name)
                    .bind(&i.object_key)
                    .bind(&i.class)
                    .bind(&i.org)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn objects_due(
                &self,
                origin: &str,
                now: DateTime<Utc>,
                limit: i64,
            ) -> Result<Vec<PendingObject>> {
                Ok(sqlx::query_as(
                    "SELECT id, origin, store_name, table_name, column_name, object_key, class, org
                       FROM pending_object_deletes
                      WHERE origin = $1 AND (not_before IS NULL OR not_before <= $2)
                      ORDER BY id LIMIT $3",
                )
                .bind(origin)
                .bind(Ts(now))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn objects_done(&self, ids: &[i64]) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                for id in ids {
                    sqlx::query("DELETE FROM pending_object_deletes WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn objects_defer(&self, id: i64, until: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE pending_object_deletes SET not_before = $2 WHERE id = $1")
                    .bind(id)
                    .bind(Ts(until))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}
pub(super) use impl_object_deletes;
