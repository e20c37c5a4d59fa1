//! `[[http.api_keys]]`: who may call the DSR intake API, under which name (the
//! audit actor `http:NAME`), with which scopes, optionally for one org.
//! Only SHA-256 hashes of the keys live in config.

use serde::Deserialize;
use toml::Spanned;

use super::SourceFile;
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiScope {
    /// `POST /v1/dsr`.
    Submit,
    /// `GET /v1/dsr`, `GET /v1/dsr/{id}`.
    Read,
}

impl ApiScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiScope::Submit => "submit",
            ApiScope::Read => "read",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    /// SHA-256 hex of the key, lower case.
    pub sha256: String,
    pub scopes: Vec<ApiScope>,
    /// The key acts for this org only: it submits for the org's members and
    /// reads only the requests it submitted.
    pub org: Option<String>,
}

impl ApiKey {
    pub fn allows(&self, scope: ApiScope) -> bool {
        self.scopes.contains(&scope)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiKey {
    name: Spanned<String>,
    sha256: Spanned<String>,
    scopes: Spanned<Vec<String>>,
    org: Option<String>,
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The keys, validated: names are unique words, hashes are SHA-256 hex and
/// unique, scopes are known and not empty. Legacy `api_key_hashes` entries
/// become keys named `key-<first 8 hex>` with both scopes (their old meaning).
pub(super) fn load(
    src: &SourceFile,
    raw: Vec<RawApiKey>,
    legacy: Vec<Spanned<String>>,
) -> Result<Vec<ApiKey>> {
    let mut keys = legacy_keys(src, legacy)?;
    for k in raw {
        // Each key is checked against all keys before it (legacy ones too),
        // so a repeat is reported at the later entry.
        let key = configured_key(src, k, &keys)?;
        keys.push(key);
    }
    Ok(keys)
}

/// `http.api_key_hashes` entries as keys with both scopes and no org.
fn legacy_keys(src: &SourceFile, legacy: Vec<Spanned<String>>) -> Result<Vec<ApiKey>> {
    let mut keys = Vec::new();
    for h in legacy {
        if !is_sha256_hex(h.get_ref()) {
            return Err(src.error_at(
                h.span(),
                "http.api_key_hashes: each entry is the SHA-256 hex of a key (`printf %s KEY | sha256sum`), not the key",
            ));
        }
        let sha256 = h.into_inner().to_lowercase();
        keys.push(ApiKey {
            name: format!("key-{}", &sha256[..8]),
            sha256,
            scopes: vec![ApiScope::Submit, ApiScope::Read],
            org: None,
        });
    }
    Ok(keys)
}

/// One `[[http.api_keys]]` entry, validated against the keys already loaded.
fn configured_key(src: &SourceFile, k: RawApiKey, earlier: &[ApiKey]) -> Result<ApiKey> {
    let name = k.name.get_ref();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(src.error_at(
            k.name.span(),
            "http.api_keys: name must be 1 to 64 letters, digits, `.`, `_` or `-` (it names the caller in the audit log)",
        ));
    }
    if !is_sha256_hex(k.sha256.get_ref()) {
        return Err(src.error_at(
            k.sha256.span(),
            "http.api_keys: sha256 is the SHA-256 hex of the key (`printf %s KEY | sha256sum`), not the key",
        ));
    }
    let sha256 = k.sha256.get_ref().to_lowercase();
    if let Some(dup) = earlier
        .iter()
        .find(|o| o.name == *name || o.sha256 == sha256)
    {
        return Err(src.error_at(
            k.name.span(),
            format!(
                "http.api_keys: `{name}` repeats the name or the key of `{}`; each key is one caller",
                dup.name
            ),
        ));
    }
    let scopes = parse_scopes(src, &k.scopes)?;
    Ok(ApiKey {
        name: name.clone(),
        sha256,
        scopes,
        org: k.org.filter(|o| !o.trim().is_empty()),
    })
}

/// Known scope names, deduplicated in order; at least one.
fn parse_scopes(src: &SourceFile, raw: &Spanned<Vec<String>>) -> Result<Vec<ApiScope>> {
    let mut scopes = Vec::new();
    for s in raw.get_ref() {
        let scope = match s.as_str() {
            "submit" => ApiScope::Submit,
            "read" => ApiScope::Read,
            other => {
                let msg = format!(
                    "http.api_keys: unknown scope `{other}`; scopes are \"submit\" and \"read\""
                );
                return Err(src.error_at(raw.span(), msg));
            }
        };
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(src.error_at(
            raw.span(),
            "http.api_keys: give at least one scope: [\"submit\"], [\"read\"] or both",
        ));
    }
    Ok(scopes)
}
