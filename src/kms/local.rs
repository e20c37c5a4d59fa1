//! A local keyring file with KMS semantics: key material stays inside this
//! provider; callers only ever see wrapped keys. XChaCha20-Poly1305 wraps.
//! One process at a time (use AWS KMS for several replicas).

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::Kms;
use crate::error::{Error, Result};

#[derive(Default, Serialize, Deserialize)]
struct Keyring {
    keks: BTreeMap<String, Kek>,
}

#[derive(Serialize, Deserialize)]
struct Kek {
    /// base64 key material, oldest first; the last is current.
    versions: Vec<String>,
    pending_deletion: Option<String>,
}

pub struct LocalKms {
    path: PathBuf,
    lock: Mutex<()>,
    /// The keyring as last read, with the file's mtime and length then: a
    /// run unwraps thousands of keys, and re-reading the file for each would
    /// dominate; another process's change shows in the mtime.
    cache: std::sync::Mutex<Option<(std::time::SystemTime, u64, std::sync::Arc<Keyring>)>>,
}

fn b64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn key_bytes(s: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| Error::Failed("keyring: bad key material".into()))
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

impl LocalKms {
    pub fn new(path: PathBuf) -> Self {
        LocalKms {
            path,
            lock: Mutex::new(()),
            cache: std::sync::Mutex::new(None),
        }
    }

    /// The keyring for reading, from the cache while the file is unchanged.
    fn load_shared(&self) -> Result<std::sync::Arc<Keyring>> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some((at, len)), Some((c_at, c_len, ring))) = (stamp, cache.as_ref()) {
            if at == *c_at && len == *c_len {
                return Ok(ring.clone());
            }
        }
        let ring = std::sync::Arc::new(self.load()?);
        *cache = stamp.map(|(at, len)| (at, len, ring.clone()));
        Ok(ring)
    }

    fn load(&self) -> Result<Keyring> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| Error::json(format!("keyring {}", self.path.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Keyring::default()),
            Err(e) => Err(Error::io(
                format!("reading keyring {}", self.path.display()),
                e,
            )),
        }
    }

    fn save(&self, k: &Keyring) -> Result<()> {
        let tmp = self.path.with_extension("json.partial");
        let text = serde_json::to_string_pretty(k).map_err(|e| Error::json("keyring", e))?;
        crate::private_file::write(&tmp, text).map_err(|e| Error::io("writing keyring", e))?;
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io("writing keyring", e))
    }

    fn kek<'a>(ring: &'a Keyring, id: &str) -> Result<&'a Kek> {
        let k = ring
            .keks
            .get(id)
            .ok_or_else(|| Error::Failed(format!("keyring has no key {id}")))?;
        if k.pending_deletion.is_some() {
            return Err(Error::Failed(format!(
                "key {id} is pending deletion (crypto-shredded)"
            )));
        }
        Ok(k)
    }

    fn wrap(kek: &Kek, plain: &[u8]) -> Result<Vec<u8>> {
        let version = kek.versions.len() as u32;
        let key = key_bytes(
            kek.versions
                .last()
                .ok_or_else(|| Error::Failed("key has no versions".into()))?,
        )?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key)
            .map_err(|_| Error::Failed("bad key length".into()))?;
        let nonce: [u8; 24] = random();
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), plain)
            .map_err(|_| Error::Failed("wrap failed".into()))?;
        let mut out = version.to_be_bytes().to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unwrap(kek: &Kek, blob: &[u8]) -> Result<Vec<u8>> {
        if blob.len() < 4 + 24 + 16 {
            return Err(Error::Failed("wrapped key too short".into()));
        }
        let version = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        let key = key_bytes(
            kek.versions
                .get(version.wrapping_sub(1))
                .ok_or_else(|| Error::Failed(format!("unknown key version {version}")))?,
        )?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key)
            .map_err(|_| Error::Failed("bad key length".into()))?;
        cipher
            .decrypt(XNonce::from_slice(&blob[4..28]), &blob[28..])
            .map_err(|_| Error::Failed("wrapped key does not authenticate".into()))
    }
}

#[async_trait]
impl Kms for LocalKms {
    fn describe(&self) -> String {
        format!("local keyring {}", self.path.display())
    }

    async fn create_kek(&self, org: &str) -> Result<String> {
        let _g = self.lock.lock().await;
        let mut ring = self.load()?;
        let id = format!(
            "local:{org}:{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        ring.keks.insert(
            id.clone(),
            Kek {
                versions: vec![b64(&random::<32>())],
                pending_deletion: None,
            },
        );
        self.save(&ring)?;
        Ok(id)
    }

    async fn generate_dek(&self, kek_id: &str) -> Result<Vec<u8>> {
        let _g = self.lock.lock().await;
        let ring = self.load_shared()?;
        Self::wrap(Self::kek(&ring, kek_id)?, &random::<32>())
    }

    async fn rewrap(&self, kek_id: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
        let _g = self.lock.lock().await;
        let ring = self.load_shared()?;
        let kek = Self::kek(&ring, kek_id)?;
        Self::wrap(kek, &Self::unwrap(kek, wrapped)?)
    }

    async fn decrypt_dek(&self, kek_id: &str, wrapped: &[u8]) -> Result<Vec<u8>> {
        let _g = self.lock.lock().await;
        let ring = self.load_shared()?;
        Self::unwrap(Self::kek(&ring, kek_id)?, wrapped)
    }

    async fn rotate_kek(&self, kek_id: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        let mut ring = self.load()?;
        Self::kek(&ring, kek_id)?;
        if let Some(k) = ring.keks.get_mut(kek_id) {
            k.versions.push(b64(&random::<32>()));
        }
        self.save(&ring)
    }

    async fn schedule_deletion(&self, kek_id: &str, days: i32) -> Result<()> {
        let _g = self.lock.lock().await;
        let mut ring = self.load()?;
        if let Some(k) = ring.keks.get_mut(kek_id) {
            // Unlike a cloud KMS there is nobody to wait for: the material goes now.
            k.versions.clear();
            k.pending_deletion = Some(format!(
                "{} (window {days} days)",
                chrono::Utc::now().to_rfc3339()
            ));
        }
        self.save(&ring)
    }
}
