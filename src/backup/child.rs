//! Child processes (pg_dump, pg_restore) tied to the attempt that started
//! them: when that attempt is dropped (its run timed out, was cancelled or
//! lost its lease), the `Leash` it holds kills the child, so no dump or
//! restore outlives its run. The child is waited for by polling under a lock,
//! so a kill never reaches a process id the system has already reused.

use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Held by the async side; kills the child when dropped while it runs.
pub struct Leash(Arc<Mutex<Child>>);

/// Held by the thread that feeds or drains the child; waits for it.
pub struct Tether(Arc<Mutex<Child>>);

/// Ties `child` (its pipes already taken) to the caller's lifetime.
pub fn leash(child: Child) -> (Leash, Tether) {
    let shared = Arc::new(Mutex::new(child));
    (Leash(shared.clone()), Tether(shared))
}

fn lock(m: &Mutex<Child>) -> MutexGuard<'_, Child> {
    // A panic elsewhere must not leave the child unkillable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Leash {
    fn drop(&mut self) {
        let mut child = lock(&self.0);
        // Not yet reaped: its pid is still its own.
        if matches!(child.try_wait(), Ok(None)) {
            let pid = child.id();
            if child.kill().is_ok() {
                tracing::warn!(pid, "stopped a child process its run no longer waits for");
            }
        }
    }
}

impl Tether {
    /// Waits for the child to end, killed or not; the lock is held only to look.
    pub fn wait(&self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = lock(&self.0).try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}
