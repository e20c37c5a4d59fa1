//! Exponential backoff with jitter, so retries of many runs do not stampede.

use std::time::Duration;

use rand::Rng;

/// Delay before attempt `attempt + 1`: `base * 2^(attempt-1)`, capped at `max`,
/// then a uniformly random point in its upper half.
pub fn retry_delay(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let full = base.saturating_mul(1u32 << exp).min(max);
    let half = full / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_bounds_and_caps() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(300);
        for (attempt, full) in [(1, 10), (2, 20), (3, 40), (4, 80), (6, 300), (20, 300)] {
            for _ in 0..50 {
                let d = retry_delay(attempt, base, max);
                let full = Duration::from_secs(full);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let delays: std::collections::HashSet<_> = (0..20)
            .map(|_| retry_delay(3, Duration::from_secs(10), Duration::from_secs(300)))
            .collect();
        assert!(delays.len() > 1, "jitter should vary the delay");
    }
}
