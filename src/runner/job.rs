//! What a job kind is to the runner: a name, typed params checked at load,
//! a typed result, and `run`. The runner knows no kind; the `jobs` module lists them.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::store::Run;

/// What one attempt of a run gets.
pub struct JobContext {
    pub ctx: Arc<Context>,
    pub run: Run,
    pub kind: &'static str,
    pub dry_run: bool,
    /// Who the audit log says did it: `worker:<id>`.
    pub actor: String,
    /// Checked before every side effect commits: the attempt still holds its lease.
    pub fence: Fence,
}

/// A kind's params: unknown fields are refused by serde (`deny_unknown_fields`),
/// ranges by `validate`, both when the catalog loads and again before a run.
pub trait JobParams: DeserializeOwned + Send + 'static {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

pub trait Job: 'static {
    /// The name job files use in `kind = "..."`.
    const KIND: &'static str;
    type Params: JobParams;
    /// Stored as the run's result JSON and printed by `lethe run --json`.
    type Output: Serialize + Send;

    fn run(
        jc: &JobContext,
        params: Self::Params,
    ) -> impl Future<Output = Result<Self::Output>> + Send;

    /// Checks `lethe run` makes before it queues a run, so bad config exits 2
    /// and records nothing.
    fn preflight(_ctx: &Context) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// `value` within `min..=max`, or the error every count param uses.
pub fn in_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(format!(
        "{key} must be between {min} and {max} (got {value})"
    ))
}

/// Deserializes and validates; a field's error names the field (`keep: ...`)
/// unless serde's message already does (`unknown field `kepe``).
pub(super) fn parse_params<P: JobParams>(params: &serde_json::Value) -> Result<P, String> {
    let p: P = serde_path_to_error::deserialize(params).map_err(|e| {
        let message = e.inner().to_string();
        let key = e.path().iter().find_map(|s| match s {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            _ => None,
        });
        match key {
            Some(key) if !message.contains(&format!("`{key}`")) => format!("{key}: {message}"),
            _ => message,
        }
    })?;
    p.validate()?;
    Ok(p)
}

/// Params as stored with a run, checked again: CLI overrides and old queue rows bypass load.
pub(super) fn run_params<P: JobParams>(jc: &JobContext) -> Result<P> {
    parse_params(&jc.run.params).map_err(|m| Error::Usage(format!("params for {}: {m}", jc.kind)))
}
