//! Behaviour of [`WorkQueue`] rule by rule, on tokio's paused clock so that delays are
//! asserted exactly.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;

use super::{Lease, PauseReason, QueueConfig, WorkQueue};

type Queue = WorkQueue<&'static str, u32>;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Leases an item only if one is ready now. Unconstrained: tokio's cooperative budget
/// would otherwise fail the 128th attempt within one task poll.
fn try_next(queue: &Queue) -> Option<Lease<&'static str, u32>> {
    tokio::task::unconstrained(queue.next()).now_or_never().flatten()
}

/// Leases the next item and reports what it was and how long it took to arrive.
///
/// Gives up after a (virtual) hour, past any backoff, so a lost item fails the test
/// instead of hanging it.
async fn next_timed(queue: &Queue) -> (&'static str, u32, Duration) {
    let start = Instant::now();
    let lease = tokio::time::timeout(Duration::from_secs(3600), queue.next())
        .await
        .expect("an item within an hour")
        .expect("queue is running");
    let item = (*lease.cluster(), *lease.key(), start.elapsed());
    lease.done();
    item
}

fn tracked(queue: &Queue) -> (usize, usize) {
    queue.lock().tracked()
}

#[test]
fn queue_and_lease_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}
    assert_send_sync::<Queue>();
    assert_send_sync::<Lease<String, String>>();
    let queue = Queue::new();
    assert_send(&queue.next());
}

#[tokio::test(start_paused = true)]
async fn add_dedups_while_queued() {
    let queue = Queue::new();
    queue.add("a", 1);
    queue.add("a", 1);
    queue.add("a", 2);
    assert_eq!((queue.len(), queue.ready_len(), queue.depth(&"a")), (2, 2, 2));
    assert_eq!(next_timed(&queue).await, ("a", 1, Duration::ZERO));
    assert_eq!(next_timed(&queue).await, ("a", 2, Duration::ZERO));
    assert!(try_next(&queue).is_none());
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn add_makes_a_delayed_item_ready_now() {
    let queue = Queue::new();
    queue.add_after("a", 1, Duration::from_secs(10));
    assert_eq!((queue.len(), queue.ready_len()), (1, 0));
    queue.add("a", 1);
    assert_eq!((queue.len(), queue.ready_len()), (1, 1));
    assert_eq!(next_timed(&queue).await, ("a", 1, Duration::ZERO));
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn add_after_keeps_the_earlier_time() {
    let queue = Queue::new();
    queue.add_after("a", 1, ms(10));
    queue.add_after("a", 1, ms(50));
    queue.add_after("a", 2, ms(50));
    queue.add_after("a", 2, ms(20));
    assert_eq!(queue.len(), 2);
    assert_eq!(next_timed(&queue).await, ("a", 1, ms(10)));
    assert_eq!(next_timed(&queue).await, ("a", 2, ms(10)));
    assert!(queue.is_empty());

    // A ready item stays ready.
    queue.add("a", 3);
    queue.add_after("a", 3, ms(100));
    assert_eq!(next_timed(&queue).await, ("a", 3, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn delayed_items_become_ready_without_producer_activity() {
    let queue = Queue::new();
    queue.add_after("a", 1, ms(30));
    queue.add_after("b", 1, ms(15));
    assert_eq!(next_timed(&queue).await, ("b", 1, ms(15)));
    assert_eq!(next_timed(&queue).await, ("a", 1, ms(15)));
}

#[tokio::test(start_paused = true)]
async fn waiting_consumer_rearms_for_an_earlier_deadline() {
    let queue = Queue::new();
    queue.add_after("a", 1, Duration::from_secs(60));
    let consumer = tokio::spawn({
        let queue = queue.clone();
        async move { next_timed(&queue).await }
    });
    tokio::time::sleep(ms(5)).await; // the consumer now sleeps until t=60s
    queue.add_after("b", 1, ms(10));
    assert_eq!(consumer.await.expect("consumer"), ("b", 1, ms(15)));
}

#[tokio::test(start_paused = true)]
async fn waiting_consumer_wakes_for_a_ready_item() {
    let queue = Queue::new();
    let consumer = tokio::spawn({
        let queue = queue.clone();
        async move { next_timed(&queue).await }
    });
    tokio::time::sleep(ms(7)).await;
    queue.add("a", 1);
    assert_eq!(consumer.await.expect("consumer"), ("a", 1, ms(7)));
}

#[tokio::test(start_paused = true)]
async fn huge_delays_do_not_panic() {
    let queue = Queue::new();
    queue.add_after("a", 1, Duration::MAX);
    assert_eq!((queue.len(), queue.ready_len()), (1, 0));
    queue.add("a", 1);
    assert_eq!(next_timed(&queue).await, ("a", 1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_per_failure_and_resets_on_forget() {
    let queue = Queue::new();
    let mut delays = Vec::new();
    for _ in 0..6 {
        queue.add_rate_limited("a", 1);
        delays.push(next_timed(&queue).await.2);
    }
    assert_eq!(delays, [5, 10, 20, 40, 80, 160].map(ms));
    assert_eq!(queue.num_requeues(&"a", &1), 6);

    // Backoff is per item.
    queue.add_rate_limited("a", 2);
    assert_eq!(next_timed(&queue).await, ("a", 2, ms(5)));

    queue.forget(&"a", &1);
    assert_eq!(queue.num_requeues(&"a", &1), 0);
    queue.add_rate_limited("a", 1);
    assert_eq!(next_timed(&queue).await, ("a", 1, ms(5)));
}

#[tokio::test(start_paused = true)]
async fn backoff_is_capped_and_configurable() {
    let config = QueueConfig::default().backoff(Duration::from_secs(1), Duration::from_secs(4));
    let queue = Queue::with_config(config);
    let mut delays = Vec::new();
    for _ in 0..5 {
        queue.add_rate_limited("a", 1);
        delays.push(next_timed(&queue).await.2);
    }
    assert_eq!(delays, [1, 2, 4, 4, 4].map(Duration::from_secs));
}

#[tokio::test(start_paused = true)]
async fn rate_limited_add_keeps_an_earlier_time() {
    let queue = Queue::new();
    queue.add("a", 1);
    queue.add_rate_limited("a", 1);
    assert_eq!(queue.num_requeues(&"a", &1), 1);
    assert_eq!(next_timed(&queue).await, ("a", 1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn leased_item_is_not_leased_twice_and_requeued_when_dirty() {
    let queue = Queue::new();
    queue.add("a", 1);
    let lease = try_next(&queue).expect("ready");
    assert_eq!(queue.processing_len(), 1);

    queue.add("a", 1);
    assert_eq!(queue.len(), 0, "a leased item is not queued, only marked dirty");
    let concurrency = QueueConfig::default().concurrency(2);
    let wide = Queue::with_config(concurrency);
    wide.add("a", 1);
    let _held = try_next(&wide).expect("ready");
    wide.add("a", 1);
    assert!(
        try_next(&wide).is_none(),
        "a free slot must not lease a processing item"
    );

    lease.done();
    assert_eq!((queue.len(), queue.processing_len()), (1, 0));
    assert_eq!(next_timed(&queue).await, ("a", 1, Duration::ZERO));
    assert!(
        try_next(&queue).is_none(),
        "released without new adds: not requeued"
    );
}

#[tokio::test(start_paused = true)]
async fn dirty_item_is_requeued_at_the_earliest_requested_time() {
    let queue = Queue::new();
    queue.add("a", 1);
    let lease = try_next(&queue).expect("ready");
    queue.add_after("a", 1, ms(50));
    queue.add_after("a", 1, ms(20));
    queue.add_after("a", 1, ms(80));
    tokio::time::sleep(ms(5)).await;
    lease.done();
    assert_eq!((queue.len(), queue.ready_len()), (1, 0));
    assert_eq!(next_timed(&queue).await, ("a", 1, ms(15)));

    // A requested time that passed while leased means ready at release.
    let lease = try_next(&queue);
    assert!(lease.is_none());
    queue.add("a", 1);
    let lease = try_next(&queue).expect("ready");
    queue.add_after("a", 1, ms(10));
    tokio::time::sleep(ms(30)).await;
    drop(lease);
    assert_eq!(queue.ready_len(), 1);
}

#[tokio::test(start_paused = true)]
async fn panicking_worker_releases_its_lease() {
    let queue = Queue::new();
    queue.add("a", 1);
    let worker = tokio::spawn({
        let queue = queue.clone();
        async move {
            let _lease = queue.next().await.expect("ready");
            queue.add("a", 1);
            panic!("reconcile panicked");
        }
    });
    assert!(worker.await.expect_err("worker panicked").is_panic());
    assert_eq!(queue.processing_len(), 0);
    assert_eq!(next_timed(&queue).await, ("a", 1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn cancelled_next_loses_no_item() {
    let queue = Queue::new();
    assert!(try_next(&queue).is_none());
    let cancelled = tokio::time::timeout(ms(10), queue.next()).await;
    assert!(cancelled.is_err());
    queue.add("a", 1);
    assert_eq!(next_timed(&queue).await, ("a", 1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn concurrency_limits_outstanding_leases() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(2).cluster_concurrency(0));
    for key in 0..5 {
        queue.add("a", key);
    }
    let first = try_next(&queue).expect("slot 1");
    let _second = try_next(&queue).expect("slot 2");
    assert!(try_next(&queue).is_none(), "no third slot");
    assert_eq!(queue.processing_len(), 2);

    let waiter = tokio::spawn({
        let queue = queue.clone();
        async move { next_timed(&queue).await }
    });
    tokio::time::sleep(ms(3)).await;
    assert!(!waiter.is_finished());
    drop(first);
    assert_eq!(waiter.await.expect("waiter"), ("a", 2, ms(3)));
}

#[tokio::test(start_paused = true)]
async fn concurrency_zero_means_unlimited() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(0));
    for key in 0..100 {
        queue.add("a", key);
    }
    let leases: Vec<_> = std::iter::from_fn(|| try_next(&queue)).collect();
    assert_eq!(leases.len(), 100);
    assert_eq!(queue.processing_len(), 100);
}

#[tokio::test(start_paused = true)]
async fn default_concurrency_is_one() {
    let queue = Queue::new();
    queue.add("a", 1);
    queue.add("a", 2);
    let _lease = try_next(&queue).expect("ready");
    assert!(try_next(&queue).is_none());
}

#[tokio::test(start_paused = true)]
async fn clusters_are_served_round_robin_fifo_within() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(0));
    for key in 0..3 {
        queue.add("a", key);
    }
    queue.add("b", 0);
    queue.add("c", 0);
    queue.add("c", 1);
    let order: Vec<_> = std::iter::from_fn(|| try_next(&queue))
        .map(|lease| (*lease.cluster(), *lease.key()))
        .collect();
    assert_eq!(
        order,
        [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("c", 1), ("a", 2)]
    );
}

/// The contract: with cluster A flooding the queue, an item of cluster B is leased
/// before more than `2 * concurrency` further items of A.
#[tokio::test(start_paused = true)]
async fn flooding_cluster_does_not_starve_a_quiet_one() {
    const CONCURRENCY: usize = 4;
    // Every slot may go to A: this is about turns, not the per-cluster cap.
    let config = QueueConfig::default()
        .concurrency(CONCURRENCY)
        .cluster_concurrency(0);
    let queue = Queue::with_config(config);
    for key in 0..20_000 {
        queue.add("a", key);
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (queue, log) = (queue.clone(), Arc::clone(&log));
            tokio::spawn(async move {
                while let Some(lease) = queue.next().await {
                    log.lock().expect("log").push(*lease.cluster());
                    tokio::time::sleep(ms(1)).await; // reconcile
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_micros(10_500)).await;
    let added_at = log.lock().expect("log").len();
    assert!(added_at >= 40, "workers are busy with A ({added_at} leases)");
    queue.add("b", 0);
    for _ in 0..100 {
        if log.lock().expect("log").contains(&"b") {
            break;
        }
        tokio::time::sleep(ms(1)).await;
    }
    queue.shutdown();
    for worker in workers {
        let stopped = tokio::time::timeout(Duration::from_secs(1), worker).await;
        stopped.expect("workers stop on shutdown").expect("worker");
    }

    let log = log.lock().expect("log");
    let b_at = log.iter().position(|&c| c == "b").expect("b leased");
    let a_between = log[added_at..b_at].iter().filter(|&&c| c == "a").count();
    assert!(
        a_between <= 2 * CONCURRENCY,
        "{a_between} items of A leased before B"
    );
    // Round-robin actually gives at most one turn of A.
    assert!(a_between <= 1, "{a_between} items of A leased before B");
}

#[tokio::test(start_paused = true)]
async fn remove_cluster_drops_queued_items_and_backoff() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(0));
    queue.add("a", 1);
    queue.add_after("a", 2, ms(10));
    queue.add_rate_limited("a", 3);
    queue.add_rate_limited("a", 3);
    queue.add("b", 1);
    queue.remove_cluster(&"a");
    assert_eq!((queue.len(), queue.depth(&"a"), queue.depth(&"b")), (1, 0, 1));
    assert_eq!(queue.num_requeues(&"a", &3), 0);
    assert_eq!(tracked(&queue), (1, 1), "only b's item is left");

    tokio::time::sleep(ms(100)).await;
    assert_eq!(next_timed(&queue).await, ("b", 1, Duration::ZERO));
    assert!(try_next(&queue).is_none());

    // The cluster may come back, as a fresh one.
    queue.add_rate_limited("a", 3);
    assert_eq!(next_timed(&queue).await, ("a", 3, ms(5)));
}

#[tokio::test(start_paused = true)]
async fn removed_cluster_leases_finish_without_requeue() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(0));
    queue.add("a", 1);
    queue.add("a", 2);
    let one = try_next(&queue).expect("a/1");
    let two = try_next(&queue).expect("a/2");
    queue.add("a", 1);
    queue.add("a", 2);
    queue.remove_cluster(&"a");
    assert_eq!(queue.processing_len(), 2, "leases survive the removal");

    // An add after the removal targets the cluster as a new one; the item is still
    // leased, so it waits for that lease rather than being leased twice.
    queue.add("a", 2);
    assert!(try_next(&queue).is_none());

    drop(one);
    assert!(
        queue.is_empty(),
        "the dirty mark from before the removal is dropped"
    );
    drop(two);
    assert_eq!(queue.len(), 1, "the add after the removal counts");
    assert_eq!(next_timed(&queue).await, ("a", 2, Duration::ZERO));
    assert_eq!(tracked(&queue), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_waiters_and_drops_items() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(2));
    queue.add("a", 1);
    queue.add_after("a", 2, ms(100));
    let lease = try_next(&queue).expect("ready");
    queue.add("a", 1);

    let item_waiter = tokio::spawn({
        let queue = queue.clone();
        async move { queue.next().await.is_none() }
    });
    tokio::time::sleep(ms(1)).await;
    let slot_waiter = tokio::spawn({
        let queue = queue.clone();
        async move { queue.next().await.is_none() }
    });
    tokio::time::sleep(ms(1)).await;

    queue.shutdown();
    let woken = tokio::time::timeout(ms(10), async {
        (
            item_waiter.await.expect("waiter"),
            slot_waiter.await.expect("waiter"),
        )
    });
    let (item_waiter, slot_waiter) = woken.await.expect("waiters wake up on shutdown");
    assert!(item_waiter, "a consumer waiting for an item gets None");
    assert!(slot_waiter, "a consumer waiting for a slot gets None");
    assert!(queue.is_shut_down());
    assert!(queue.next().await.is_none());
    assert_eq!(queue.len(), 0, "queued items are dropped, not drained");

    queue.add("a", 3);
    assert_eq!(queue.len(), 0, "adds after shutdown are ignored");
    drop(lease);
    assert_eq!(queue.len(), 0, "a dirty lease is not requeued after shutdown");
    assert_eq!(queue.processing_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn short_lived_clusters_leave_nothing_behind() {
    let names: Vec<&'static str> = (0..2_000)
        .map(|n| &*Box::leak(format!("cluster-{n}").into_boxed_str()))
        .collect();
    let queue = Queue::with_config(QueueConfig::default().concurrency(0));
    queue.add("long-lived", 0);
    for (n, name) in names.iter().enumerate() {
        queue.add(name, 1);
        queue.add_after(name, 2, ms(10));
        queue.add_rate_limited(name, 3);
        if n % 2 == 0 {
            queue.remove_cluster(name);
        }
    }
    {
        let state = queue.lock();
        assert!(
            state.ring_len() <= 2 * 1_001 + 17,
            "ring holds {}",
            state.ring_len()
        );
    }
    tokio::time::sleep(ms(10)).await;
    let leases: Vec<_> = std::iter::from_fn(|| try_next(&queue)).collect();
    assert_eq!(leases.len(), 1 + 1_000 * 3);
    for lease in leases {
        queue.forget(lease.cluster(), lease.key());
    }
    for name in &names {
        queue.remove_cluster(name);
    }
    assert_eq!(tracked(&queue), (0, 0));
    assert_eq!(queue.lock().ring_len(), 0);
}

/// Real threads, real time: producers and workers hammer the queue; no item is leased
/// twice at once and every add is followed by a lease of that item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_and_workers() {
    const WORKERS: usize = 4;
    const ADDS: u32 = 2_000;
    let queue: WorkQueue<u32, u32> = WorkQueue::with_config(QueueConfig::default().concurrency(WORKERS));
    let leased = Arc::new(Mutex::new(HashSet::new()));
    let processed = Arc::new(Mutex::new(Vec::new()));

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let queue = queue.clone();
            let (leased, processed) = (Arc::clone(&leased), Arc::clone(&processed));
            tokio::spawn(async move {
                while let Some(lease) = queue.next().await {
                    let item = (*lease.cluster(), *lease.key());
                    assert!(leased.lock().expect("set").insert(item), "{item:?} leased twice");
                    tokio::task::yield_now().await;
                    assert!(leased.lock().expect("set").remove(&item));
                    processed.lock().expect("log").push(item);
                    lease.done();
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..2u32)
        .map(|producer| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for n in 0..ADDS {
                    let (cluster, key) = ((n + producer) % 3, n % 17);
                    match n % 4 {
                        0 => queue.add_after(cluster, key, Duration::from_micros(u64::from(n % 50))),
                        _ => queue.add(cluster, key),
                    }
                    if n % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.expect("producer");
    }
    // Everything added is eventually leased: wait for an idle, empty queue.
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(queue.is_empty() && queue.processing_len() == 0) {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await
    .expect("queue drains");
    queue.shutdown();
    for worker in workers {
        let stopped = tokio::time::timeout(Duration::from_secs(1), worker).await;
        stopped.expect("workers stop on shutdown").expect("worker");
    }
    let processed = processed.lock().expect("log");
    let distinct: HashSet<_> = processed.iter().collect();
    assert_eq!(distinct.len(), 3 * 17);
}

/// Leases `queue` hands out right now, and the clusters they belong to.
fn take_all(queue: &Queue) -> (Vec<Lease<&'static str, u32>>, Vec<&'static str>) {
    let leases: Vec<_> = std::iter::from_fn(|| try_next(queue)).collect();
    let clusters = leases.iter().map(|lease| *lease.cluster()).collect();
    (leases, clusters)
}

#[tokio::test(start_paused = true)]
async fn a_lone_cluster_borrows_every_slot_but_one() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(4));
    for key in 0..10 {
        queue.add("hanging", key);
    }
    let (mut held, _) = take_all(&queue);
    assert_eq!(held.len(), 3, "the cap of 2, and 1 borrowed; 1 slot stays free");
    assert_eq!(queue.processing_len_of(&"hanging"), 3);
    // Another cluster's item gets the reserved slot at once, though every lease of
    // the first cluster hangs.
    queue.add("quiet", 0);
    let lease = try_next(&queue).expect("the reserved slot");
    assert_eq!((*lease.cluster(), *lease.key()), ("quiet", 0));
    assert!(try_next(&queue).is_none(), "every slot is taken");
    // The quiet cluster goes idle: the borrower still holds its 3, and may not take
    // the slot that frees up, the reserved one.
    drop(lease);
    assert!(try_next(&queue).is_none(), "the reserve is not lent");
    // A lease of the borrower ends: it may borrow the slot again.
    held.pop();
    let again = try_next(&queue).expect("borrowed again");
    assert_eq!(*again.cluster(), "hanging");
    assert_eq!(queue.processing_len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_borrower_gets_no_new_slot_while_another_cluster_has_ready_items() {
    // Cap 4; alone, "a" holds 7 of the 8 slots.
    let queue = Queue::with_config(QueueConfig::default().concurrency(8));
    for key in 0..20 {
        queue.add("a", key);
    }
    let (mut a_leases, _) = take_all(&queue);
    assert_eq!(a_leases.len(), 7);
    for key in 0..5 {
        queue.add("b", key);
    }
    let (mut b_leases, clusters) = take_all(&queue);
    assert_eq!(clusters, ["b"], "b gets the reserved slot");
    // Three of a's leases end, so a is back at its cap with three slots free: all of
    // them go to b, which has ready items and is below its cap. Leases a borrowed
    // earlier were not revoked; they ended as usual.
    a_leases.truncate(4);
    let (more, clusters) = take_all(&queue);
    assert_eq!(clusters, ["b", "b", "b"]);
    b_leases.extend(more);
    assert_eq!(
        (queue.processing_len_of(&"a"), queue.processing_len_of(&"b")),
        (4, 4)
    );
    // b's leases end with one item of b left: it goes first, then a borrows again,
    // up to 7 leases in all.
    drop(b_leases);
    let (_more, clusters) = take_all(&queue);
    assert_eq!(clusters, ["b", "a", "a"]);
}

#[tokio::test(start_paused = true)]
async fn clusters_at_their_cap_take_turns_borrowing() {
    let config = QueueConfig::default().concurrency(6).cluster_concurrency(1);
    let queue = Queue::with_config(config);
    for key in 0..5 {
        queue.add("a", key);
        queue.add("b", key);
    }
    let (_leases, clusters) = take_all(&queue);
    assert_eq!(clusters, ["a", "b", "a", "b", "a"]);
}

#[tokio::test(start_paused = true)]
async fn small_or_unlimited_concurrency_never_borrows() {
    // (concurrency, explicit cap, leases a lone cluster gets)
    let cases = [
        (1, None, 1),
        (2, None, 1),
        (3, None, 2),
        (4, Some(3), 3),
        (0, Some(2), 2),
    ];
    for (concurrency, cap, expected) in cases {
        let mut config = QueueConfig::default().concurrency(concurrency);
        if let Some(cap) = cap {
            config = config.cluster_concurrency(cap);
        }
        let queue = Queue::with_config(config);
        for key in 0..10 {
            queue.add("a", key);
        }
        let (leases, _) = take_all(&queue);
        assert_eq!(leases.len(), expected, "concurrency {concurrency}, cap {cap:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn borrowing_can_be_turned_off() {
    let config = QueueConfig::default().concurrency(4).borrow_idle_slots(false);
    let queue = Queue::with_config(config);
    for key in 0..10 {
        queue.add("a", key);
    }
    let (leases, _) = take_all(&queue);
    assert_eq!(leases.len(), 2, "a hard cap of half the slots");
    queue.add("b", 0);
    queue.add("b", 1);
    let (_more, clusters) = take_all(&queue);
    assert_eq!(clusters, ["b", "b"]);
    drop(leases);
}

/// A consumer that holds a slot but found nothing it may lease sleeps; a lease that
/// ends without freeing a slot it could use would leave it asleep.
#[tokio::test(start_paused = true)]
async fn a_lease_that_ends_wakes_a_consumer_that_may_now_borrow() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(4));
    for key in 0..10 {
        queue.add("a", key);
    }
    let (mut held, _) = take_all(&queue);
    assert_eq!(held.len(), 3);
    let consumer = tokio::spawn({
        let queue = queue.clone();
        async move { next_timed(&queue).await }
    });
    tokio::time::sleep(ms(5)).await;
    assert!(!consumer.is_finished(), "the last slot is not lent");
    held.pop();
    let (cluster, _, waited) = consumer.await.expect("consumer");
    assert_eq!((cluster, waited), ("a", ms(5)));
}

#[tokio::test(start_paused = true)]
async fn cluster_cap_is_configurable_and_zero_means_none() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(3).cluster_concurrency(0));
    for key in 0..5 {
        queue.add("a", key);
    }
    let leases: Vec<_> = std::iter::from_fn(|| try_next(&queue)).collect();
    assert_eq!(leases.len(), 3);
    drop(leases);
    let queue = Queue::with_config(QueueConfig::default().concurrency(0));
    for key in 0..5 {
        queue.add("a", key);
    }
    let leases: Vec<_> = std::iter::from_fn(|| try_next(&queue)).collect();
    assert_eq!(leases.len(), 5, "no cap when concurrency is unlimited");
}

#[tokio::test(start_paused = true)]
async fn paused_cluster_keeps_items_delays_and_backoff_until_resumed() {
    let queue = Queue::with_config(QueueConfig::default().concurrency(0));
    queue.pause_cluster(&"a", PauseReason::Syncing);
    queue.add("a", 1);
    queue.add_after("a", 2, ms(10));
    queue.add_rate_limited("a", 3);
    queue.add("b", 1);
    let lease = try_next(&queue).expect("b is not paused");
    assert_eq!(*lease.cluster(), "b");
    tokio::time::advance(ms(50)).await;
    assert!(try_next(&queue).is_none(), "a is paused");
    assert_eq!((queue.depth(&"a"), queue.ready_len()), (3, 3));
    assert_eq!(queue.num_requeues(&"a", &3), 1);

    // A waiting consumer is woken by the resume.
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.next().await.map(|l| (*l.cluster(), *l.key())) })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    queue.resume_cluster(&"a", PauseReason::Syncing);
    assert!(!queue.is_paused(&"a"));
    let (cluster, _) = waiter.await.unwrap().expect("an item of a");
    assert_eq!(cluster, "a");
    let rest: Vec<_> = std::iter::from_fn(|| try_next(&queue)).collect();
    assert_eq!(rest.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn removing_a_paused_cluster_forgets_the_pause() {
    let queue = Queue::new();
    queue.pause_cluster(&"a", PauseReason::Syncing);
    queue.pause_cluster(&"a", PauseReason::Unhealthy);
    queue.add("a", 1);
    queue.remove_cluster(&"a");
    assert!(!queue.is_paused(&"a"));
    assert_eq!(tracked(&queue), (0, 0));
    queue.add("a", 2);
    assert_eq!(try_next(&queue).map(|l| *l.key()), Some(2));
}

/// Every transition the observer saw, in order.
#[derive(Default)]
struct Observed(Mutex<Vec<String>>);

impl super::QueueObserver<&'static str> for Observed {
    fn added(&self, cluster: &&'static str) {
        self.0.lock().unwrap().push(format!("added {cluster}"));
    }
    fn retried(&self, cluster: &&'static str) {
        self.0.lock().unwrap().push(format!("retried {cluster}"));
    }
    fn leased(&self, cluster: &&'static str, waited: Duration) {
        self.0
            .lock()
            .unwrap()
            .push(format!("leased {cluster} after {waited:?}"));
    }
    fn released(&self, cluster: &&'static str, worked: Duration) {
        self.0
            .lock()
            .unwrap()
            .push(format!("released {cluster} after {worked:?}"));
    }
}

impl Observed {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test(start_paused = true)]
async fn observer_sees_adds_waits_work_and_retries() {
    let queue = Queue::new();
    let observed = Arc::new(Observed::default());
    queue.observe(observed.clone());

    queue.add("a", 1);
    queue.add("a", 1); // deduplicated: not an add
    tokio::time::advance(ms(30)).await;
    let lease = queue.next().await.expect("lease");
    tokio::time::advance(ms(50)).await;
    queue.add("a", 1); // dirty while leased: counted when it becomes ready again
    drop(lease);
    assert_eq!(
        observed.take(),
        [
            "added a",
            "leased a after 30ms",
            "released a after 50ms",
            "added a"
        ]
    );

    drop(queue.next().await.expect("a again"));
    assert_eq!(observed.take(), ["leased a after 0ns", "released a after 0ns"]);

    // A delayed item is ready from its deadline, even if nobody looks until later.
    queue.add_after("b", 2, ms(10));
    tokio::time::advance(ms(25)).await;
    drop(queue.next().await.expect("b"));
    assert_eq!(
        observed.take(),
        ["added b", "leased b after 15ms", "released b after 0ns"]
    );

    queue.add_rate_limited("c", 3);
    assert_eq!(observed.take(), ["retried c"]);
}

#[tokio::test(start_paused = true)]
async fn cluster_stats_report_depth_and_running_leases() {
    let queue = Queue::new();
    queue.add("a", 1);
    queue.add_after("a", 2, ms(1000));
    queue.add("b", 3);
    let lease = queue.next().await.expect("lease a");
    tokio::time::advance(ms(40)).await;
    let stats = queue.cluster_stats(&["a", "b", "c"]);
    assert_eq!(stats[0].0, 1, "a: the delayed item");
    assert_eq!(stats[1].0, 1, "b: the ready item");
    assert_eq!(stats[2], (0, super::Running::default()), "c: nothing");
    let running = stats[0].1;
    assert_eq!(
        (running.leases, running.total, running.longest),
        (1, ms(40), ms(40))
    );
    drop(lease);
    assert_eq!(queue.cluster_stats(&["a"])[0].1, super::Running::default());
}

#[tokio::test(start_paused = true)]
async fn a_cluster_paused_for_two_reasons_runs_only_once_both_are_cleared() {
    let queue = Queue::new();
    queue.pause_cluster(&"a", PauseReason::Syncing);
    queue.pause_cluster(&"a", PauseReason::Unhealthy);
    queue.add("a", 1);
    // The cache syncs while the cluster is unhealthy: still held.
    queue.resume_cluster(&"a", PauseReason::Syncing);
    assert!(try_next(&queue).is_none(), "still unhealthy");
    let reasons = queue.pause_reasons(&"a");
    assert!(reasons.contains(PauseReason::Unhealthy) && !reasons.contains(PauseReason::Syncing));
    // Clearing a reason that is not set changes nothing.
    queue.resume_cluster(&"a", PauseReason::Syncing);
    assert!(queue.is_paused(&"a"));
    // Pausing again for a set reason needs one resume only.
    queue.pause_cluster(&"a", PauseReason::Unhealthy);
    queue.resume_cluster(&"a", PauseReason::Unhealthy);
    assert!(queue.pause_reasons(&"a").is_empty());
    assert_eq!(try_next(&queue).map(|l| *l.key()), Some(1));
}
