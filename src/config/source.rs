//! Turning positions in a config file into errors that say file:line:col,
//! and the checks that need them (durations, counts, URLs, addresses).

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::{format_duration, redact_url, url_has_password, MAX_DURATION};
use crate::error::{Error, Result};

/// Source text plus path, to turn byte spans into `file:line:col` errors.
pub(crate) struct SourceFile<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl SourceFile<'_> {
    pub fn error_at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> Error {
        let (line, column) = line_col(self.text, span.start);
        Error::Config {
            path: self.path.to_path_buf(),
            line: Some(line),
            column: Some(column),
            message: message.into(),
        }
    }

    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::config(self.path, message)
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        toml::from_str(self.text).map_err(|e| {
            // toml's Display repeats the snippet; keep just the message and point at the span.
            let message = e.message().trim().to_string();
            match e.span() {
                Some(span) => self.error_at(span, message),
                None => self.error(message),
            }
        })
    }

    /// A duration between 0 and [`MAX_DURATION`].
    pub fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration> {
        self.duration_in(value, key, Duration::ZERO..=MAX_DURATION)
    }

    /// A duration within `range`; the error names the key and the range.
    pub fn duration_in(
        &self,
        value: &Spanned<String>,
        key: &str,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Result<Duration> {
        let d = crate::policy::parse_bounded(value.get_ref())
            .map_err(|m| self.error_at(value.span(), format!("{key}: {m}")))?;
        if let Some(d) = d.filter(|d| range.contains(d)) {
            return Ok(d);
        }
        Err(self.error_at(
            value.span(),
            format!(
                "{key} must be between {} and {} (got `{}`)",
                format_duration(*range.start()),
                format_duration(*range.end()),
                value.get_ref()
            ),
        ))
    }

    /// An IANA time zone name (`UTC` when absent); the error names the key.
    pub fn timezone(&self, value: Option<&Spanned<String>>, key: &str) -> Result<chrono_tz::Tz> {
        let Some(v) = value else {
            return Ok(chrono_tz::UTC);
        };
        v.get_ref().parse::<chrono_tz::Tz>().map_err(|_| {
            self.error_at(
                v.span(),
                format!(
                    "{key}: `{}` is not an IANA zone name such as `UTC`, `Europe/Berlin` or `Asia/Jakarta`",
                    v.get_ref()
                ),
            )
        })
    }

    /// A count within `range` (default when absent); the error names the key and the range.
    pub fn count<T>(
        &self,
        value: Option<Spanned<T>>,
        key: &str,
        range: std::ops::RangeInclusive<T>,
        default: T,
    ) -> Result<T>
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        match value {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(v.into_inner()),
            Some(v) => Err(self.error_at(
                v.span(),
                format!(
                    "{key} must be between {} and {} (got {})",
                    range.start(),
                    range.end(),
                    v.get_ref()
                ),
            )),
        }
    }
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

pub(super) fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub(super) fn reject_password(
    src: &SourceFile,
    url: &Spanned<String>,
    key: &str,
    env: &str,
) -> Result<()> {
    if url_has_password(url.get_ref()) {
        return Err(src.error_at(
            url.span(),
            format!("{key} contains a password; secrets do not belong in the config file: remove it and set ${env} to the full URL"),
        ));
    }
    Ok(())
}

pub(super) fn check_db_url(
    src: &SourceFile,
    raw: &Spanned<String>,
    url: &str,
    key: &str,
) -> Result<()> {
    if url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url.starts_with("sqlite:")
    {
        Ok(())
    } else {
        Err(src.error_at(
            raw.span(),
            format!(
                "{key} must start with postgres:// or sqlite:// (got `{}`)",
                redact_url(url)
            ),
        ))
    }
}

/// `sqlite://app.db` is relative to the config file's folder, not the shell's.
pub(super) fn resolve_sqlite_url(url: &str, dir: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_string();
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.starts_with('/') || path == ":memory:" {
        return url.to_string();
    }
    let joined = dir.join(path);
    match query {
        Some(q) => format!("sqlite://{}?{q}", joined.display()),
        None => format!("sqlite://{}", joined.display()),
    }
}
