//! AWS KMS (and moto in tests) via aws-sdk-kms.

use async_trait::async_trait;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_sdk_kms::Client;

use super::Kms;
use crate::error::{Error, Result};

pub struct AwsKms {
    client: Client,
}

/// Codes KMS answers when a caller is over its request quota: worth a retry.
const THROTTLED: &[&str] = &["ThrottlingException", "LimitExceededException"];

fn kms_err<E>(op: &str, e: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!("KMS {op}: {}", crate::aws::describe(&e));
    // Decided on the service's error code, never on message text.
    match &e {
        SdkError::ServiceError(se) if se.err().code().is_some_and(|c| THROTTLED.contains(&c)) => {
            Error::Throttled(message)
        }
        SdkError::ServiceError(se) if se.err().code() == Some("DisabledException") => {
            Error::KeyDisabled(message)
        }
        _ => Error::Failed(message),
    }
}

impl AwsKms {
    pub async fn new(endpoint: Option<&str>, region: Option<&str>) -> Self {
        let shared = crate::aws::sdk_config(region).await;
        let mut b = aws_sdk_kms::config::Builder::from(&shared);
        if let Some(e) = endpoint {
            b = b.endpoint_url(e);
        }
        if shared.region().is_none() && region.is_none() {
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        AwsKms {
            client: Client::from_conf(b.build()),
        }
    }
}

#[async_trait]
impl Kms for AwsKms {
    fn describe(&self) -> String {
        "aws-kms".into()
    }

    async fn create_kek(&self, org: &str) -> Result<String> {
        let out = self
            .client
            .create_key()
            .description(format!("lethe: key-encryption key of org {org}"))
            .send()
            .await
            .map_err(|e| kms_err("CreateKey", e))?;
        out.key_metadata()
            .map(|m| m.key_id().to_string())
            .ok_or_else(|| Error::Failed("KMS CreateKey returned no key id".into()))
    }

    async fn generate_dek(&self, kek_id: &str) -> Result<Vec<u8>> {
        let out = self
            .client
            .generate_data_key()
            .key_id(kek_id)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await
            .map_err(|e| kms_err("GenerateDataKey", e))?;
        // The plaintext half is dropped here: Lethe stores only the wrapped key.
        out.ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| Error::Failed("KMS GenerateDataKey returned no ciphertext".into()))
    }

    async fn rewrap(&self, kek_id: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
        let out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .destination_key_id(kek_id)
            .send()
            .await
            .map_err(|e| kms_err("ReEncrypt", e))?;
        out.ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| Error::Failed("KMS ReEncrypt returned no ciphertext".into()))
    }

    async fn decrypt_dek(&self, kek_id: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
        let out = self
            .client
            .decrypt()
            .key_id(kek_id)
            .ciphertext_blob(Blob::new(wrapped))
            .send()
            .await
            .map_err(|e| kms_err("Decrypt", e))?;
        out.plaintext()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| Error::Failed("KMS Decrypt returned no plaintext".into()))
    }

    async fn rotate_kek(&self, kek_id: &str) -> Result<()> {
        match self
            .client
            .rotate_key_on_demand()
            .key_id(kek_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Older KMS-compatible services lack on-demand rotation: turn on automatic rotation instead.
            Err(e) => {
                tracing::warn!(error = %DisplayErrorContext(&e), "RotateKeyOnDemand unavailable; enabling automatic rotation");
                self.client
                    .enable_key_rotation()
                    .key_id(kek_id)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| kms_err("EnableKeyRotation", e))
            }
        }
    }

    async fn schedule_deletion(&self, kek_id: &str, days: i32) -> Result<()> {
        self.client
            .schedule_key_deletion()
            .key_id(kek_id)
            .pending_window_in_days(days)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| kms_err("ScheduleKeyDeletion", e))
    }
}
