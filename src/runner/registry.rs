//! The kinds a build knows, with their types erased to JSON in and JSON out.
//! Built by `jobs::registry()`; the runner only looks kinds up here.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use super::job::{parse_params, run_params, Job, JobContext};
use crate::config::{Config, JobSpec};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::Run;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub(super) type RunFn = fn(JobContext) -> BoxFuture<'static, Result<Value>>;
type PreflightFn = for<'a> fn(&'a Context) -> BoxFuture<'a, Result<()>>;

struct Entry {
    kind: &'static str,
    /// Listed in `kinds()` (the demo, "this build knows"); test-only kinds are not.
    listed: bool,
    validate: fn(&Value) -> Result<(), String>,
    run: RunFn,
    preflight: PreflightFn,
}

/// Whether a run that just ended (its state and result as stored) has its
/// follow-up queued, under this config.
pub type FollowWhen = fn(&Config, &Run) -> bool;

/// `then` is queued after a run of `after` ends, when `when` says so.
struct FollowUp {
    after: &'static str,
    then: &'static str,
    when: FollowWhen,
}

#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
    follow_ups: Vec<FollowUp>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind; `kinds()` lists kinds in the order they were registered.
    pub fn register<J: Job>(&mut self) -> &mut Self {
        self.add::<J>(true)
    }

    /// A kind that runs and validates like any other but is not listed: the
    /// demo does not run it and the unknown-kind error does not offer it.
    pub fn register_unlisted<J: Job>(&mut self) -> &mut Self {
        self.add::<J>(false)
    }

    fn add<J: Job>(&mut self, listed: bool) -> &mut Self {
        assert!(
            self.entries.iter().all(|e| e.kind != J::KIND),
            "job kind {} registered twice",
            J::KIND
        );
        self.entries.push(Entry {
            kind: J::KIND,
            listed,
            validate: |params| parse_params::<J::Params>(params).map(|_| ()),
            run: |jc| Box::pin(run_erased::<J>(jc)),
            preflight: |ctx| Box::pin(J::preflight(ctx)),
        });
        self
    }

    /// After an attempt of any kind in `after` ends (not a dry run) and
    /// `when` agrees, one run of `then` is queued to run now, unless a run of
    /// its job already waits unstarted. Kinds must be registered first.
    pub fn follow_up(
        &mut self,
        after: &[&'static str],
        then: &'static str,
        when: FollowWhen,
    ) -> &mut Self {
        for kind in after.iter().chain([&then]) {
            assert!(
                self.entry(kind).is_ok(),
                "follow-up names unknown kind {kind}"
            );
        }
        self.follow_ups
            .extend(after.iter().map(|&after| FollowUp { after, then, when }));
        self
    }

    /// The kinds to queue after `run` ended.
    pub(super) fn follow_ups<'a>(
        &'a self,
        config: &'a Config,
        run: &'a Run,
    ) -> impl Iterator<Item = &'static str> + 'a {
        self.follow_ups
            .iter()
            .filter(move |f| f.after == run.kind && !run.dry_run && (f.when)(config, run))
            .map(|f| f.then)
    }

    /// Every listed kind, in registration order (the order `demo` runs them).
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().filter(|e| e.listed).map(|e| e.kind)
    }

    fn entry(&self, kind: &str) -> Result<&Entry, String> {
        self.entries.iter().find(|e| e.kind == kind).ok_or_else(|| {
            let known: Vec<&str> = self.kinds().collect();
            format!(
                "unknown job kind `{kind}`; this build knows: {}",
                known.join(", ")
            )
        })
    }

    /// The kind's canonical name, or the unknown-kind error listing what this build knows.
    pub fn kind(&self, kind: &str) -> Result<&'static str, String> {
        self.entry(kind).map(|e| e.kind)
    }

    /// Rejects unknown kinds, params a kind does not know and values out of range.
    pub fn validate(&self, kind: &str, params: &Value) -> Result<(), String> {
        (self.entry(kind)?.validate)(params)
    }

    /// A job file's kind and params, as errors pointing into the file.
    pub fn check_job(&self, spec: &JobSpec) -> Result<()> {
        let entry = self.entry(&spec.kind).map_err(|m| spec.kind_error(m))?;
        (entry.validate)(&spec.params)
            .map_err(|m| spec.params_error(format!("[params] for kind {}: {m}", spec.kind)))
    }

    /// Every job of a loaded catalog; the first bad one is the error.
    pub fn check_config(&self, config: &Config) -> Result<()> {
        config.jobs.iter().try_for_each(|j| self.check_job(j))
    }

    pub async fn preflight(&self, kind: &str, ctx: &Context) -> Result<()> {
        let entry = self.entry(kind).map_err(Error::Usage)?;
        (entry.preflight)(ctx).await
    }

    pub(super) fn runner(&self, kind: &str) -> Result<(&'static str, RunFn), String> {
        self.entry(kind).map(|e| (e.kind, e.run))
    }
}

async fn run_erased<J: Job>(jc: JobContext) -> Result<Value> {
    let params = run_params::<J::Params>(&jc)?;
    let output = J::run(&jc, params).await?;
    serde_json::to_value(output)
        .map_err(|e| Error::Failed(format!("{}: result is not JSON: {e}", J::KIND)))
}
