//! Random operation sequences checked against a reference model of the contract.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::FutureExt;
use proptest::prelude::*;
use tokio::time::Instant;

use super::{Lease, PauseReason, QueueConfig, WorkQueue};

type Item = (u8, u8);
type Queue = WorkQueue<u8, u8>;

const CLUSTERS: u8 = 3;
const KEYS: u8 = 4;

#[derive(Debug, Clone)]
enum Op {
    Add(Item),
    /// [`WorkQueue::add_all`] of some keys of one cluster.
    AddAll(u8, Vec<u8>),
    AddAfter(Item, u64),
    AddRateLimited(Item),
    Forget(Item),
    Next,
    Release(usize),
    /// [`Lease::next_ready`] on one of the leases.
    ReleaseAndNext(usize),
    RemoveCluster(u8),
    Pause(u8, PauseReason),
    Resume(u8, PauseReason),
    Advance(u64),
}

fn item() -> impl Strategy<Value = Item> {
    (0..CLUSTERS, 0..KEYS)
}

fn reason() -> impl Strategy<Value = PauseReason> {
    prop::sample::select(PauseReason::ALL.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    ops_weighted(1)
}

/// The operations, with the batch add and the lease-to-lease handover `batched`
/// times as likely as by default.
fn ops_weighted(batched: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => item().prop_map(Op::Add),
        batched => (0..CLUSTERS, proptest::collection::vec(0..KEYS, 0..6)).prop_map(|(c, keys)| Op::AddAll(c, keys)),
        2 * batched => any::<usize>().prop_map(Op::ReleaseAndNext),
        2 => (item(), 0..60u64).prop_map(|(item, millis)| Op::AddAfter(item, millis)),
        2 => item().prop_map(Op::AddRateLimited),
        1 => item().prop_map(Op::Forget),
        5 => Just(Op::Next),
        3 => any::<usize>().prop_map(Op::Release),
        1 => (0..CLUSTERS).prop_map(Op::RemoveCluster),
        1 => (0..CLUSTERS, reason()).prop_map(|(c, r)| Op::Pause(c, r)),
        2 => (0..CLUSTERS, reason()).prop_map(|(c, r)| Op::Resume(c, r)),
        2 => (0..40u64).prop_map(Op::Advance),
    ]
}

/// The contract, written as plainly as possible.
#[derive(Debug, Default)]
struct ModelItem {
    /// When the item is ready, if queued.
    queued_at: Option<Instant>,
    leased: bool,
    /// Earliest time asked for while leased.
    dirty_at: Option<Instant>,
    failures: u32,
}

#[derive(Debug, Default)]
struct Model {
    items: HashMap<Item, ModelItem>,
    /// The reasons each paused cluster is paused for; never an empty set.
    paused: BTreeMap<u8, BTreeSet<PauseReason>>,
    /// Leases per cluster may not exceed this, unless borrowed; `0`: no cap.
    cluster_cap: usize,
    /// Global limit on leases; `0`: none.
    concurrency: usize,
    /// Whether a cluster at its cap may borrow idle slots.
    borrow: bool,
    /// For each cluster with a due item: how many leases each other cluster got
    /// since then. Round-robin allows at most one.
    bypassed: HashMap<u8, HashMap<u8, usize>>,
}

impl Model {
    fn request(&mut self, item: Item, at: Instant) {
        let entry = self.items.entry(item).or_default();
        let slot = if entry.leased {
            &mut entry.dirty_at
        } else {
            &mut entry.queued_at
        };
        *slot = Some(slot.map_or(at, |earlier| earlier.min(at)));
    }

    fn backoff(failures: u32) -> Duration {
        let millis = 5u128 << (failures - 1).min(64);
        Duration::from_millis(millis.min(1_000_000) as u64)
    }

    fn due(&self, now: Instant) -> BTreeSet<Item> {
        self.items
            .iter()
            .filter(|(_, item)| item.queued_at.is_some_and(|at| at <= now))
            .map(|(&item, _)| item)
            .collect()
    }

    /// Leases of `cluster`, or of every cluster.
    fn leased(&self, cluster: Option<u8>) -> usize {
        self.items
            .iter()
            .filter(|((c, _), i)| i.leased && cluster.is_none_or(|cluster| cluster == *c))
            .count()
    }

    fn at_cap(&self, cluster: u8) -> bool {
        self.cluster_cap > 0 && self.leased(Some(cluster)) >= self.cluster_cap
    }

    /// Due items the queue may lease now, given a free slot. Clusters below their cap
    /// come first; only if none of them has a due item may a cluster at its cap
    /// borrow, and only if a slot stays free after the lease.
    fn leasable(&self, now: Instant) -> BTreeSet<Item> {
        let (capped, below): (BTreeSet<Item>, BTreeSet<Item>) = self
            .due(now)
            .into_iter()
            .filter(|(c, _)| !self.paused.contains_key(c))
            .partition(|&(c, _)| self.at_cap(c));
        let spare_slot = self.concurrency > 0 && self.leased(None) + 1 < self.concurrency;
        if below.is_empty() && self.borrow && spare_slot {
            capped
        } else {
            below
        }
    }

    fn queued(&self) -> impl Iterator<Item = (&Item, &ModelItem)> {
        self.items.iter().filter(|(_, item)| item.queued_at.is_some())
    }

    /// Checks a lease the queue handed out and records it.
    fn lease(&mut self, item: Item, now: Instant) -> Result<(), TestCaseError> {
        let due = self.leasable(now);
        prop_assert!(
            due.contains(&item),
            "leased {item:?}, which is not leasable: {due:?}"
        );
        let (cluster, _) = item;
        let waiting: BTreeSet<u8> = due.iter().map(|&(c, _)| c).filter(|&c| c != cluster).collect();
        self.bypassed.retain(|c, _| waiting.contains(c));
        for &waiting in &waiting {
            let count = self
                .bypassed
                .entry(waiting)
                .or_default()
                .entry(cluster)
                .or_default();
            *count += 1;
            prop_assert!(*count <= 1, "cluster {waiting} was bypassed twice by {cluster}");
        }
        let entry = self.items.entry(item).or_default();
        prop_assert!(!entry.leased, "{item:?} leased twice");
        entry.queued_at = None;
        entry.leased = true;
        Ok(())
    }

    fn release(&mut self, item: Item) {
        let entry = self.items.entry(item).or_default();
        entry.leased = false;
        entry.queued_at = entry.dirty_at.take();
    }

    fn remove_cluster(&mut self, cluster: u8) {
        for (_, entry) in self.items.iter_mut().filter(|((c, _), _)| *c == cluster) {
            entry.queued_at = None;
            entry.dirty_at = None;
            entry.failures = 0;
        }
        self.bypassed.remove(&cluster);
        self.paused.remove(&cluster);
    }
}

/// Leases an item only if one is ready now. Unconstrained: tokio's cooperative budget
/// would otherwise fail the 128th attempt within one task poll.
fn try_next(queue: &Queue) -> Option<Lease<u8, u8>> {
    tokio::task::unconstrained(queue.next()).now_or_never().flatten()
}

fn check_counts(queue: &Queue, model: &Model, leases: usize) -> Result<(), TestCaseError> {
    let now = Instant::now();
    prop_assert_eq!(queue.len(), model.queued().count(), "len");
    prop_assert_eq!(queue.ready_len(), model.due(now).len(), "ready_len");
    prop_assert_eq!(queue.processing_len(), leases, "processing_len");
    for cluster in 0..CLUSTERS {
        let depth = model.queued().filter(|((c, _), _)| *c == cluster).count();
        prop_assert_eq!(queue.depth(&cluster), depth, "depth of {}", cluster);
        for key in 0..KEYS {
            let failures = model.items.get(&(cluster, key)).map_or(0, |item| item.failures);
            prop_assert_eq!(queue.num_requeues(&cluster, &key), failures);
        }
    }
    Ok(())
}

async fn run(
    concurrency: usize,
    cluster_cap: Option<usize>,
    borrow: bool,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let mut config = QueueConfig::default()
        .concurrency(concurrency)
        .borrow_idle_slots(borrow);
    if let Some(cap) = cluster_cap {
        config = config.cluster_concurrency(cap);
    }
    let mut model = Model {
        cluster_cap: config.effective_cluster_cap(),
        concurrency,
        borrow,
        ..Model::default()
    };
    let queue = Queue::with_config(config);
    let mut leases: Vec<Lease<u8, u8>> = Vec::new();

    for op in ops {
        let now = Instant::now();
        match op {
            Op::Add((cluster, key)) => {
                queue.add(cluster, key);
                model.request((cluster, key), now);
            }
            Op::AddAll(cluster, keys) => {
                queue.add_all(cluster, keys.iter().copied());
                for key in keys {
                    model.request((cluster, key), now);
                }
            }
            Op::AddAfter((cluster, key), millis) => {
                queue.add_after(cluster, key, Duration::from_millis(millis));
                model.request((cluster, key), now + Duration::from_millis(millis));
            }
            Op::AddRateLimited((cluster, key)) => {
                queue.add_rate_limited(cluster, key);
                let entry = model.items.entry((cluster, key)).or_default();
                entry.failures += 1;
                let at = now + Model::backoff(entry.failures);
                model.request((cluster, key), at);
            }
            Op::Forget((cluster, key)) => {
                queue.forget(&cluster, &key);
                model.items.entry((cluster, key)).or_default().failures = 0;
            }
            Op::Next => {
                let slot_free = concurrency == 0 || leases.len() < concurrency;
                match try_next(&queue) {
                    Some(lease) => {
                        prop_assert!(slot_free, "lease beyond the concurrency limit");
                        model.lease((*lease.cluster(), *lease.key()), now)?;
                        leases.push(lease);
                    }
                    None => prop_assert!(
                        !slot_free || model.leasable(now).is_empty(),
                        "a leasable item was not leased: {:?}",
                        model.leasable(now)
                    ),
                }
            }
            Op::Release(pick) => {
                if !leases.is_empty() {
                    let lease = leases.swap_remove(pick % leases.len());
                    model.release((*lease.cluster(), *lease.key()));
                    lease.done();
                }
            }
            Op::ReleaseAndNext(pick) => {
                if !leases.is_empty() {
                    let lease = leases.swap_remove(pick % leases.len());
                    model.release((*lease.cluster(), *lease.key()));
                    // The slot freed by the release is the one the next item takes.
                    match lease.next_ready() {
                        Some(next) => {
                            model.lease((*next.cluster(), *next.key()), now)?;
                            leases.push(next);
                        }
                        None => prop_assert!(
                            model.leasable(now).is_empty(),
                            "a leasable item was not handed over: {:?}",
                            model.leasable(now)
                        ),
                    }
                }
            }
            Op::RemoveCluster(cluster) => {
                queue.remove_cluster(&cluster);
                model.remove_cluster(cluster);
            }
            Op::Pause(cluster, reason) => {
                queue.pause_cluster(&cluster, reason);
                model.paused.entry(cluster).or_default().insert(reason);
                // It stops waiting; resumed, it queues up again behind the others.
                model.bypassed.remove(&cluster);
            }
            Op::Resume(cluster, reason) => {
                queue.resume_cluster(&cluster, reason);
                if let Some(reasons) = model.paused.get_mut(&cluster) {
                    reasons.remove(&reason);
                    if reasons.is_empty() {
                        model.paused.remove(&cluster);
                    }
                }
            }
            Op::Advance(millis) => tokio::time::advance(Duration::from_millis(millis)).await,
        }
        check_counts(&queue, &model, leases.len())?;
        for cluster in 0..CLUSTERS {
            let want: Vec<PauseReason> = model
                .paused
                .get(&cluster)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            let have: Vec<PauseReason> = queue.pause_reasons(&cluster).iter().collect();
            prop_assert_eq!(have, want, "pause reasons of {}", cluster);
        }
    }

    // No lost item: once every lease ends and every delay passes, each queued item of
    // the model is leased exactly once more, and nothing else is.
    for lease in leases.drain(..) {
        model.release((*lease.cluster(), *lease.key()));
    }
    for cluster in 0..CLUSTERS {
        prop_assert_eq!(queue.is_paused(&cluster), model.paused.contains_key(&cluster));
        for reason in PauseReason::ALL {
            queue.resume_cluster(&cluster, reason);
        }
    }
    model.paused.clear();
    tokio::time::advance(Duration::from_secs(2_000)).await;
    let now = Instant::now();
    let expected = model.due(now);
    prop_assert_eq!(expected.len(), model.queued().count());
    let mut drained = BTreeSet::new();
    while let Some(lease) = try_next(&queue) {
        let item = (*lease.cluster(), *lease.key());
        prop_assert!(drained.insert(item), "{:?} drained twice", item);
    }
    prop_assert_eq!(drained, expected);
    prop_assert_eq!(queue.len(), 0);

    // Nothing is left behind once failure counts are forgotten.
    for cluster in 0..CLUSTERS {
        for key in 0..KEYS {
            queue.forget(&cluster, &key);
        }
    }
    prop_assert_eq!(queue.lock().tracked(), (0, 0));
    prop_assert_eq!(queue.lock().ring_len(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn s13_queue_matches_the_model(
        concurrency in 0..=4usize,
        cluster_cap in proptest::option::of(0..=2usize),
        borrow in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(run(concurrency, cluster_cap, borrow, ops))?;
    }

    #[test]
    fn v02_batched_adds_and_lease_handovers_match_the_model(
        concurrency in 0..=4usize,
        cluster_cap in proptest::option::of(0..=2usize),
        borrow in any::<bool>(),
        ops in proptest::collection::vec(ops_weighted(4), 0..120),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(run(concurrency, cluster_cap, borrow, ops))?;
    }
}
