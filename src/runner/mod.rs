//! cron → durable queue → workers. The queue in the store is the source of
//! truth; nothing here keeps state that a crash would lose.
//!
//! - `periodic_job_enqueuer`: turns cron fires into queue rows, once per (job, fire).
//! - `worker_pool`: claims due runs and executes them, draining on shutdown.
//! - `executor`: one attempt: lease heartbeat, timeout, outcome, retries, dead-letter mail.
//! - `job_rescuer`: returns runs whose lease lapsed (their worker died) to the queue.
//! - `job_cleaner`: the `runner.prune` job, deleting old finished runs.

pub mod dispatch;
mod executor;
pub mod job_cleaner;
mod job_rescuer;
mod kind;
mod periodic_job_enqueuer;
mod worker_pool;

pub use crate::policy::retry_delay;
pub use crate::policy::Schedule;
pub use dispatch::JobContext;
pub use executor::{enqueue_manual, execute, execute_claimed_at, run_now, RunReport};
pub use job_rescuer::rescue_expired;
pub use kind::{JobKind, ENV_TEST_JOBS};
pub use periodic_job_enqueuer::Enqueuer;
pub use worker_pool::{serve, Shutdown};
