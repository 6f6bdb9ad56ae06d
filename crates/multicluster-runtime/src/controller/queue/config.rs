//! Tuning knobs of a [`WorkQueue`](super::WorkQueue).

use std::time::Duration;

use crate::backoff::Backoff;

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
    pub(super) borrow_idle_slots: bool,
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
            borrow_idle_slots: true,
            backoff: Backoff::new(Self::DEFAULT_BACKOFF_BASE, Self::DEFAULT_BACKOFF_MAX),
        }
    }

    /// At most `limit` leases outstanding at once, across all clusters; `0` means no
    /// limit (as in kube-runtime's controller config).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit;
        self
    }

    /// At most `limit` leases outstanding at once for any one cluster, beyond those
    /// it [borrows](Self::borrow_idle_slots) while no other cluster has work; `0`
    /// means no cap beyond [`concurrency`](Self::concurrency).
    ///
    /// The default is half of `concurrency`, at least 1 (no cap when `concurrency`
    /// is unlimited): a cluster whose reconciles hang (timeouts against an apiserver
    /// that stopped answering) then holds at most half of the slots while other
    /// clusters have work, and never the last free one. With `concurrency(4)` a
    /// cluster with a backlog runs 2 reconciles at once while another cluster has
    /// ready items, and 3 while it is alone. A controller that serves a single
    /// cluster and wants every slot for it sets this to its `concurrency`.
    pub fn cluster_concurrency(mut self, limit: usize) -> Self {
        self.cluster_concurrency = Some(limit);
        self
    }

    /// Whether a cluster at its [cap](Self::cluster_concurrency) may borrow idle
    /// slots (default: yes), whether the cap is the default one or set explicitly.
    ///
    /// A cluster at its cap gets one more lease only while no other cluster has an
    /// item it could lease (ready, not paused, below its own cap), and only if a slot
    /// stays free after it. That reserved slot is what the cap protects: the next
    /// item of another cluster starts at once even if every reconcile of the
    /// borrower hangs. Borrowing stops as soon as another cluster has a ready item;
    /// borrowed leases are not revoked, they end as usual, and the slots they free
    /// go to the other clusters first. Clusters at their cap borrow in turns.
    ///
    /// As a cluster borrows up to `concurrency - 1` leases, nothing is borrowed when
    /// its cap is already that high (with the default cap: `concurrency` below 3).
    /// Nor with unlimited `concurrency` (`0`): no slot is ever short there, so a cap
    /// only limits the load per cluster.
    ///
    /// Turn it off to make the cap a hard limit per cluster, for instance to bound
    /// the load a controller puts on each cluster's apiserver.
    pub fn borrow_idle_slots(mut self, borrow: bool) -> Self {
        self.borrow_idle_slots = borrow;
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

    /// Leases may be borrowed beyond the cluster cap only while fewer than this many
    /// are out, so that one slot stays free; `0` when nothing is ever borrowed.
    pub(super) fn borrow_below(&self) -> usize {
        let cap = self.effective_cluster_cap();
        // A cap of `concurrency - 1` or more never binds before the last free slot.
        if self.borrow_idle_slots && cap > 0 && cap < self.concurrency.saturating_sub(1) {
            self.concurrency - 1
        } else {
            0
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
