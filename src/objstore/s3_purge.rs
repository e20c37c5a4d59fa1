//! Deleting objects for good on S3: every version and delete marker of each
//! key (a versioned bucket keeps the data in old versions otherwise), in
//! `DeleteObjects` requests of up to 1,000 identifiers. A version that the
//! bucket's Object Lock protects is reported with its retain-until date, not
//! retried.

use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::s3::{sdk, S3Store};
use super::{error, Locked, Purged};
use crate::error::Result;

/// S3's limit of keys per `DeleteObjects` request.
const PER_REQUEST: usize = 1000;

impl S3Store {
    pub(super) async fn purge_keys(&self, keys: &[String]) -> Result<Purged> {
        let mut out = Purged::default();
        let mut batch: Vec<(ObjectIdentifier, u64)> = Vec::new();
        for key in keys {
            let full = self.key(key);
            let versions = self.versions_of(&full).await?;
            if !versions.is_empty() {
                out.objects += 1;
            }
            for (version, size) in versions {
                let id = ObjectIdentifier::builder()
                    .key(&full)
                    .set_version_id(version)
                    .build()
                    .map_err(|e| error("delete", &full, e))?;
                batch.push((id, size));
                if batch.len() == PER_REQUEST {
                    self.delete_batch(std::mem::take(&mut batch), &mut out)
                        .await?;
                }
            }
        }
        if !batch.is_empty() {
            self.delete_batch(batch, &mut out).await?;
        }
        Ok(out)
    }

    /// Every version and delete marker of exactly `full` (a listing by
    /// prefix also returns longer keys), with its size; `None` as version
    /// where the bucket has no versioning.
    async fn versions_of(&self, full: &str) -> Result<Vec<(Option<String>, u64)>> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(full)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| sdk("list versions", full, e))?;
            let version = |v: Option<&str>| v.filter(|v| *v != "null").map(str::to_string);
            for v in page.versions().iter().filter(|v| v.key() == Some(full)) {
                let size = u64::try_from(v.size().unwrap_or(0)).unwrap_or(0);
                out.push((version(v.version_id()), size));
            }
            for m in page
                .delete_markers()
                .iter()
                .filter(|m| m.key() == Some(full))
            {
                out.push((version(m.version_id()), 0));
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
    }

    async fn delete_batch(
        &self,
        batch: Vec<(ObjectIdentifier, u64)>,
        out: &mut Purged,
    ) -> Result<()> {
        let ids: Vec<ObjectIdentifier> = batch.iter().map(|(id, _)| id.clone()).collect();
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| error("delete", &self.bucket, e))?;
        let resp = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| sdk("delete objects", &self.bucket, e))?;
        let mut failed = Vec::new();
        for e in resp.errors() {
            let (key, version) = (e.key().unwrap_or_default(), e.version_id());
            if e.code() == Some("AccessDenied") {
                // Object Lock (retention or legal hold) keeps this version.
                let until = self.retained_until(key, version).await;
                out.locked.push(Locked {
                    key: key.strip_prefix(&self.prefix).unwrap_or(key).to_string(),
                    until,
                });
            } else {
                failed.push(format!("{key}: {}", e.code().unwrap_or("error")));
            }
        }
        if !failed.is_empty() {
            return Err(error(
                "delete objects",
                &self.bucket,
                format!(
                    "{} object version(s) not deleted: {}",
                    failed.len(),
                    failed.join("; ")
                ),
            ));
        }
        for (id, size) in &batch {
            // Some stores name only the key of a version they refused.
            let kept = resp.errors().iter().any(|e| {
                e.key() == Some(id.key())
                    && (e.version_id().is_none() || e.version_id() == id.version_id())
            });
            if !kept {
                out.versions += 1;
                out.bytes += size;
                let key = id.key().strip_prefix(&self.prefix).unwrap_or(id.key());
                let k = out.by_key.entry(key.to_string()).or_default();
                k.0 += 1;
                k.1 += size;
            }
        }
        Ok(())
    }

    /// A locked version's retain-until date, when the bucket says.
    async fn retained_until(&self, key: &str, version: Option<&str>) -> Option<String> {
        let r = self
            .client
            .get_object_retention()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .ok()?;
        r.retention()?.retain_until_date().map(|d| d.to_string())
    }
}
