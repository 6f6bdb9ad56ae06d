//! Per-item exponential backoff: the one formula behind the work queue's retries
//! and an informer's restarts.

use std::time::Duration;

/// Computes how long an item that failed `failures` times in a row waits before it is
/// ready again: `base * 2^(failures - 1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay after the `failures`-th consecutive failure (1-based).
    ///
    /// Zero failures means no backoff at all. Saturates at `max` instead of overflowing,
    /// however large `failures` grows.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        // `checked_shl` fails for shifts of 32 and more; `checked_mul` for products
        // beyond `Duration::MAX`. Either way the uncapped delay is past any sane `max`.
        1u32.checked_shl(failures - 1)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |delay| delay.min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_GO: Backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1000));

    #[test]
    fn doubles_from_base() {
        let delays: Vec<_> = (1..=5).map(|n| CLIENT_GO.delay(n)).collect();
        let millis = [5, 10, 20, 40, 80].map(Duration::from_millis);
        assert_eq!(delays, millis);
    }

    #[test]
    fn caps_at_max() {
        // 5 ms * 2^17 = 655.36 s, 5 ms * 2^18 = 1310.72 s > 1000 s.
        assert_eq!(CLIENT_GO.delay(18), Duration::from_millis(655_360));
        assert_eq!(CLIENT_GO.delay(19), Duration::from_secs(1000));
    }

    #[test]
    fn huge_failure_counts_saturate() {
        for failures in [31, 32, 33, 64, 1000, u32::MAX] {
            assert_eq!(CLIENT_GO.delay(failures), Duration::from_secs(1000));
        }
        let unbounded = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(unbounded.delay(3), Duration::MAX);
    }

    #[test]
    fn zero_failures_is_no_delay() {
        assert_eq!(CLIENT_GO.delay(0), Duration::ZERO);
    }

    #[test]
    fn base_above_max_is_capped() {
        let backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert_eq!(backoff.delay(1), Duration::from_secs(1));
    }
}
