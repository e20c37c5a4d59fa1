//! cron → durable queue → workers. The queue in the store is the source of
//! truth; nothing here keeps state that a crash would lose.
//!
//! - `periodic_job_enqueuer`: turns cron fires into queue rows, once per (job, fire).
//! - `worker_pool`: claims due runs and executes them, draining on shutdown.
//! - `executor`: one attempt: lease heartbeat, timeout, outcome, retries, dead-letter mail.
//! - `job_rescuer`: returns runs whose lease lapsed (their worker died) to the queue.
//! - `follow_up`: runs queued as another run ends (the registry's follow-up rules).
//! - `job_cleaner`: deletes old finished runs (the `runner.prune` kind calls it).
//! - `job` / `registry`: the `Job` trait and the kinds a build knows. The runner
//!   imports no job kind; `jobs::registry()` lists them and is passed in.

mod executor;
mod follow_up;
mod job;
pub mod job_cleaner;
mod job_rescuer;
mod periodic_job_enqueuer;
mod registry;
mod worker_pool;

pub use crate::policy::retry_delay;
pub use crate::policy::Schedule;
pub use executor::{enqueue_manual, execute, execute_claimed_at, run_now, RunReport};
pub use follow_up::result_lists;
pub use job::{in_range, Job, JobContext, JobParams};
pub use job_rescuer::rescue_expired;
pub use periodic_job_enqueuer::Enqueuer;
pub use registry::{FollowWhen, Registry};
pub use worker_pool::{serve, Shutdown};
