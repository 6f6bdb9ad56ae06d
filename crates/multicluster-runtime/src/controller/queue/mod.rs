//! A work queue that is fair across clusters.
//!
//! [`WorkQueue<C, K>`] holds items identified by a cluster `C` and a key `K` within that
//! cluster (for a controller: the cluster name and the object reference). It combines
//! what client-go splits over its workqueue, delaying queue and rate limiter, and adds
//! fairness across clusters:
//!
//! - **Dedup while queued.** An item is queued at most once; asking for it again only
//!   moves its ready time earlier.
//! - **Delays and backoff.** [`add_after`](WorkQueue::add_after) queues for later;
//!   [`add_rate_limited`](WorkQueue::add_rate_limited) backs off exponentially per item
//!   until [`forget`](WorkQueue::forget) is called.
//! - **One lease per item.** [`next`](WorkQueue::next) hands out a [`Lease`]; an item
//!   added while leased is queued again when the lease ends, never leased twice.
//! - **Global concurrency.** At most [`QueueConfig::concurrency`] leases exist at once.
//! - **Per-cluster concurrency.** At most [`QueueConfig::cluster_concurrency`] of them
//!   belong to one cluster (by default half of the slots), so a cluster whose
//!   reconciles hang cannot hold every slot. While no other cluster has work, a
//!   cluster at its cap [borrows](QueueConfig::borrow_idle_slots) idle slots, all
//!   but one: that one stays free for the next item of another cluster.
//! - **Fairness.** Ready items wait in one FIFO lane per cluster and are leased
//!   round-robin, one per cluster per turn, so a cluster flooding events delays a quiet
//!   cluster's item by at most one item of each other cluster with ready items.
//! - **Pausing.** A [paused](WorkQueue::pause_cluster) cluster keeps its items, delays
//!   and backoff, but none of them is leased until it is
//!   [resumed](WorkQueue::resume_cluster). A pause has a [`PauseReason`], and the
//!   reasons are independent: a controller pauses a cluster until its cache has
//!   synced, and while its health probes fail; the cluster runs again once both
//!   reasons are cleared, in whichever order.
//!
//! ```
//! use std::time::Duration;
//! use multicluster_runtime::controller::queue::WorkQueue;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let queue = WorkQueue::new();
//! queue.add("cluster-a", "default/web");
//! queue.add_after("cluster-b", "default/db", Duration::from_millis(10));
//!
//! let lease = queue.next().await.expect("queue is running");
//! assert_eq!((*lease.cluster(), *lease.key()), ("cluster-a", "default/web"));
//! // ... reconcile succeeded: reset the item's backoff, then end the lease.
//! queue.forget(lease.cluster(), lease.key());
//! lease.done();
//!
//! let lease = queue.next().await.expect("queue is running");
//! assert_eq!(*lease.cluster(), "cluster-b");
//! # }
//! ```

mod config;
mod delay;
mod fair;
mod pause;
mod state;
mod view;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use self::config::QueueConfig;
pub use self::pause::{PauseReason, PauseReasons};
pub(crate) use self::state::{QueueObserver, Running};
use self::state::{QueueState, Wake, deadline_after};
pub use self::view::QueueView;

/// A deduplicating, delaying, rate-limiting work queue, fair across clusters.
///
/// Cloning is cheap and every clone is the same queue: hand one to each producer
/// (watch event handlers) and each worker. See the [module docs](self) for the rules.
///
/// # Delayed items
///
/// No background task is spawned. A consumer waiting in [`next`](Self::next) sleeps
/// until the earliest deadline, so delayed items become ready without producer
/// activity as long as someone is waiting for work.
///
/// # Removing a cluster
///
/// [`remove_cluster`](Self::remove_cluster) drops everything queued for the cluster
/// and its backoff state. Items of it that are leased at that moment keep their lease
/// and finish, but a requeue requested *before* the removal is discarded when the
/// lease ends. The cluster may come back: adds after the removal are accepted like for
/// any new cluster, including adds of a still-leased item, which is then queued when
/// its lease ends (so it is still never leased twice at once).
///
/// # Shutting down
///
/// [`shutdown`](Self::shutdown) drops all queued items rather than draining them: a
/// controller that stops should not start new reconciles. [`next`](Self::next) then
/// returns `None`, adds are ignored, and outstanding leases end normally without
/// requeueing.
pub struct WorkQueue<C, K> {
    shared: Arc<Shared<C, K>>,
}

struct Shared<C, K> {
    state: Mutex<QueueState<C, K>>,
    /// Wakes consumers waiting for an item or for an earlier deadline.
    notify: Notify,
    /// One permit per outstanding lease; closed on shutdown.
    permits: Arc<Semaphore>,
}

impl<C, K> WorkQueue<C, K>
where
    C: Clone + Eq + Hash + fmt::Debug,
    K: Clone + Eq + Hash + fmt::Debug,
{
    /// A queue with the [default configuration](QueueConfig::new).
    pub fn new() -> Self {
        Self::with_config(QueueConfig::default())
    }

    /// A queue with the given configuration.
    pub fn with_config(config: QueueConfig) -> Self {
        let permits = match config.concurrency {
            0 => Semaphore::MAX_PERMITS,
            limit => limit.min(Semaphore::MAX_PERMITS),
        };
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(QueueState::new(
                    config.backoff,
                    config.effective_cluster_cap(),
                    config.borrow_below(),
                )),
                notify: Notify::new(),
                permits: Arc::new(Semaphore::new(permits)),
            }),
        }
    }

    /// Makes the item ready now, unless it is already ready.
    ///
    /// A delayed item becomes ready now; a leased item is queued again when its lease
    /// ends.
    pub fn add(&self, cluster: C, key: K) {
        self.add_at(cluster, key, None);
    }

    /// Makes every item of `keys` in `cluster` ready now, as [`add`](Self::add) does
    /// one by one, under one lock and with one wake-up: how a controller enqueues
    /// what a cluster's cache listed.
    pub fn add_all(&self, cluster: C, keys: impl IntoIterator<Item = K>) {
        let now = Instant::now();
        let mut state = self.lock();
        let wake = keys.into_iter().fold(Wake::Nothing, |wake, key| {
            wake.and(state.enqueue(cluster.clone(), key, now, now))
        });
        drop(state);
        self.wake(wake);
    }

    /// Makes the item ready after `delay`, or at its current ready time if that is
    /// earlier.
    pub fn add_after(&self, cluster: C, key: K, delay: Duration) {
        self.add_at(cluster, key, Some(delay));
    }

    /// Records a failure of the item and queues it after its backoff delay:
    /// `min(base * 2^(failures-1), max)` for the item's consecutive failures.
    ///
    /// Call [`forget`](Self::forget) once the item succeeds, or the failure count (and
    /// the memory holding it) stays.
    pub fn add_rate_limited(&self, cluster: C, key: K) {
        let mut state = self.lock();
        let wake = state.enqueue_rate_limited(cluster, key, Instant::now());
        drop(state);
        self.wake(wake);
    }

    /// Resets the item's failure count; it does not unqueue the item.
    pub fn forget(&self, cluster: &C, key: &K) {
        self.lock().forget(cluster, key);
    }

    /// How many consecutive failures [`add_rate_limited`](Self::add_rate_limited) has
    /// recorded for the item since it was last forgotten.
    pub fn num_requeues(&self, cluster: &C, key: &K) -> u32 {
        self.lock().failures(cluster, key)
    }

    /// Holds back every item of `cluster`, queued now or later, for `reason`, until
    /// that reason is [cleared](Self::resume_cluster) and no other is left. Items keep
    /// their delays and backoff (a delay that expires while paused leaves the item
    /// ready, not lost); leases already out are not affected. Pausing again for a
    /// reason already set is a no-op.
    pub fn pause_cluster(&self, cluster: &C, reason: PauseReason) {
        let mut state = self.lock();
        let wake = state.pause(cluster, reason);
        drop(state);
        self.wake(wake);
    }

    /// Clears `reason`: once no reason is left, the cluster's items are leased again.
    /// A no-op for a reason that is not set.
    pub fn resume_cluster(&self, cluster: &C, reason: PauseReason) {
        let mut state = self.lock();
        let wake = state.resume(cluster, reason);
        drop(state);
        self.wake(wake);
    }

    /// Whether `cluster` is paused, for any reason.
    pub fn is_paused(&self, cluster: &C) -> bool {
        !self.pause_reasons(cluster).is_empty()
    }

    /// The reasons `cluster` is paused for; empty if it is not.
    pub fn pause_reasons(&self, cluster: &C) -> PauseReasons {
        self.lock().pause_reasons(cluster)
    }

    /// Drops the cluster's queued items, backoff state and every pause reason; see
    /// [Removing a cluster](Self#removing-a-cluster).
    pub fn remove_cluster(&self, cluster: &C) {
        let mut state = self.lock();
        let wake = state.remove_cluster(cluster);
        drop(state);
        self.wake(wake);
        tracing::debug!(?cluster, "removed cluster from work queue");
    }

    /// Waits for a ready item and a free concurrency slot, and leases the item.
    ///
    /// Returns `None` once the queue is shut down, including to callers already
    /// waiting.
    ///
    /// # Cancel safety
    /// Cancel safe: an item is taken from the queue only in the step that returns
    /// its lease, so dropping the future loses no item and holds no slot.
    pub async fn next(&self) -> Option<Lease<C, K>> {
        // The slot comes first: taking an item and then waiting for a slot would hold
        // the item hostage while other workers could have run it.
        let permit = Arc::clone(&self.shared.permits).acquire_owned().await.ok()?;
        loop {
            // Register interest before looking at the state, so an add between the
            // look and the wait still wakes us.
            let mut notified = pin!(self.shared.notify.notified());
            notified.as_mut().enable();
            let deadline = {
                let mut state = self.lock();
                if state.is_shut_down() {
                    return None;
                }
                if let Some((cluster, key)) = state.lease_next(Instant::now()) {
                    if state.leasable_len() > 0 {
                        // Pass the baton: we may have consumed the only wake-up for a
                        // batch of items that became ready together.
                        self.shared.notify.notify_one();
                    }
                    return Some(Lease {
                        shared: Arc::clone(&self.shared),
                        cluster,
                        key,
                        permit: Some(permit),
                    });
                }
                state.next_deadline()
            };
            match deadline {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// Stops the queue; see [Shutting down](Self#shutting-down).
    pub fn shutdown(&self) {
        self.lock().shut_down();
        self.shared.permits.close();
        self.shared.notify.notify_waiters();
        tracing::debug!("work queue shut down");
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.lock().is_shut_down()
    }

    /// Queued items, ready or delayed (leased items are not counted, even if an add
    /// is pending for them).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items that are ready now, including those of paused clusters or of clusters
    /// at their concurrency cap.
    pub fn ready_len(&self) -> usize {
        self.lock().ready_len()
    }

    /// Outstanding leases of one cluster.
    pub fn processing_len_of(&self, cluster: &C) -> usize {
        self.lock().in_flight(cluster)
    }

    /// Queued items of one cluster, ready or delayed.
    pub fn depth(&self, cluster: &C) -> usize {
        self.lock().depth(cluster)
    }

    /// Outstanding leases.
    pub fn processing_len(&self) -> usize {
        self.lock().processing_len()
    }

    /// Reports every later transition of the queue to `observer` (for metrics).
    pub(crate) fn observe(&self, observer: Arc<dyn QueueObserver<C>>) {
        self.lock().observe(observer);
    }

    /// For each of `clusters`, under one lock: its queued items (ready or delayed)
    /// and its outstanding leases with their ages.
    pub(crate) fn cluster_stats<'a>(&self, clusters: impl IntoIterator<Item = &'a C>) -> Vec<(usize, Running)>
    where
        C: 'a,
    {
        let now = Instant::now();
        let state = self.lock();
        let running: std::collections::HashMap<C, Running> = state.running(now).into_iter().collect();
        clusters
            .into_iter()
            .map(|cluster| {
                (
                    state.depth(cluster),
                    running.get(cluster).copied().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn add_at(&self, cluster: C, key: K, delay: Option<Duration>) {
        let now = Instant::now();
        let at = delay.map_or(now, |delay| deadline_after(now, delay));
        let mut state = self.lock();
        let wake = state.enqueue(cluster, key, at, now);
        drop(state);
        self.wake(wake);
    }

    /// Locks the state and first moves due delayed items to the ready lanes, so that
    /// every operation and every metric sees them as ready.
    fn lock(&self) -> MutexGuard<'_, QueueState<C, K>> {
        self.shared.lock_promoted()
    }

    fn wake(&self, wake: Wake) {
        self.shared.wake(wake);
    }
}

impl<C, K> Shared<C, K>
where
    C: Clone + Eq + Hash,
    K: Clone + Eq + Hash,
{
    fn lock_promoted(&self) -> MutexGuard<'_, QueueState<C, K>> {
        // The lock is never held while user code runs, so poisoning would mean a bug
        // in this module; keep serving (a `Lease` released during unwinding must not
        // turn into an abort).
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.promote_due(Instant::now()) > 0 {
            // Consumers sleep until exactly this deadline, but one of them may be
            // between computing its deadline and arming its timer.
            self.notify.notify_one();
        }
        state
    }

    fn wake(&self, wake: Wake) {
        match wake {
            Wake::Nothing => {}
            Wake::Ready => self.notify.notify_one(),
            // Every sleeping consumer must re-arm its timer for the earlier deadline.
            Wake::Deadline => self.notify.notify_waiters(),
        }
    }
}

impl<C, K> Clone for WorkQueue<C, K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C, K> Default for WorkQueue<C, K>
where
    C: Clone + Eq + Hash + fmt::Debug,
    K: Clone + Eq + Hash + fmt::Debug,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<C, K> fmt::Debug for WorkQueue<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueue").finish_non_exhaustive()
    }
}

/// The exclusive right to process one item, handed out by [`WorkQueue::next`].
///
/// While a lease exists its item is *processing*: adds of the item are remembered and
/// take effect when the lease ends, and the lease holds one concurrency slot. The lease
/// ends with [`done`](Self::done) or when it is dropped, so a worker that panics or is
/// cancelled cannot wedge its item.
#[must_use = "dropping a lease ends it at once"]
pub struct Lease<C, K>
where
    C: Clone + Eq + Hash,
    K: Clone + Eq + Hash,
{
    shared: Arc<Shared<C, K>>,
    cluster: C,
    key: K,
    /// `None` once released.
    permit: Option<OwnedSemaphorePermit>,
}

impl<C, K> Lease<C, K>
where
    C: Clone + Eq + Hash,
    K: Clone + Eq + Hash,
{
    /// The cluster of the leased item.
    pub fn cluster(&self) -> &C {
        &self.cluster
    }

    /// The key of the leased item within its cluster.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Ends the lease. The same as dropping it; spelled out for readability.
    pub fn done(self) {}

    /// Ends the lease and, if an item can be leased right now, leases it with the
    /// same concurrency slot; `None` (the slot given back) if none can.
    ///
    /// The item is the one [`WorkQueue::next`] would hand out at this moment (the same
    /// fairness and caps), but nothing waits and no other consumer is woken for it:
    /// a worker that goes from one item to the next this way serves a backlog
    /// without a wake-up per item. Returns `None` once the queue is shut down.
    pub fn next_ready(mut self) -> Option<Lease<C, K>> {
        let permit = self.permit.take()?;
        let shared = Arc::clone(&self.shared);
        let now = Instant::now();
        let mut state = shared.lock_promoted();
        let released = state.release(&self.cluster, &self.key, now);
        let next = if state.is_shut_down() {
            None
        } else {
            state.lease_next(now)
        };
        let Some((cluster, key)) = next else {
            drop(state);
            shared.wake(released);
            drop(permit);
            return None;
        };
        // The release may have made ready the very item taken here; wake others
        // only for what is left, and always for an earlier deadline.
        let wake = match released {
            Wake::Deadline => Wake::Deadline,
            _ if state.leasable_len() > 0 => Wake::Ready,
            _ => Wake::Nothing,
        };
        drop(state);
        shared.wake(wake);
        Some(Lease {
            shared,
            cluster,
            key,
            permit: Some(permit),
        })
    }

    fn release(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut state = self.shared.lock_promoted();
        let wake = state.release(&self.cluster, &self.key, Instant::now());
        drop(state);
        self.shared.wake(wake);
        // Free the slot only after any requeue, so a worker waiting for the slot finds
        // the item.
        drop(permit);
    }
}

impl<C, K> Drop for Lease<C, K>
where
    C: Clone + Eq + Hash,
    K: Clone + Eq + Hash,
{
    fn drop(&mut self) {
        self.release();
    }
}

impl<C, K> fmt::Debug for Lease<C, K>
where
    C: Clone + Eq + Hash + fmt::Debug,
    K: Clone + Eq + Hash + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("cluster", &self.cluster)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}
