//! `lethe serve`'s runner half: the enqueuer, the rescuer and N workers, until
//! shutdown; then drain in-flight runs (or hand them back to the queue).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::{execute_claimed_at, rescue_expired, Enqueuer, Registry};
use crate::context::Context;
use crate::error::Result;

/// Set once: `true` means stop claiming and drain.
#[derive(Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            tx: watch::channel(false).0,
        }
    }
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }
}

/// Runs until `shutdown` fires, then drains for at most `runner.drain_timeout`.
pub async fn serve(ctx: Arc<Context>, registry: Arc<Registry>, shutdown: Shutdown) -> Result<()> {
    let cfg = &ctx.config.runner;
    let mut enqueuer = Enqueuer::new(ctx.clone()).await?;
    let slots = Arc::new(Semaphore::new(cfg.workers));
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut running = JoinSet::new();
    let mut stop = shutdown.subscribe();
    let rescue_every = (cfg.lease / 4).clamp(Duration::from_millis(500), Duration::from_secs(30));
    let mut next_rescue = tokio::time::Instant::now();

    tracing::info!(worker_id = %ctx.worker_id, workers = cfg.workers, jobs = ctx.config.jobs.len(), "runner started");
    while !*stop.borrow() {
        if let Err(e) = enqueuer.tick().await {
            tracing::error!(error = %e, "enqueue failed; retrying next tick");
        }
        if tokio::time::Instant::now() >= next_rescue {
            if let Err(e) = rescue_expired(&ctx).await {
                tracing::error!(error = %e, "rescue sweep failed");
            }
            next_rescue = tokio::time::Instant::now() + rescue_every;
        }
        // Claim while there are free slots and due runs.
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            let claimed_at = std::time::Instant::now();
            match ctx.store.claim_next(&ctx.worker_id, cfg.lease).await {
                Ok(Some(run)) => {
                    let (ctx2, registry, owner, cancel) = (
                        ctx.clone(),
                        registry.clone(),
                        ctx.worker_id.clone(),
                        cancel_rx.clone(),
                    );
                    running.spawn(async move {
                        let _permit = permit;
                        if let Err(e) = execute_claimed_at(ctx2, &registry, run, owner, cancel, claimed_at).await {
                            tracing::error!(error = %e, "could not record a run's outcome; its lease will lapse and it will be rescued");
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "claim failed");
                    break;
                }
            }
        }
        while running.try_join_next().is_some() {}
        tokio::select! {
            _ = tokio::time::sleep(cfg.poll_interval) => {}
            _ = stop.changed() => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }

    tracing::info!(in_flight = running.len(), "draining");
    let drained = tokio::time::timeout(cfg.drain_timeout, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            in_flight = running.len(),
            "drain timeout; returning unfinished runs to the queue"
        );
        let _ = cancel_tx.send(true);
        while running.join_next().await.is_some() {}
    }
    tracing::info!("runner stopped");
    Ok(())
}
