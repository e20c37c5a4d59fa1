//! `lethe serve`: runner + HTTP until SIGTERM/SIGINT, then drain and exit 0.

use std::sync::Arc;

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::context::Context;
use crate::error::Error;
use crate::runner::{self, Shutdown};

/// `serve --only JOB...`: every other job of the catalog is left unscheduled
/// here (`--no-schedule`: all of them). A name that is not in the catalog is a
/// usage error, not a silent no-op.
pub fn only_jobs(mut config: Config, only: &[String], no_schedule: bool) -> Result<Config, Error> {
    if only.is_empty() && !no_schedule {
        return Ok(config);
    }
    if let Some(unknown) = only
        .iter()
        .find(|n| !config.jobs.iter().any(|j| &j.name == *n))
    {
        let names: Vec<&str> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        return Err(Error::Usage(format!(
            "--only {unknown}: no such job in {}; known jobs: {}",
            config.runner.jobs_dir.display(),
            names.join(", ")
        )));
    }
    for job in &mut config.jobs {
        if !only.contains(&job.name) {
            job.enabled = false;
        }
    }
    Ok(config)
}

pub async fn run(ctx: Arc<Context>) -> Result<i32> {
    let shutdown = Shutdown::new();
    let listener = crate::http::bind(ctx.config.http.listen).await?;
    let addr = listener.local_addr().ok();
    tracing::info!(listen = ?addr, store = ?ctx.store.backend(), "lethe serve starting");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let s = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        s.trigger();
    });

    let http = tokio::spawn(crate::http::serve(listener, ctx.clone(), shutdown.clone()));
    let result = runner::serve(ctx, Arc::new(crate::jobs::registry()), shutdown.clone()).await;
    shutdown.trigger();
    let _ = http.await;
    result?;
    Ok(0)
}
