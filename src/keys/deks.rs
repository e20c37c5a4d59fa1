//! The orgs' data keys as an application uses them: read from `[app.keys]`,
//! unwrapped by the KMS when first needed, held in memory for one run.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::appdb::AppKey;
use crate::cipher::{self, Binding, DataKey, Stored};
use crate::context::Context;
use crate::error::{Error, Result};

/// What opening a stored value found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Plain(Vec<u8>),
    /// Not in the `lethe1` format (not encrypted, or written by something else).
    NotCiphertext,
    /// Its key is destroyed or does not unwrap, or it does not open.
    Unreadable,
}

/// The orgs' DEKs from the application's key table, unwrapped by the KMS on
/// first use and kept in memory for one run only (never stored).
pub struct DataKeys<'a> {
    ctx: &'a Context,
    rows: Vec<AppKey>,
    /// Each org's newest active version, computed once (asked for every value).
    newest: FxHashMap<String, i64>,
    /// Per org and version: the unwrapped key, prepared; None when it is
    /// destroyed or does not unwrap. Keyed by org first, so a lookup per
    /// value allocates nothing.
    plain: FxHashMap<String, HashMap<i64, Option<Arc<DataKey>>>>,
}

impl<'a> DataKeys<'a> {
    pub fn new(ctx: &'a Context, rows: Vec<AppKey>) -> Self {
        // As `appdb::newest_active`, for every org in one pass.
        let mut newest: FxHashMap<String, i64> = FxHashMap::default();
        for k in rows.iter().filter(|k| k.state == "active") {
            let v = newest.entry(k.org.clone()).or_insert(k.version);
            *v = (*v).max(k.version);
        }
        DataKeys {
            ctx,
            rows,
            newest,
            plain: FxHashMap::default(),
        }
    }

    /// With `[app.keys]`: the table's keys, read now; without: None.
    pub async fn load(ctx: &'a Context) -> Result<Option<DataKeys<'a>>> {
        let Some(t) = ctx.config.app.as_ref().and_then(|a| a.keys.as_ref()) else {
            return Ok(None);
        };
        let rows = ctx.app_db().await?.app_keys(t, None).await?;
        Ok(Some(DataKeys::new(ctx, rows)))
    }

    /// A stored value's plaintext: None when it is not in the format, or its
    /// key is gone, or it does not open (moved, altered).
    pub async fn open(&mut self, at: Binding<'_>, text: &str) -> Result<Opened> {
        let Ok(stored) = Stored::parse(text) else {
            return Ok(Opened::NotCiphertext);
        };
        let Some(dek) = self.dek(at.org, stored.version().into()).await? else {
            return Ok(Opened::Unreadable);
        };
        Ok(match stored.open(&dek, at) {
            Ok(plain) => Opened::Plain(plain),
            Err(_) => Opened::Unreadable,
        })
    }

    pub fn newest(&self, org: &str) -> Option<i64> {
        self.newest.get(org).copied()
    }

    /// `plaintext` sealed under the org's newest active key, as the
    /// application writes it; None when the org has no usable key (shredded,
    /// never created, or it does not unwrap).
    pub async fn seal_newest(
        &mut self,
        at: Binding<'_>,
        plaintext: &[u8],
    ) -> Result<Option<String>> {
        let Some(version) = self.newest(at.org) else {
            return Ok(None);
        };
        let Some(dek) = self.dek(at.org, version).await? else {
            return Ok(None);
        };
        let version = u32::try_from(version).map_err(|_| {
            Error::Failed(format!(
                "key table: org {}: version {version} is out of range",
                at.org
            ))
        })?;
        cipher::seal_with(&dek, version, at, plaintext)
            .map(Some)
            .map_err(|e| Error::Failed(format!("sealing {}.{}: {e}", at.table, at.column)))
    }

    /// A version's DEK, prepared, or None when it is destroyed or does not unwrap.
    pub async fn dek(&mut self, org: &str, version: i64) -> Result<Option<Arc<DataKey>>> {
        if let Some(k) = self.plain.get(org).and_then(|m| m.get(&version)) {
            return Ok(k.clone());
        }
        let row = self
            .rows
            .iter()
            .find(|k| k.org == org && k.version == version && k.state != "destroyed");
        let dek = match row {
            None => None,
            Some(k) => {
                use base64::Engine;
                let wrapped = base64::engine::general_purpose::STANDARD
                    .decode(&k.wrapped_key)
                    .map_err(|_| {
                        Error::Failed(format!(
                            "key table: org {org} version {version}: wrapped key is not base64"
                        ))
                    })?;
                let kms = self.ctx.kms().await?;
                match kms.decrypt_dek(&k.kms_key_id, &wrapped).await {
                    Ok(d) => match DataKey::new(&d) {
                        Ok(key) => Some(Arc::new(key)),
                        Err(e) => {
                            tracing::warn!(org, version, error = %e, "data key is unusable; its values are skipped");
                            None
                        }
                    },
                    // Disabled is a switch someone can turn back: the run
                    // stops instead of treating the values as lost.
                    Err(Error::KeyDisabled(m)) => {
                        return Err(Error::KeyDisabled(format!(
                            "org {org} version {version}: {m}"
                        )))
                    }
                    Err(e) => {
                        tracing::warn!(org, version, error = %e, "data key does not unwrap; its values are skipped");
                        None
                    }
                }
            }
        };
        self.plain
            .entry(org.to_string())
            .or_default()
            .insert(version, dek.clone());
        Ok(dek)
    }
}
