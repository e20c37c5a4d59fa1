//! Turns cron fires into queue rows. Every replica runs one; the unique key
//! `(job, scheduled_for)` makes N enqueues of a fire one row.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::{CatchUp, JobSpec};
use crate::context::Context;
use crate::error::Result;
use crate::store::NewRun;

pub struct Enqueuer {
    ctx: Arc<Context>,
    started_at: DateTime<Utc>,
    /// Last fire this process enqueued (or found enqueued) per job.
    last: HashMap<String, DateTime<Utc>>,
}

impl Enqueuer {
    pub async fn new(ctx: Arc<Context>) -> Result<Self> {
        let started_at = ctx.store.now().await?;
        let mut last = HashMap::new();
        for job in ctx.config.jobs.iter().filter(|j| j.enabled) {
            if let Some(t) = ctx.store.latest_scheduled_for(&job.name).await? {
                last.insert(job.name.clone(), t);
            }
        }
        Ok(Enqueuer {
            ctx,
            started_at,
            last,
        })
    }

    /// Enqueues each job's latest fire if it is new; returns how many rows this call inserted.
    /// Fires missed during downtime collapse into the latest one (or none, with `catch_up = "skip"`).
    pub async fn tick(&mut self) -> Result<usize> {
        let now = self.ctx.store.now().await?;
        let mut inserted = 0;
        let config = self.ctx.config.clone();
        for job in config.jobs.iter().filter(|j| j.enabled) {
            let Some(fire) = job.schedule.latest_fire(now) else {
                continue;
            };
            if self.last.get(&job.name).is_some_and(|t| *t >= fire) {
                continue;
            }
            let policy = job.catch_up.unwrap_or(config.runner.catch_up);
            // A fire from before this process started was missed while nobody was up.
            let missed =
                fire + chrono::Duration::milliseconds(
                    crate::store::millis(config.runner.poll_interval) * 2,
                ) < self.started_at;
            if missed && policy == CatchUp::Skip {
                self.last.insert(job.name.clone(), fire);
                continue;
            }
            if self.ctx.store.enqueue(&new_run(job, fire)).await?.is_some() {
                inserted += 1;
                tracing::debug!(job = %job.name, scheduled_for = %fire, "enqueued");
            }
            self.last.insert(job.name.clone(), fire);
        }
        Ok(inserted)
    }
}

fn new_run(job: &JobSpec, fire: DateTime<Utc>) -> NewRun {
    NewRun {
        job: job.name.clone(),
        kind: job.kind.clone(),
        scheduled_for: fire,
        trigger: "schedule".into(),
        max_attempts: i32::try_from(job.max_attempts).unwrap_or(i32::MAX),
        timeout: job.timeout,
        allow_overlap: job.allow_overlap,
        dry_run: false,
        params: job.params.clone(),
    }
}
