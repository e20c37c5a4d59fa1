//! Per-run resume state: a job writes progress under a key so that a retry
//! of the same run continues where the crashed attempt stopped.

use async_trait::async_trait;

use crate::error::Result;

#[async_trait]
pub trait Checkpoints: Send + Sync {
    async fn checkpoint_get(&self, run_id: i64, key: &str) -> Result<Option<serde_json::Value>>;
    async fn checkpoint_put(&self, run_id: i64, key: &str, value: &serde_json::Value)
        -> Result<()>;
}

macro_rules! impl_checkpoints {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl Checkpoints for $store {
            async fn checkpoint_get(
                &self,
                run_id: i64,
                key: &str,
            ) -> Result<Option<serde_json::Value>> {
                Ok(sqlx::query_scalar(
                    "SELECT value FROM run_checkpoints WHERE run_id = $1 AND key = $2",
                )
                .bind(run_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn checkpoint_put(
                &self,
                run_id: i64,
                key: &str,
                value: &serde_json::Value,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO run_checkpoints (run_id, key, value, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (run_id, key) DO UPDATE SET value = $3, updated_at = $4",
                )
                .bind(run_id)
                .bind(key)
                .bind(value)
                .bind(Ts::now())
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    };
}
pub(super) use impl_checkpoints;
