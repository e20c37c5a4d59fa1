//! `jobs/NAME.toml`: one scheduled job a file. The kind and its params stay
//! text and JSON here: the job registry (the `jobs` module) checks them right after
//! the config loads, pointing its errors into this file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::SourceFile;
use crate::error::{Error, Result};
use crate::policy::Schedule;

/// What the scheduler does about fires missed while no replica was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Enqueue only the most recent missed fire (no back-fill storm).
    Latest,
    /// Enqueue nothing missed; wait for the next fire.
    Skip,
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    /// Checked against the job registry after load, not here.
    pub kind: String,
    pub schedule: Schedule,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub allow_overlap: bool,
    pub enabled: bool,
    pub catch_up: Option<CatchUp>,
    pub params: serde_json::Value,
    pub source: PathBuf,
    /// Where `kind` and `[params]` are written (line, column), for errors found after load.
    pub kind_at: Option<(usize, usize)>,
    pub params_at: Option<(usize, usize)>,
}

impl JobSpec {
    /// A job of `kind` that no job file declares (`lethe run KIND`, a
    /// follow-up run): never scheduled, default timeout and attempts, no params.
    pub fn ad_hoc(kind: &str, source: &Path) -> JobSpec {
        JobSpec {
            name: kind.to_string(),
            kind: kind.to_string(),
            // Never fires: `enabled` is false; a schedule is still required.
            schedule: Schedule::parse("0 0 0 1 1 *", chrono_tz::UTC)
                .unwrap_or_else(|e| unreachable!("a fixed cron text parses: {e}")),
            timeout: Duration::from_secs(3600),
            max_attempts: 3,
            allow_overlap: false,
            enabled: false,
            catch_up: None,
            params: serde_json::Value::Object(Default::default()),
            source: source.to_path_buf(),
            kind_at: None,
            params_at: None,
        }
    }

    /// The job of `kind` runs of that kind take their settings from: the
    /// first enabled job file of that kind, else the first, else `ad_hoc`.
    pub fn of_kind(jobs: &[JobSpec], kind: &str, source: &Path) -> JobSpec {
        let mut of_kind = jobs.iter().filter(|j| j.kind == kind);
        let first = of_kind.clone().next();
        of_kind
            .find(|j| j.enabled)
            .or(first)
            .cloned()
            .unwrap_or_else(|| JobSpec::ad_hoc(kind, source))
    }

    /// An error about the kind, pointing at `kind = ...` in the job file.
    pub fn kind_error(&self, message: impl Into<String>) -> Error {
        self.error_at(self.kind_at, message)
    }

    /// An error about the params, pointing at `[params]` in the job file.
    pub fn params_error(&self, message: impl Into<String>) -> Error {
        self.error_at(self.params_at, message)
    }

    fn error_at(&self, at: Option<(usize, usize)>, message: impl Into<String>) -> Error {
        Error::Config {
            path: self.source.clone(),
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    kind: Spanned<String>,
    schedule: Spanned<String>,
    timezone: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    max_attempts: Option<Spanned<u32>>,
    #[serde(default)]
    allow_overlap: bool,
    enabled: Option<bool>,
    catch_up: Option<CatchUp>,
    params: Option<Spanned<toml::Table>>,
}

/// Reads every `*.toml` in `dir`, sorted by name. A missing folder is an error:
/// a worker with no jobs is almost always a deploy mistake.
pub fn load_dir(dir: &Path) -> Result<Vec<JobSpec>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::config(
            dir,
            format!("cannot read the jobs folder: {e} (set runner.jobs_dir, or create it with `lethe init`)"),
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_file(p)).collect()
}

pub fn load_file(path: &Path) -> Result<JobSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(path, format!("cannot read job file: {e}")))?;
    from_text(path, &text)
}

/// Parses a job file's `text` as if read from `path` (its stem names the job).
pub fn from_text(path: &Path, text: &str) -> Result<JobSpec> {
    let src = SourceFile { path, text };
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .ok_or_else(|| src.error("job file names may use only letters, digits, '-', '_' and '.'"))?
        .to_string();
    let raw: RawJob = src.parse()?;

    let tz = src.timezone(raw.timezone.as_ref(), "timezone")?;
    let schedule = Schedule::parse(raw.schedule.get_ref(), tz)
        .map_err(|m| src.error_at(raw.schedule.span(), m))?;
    let timeout = match &raw.timeout {
        Some(t) => src.duration_in(t, "timeout", Duration::from_millis(1)..=super::MAX_DURATION)?,
        None => Duration::from_secs(3600),
    };
    let max_attempts = src.count(raw.max_attempts, "max_attempts", 1..=100, 3)?;
    let (params, params_span) = match raw.params {
        Some(p) => {
            let span = p.span();
            let json = serde_json::to_value(p.into_inner())
                .map_err(|e| src.error_at(span.clone(), format!("params: {e}")))?;
            (json, span)
        }
        None => (serde_json::Value::Object(Default::default()), 0..0),
    };

    Ok(JobSpec {
        name,
        kind_at: Some(super::source::line_col(text, raw.kind.span().start)),
        params_at: Some(super::source::line_col(text, params_span.start)),
        kind: raw.kind.into_inner(),
        schedule,
        timeout,
        max_attempts,
        allow_overlap: raw.allow_overlap,
        enabled: raw.enabled.unwrap_or(true),
        catch_up: raw.catch_up,
        params,
        source: path.to_path_buf(),
    })
}
