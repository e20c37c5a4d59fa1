//! `lethe serve`: runner + HTTP until SIGTERM/SIGINT, then drain and exit 0.

use std::sync::Arc;

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

use crate::context::Context;
use crate::runner::{self, Shutdown};

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
    let result = runner::serve(ctx, shutdown.clone()).await;
    shutdown.trigger();
    let _ = http.await;
    result?;
    Ok(0)
}
