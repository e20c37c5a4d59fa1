//! S3 and S3-compatible stores (R2, MinIO, moto) via aws-sdk-s3. Uploads are
//! multipart with a bounded number of parts in flight; every part but the
//! last has the same size (R2 requires it).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{error, ObjectStore, Reader, Upload};
use crate::config::ObjectStoreConfig;
use crate::error::Result;

pub struct S3Store {
    pub(super) client: Client,
    pub(super) bucket: String,
    pub(super) prefix: String,
    concurrency: usize,
}

impl S3Store {
    pub async fn new(cfg: &ObjectStoreConfig, bucket: &str, prefix: &str) -> Result<Self> {
        let shared = crate::aws::sdk_config(cfg.region.as_deref()).await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.path_style);
        if let Some((id_env, secret_env)) = &cfg.credentials_env {
            let var = |name: &str| {
                std::env::var(name).map_err(|_| {
                    crate::error::Error::Usage(format!(
                        "object store {}: environment variable {name} is not set (its credentials)",
                        cfg.url
                    ))
                })
            };
            b = b.credentials_provider(aws_sdk_s3::config::Credentials::new(
                var(id_env)?,
                var(secret_env)?,
                None,
                None,
                "lethe-config",
            ));
        }
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        if shared.region().is_none() && cfg.region.is_none() {
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        let mut prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(S3Store {
            client: Client::from_conf(b.build()),
            bucket: bucket.to_string(),
            prefix,
            concurrency: cfg.upload_concurrency.max(1),
        })
    }

    /// Open multipart uploads under `prefix`: (full key, upload id).
    async fn uploads_under(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let full = self.key(prefix);
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(&full)
            .send()
            .await
            .map_err(|e| sdk("list uploads under", &full, e))?;
        Ok(out
            .uploads()
            .iter()
            .filter_map(|u| Some((u.key()?.to_string(), u.upload_id()?.to_string())))
            .collect())
    }

    pub(super) fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key.trim_start_matches('/'))
    }

    /// GetObject: the full key (for errors) and the body stream.
    async fn body(&self, key: &str) -> Result<(String, ByteStream)> {
        let full = self.key(key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| sdk("get", &full, e))?;
        Ok((full, out.body))
    }
}

pub(super) fn sdk<E>(op: &str, key: &str, e: SdkError<E, HttpResponse>) -> crate::error::Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    error(op, key, crate::aws::describe(&e))
}

struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    next_part: i32,
    slots: Arc<Semaphore>,
    inflight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
}

impl S3Upload {
    async fn collect_finished(&mut self) -> Result<()> {
        while let Some(r) = self.inflight.try_join_next() {
            self.done
                .push(r.map_err(|e| error("upload part of", &self.key, e))??);
        }
        Ok(())
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn part(&mut self, data: Bytes) -> Result<()> {
        self.collect_finished().await?;
        // Waiting for a slot is the backpressure that bounds memory to `concurrency` parts.
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| error("upload part of", &self.key, e))?;
        self.next_part += 1;
        let (client, bucket, key, id, n) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
            self.next_part,
        );
        self.inflight.spawn(async move {
            let _permit = permit;
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(id)
                .part_number(n)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| sdk("upload part of", &key, e))?;
            Ok(CompletedPart::builder()
                .set_e_tag(out.e_tag().map(str::to_string))
                .part_number(n)
                .build())
        });
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<()> {
        while let Some(r) = self.inflight.join_next().await {
            match r
                .map_err(|e| error("upload part of", &self.key, e))
                .and_then(|x| x)
            {
                Ok(p) => self.done.push(p),
                Err(e) => {
                    let _ = self.abort_now().await;
                    return Err(e);
                }
            }
        }
        if self.done.is_empty() {
            // An empty object still needs one (empty) part.
            self.part(Bytes::new()).await?;
            return self.complete().await;
        }
        self.done.sort_by_key(|p| p.part_number());
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(std::mem::take(&mut self.done)))
            .build();
        let res = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(parts)
            .send()
            .await;
        if let Err(e) = res {
            let err = sdk("complete upload of", &self.key, e);
            let _ = self.abort_now().await;
            return Err(err);
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.abort_now().await
    }
}

impl S3Upload {
    async fn abort_now(&mut self) -> Result<()> {
        self.inflight.abort_all();
        while self.inflight.join_next().await.is_some() {}
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk("abort upload of", &self.key, e))
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let full = self.key(key);
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| sdk("start upload of", &full, e))?;
        let upload_id = out
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| error("start upload of", &full, "no upload id"))?;
        Ok(Box::new(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full,
            upload_id,
            next_part: 0,
            slots: Arc::new(Semaphore::new(self.concurrency)),
            inflight: JoinSet::new(),
            done: Vec::new(),
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let full = self.key(key);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(data))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk("put", &full, e))
    }

    async fn put_retained(
        &self,
        key: &str,
        data: Bytes,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let full = self.key(key);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::Compliance)
            .object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(
                until.timestamp(),
            ))
            .body(ByteStream::from(data))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                error(
                    "put (Object Lock COMPLIANCE)",
                    &full,
                    format!(
                        "{} — the bucket must have Object Lock enabled (it can only be set when the bucket is created)",
                        crate::aws::describe(&e)
                    ),
                )
            })
    }

    async fn get(&self, key: &str) -> Result<Reader> {
        let (_, body) = self.body(key).await?;
        Ok(Box::new(body.into_async_read()))
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let (full, body) = self.body(key).await?;
        body.collect()
            .await
            .map(|b| b.into_bytes())
            .map_err(|e| error("read", &full, e))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let full = self.key(key);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(sdk("head", &full, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.key(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk("delete", &full, e))
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<super::Listed>> {
        let full = self.key(prefix);
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .set_start_after(after.map(|a| self.key(a)))
            .max_keys(i32::try_from(limit.min(1000)).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| sdk("list", &full, e))?;
        Ok(page
            .contents()
            .iter()
            .filter_map(|o| {
                let key = o.key()?.strip_prefix(&self.prefix)?.to_string();
                let modified = o
                    .last_modified()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
                Some(super::Listed {
                    key,
                    size: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
                    modified,
                })
            })
            .collect())
    }

    async fn list_versions_page(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<super::VersionsPage> {
        S3Store::list_versions_page(self, prefix, token).await
    }

    async fn purge(&self, keys: &[String], tail: super::Tail) -> Result<super::Purged> {
        self.purge_keys(keys, tail).await
    }

    async fn rewritten(&self, prefix: &str) -> Result<Vec<super::Rewritten>> {
        self.rewritten_keys(prefix).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let full = self.key(prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk("list", &full, e))?;
            for o in page.contents() {
                if let Some(k) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    out.push(k.to_string());
                }
            }
        }
        Ok(out)
    }

    async fn presign(&self, key: &str, ttl: Duration) -> Result<String> {
        let full = self.key(key);
        let cfg = PresigningConfig::expires_in(ttl).map_err(|e| error("presign", &full, e))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .presigned(cfg)
            .await
            .map_err(|e| sdk("presign", &full, e))?;
        Ok(req.uri().to_string())
    }

    async fn open_uploads(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .uploads_under(prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    async fn abort_uploads(&self, prefix: &str) -> Result<usize> {
        let open = self.uploads_under(prefix).await?;
        for (key, id) in &open {
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
                .map_err(|e| sdk("abort upload of", key, e))?;
        }
        Ok(open.len())
    }
}
