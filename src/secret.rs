//! Secrets: read from the environment or a file, never from lethe.toml, and
//! never printed (Debug and Display are redacted).

use std::fmt;
use std::path::Path;

#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from: an environment variable, else a file.
#[derive(Debug, Clone)]
pub struct SecretSource {
    pub env: String,
    pub file: Option<std::path::PathBuf>,
}

impl SecretSource {
    /// `Ok(None)` when neither is set; an error when the named file cannot be read.
    pub fn load(&self) -> Result<Option<Secret>, String> {
        if let Ok(v) = std::env::var(&self.env) {
            if !v.is_empty() {
                return Ok(Some(Secret(v)));
            }
        }
        match &self.file {
            Some(path) => read_secret_file(path).map(Some),
            None => Ok(None),
        }
    }

    pub fn describe(&self) -> String {
        match &self.file {
            Some(p) => format!("${} or file {}", self.env, p.display()),
            None => format!("${}", self.env),
        }
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, String> {
    std::fs::read_to_string(path)
        .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_string()))
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))
}

/// A URL with any password replaced, for logs and `check` output.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("REDACTED"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") {
                        "REDACTED".to_string()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparsable url>".to_string(),
    }
}

/// True when the URL carries a password (in userinfo or as `?password=`).
pub fn url_has_password(raw: &str) -> bool {
    match url::Url::parse(raw) {
        Ok(u) => {
            u.password().is_some()
                || u.query_pairs()
                    .any(|(k, _)| k.eq_ignore_ascii_case("password"))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }

    #[test]
    fn redacts_userinfo_and_query_passwords() {
        let r = redact_url("postgres://app:hunter2@db:5432/app?password=x&sslmode=require");
        assert!(!r.contains("hunter2"), "{r}");
        assert!(!r.contains("password=x"), "{r}");
        assert!(r.contains("sslmode=require"));
        assert!(url_has_password("postgres://a:b@h/d"));
        assert!(!url_has_password("postgres://a@h/d"));
    }
}
