//! Clean-ups that must finish even when the work they clean up after was
//! dropped mid-way (a run that timed out, was cancelled or lost its lease):
//! a drop guard cannot await, so it spawns its clean-up here, and the process
//! waits for every one before it exits.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use tokio_util::task::TaskTracker;

static CLEANUPS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Runs `work` to completion in the background (on the current runtime; not
/// at all outside one), counted until it ends.
pub fn spawn(work: impl Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        CLEANUPS.spawn_on(work, &rt);
    }
}

/// Waits, up to `limit`, for the clean-ups spawned so far; whether all ended.
pub async fn wait(limit: Duration) -> bool {
    CLEANUPS.close();
    let done = tokio::time::timeout(limit, CLEANUPS.wait()).await.is_ok();
    CLEANUPS.reopen();
    done
}
