//! The lease as one attempt sees it. A run's lease lives in the store; this is
//! the attempt's own conservative copy: valid until a monotonic deadline that
//! only a *successful* heartbeat moves forward, measured from when that
//! heartbeat was sent (so it is never later than the store's expiry).
//!
//! Every side effect that commits checks the fence first (`check`), and the
//! executor stops the attempt when the fence runs out. An attempt whose
//! heartbeats keep failing (a network partition from the store) therefore
//! stops itself — rolling back what is open — before the store lets another
//! worker rescue the run, so the run is never executed twice at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Fence {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    base: Instant,
    /// Milliseconds after `base` from which nothing may commit.
    stop_at_ms: AtomicU64,
    lease: Duration,
    margin: Duration,
}

impl Fence {
    /// For work that holds no lease (a one-off command outside the queue).
    pub fn unleased() -> Fence {
        Fence { inner: None }
    }

    /// A lease of `lease` that the store granted no earlier than `granted_at`.
    /// The margin (a quarter of the lease) covers clock-rate drift and the
    /// time one commit takes after its check.
    pub fn new(lease: Duration, granted_at: Instant) -> Fence {
        let margin = lease / 4;
        let inner = Inner {
            base: granted_at,
            stop_at_ms: AtomicU64::new(0),
            lease,
            margin,
        };
        inner
            .stop_at_ms
            .store(millis(lease.saturating_sub(margin)), Ordering::Release);
        Fence {
            inner: Some(Arc::new(inner)),
        }
    }

    /// A heartbeat sent at `sent_at` was acknowledged: the lease runs from then.
    pub fn renewed(&self, sent_at: Instant) {
        if let Some(i) = &self.inner {
            let at = sent_at.saturating_duration_since(i.base) + i.lease.saturating_sub(i.margin);
            i.stop_at_ms.fetch_max(millis(at), Ordering::AcqRel);
        }
    }

    /// Time left before the attempt must stop; `None` without a lease.
    pub fn remaining(&self) -> Option<Duration> {
        let i = self.inner.as_ref()?;
        let stop = Duration::from_millis(i.stop_at_ms.load(Ordering::Acquire));
        Some(stop.saturating_sub(i.base.elapsed()))
    }

    /// Fails when the lease may have lapsed: call right before a side effect commits.
    pub fn check(&self) -> Result<()> {
        match self.remaining() {
            Some(left) if left.is_zero() => Err(Error::LeaseLost(
                "the run's lease could not be renewed in time (store unreachable?); \
                 stopping before another worker may take the run over"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// Resolves when the fence has run out (never, without a lease).
    pub async fn expired(&self) {
        loop {
            match self.remaining() {
                None => std::future::pending::<()>().await,
                Some(left) if left.is_zero() => return,
                Some(left) => tokio::time::sleep(left).await,
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unleased_never_stops() {
        let f = Fence::unleased();
        assert!(f.check().is_ok());
        assert_eq!(f.remaining(), None);
    }

    #[test]
    fn runs_out_a_margin_before_the_lease_and_renewal_moves_it() {
        let base = Instant::now() - Duration::from_millis(800);
        let f = Fence::new(Duration::from_secs(1), base);
        // 1 s lease, 250 ms margin: must stop 750 ms after the grant.
        assert!(
            f.check().is_err(),
            "800 ms after a 1 s grant is past the margin"
        );
        f.renewed(Instant::now());
        let left = f.remaining().unwrap();
        assert!(
            left > Duration::from_millis(700) && left <= Duration::from_millis(750),
            "{left:?}"
        );
        assert!(f.check().is_ok());
        // An older acknowledgement never moves the deadline back.
        f.renewed(base);
        assert!(f.remaining().unwrap() > Duration::from_millis(700));
    }
}
