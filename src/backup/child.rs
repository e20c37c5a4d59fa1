//! Child processes (pg_dump, pg_restore) tied to the attempt that started
//! them: when that attempt is dropped (its run timed out, was cancelled or
//! lost its lease), the `Leash` it holds kills the child, so no dump or
//! restore outlives its run. The child is waited for by polling under a lock,
//! so a kill never reaches a process id the system has already reused.

use std::io::Write;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Held by the async side; kills the child (with `group`, its whole process
/// group: pg_restore's parallel workers) when dropped while it runs.
pub struct Leash {
    child: Arc<Mutex<Child>>,
    group: bool,
}

/// Held by the thread that feeds or drains the child; waits for it.
pub struct Tether(Arc<Mutex<Child>>);

/// Ties `child` (its pipes already taken) to the caller's lifetime.
pub fn leash(child: Child) -> (Leash, Tether) {
    let shared = Arc::new(Mutex::new(child));
    let leash = Leash {
        child: shared.clone(),
        group: false,
    };
    (leash, Tether(shared))
}

/// As `leash`, for a child started as the leader of its own process group
/// (`process_group(0)`): the whole group is killed.
pub fn leash_group(child: Child) -> (Leash, Tether) {
    let (mut leash, tether) = leash(child);
    leash.group = true;
    (leash, tether)
}

fn lock(m: &Mutex<Child>) -> MutexGuard<'_, Child> {
    // A panic elsewhere must not leave the child unkillable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Leash {
    fn drop(&mut self) {
        let mut child = lock(&self.child);
        // Not yet reaped: its pid (and group id) is still its own.
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        let pid = child.id();
        let killed = match i32::try_from(pid) {
            // SAFETY: killpg(2) only sends a signal; the group is the unreaped child's own.
            Ok(pgid) if self.group => unsafe { libc::killpg(pgid, libc::SIGKILL) == 0 },
            _ => child.kill().is_ok(),
        };
        if killed {
            tracing::warn!(pid, "stopped a child process its run no longer waits for");
        }
    }
}

/// Set when the attempt that started a copy on a blocking thread is dropped:
/// the copy's writer then fails, so the thread stops (and lets go of its
/// files and connections) instead of running on for hours.
pub struct Tripwire(Arc<AtomicBool>);

/// The blocking thread's side of a `Tripwire`.
pub struct Tripped(Arc<AtomicBool>);

pub fn tripwire() -> (Tripwire, Tripped) {
    let flag = Arc::new(AtomicBool::new(false));
    (Tripwire(flag.clone()), Tripped(flag))
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Tripped {
    /// `w`, failing every write once the tripwire is dropped.
    pub fn writer<W: Write>(self, w: W) -> impl Write {
        StopWriter {
            inner: w,
            flag: self.0,
        }
    }
}

struct StopWriter<W> {
    inner: W,
    flag: Arc<AtomicBool>,
}

impl<W: Write> Write for StopWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.flag.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(
                "stopped: the run that started this copy ended",
            ));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
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
