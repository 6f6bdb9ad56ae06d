//! Tuning knobs of a [`WorkQueue`](super::WorkQueue).

use std::time::Duration;

use super::backoff::Backoff;

/// Configuration of a [`WorkQueue`](super::WorkQueue), built with chained setters.
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::controller::queue::{QueueConfig, WorkQueue};
///
/// let config = QueueConfig::default()
///     .concurrency(8)
///     .backoff(Duration::from_millis(10), Duration::from_secs(300));
/// let queue: WorkQueue<String, String> = WorkQueue::with_config(config);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub(super) concurrency: usize,
    /// `None`: derived from `concurrency`, see [`QueueConfig::cluster_concurrency`].
    pub(super) cluster_concurrency: Option<usize>,
    pub(super) backoff: Backoff,
}

impl QueueConfig {
    /// Like controller-runtime's `MaxConcurrentReconciles`.
    pub const DEFAULT_CONCURRENCY: usize = 1;
    /// Like client-go's `DefaultTypedControllerRateLimiter`.
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(5);
    /// Like client-go's `DefaultTypedControllerRateLimiter`.
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(1000);

    /// The defaults: one lease at a time, backoff from 5 ms doubling up to 1000 s.
    pub fn new() -> Self {
        Self {
            concurrency: Self::DEFAULT_CONCURRENCY,
            cluster_concurrency: None,
            backoff: Backoff::new(Self::DEFAULT_BACKOFF_BASE, Self::DEFAULT_BACKOFF_MAX),
        }
    }

    /// At most `limit` leases outstanding at once, across all clusters; `0` means no
    /// limit (as in kube-runtime's controller config).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit;
        self
    }

    /// At most `limit` leases outstanding at once for any one cluster; `0` means no
    /// cap beyond [`concurrency`](Self::concurrency).
    ///
    /// The default is half of `concurrency`, at least 1 (no cap when `concurrency`
    /// is unlimited): a cluster whose reconciles hang (timeouts against an apiserver
    /// that stopped answering) can then hold at most half of the slots, and the other
    /// clusters keep the rest. A controller that serves a single cluster and wants
    /// every slot for it sets this to its `concurrency`.
    pub fn cluster_concurrency(mut self, limit: usize) -> Self {
        self.cluster_concurrency = Some(limit);
        self
    }

    /// The global limit set by [`concurrency`](Self::concurrency); `0` for none.
    pub(crate) fn max_concurrency(&self) -> usize {
        self.concurrency
    }

    /// The per-cluster cap in force: explicit, or derived from `concurrency`.
    pub(super) fn effective_cluster_cap(&self) -> usize {
        match (self.cluster_concurrency, self.concurrency) {
            (Some(limit), _) => limit,
            (None, 0) => 0,
            (None, limit) => (limit / 2).max(1),
        }
    }

    /// After the n-th consecutive [`add_rate_limited`](super::WorkQueue::add_rate_limited)
    /// of an item, it waits `min(base * 2^(n-1), max)`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(base, max);
        self
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self::new()
    }
}
