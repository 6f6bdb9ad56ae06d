//! sh04: the sharding protocol at scale, on a simulated Lease store and clock.
//!
//! 10,000 clusters and about 10 replicas, each a real [`Coordinator`] with its shard
//! tasks and fences, over one in-memory Lease store; time is tokio's paused clock, so
//! lease durations pass in no time. A hundred changes of membership (joins, clean
//! leaves, crashes, partitions and their healing) are applied one after another;
//! after each the fleet must settle with every cluster owned by its rendezvous
//! owner. Throughout, a stand-in for the manager's components records who works on
//! each cluster and counts any start while another replica still works on it.
//!
//! Run it with its report: `cargo test -p multicluster-runtime --all-features --lib
//! sh04 -- --nocapture`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, Host, Sharding, Term, hrw};
use crate::cluster::ClusterName;
use crate::manager::lease::memory::{MemoryLeases, Records};
use crate::term::Work;

/// The sizes the issue asks for; `SH04_CLUSTERS` and `SH04_EVENTS` override them for
/// a quick look.
fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Who works on each cluster, across the replicas; and every violation.
#[derive(Default)]
struct Fleet {
    working: Mutex<HashMap<ClusterName, (String, Work)>>,
    /// Starts while another replica was still working on the cluster.
    double: AtomicU64,
}

/// A replica's components: they work on a cluster from `start` to `stop`, holding
/// the term's [`Work`] meanwhile, as a reconcile would.
struct Components {
    identity: String,
    fleet: Arc<Fleet>,
    alive: AtomicBool,
}

#[async_trait]
impl Host for Components {
    async fn start(&self, name: &ClusterName, term: &Term) -> bool {
        if !self.alive.load(Ordering::Relaxed) {
            return false;
        }
        let Some(work) = term.enter() else { return false };
        let mut working = self.fleet.working.lock().unwrap();
        if working
            .get(name)
            .is_some_and(|(other, _)| *other != self.identity)
        {
            self.fleet.double.fetch_add(1, Ordering::Relaxed);
        }
        working.insert(name.clone(), (self.identity.clone(), work));
        true
    }

    async fn forget(&self, _name: &ClusterName) {}

    async fn stop(&self, name: &ClusterName, _term: &Term) {
        let mut working = self.fleet.working.lock().unwrap();
        if working
            .get(name)
            .is_some_and(|(owner, _)| *owner == self.identity)
        {
            working.remove(name);
        }
    }
}

struct Replica {
    identity: String,
    coordinator: Arc<Coordinator>,
    store: Arc<MemoryLeases>,
    components: Arc<Components>,
    stop: CancellationToken,
    run: JoinHandle<()>,
}

impl Replica {
    /// Whether the others can see it: neither crashed nor cut off.
    fn reachable(&self) -> bool {
        self.store.reachable.load(Ordering::Relaxed)
    }

    fn writes(&self) -> u64 {
        self.store.writes.load(Ordering::Relaxed)
    }
}

struct World {
    records: Arc<Records>,
    fleet: Arc<Fleet>,
    names: Vec<ClusterName>,
    replicas: Vec<Replica>,
    next: usize,
}

impl World {
    fn new(clusters: usize) -> Self {
        World {
            records: Arc::default(),
            fleet: Arc::default(),
            names: (0..clusters)
                .map(|i| ClusterName::from(format!("cluster-{i:05}")))
                .collect(),
            replicas: Vec::new(),
            next: 0,
        }
    }

    fn join(&mut self) {
        let identity = format!("r{:02}", self.next);
        self.next += 1;
        let store = Arc::new(MemoryLeases::new(self.records.clone()));
        let components = Arc::new(Components {
            identity: identity.clone(),
            fleet: self.fleet.clone(),
            alive: AtomicBool::new(true),
        });
        let coordinator = Coordinator::new(
            Sharding::new("sim").identity(identity.clone()),
            store.clone(),
            components.clone(),
        );
        for name in &self.names {
            coordinator.known(name, 0);
        }
        let stop = CancellationToken::new();
        let run = tokio::spawn(coordinator.clone().run(stop.clone()));
        self.replicas.push(Replica {
            identity,
            coordinator,
            store,
            components,
            stop,
            run,
        });
    }

    /// A clean stop: hands everything over and deletes its peer Lease.
    async fn leave(&mut self, index: usize) {
        let replica = self.replicas.remove(index);
        replica.stop.cancel();
        replica.run.await.expect("coordinator ran");
    }

    /// Dies at once: nothing of it reaches the store any more, and it works on
    /// nothing. Its leases expire.
    fn crash(&mut self, index: usize) {
        let replica = self.replicas.remove(index);
        replica.store.reachable.store(false, Ordering::Relaxed);
        replica.components.alive.store(false, Ordering::Relaxed);
        let identity = replica.identity.clone();
        self.fleet
            .working
            .lock()
            .unwrap()
            .retain(|_, (owner, _)| *owner != identity);
        // Its tasks end without reaching anyone.
        replica.stop.cancel();
    }

    /// Cut off from the store, alive: it must stop working on its clusters by
    /// itself, before anyone takes them over.
    fn partition(&mut self, index: usize) {
        self.replicas[index]
            .store
            .reachable
            .store(false, Ordering::Relaxed);
    }

    fn heal(&mut self, index: usize) {
        self.replicas[index]
            .store
            .reachable
            .store(true, Ordering::Relaxed);
    }

    /// The owner of each cluster the protocol should settle on.
    fn expected(&self) -> HashMap<&ClusterName, String> {
        let peers: Vec<(&str, u32)> = self
            .replicas
            .iter()
            .filter(|r| r.reachable())
            .map(|r| (r.identity.as_str(), 1))
            .collect();
        let ring = hrw::Ring::new(peers);
        self.names
            .iter()
            .map(|name| (name, ring.owner(name.as_str()).expect("a peer").to_owned()))
            .collect()
    }

    fn owners(&self) -> HashMap<ClusterName, String> {
        let working = self.fleet.working.lock().unwrap();
        working
            .iter()
            .map(|(name, (owner, _))| (name.clone(), owner.clone()))
            .collect()
    }

    /// Waits until every cluster is worked on by its expected owner; how long it took.
    async fn settle(&self) -> Duration {
        let started = Instant::now();
        let expected = self.expected();
        loop {
            let settled = {
                let working = self.fleet.working.lock().unwrap();
                working.len() == expected.len()
                    && expected
                        .iter()
                        .all(|(name, owner)| working.get(*name).is_some_and(|(o, _)| o == owner))
            };
            if settled {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "not settled after 300 s of simulated time"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Lease writes during one renew period, in all and per replica (with the
    /// clusters it owned at the start).
    async fn writes_per_period(&self) -> (u64, Vec<(u64, usize)>) {
        let period = Duration::from_secs(10);
        let owners = self.owners();
        let before: Vec<u64> = self.replicas.iter().map(Replica::writes).collect();
        let total = self.records.writes();
        tokio::time::sleep(period).await;
        let each = self
            .replicas
            .iter()
            .zip(before)
            .map(|(r, b)| {
                let owned = owners.values().filter(|o| **o == r.identity).count();
                (r.writes() - b, owned)
            })
            .collect();
        (self.records.writes() - total, each)
    }
}

/// A small deterministic generator, so that a failure replays.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[tokio::test(start_paused = true)]
async fn sh04_ten_thousand_clusters_ten_replicas_hundred_changes() {
    let (clusters, events) = (size("SH04_CLUSTERS", 10_000), size("SH04_EVENTS", 100));
    let wall = std::time::Instant::now();
    let mut world = World::new(clusters);
    for _ in 0..10 {
        world.join();
    }
    let first = world.settle().await;
    println!("sh04: 10 replicas took {clusters} clusters in {first:?} (simulated)");

    let mut rng = Lcg(4);
    let mut partitioned: Option<String> = None;
    let mut ratios = Vec::new();
    let mut worst_settle = Duration::ZERO;
    let mut periods = Vec::new();
    for event in 0..events {
        let before = world.owners();
        let reachable = world.replicas.iter().filter(|r| r.reachable()).count();
        let what = match (partitioned.clone(), rng.below(4)) {
            (Some(identity), _) => {
                let index = world
                    .replicas
                    .iter()
                    .position(|r| r.identity == identity)
                    .expect("there");
                world.heal(index);
                partitioned = None;
                "heal"
            }
            (None, 0) if reachable < 12 => {
                world.join();
                "join"
            }
            (None, 1) if reachable > 8 => {
                world.leave(rng.below(world.replicas.len())).await;
                "leave"
            }
            (None, 2) if reachable > 8 => {
                world.crash(rng.below(world.replicas.len()));
                "crash"
            }
            (None, 3) if reachable > 8 => {
                let index = rng.below(world.replicas.len());
                partitioned = Some(world.replicas[index].identity.clone());
                world.partition(index);
                "partition"
            }
            _ => {
                world.join();
                "join"
            }
        };
        let took = world.settle().await;
        worst_settle = worst_settle.max(took);
        let after = world.owners();
        let moved = after
            .iter()
            .filter(|(name, owner)| before.get(*name) != Some(owner))
            .count();
        let peers = reachable.max(world.replicas.iter().filter(|r| r.reachable()).count());
        let ideal = clusters as f64 / peers as f64;
        ratios.push(moved as f64 / ideal);
        println!(
            "sh04: event {event:3} {what:9} moved {moved:5} ({:.3} of the clusters, optimum 1/{peers} = {:.3}) settled in {took:?}",
            moved as f64 / clusters as f64,
            1.0 / peers as f64
        );
        if event % 10 == 0 && partitioned.is_none() {
            periods.push(world.writes_per_period().await);
        }
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let double = world.fleet.double.load(Ordering::Relaxed);
    println!(
        "sh04: moved fraction / optimum, mean over {events} events: {mean:.3}; slowest settling {worst_settle:?}"
    );
    println!("sh04: starts while another replica still worked on the cluster: {double}");
    println!(
        "sh04: {clusters} clusters, {events} events, {:?} of wall-clock time",
        wall.elapsed()
    );
    for (total, each) in &periods {
        let peers = each.len() as u64;
        println!("sh04: lease writes in one renew period: {total} (clusters {clusters} + peers {peers})");
        assert!(*total <= clusters as u64 + peers, "{total} writes in one period");
        for (writes, owned) in each {
            assert!(
                *writes <= *owned as u64 + 1,
                "a replica owning {owned} wrote {writes}"
            );
        }
    }
    assert_eq!(double, 0, "a cluster was worked on by two replicas at once");
    assert!(mean <= 1.2, "moved {mean:.3}× the optimum on average");
    assert!(
        periods.len() >= (events / 20).max(1),
        "write rates measured {} times",
        periods.len()
    );
    for replica in world.replicas.drain(..) {
        replica.stop.cancel();
        let _ = replica.run.await;
    }
}

/// r01: joins, a partition and slow writes overlap. Replica r00's writes stall (its
/// renewals outlast the renew deadline, so its peer term ends and its work is cut)
/// while a fourth replica joins and takes a share of r00's clusters, and r02 is cut
/// off. Writes either land at once with a late answer, or land late (so a write
/// given up on never happens). Once everything heals, every cluster must be worked
/// on by its rendezvous owner: a fence left naming r00, whose peer Lease is alive
/// again, would keep the new owner out for good.
#[tokio::test(start_paused = true)]
async fn r01_clusters_moved_away_from_a_stalled_replica_reach_their_new_owner() {
    for lands_first in [true, false] {
        for join_after in [0, 8, 16, 24] {
            let mut world = World::new(300);
            for _ in 0..3 {
                world.join();
            }
            world.settle().await;
            let before = world.owners();
            world.replicas[0]
                .store
                .slow_writes(Duration::from_secs(60), lands_first);
            tokio::time::sleep(Duration::from_secs(join_after)).await;
            world.join();
            world.partition(2);
            tokio::time::sleep(Duration::from_secs(40 - join_after)).await;
            world.heal(2);
            world.replicas[0].store.slow_writes(Duration::ZERO, false);
            let took = world.settle().await;
            let moved = world
                .owners()
                .into_iter()
                .filter(|(name, owner)| before[name] == "r00" && owner == "r03")
                .count();
            println!(
                "r01: lands first {lands_first}, join after {join_after} s: {moved} clusters moved from r00 to r03; settled {took:?} after healing"
            );
            assert!(moved > 0, "the join moved nothing from r00");
            assert_eq!(
                world.fleet.double.load(Ordering::Relaxed),
                0,
                "two replicas at once"
            );
            for replica in world.replicas.drain(..) {
                replica.stop.cancel();
                let _ = replica.run.await;
            }
        }
    }
}

/// Stands in for the manager whose per-cluster gate is held by a user's `engage`
/// that does not return: `start` of `starts-slowly` and `stop` of every cluster wait
/// while the gate is closed. It keeps each cluster's term for the test's reconciles.
struct Gated {
    terms: Mutex<HashMap<ClusterName, Term>>,
    open: tokio::sync::watch::Sender<bool>,
}

impl Gated {
    async fn pass(&self) {
        let _ = self.open.subscribe().wait_for(|open| *open).await;
    }
}

#[async_trait]
impl Host for Gated {
    async fn start(&self, name: &ClusterName, term: &Term) -> bool {
        self.terms.lock().unwrap().insert(name.clone(), term.clone());
        if name.as_str() == "starts-slowly" {
            self.pass().await;
        }
        true
    }

    async fn stop(&self, _name: &ClusterName, _term: &Term) {
        self.pass().await;
    }

    async fn forget(&self, _name: &ClusterName) {}
}

/// r06: once the peer Lease is lost, no reconcile may enter a cluster's term after
/// the renew deadline, even while disengaging it waits (for the cluster's gate,
/// which a user's blocked `engage` holds), or while engaging it has not returned.
/// Another replica may take the cluster a lease duration after it last saw the
/// renewal; the difference is the safety margin.
#[tokio::test(start_paused = true)]
async fn r06_no_work_is_admitted_after_the_renew_deadline_while_the_gate_is_held() {
    let options = Sharding::new("sim").identity("r00");
    let (deadline, duration) = (options.renew_deadline, options.lease_duration);
    let store = Arc::new(MemoryLeases::new(Arc::default()));
    let host = Arc::new(Gated {
        terms: Mutex::default(),
        open: tokio::sync::watch::Sender::new(false),
    });
    let coordinator = Coordinator::new(options, store.clone(), host.clone());
    let names: Vec<ClusterName> = ["stops-slowly", "starts-slowly"].map(ClusterName::from).into();
    for name in &names {
        coordinator.known(name, 0);
    }
    let stop = CancellationToken::new();
    let run = tokio::spawn(coordinator.clone().run(stop.clone()));
    while host.terms.lock().unwrap().len() < names.len() || coordinator.view().owned.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Reconciles try to enter every 100 ms; count those that get in after the
    // deadline (counted from the cut-off, which is after the last renewal began).
    let cut_off = Instant::now();
    store.reachable.store(false, Ordering::Relaxed);
    let late = Arc::new(AtomicU64::new(0));
    let reconciles = tokio::spawn({
        let (host, late) = (host.clone(), late.clone());
        async move {
            loop {
                let terms: Vec<Term> = host.terms.lock().unwrap().values().cloned().collect();
                for term in terms {
                    if term.enter().is_some() && Instant::now() > cut_off + deadline {
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(duration + Duration::from_secs(1)).await;
    reconciles.abort();
    let admitted = late.load(Ordering::Relaxed);
    let open: Vec<_> = host
        .terms
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, term)| term.enter().is_some())
        .map(|(name, _)| name.clone())
        .collect();
    assert_eq!(admitted, 0, "reconciles admitted after the renew deadline");
    assert!(
        open.is_empty(),
        "terms still open a lease duration after the cut-off: {open:?}"
    );

    host.open.send_replace(true);
    stop.cancel();
    run.await.expect("coordinator ran");
}

/// r08: nothing is left behind. A cluster removed from the fleet has its fence
/// Lease deleted by its owner, and once a crashed replica's peer record has been
/// marked dead and deleted, no survivor still remembers having swept it.
#[tokio::test(start_paused = true)]
async fn r08_a_removed_cluster_and_a_dead_peer_leave_no_leases_and_no_sweep_marks() {
    let mut world = World::new(50);
    for _ in 0..4 {
        world.join();
    }
    world.settle().await;
    let options = Sharding::new("sim");
    let removed = world.names.remove(7);
    let fence = options.fence_lease(&removed);
    assert!(world.records.get(&fence).is_some(), "its owner took the fence");
    for replica in &world.replicas {
        replica.coordinator.gone(&removed, 0);
    }
    world.crash(3);
    world.settle().await;
    // Marked dead a lease duration after it was last seen, deleted one later.
    let peer = options.peer_lease_of("r03");
    let gone_by = Instant::now() + 3 * options.lease_duration;
    while world.records.get(&peer).is_some() && Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        world.records.get(&peer).is_none(),
        "the dead peer's record is deleted"
    );
    // One more probe interval, for the watches to see the deletion.
    tokio::time::sleep(options.probe_interval).await;
    assert!(
        world.records.get(&fence).is_none(),
        "the removed cluster's fence is deleted"
    );
    let swept: Vec<_> = world.replicas.iter().map(|r| r.coordinator.swept()).collect();
    assert_eq!(
        swept,
        [0, 0, 0],
        "sweep marks left for records that no longer exist"
    );
    for replica in world.replicas.drain(..) {
        replica.stop.cancel();
        let _ = replica.run.await;
    }
}
