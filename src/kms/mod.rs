//! Key-management providers behind one trait: AWS KMS (or a compatible
//! endpoint) and a local keyring file. Wraps and re-wraps data keys; the
//! rotation policy that drives it lives in `keys`.

mod aws;
mod local;

pub use aws::AwsKms;
pub use local::LocalKms;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{KeysConfig, KmsProvider};
use crate::error::Result;

#[async_trait]
pub trait Kms: Send + Sync {
    fn describe(&self) -> String;
    async fn create_kek(&self, org: &str) -> Result<String>;
    /// A fresh DEK wrapped under the KEK; the plaintext is dropped, never stored.
    async fn generate_dek(&self, kek_id: &str) -> Result<Vec<u8>>;
    /// Re-wraps under the KEK's current backing key, inside the KMS.
    async fn rewrap(&self, kek_id: &str, wrapped: &[u8]) -> Result<Vec<u8>>;
    async fn rotate_kek(&self, kek_id: &str) -> Result<()>;
    /// The plaintext of a wrapped DEK, for re-encrypting values in memory
    /// (`keys.reencrypt`); it is never stored. Fails for a shredded KEK.
    async fn decrypt_dek(&self, kek_id: &str, wrapped: &[u8]) -> Result<Vec<u8>>;
    async fn schedule_deletion(&self, kek_id: &str, days: i32) -> Result<()>;
}

/// The provider the config names (built once per process by `Context::kms`).
pub async fn open(k: &KeysConfig) -> Result<Arc<dyn Kms>> {
    Ok(match k.provider {
        KmsProvider::Local => Arc::new(LocalKms::new(k.keyring_file.clone())),
        KmsProvider::Aws => {
            Arc::new(AwsKms::new(k.kms_endpoint.as_deref(), k.region.as_deref()).await)
        }
    })
}
