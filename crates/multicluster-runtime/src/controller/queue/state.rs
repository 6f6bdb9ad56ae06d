//! The queue's bookkeeping, free of locks, clocks and wake-ups.
//!
//! Every operation takes `now` explicitly; [`super::WorkQueue`] wraps this in a mutex
//! and turns the returned [`Wake`] into notifications.

use std::collections::VecDeque;

use crate::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::delay::{TimerKey, Timers};
use super::fair::FairQueue;
use super::pause::{PauseReason, PauseReasons};
use crate::backoff::Backoff;

/// Where an item is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Not queued; the entry only exists to remember its failure count.
    Idle,
    /// In its cluster's lane of the [`FairQueue`], since the instant it became ready
    /// (for the time-in-queue metric).
    Ready { since: Instant },
    /// Waiting in [`Timers`] until the key's instant.
    Delayed(TimerKey),
    /// Leased to a worker. `requeue_at` is the earliest time requested by adds that
    /// arrived meanwhile ("dirty"); the item is queued then, once the lease ends.
    /// `since` is when the lease began (for the work-duration metrics).
    Processing {
        requeue_at: Option<Instant>,
        since: Instant,
    },
}

#[derive(Debug)]
struct Item {
    slot: Slot,
    /// Consecutive failures, for backoff. Reset by `forget` and cluster removal.
    failures: u32,
}

impl Item {
    /// An entry that carries no information can be dropped.
    fn is_vacant(&self) -> bool {
        self.slot == Slot::Idle && self.failures == 0
    }
}

/// The items of one cluster that the queue knows about.
#[derive(Debug)]
struct ClusterItems<K> {
    items: HashMap<K, Item>,
    /// How many of `items` are [`Slot::Delayed`], so `depth` needs no scan.
    delayed: usize,
}

impl<K> ClusterItems<K> {
    fn new() -> Self {
        Self {
            items: HashMap::default(),
            delayed: 0,
        }
    }
}

const NEW_ITEM: Item = Item {
    slot: Slot::Idle,
    failures: 0,
};

/// What the caller must wake after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Wake {
    /// Nothing a waiting consumer could act on changed.
    Nothing,
    /// An item became ready: one consumer can take it.
    Ready,
    /// The earliest deadline moved earlier: sleeping consumers must re-arm their timer.
    Deadline,
}

impl Wake {
    /// What to wake for both `self` and `other`: waking every waiter covers both.
    pub(crate) fn and(self, other: Wake) -> Wake {
        match (self, other) {
            (Wake::Deadline, _) | (_, Wake::Deadline) => Wake::Deadline,
            (Wake::Ready, _) | (_, Wake::Ready) => Wake::Ready,
            _ => Wake::Nothing,
        }
    }
}

/// Receives the queue's transitions, for metrics. Called with the queue's lock held,
/// so implementations must be quick and must not call back into the queue.
pub(crate) trait QueueObserver<C>: Send + Sync {
    /// An item became ready: a new add, an expired delay, or a requeue at lease end.
    fn added(&self, cluster: &C);
    /// [`add_rate_limited`](super::WorkQueue::add_rate_limited) was called.
    fn retried(&self, cluster: &C);
    /// An item was leased after waiting `waited` since it became ready.
    fn leased(&self, cluster: &C, waited: Duration);
    /// A lease ended after `worked`.
    fn released(&self, cluster: &C, worked: Duration);
}

/// What is running for one cluster, as of one instant; see [`QueueState::running`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Running {
    /// Leases outstanding.
    pub leases: usize,
    /// Their ages added up.
    pub total: Duration,
    /// The age of the oldest.
    pub longest: Duration,
}

pub(crate) struct QueueState<C, K> {
    clusters: HashMap<C, ClusterItems<K>>,
    ready: FairQueue<C, K>,
    delayed: Timers<(C, K)>,
    backoff: Backoff,
    processing: usize,
    /// Leases outstanding per cluster; clusters without leases have no entry.
    in_flight: HashMap<C, usize>,
    /// At most this many leases per cluster, unless borrowed; `0` means no cap.
    cluster_cap: usize,
    /// A cluster at its cap may borrow a lease while fewer than this many are out
    /// and no cluster below its cap has a leasable item; `0`: never.
    borrow_below: usize,
    /// The clusters at their cap, in the order they take turns borrowing. Kept only
    /// when `borrow_below > 0`, so it never holds more than `concurrency` clusters.
    capped: VecDeque<C>,
    /// Clusters whose items are not leased until every reason is cleared; clusters
    /// without a reason have no entry.
    paused: HashMap<C, PauseReasons>,
    shut_down: bool,
    observer: Option<Arc<dyn QueueObserver<C>>>,
}

impl<C: std::fmt::Debug, K: std::fmt::Debug> std::fmt::Debug for QueueState<C, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueState")
            .field("clusters", &self.clusters)
            .field("processing", &self.processing)
            .field("paused", &self.paused)
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

impl<C, K> QueueState<C, K>
where
    C: Clone + Eq + Hash,
    K: Clone + Eq + Hash,
{
    /// `cluster_cap` and `borrow_below` as in the fields of the same name.
    pub(crate) fn new(backoff: Backoff, cluster_cap: usize, borrow_below: usize) -> Self {
        Self {
            clusters: HashMap::default(),
            ready: FairQueue::new(),
            delayed: Timers::new(),
            backoff,
            processing: 0,
            in_flight: HashMap::default(),
            cluster_cap,
            borrow_below,
            capped: VecDeque::new(),
            paused: HashMap::default(),
            shut_down: false,
            observer: None,
        }
    }

    /// Reports every later transition to `observer`.
    pub(crate) fn observe(&mut self, observer: Arc<dyn QueueObserver<C>>) {
        self.observer = Some(observer);
    }

    /// Whether `cluster` holds as many leases as it may.
    fn at_cap(&self, cluster: &C) -> bool {
        self.cluster_cap > 0
            && self
                .in_flight
                .get(cluster)
                .is_some_and(|n| *n >= self.cluster_cap)
    }

    /// Whether a cluster at its cap may borrow a lease now, slots permitting: one
    /// slot must stay free after the lease.
    fn may_borrow(&self) -> bool {
        self.processing < self.borrow_below
    }

    /// Ready items that clusters at their cap could borrow now. None while a cluster
    /// below its cap has leasable items: those come first.
    fn borrowable_len(&self) -> usize {
        if !self.may_borrow() || self.ready.leasable_len() > 0 {
            return 0;
        }
        self.capped
            .iter()
            .filter(|cluster| !self.paused.contains_key(*cluster))
            .map(|cluster| self.ready.cluster_len(cluster))
            .sum()
    }

    /// `Wake::Ready` if items became borrowable that were not (`could_borrow`).
    fn borrow_wake(&self, could_borrow: bool) -> Wake {
        if !could_borrow && self.borrowable_len() > 0 {
            Wake::Ready
        } else {
            Wake::Nothing
        }
    }

    /// Serves `cluster` again if nothing holds it back; `Wake::Ready` if that made
    /// items leasable.
    fn unpark_if_free(&mut self, cluster: &C) -> Wake {
        if self.paused.contains_key(cluster) || self.at_cap(cluster) || !self.ready.unpark(cluster) {
            Wake::Nothing
        } else {
            Wake::Ready
        }
    }

    /// Holds back the items of `cluster` for `reason`, until that reason and every
    /// other one is cleared by [`resume`](Self::resume).
    /// `Wake::Ready` if that lets a cluster at its cap borrow.
    pub(crate) fn pause(&mut self, cluster: &C, reason: PauseReason) -> Wake {
        if self.shut_down {
            return Wake::Nothing;
        }
        let could_borrow = self.borrowable_len() > 0;
        self.paused.entry(cluster.clone()).or_default().insert(reason);
        self.ready.park(cluster);
        self.borrow_wake(could_borrow)
    }

    /// Clears `reason`; the cluster's items are leased again once no reason is left.
    pub(crate) fn resume(&mut self, cluster: &C, reason: PauseReason) -> Wake {
        let Some(reasons) = self.paused.get_mut(cluster) else {
            return Wake::Nothing;
        };
        reasons.remove(reason);
        if !reasons.is_empty() {
            return Wake::Nothing;
        }
        let could_borrow = self.borrowable_len() > 0;
        self.paused.remove(cluster);
        // At its cap, it stays parked but may borrow.
        self.unpark_if_free(cluster).and(self.borrow_wake(could_borrow))
    }

    pub(crate) fn pause_reasons(&self, cluster: &C) -> PauseReasons {
        self.paused.get(cluster).copied().unwrap_or_default()
    }

    /// Asks for the item to be ready at `at`; the earlier of this and any pending
    /// request wins.
    pub(crate) fn enqueue(&mut self, cluster: C, key: K, at: Instant, now: Instant) -> Wake {
        if self.shut_down {
            return Wake::Nothing;
        }
        let items = self
            .clusters
            .entry(cluster.clone())
            .or_insert_with(ClusterItems::new);
        let item = items.items.entry(key.clone()).or_insert(NEW_ITEM);
        let at = match item.slot {
            Slot::Ready { .. } => return Wake::Nothing,
            Slot::Processing { requeue_at, since } => {
                let at = requeue_at.map_or(at, |earlier| earlier.min(at));
                item.slot = Slot::Processing {
                    requeue_at: Some(at),
                    since,
                };
                return Wake::Nothing;
            }
            Slot::Delayed(timer) if timer.at() <= at => return Wake::Nothing,
            Slot::Delayed(timer) => {
                self.delayed.remove(&timer);
                items.delayed -= 1;
                at
            }
            Slot::Idle => at,
        };
        if at <= now {
            item.slot = Slot::Ready { since: now };
            if let Some(observer) = &self.observer {
                observer.added(&cluster);
            }
            self.ready.push(cluster, key);
            Wake::Ready
        } else {
            let earliest_before = self.delayed.next_deadline();
            item.slot = Slot::Delayed(self.delayed.insert(at, (cluster, key)));
            items.delayed += 1;
            if earliest_before.is_none_or(|earliest| at < earliest) {
                Wake::Deadline
            } else {
                Wake::Nothing
            }
        }
    }

    /// Records one more failure and asks for the item after the resulting backoff.
    pub(crate) fn enqueue_rate_limited(&mut self, cluster: C, key: K, now: Instant) -> Wake {
        if self.shut_down {
            return Wake::Nothing;
        }
        let item = self
            .clusters
            .entry(cluster.clone())
            .or_insert_with(ClusterItems::new)
            .items
            .entry(key.clone())
            .or_insert(NEW_ITEM);
        item.failures = item.failures.saturating_add(1);
        let failures = item.failures;
        if let Some(observer) = &self.observer {
            observer.retried(&cluster);
        }
        let at = deadline_after(now, self.backoff.delay(failures));
        self.enqueue(cluster, key, at, now)
    }

    /// Clears the failure count of an item.
    pub(crate) fn forget(&mut self, cluster: &C, key: &K) {
        if let Some(items) = self.clusters.get_mut(cluster)
            && let Some(item) = items.items.get_mut(key)
        {
            item.failures = 0;
            self.drop_if_vacant(cluster, key);
        }
    }

    /// Consecutive failures recorded for an item.
    pub(crate) fn failures(&self, cluster: &C, key: &K) -> u32 {
        self.clusters
            .get(cluster)
            .and_then(|items| items.items.get(key))
            .map_or(0, |item| item.failures)
    }

    /// Moves every item whose time has come into the ready lanes; returns how many.
    pub(crate) fn promote_due(&mut self, now: Instant) -> usize {
        let mut promoted = 0;
        while let Some((cluster, key)) = self.delayed.pop_due(now) {
            let Some(items) = self.clusters.get_mut(&cluster) else {
                invariant_broken("timer without a cluster");
                continue;
            };
            let Some(item) = items.items.get_mut(&key) else {
                invariant_broken("timer without an item");
                continue;
            };
            // Ready since its deadline, even if this promotion comes later.
            let since = match item.slot {
                Slot::Delayed(timer) => timer.at(),
                _ => now,
            };
            item.slot = Slot::Ready { since };
            items.delayed -= 1;
            if let Some(observer) = &self.observer {
                observer.added(&cluster);
            }
            self.ready.push(cluster, key);
            promoted += 1;
        }
        promoted
    }

    /// Leases the next ready item, round-robin across the clusters that are neither
    /// paused nor at their cap; if none of them has one, lets a cluster at its cap
    /// borrow, if allowed.
    pub(crate) fn lease_next(&mut self, now: Instant) -> Option<(C, K)> {
        let (cluster, key) = match self.ready.pop() {
            Some(next) => next,
            None => self.pop_borrowed()?,
        };
        let leases = self.in_flight.entry(cluster.clone()).or_insert(0);
        *leases += 1;
        if self.cluster_cap > 0 && *leases == self.cluster_cap {
            self.ready.park(&cluster);
            if self.borrow_below > 0 {
                self.capped.push_back(cluster.clone());
            }
        }
        if let Some(item) = self
            .clusters
            .get_mut(&cluster)
            .and_then(|items| items.items.get_mut(&key))
        {
            if let (Slot::Ready { since }, Some(observer)) = (item.slot, &self.observer) {
                observer.leased(&cluster, now.saturating_duration_since(since));
            }
            item.slot = Slot::Processing {
                requeue_at: None,
                since: now,
            };
        } else {
            invariant_broken("ready item without an entry");
        }
        self.processing += 1;
        Some((cluster, key))
    }

    /// An item of a cluster at its cap, if one may borrow now. The clusters at their
    /// cap take turns, so that two of them share the idle slots.
    fn pop_borrowed(&mut self) -> Option<(C, K)> {
        if !self.may_borrow() {
            return None;
        }
        for _ in 0..self.capped.len() {
            let cluster = self.capped.pop_front()?;
            let key = if self.paused.contains_key(&cluster) {
                None
            } else {
                self.ready.pop_from(&cluster)
            };
            self.capped.push_back(cluster.clone());
            if let Some(key) = key {
                return Some((cluster, key));
            }
        }
        None
    }

    /// Ends a lease; a dirty item is queued at the time it was asked for.
    pub(crate) fn release(&mut self, cluster: &C, key: &K, now: Instant) -> Wake {
        let Some(item) = self
            .clusters
            .get_mut(cluster)
            .and_then(|items| items.items.get_mut(key))
        else {
            invariant_broken("released an item that is not tracked");
            return Wake::Nothing;
        };
        let Slot::Processing { requeue_at, since } = item.slot else {
            invariant_broken("released an item that is not processing");
            return Wake::Nothing;
        };
        item.slot = Slot::Idle;
        if let Some(observer) = &self.observer {
            observer.released(cluster, now.saturating_duration_since(since));
        }
        let could_borrow = self.borrowable_len() > 0;
        self.processing -= 1;
        let was_at_cap = self.at_cap(cluster);
        if let Some(count) = self.in_flight.get_mut(cluster) {
            *count -= 1;
            if *count == 0 {
                self.in_flight.remove(cluster);
            }
        }
        // A borrower that is still at its cap stays parked.
        let freed = if was_at_cap && !self.at_cap(cluster) {
            self.capped.retain(|capped| capped != cluster);
            self.unpark_if_free(cluster)
        } else {
            Wake::Nothing
        };
        let requeued = match requeue_at {
            Some(at) if !self.shut_down => self.enqueue(cluster.clone(), key.clone(), at, now),
            _ => {
                self.drop_if_vacant(cluster, key);
                Wake::Nothing
            }
        };
        // The freed slot may be one a cluster at its cap can now borrow.
        freed.and(requeued).and(self.borrow_wake(could_borrow))
    }

    /// Forgets every queued item, failure count and pause reason of `cluster`. Leased items
    /// stay tracked as processing (so a fresh add cannot lease them twice) but lose
    /// any pending requeue. `Wake::Ready` if that lets a cluster at its cap borrow.
    pub(crate) fn remove_cluster(&mut self, cluster: &C) -> Wake {
        let could_borrow = self.borrowable_len() > 0;
        if self.paused.remove(cluster).is_some() {
            let _ = self.unpark_if_free(cluster); // nothing queued is left to wake for
        }
        let Some(items) = self.clusters.get_mut(cluster) else {
            return Wake::Nothing;
        };
        self.ready.remove_cluster(cluster);
        let delayed = &mut self.delayed;
        items.items.retain(|_, item| match item.slot {
            Slot::Processing { since, .. } => {
                item.slot = Slot::Processing {
                    requeue_at: None,
                    since,
                };
                item.failures = 0;
                true
            }
            Slot::Delayed(timer) => {
                delayed.remove(&timer);
                false
            }
            Slot::Idle | Slot::Ready { .. } => false,
        });
        items.delayed = 0;
        if items.items.is_empty() {
            self.clusters.remove(cluster);
        }
        self.borrow_wake(could_borrow)
    }

    /// Stops queueing: drops every queued item, and makes later adds and requeues
    /// no-ops. Leased items stay tracked until released.
    pub(crate) fn shut_down(&mut self) {
        self.shut_down = true;
        self.paused.clear();
        self.ready.clear();
        self.delayed.clear();
        self.clusters.retain(|_, items| {
            items.delayed = 0;
            items.items.retain(|_, item| match item.slot {
                Slot::Processing { since, .. } => {
                    item.slot = Slot::Processing {
                        requeue_at: None,
                        since,
                    };
                    true
                }
                _ => false,
            });
            !items.items.is_empty()
        });
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.delayed.next_deadline()
    }

    pub(crate) fn len(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Ready items a consumer with a free slot could lease now, borrowed or not.
    pub(crate) fn leasable_len(&self) -> usize {
        self.ready.leasable_len() + self.borrowable_len()
    }

    pub(crate) fn in_flight(&self, cluster: &C) -> usize {
        self.in_flight.get(cluster).copied().unwrap_or(0)
    }

    pub(crate) fn depth(&self, cluster: &C) -> usize {
        let delayed = self.clusters.get(cluster).map_or(0, |items| items.delayed);
        self.ready.cluster_len(cluster) + delayed
    }

    pub(crate) fn processing_len(&self) -> usize {
        self.processing
    }

    /// The outstanding leases of every cluster that has any, with their ages at
    /// `now`. Scans the items of those clusters only.
    pub(crate) fn running(&self, now: Instant) -> Vec<(C, Running)> {
        self.in_flight
            .keys()
            .filter_map(|cluster| {
                let items = self.clusters.get(cluster)?;
                let mut running = Running::default();
                for item in items.items.values() {
                    if let Slot::Processing { since, .. } = item.slot {
                        let age = now.saturating_duration_since(since);
                        running.leases += 1;
                        running.total += age;
                        running.longest = running.longest.max(age);
                    }
                }
                Some((cluster.clone(), running))
            })
            .collect()
    }

    fn drop_if_vacant(&mut self, cluster: &C, key: &K) {
        let Some(items) = self.clusters.get_mut(cluster) else {
            return;
        };
        if items.items.get(key).is_some_and(Item::is_vacant) {
            items.items.remove(key);
        }
        if items.items.is_empty() {
            self.clusters.remove(cluster);
        }
    }

    /// Clusters and items with any bookkeeping left (for leak tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> (usize, usize) {
        let items = self.clusters.values().map(|items| items.items.len()).sum();
        let clusters =
            self.clusters.len() + self.in_flight.len() + self.ready.parked_count() + self.capped.len();
        (clusters, items)
    }

    /// Turns held by the fair ring (for leak tests).
    #[cfg(test)]
    pub(crate) fn ring_len(&self) -> usize {
        self.ready.ring_len()
    }
}

/// Reports a broken internal invariant: a bug in this module, never a misuse.
///
/// Panics in debug builds so tests catch it, except while unwinding (a [`Lease`] is
/// released from `Drop`, where a second panic would abort the process); release
/// builds log and carry on with the state repaired as well as possible.
///
/// [`Lease`]: super::Lease
#[track_caller]
fn invariant_broken(what: &str) {
    tracing::error!(what, "work queue invariant broken");
    if cfg!(debug_assertions) && !std::thread::panicking() {
        panic!("work queue invariant broken: {what}");
    }
}

/// `now + delay`, saturating at a far-future instant instead of panicking on overflow
/// (`Duration::MAX` is a valid argument to `add_after`).
pub(crate) fn deadline_after(now: Instant, delay: std::time::Duration) -> Instant {
    /// About 30 years: later than any deadline that matters, and far from the end of
    /// `Instant`'s range, which is measured from an arbitrary recent origin.
    const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(delay.min(FAR_FUTURE)).unwrap_or(now)
}
