//! The coordinator driving a real [`Manager`]: engagements, gates and health on the
//! manager's side, Leases in the in-memory store, time on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, Sharding, hrw};
use crate::cluster::{Cluster, ClusterName};
use crate::error::Result;
use crate::manager::lease::memory::{MemoryLeases, Records};
use crate::manager::{ClusterHealth, HealthProbes, Manager};
use crate::multicluster::Aware;

/// A cluster whose apiserver is never reached (nothing here talks to it).
fn cluster(name: &str) -> Arc<Cluster> {
    let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
    Arc::new(Cluster::new(
        name,
        kube::Client::try_from(config).expect("a client"),
    ))
}

/// A component whose next `engage` waits, once told to hold, until released.
#[derive(Default)]
struct Holding {
    hold: AtomicBool,
    waiting: Notify,
    release: Notify,
}

#[async_trait]
impl Aware for Holding {
    async fn engage(
        &self,
        _token: CancellationToken,
        _name: ClusterName,
        _cluster: Arc<Cluster>,
    ) -> Result<()> {
        if self.hold.swap(false, Ordering::SeqCst) {
            self.waiting.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

/// A sharded manager alone in its fleet (so it owns every cluster), with `component`,
/// started; its Leases in `records`, each write taking a millisecond so that a loop
/// of writes lets the paused clock move.
async fn sharded(
    records: &Arc<Records>,
    component: Arc<Holding>,
) -> (Manager, CancellationToken, JoinHandle<Result<()>>) {
    let store = Arc::new(MemoryLeases::new(records.clone()));
    store.slow_writes(Duration::from_millis(1), false);
    let manager = Manager::new(cluster("local"))
        .without_health_probes()
        .with_sharding(Sharding::new("sim").identity("r00"))
        .with_lease_store(store);
    manager.add_aware(component).await.expect("added");
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, stop) = (manager.clone(), stop.clone());
        async move { manager.start(stop).await }
    });
    while manager.coordinator().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (manager, stop, running)
}

fn owned(manager: &Manager, name: &ClusterName) -> bool {
    manager
        .coordinator()
        .is_some_and(|c| c.view().owned.contains(name))
}

/// r03: a replace whose engage is still in a component when the provider removes
/// the cluster. The coordinator must end up not knowing the cluster: no fence is
/// taken and released for it over and over, with no engagement to start.
#[tokio::test(start_paused = true)]
async fn r03_a_replace_racing_a_remove_leaves_no_lease_writes_for_the_removed_cluster() {
    let records = Arc::new(Records::default());
    let component = Arc::new(Holding::default());
    let (manager, stop, running) = sharded(&records, component.clone()).await;
    let name = ClusterName::from("x");
    let fence = Sharding::new("sim").fence_lease(&name);

    manager
        .engage(CancellationToken::new(), name.clone(), cluster("x"))
        .await
        .expect("engaged");
    while !owned(&manager, &name) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    component.hold.store(true, Ordering::SeqCst);
    let second = CancellationToken::new();
    let replacing = tokio::spawn({
        let (manager, name, token) = (manager.clone(), name.clone(), second.clone());
        async move { manager.engage(token, name, cluster("x")).await }
    });
    component.waiting.notified().await;
    // Removed while the replacement is still on its way through the components.
    second.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
    component.release.notify_one();
    replacing.await.expect("ran").expect("engaged");

    // The hand-over ends with the fence released; after that, nothing touches it.
    while owned(&manager, &name) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = records.writes_to(&fence);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let writes = records.writes_to(&fence) - before;
    assert_eq!(writes, 0, "Lease writes for the removed cluster in 10 s");
    assert!(manager.engaged_clusters().iter().all(|c| *c != name));

    stop.cancel();
    running.await.expect("ran").expect("stopped cleanly");
}

/// Stands in for another replica's components: it works on whatever it owns.
struct Idle;

#[async_trait]
impl super::Host for Idle {
    async fn start(&self, _name: &ClusterName, _term: &super::Term) -> bool {
        true
    }

    async fn stop(&self, _name: &ClusterName, _term: &super::Term) {}

    async fn forget(&self, _name: &ClusterName) {}
}

/// An apiserver for health probes: answers every request with 500 while `failing`,
/// and never answers once not; counts the requests.
async fn apiserver(failing: Arc<AtomicBool>, requests: Arc<AtomicU64>) -> String {
    let answer: crate::manager::fake_apiserver::Answer = Arc::new(move || {
        failing
            .load(Ordering::SeqCst)
            .then_some("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
    });
    crate::manager::fake_apiserver::serve(answer, requests).await
}

/// Short timings, so that clusters move within a second on the real clock.
fn quick(identity: &str) -> Sharding {
    Sharding::new("sim")
        .identity(identity)
        .lease_duration(Duration::from_secs(3))
        .renew_deadline(Duration::from_secs(2))
        .renew_period(Duration::from_secs(1))
        .probe_interval(Duration::from_millis(100))
}

/// Polls `done` every 10 ms for up to 10 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("not within 10 s: {what}"));
}

/// r08: a cluster that moves to another replica and back starts with a fresh
/// health here, not with the failures it had before it left. (Real clock: the
/// probes go over TCP.)
#[tokio::test]
async fn r08_a_cluster_owned_again_starts_with_fresh_health() {
    let (failing, requests) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU64::new(0)));
    let url = apiserver(failing.clone(), requests.clone()).await;
    // A name that the second replica owns once it joins.
    let name = (0..)
        .map(|i| ClusterName::from(format!("x{i}")))
        .find(|n| hrw::owner(n.as_str(), [("r00", 1), ("r01", 1)]) == Some("r01".into()))
        .expect("a name");
    let records = Arc::new(Records::default());
    let manager = Manager::new(cluster("local"))
        .with_health_probes(
            HealthProbes::default()
                .interval(Duration::from_millis(20))
                .timeout(Duration::from_secs(3600))
                .failure_threshold(1),
        )
        .with_sharding(quick("r00"))
        .with_lease_store(Arc::new(MemoryLeases::new(records.clone())));
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, stop) = (manager.clone(), stop.clone());
        async move { manager.start(stop).await }
    });
    until("the coordinator runs", || manager.coordinator().is_some()).await;
    let config = kube::Config::new(url.parse().expect("a URL"));
    let member = Arc::new(Cluster::new(
        name.clone(),
        kube::Client::try_from(config).expect("a client"),
    ));
    manager
        .engage(CancellationToken::new(), name.clone(), member)
        .await
        .expect("engaged");
    let health = |m: &Manager| {
        m.cluster_health()
            .get(&name)
            .cloned()
            .unwrap_or_else(ClusterHealth::unknown)
    };
    until("unhealthy here", || health(&manager).consecutive_failures > 0).await;

    // Another replica joins and takes the cluster; the apiserver stops answering.
    let other = Coordinator::new(quick("r01"), Arc::new(MemoryLeases::new(records)), Arc::new(Idle));
    other.known(&name, 0);
    let other_stop = CancellationToken::new();
    let other_run = tokio::spawn(other.clone().run(other_stop.clone()));
    until("owned by r01", || {
        other.view().owned.contains(&name) && !owned(&manager, &name)
    })
    .await;
    failing.store(false, Ordering::SeqCst);
    let sent = requests.load(Ordering::SeqCst);

    // It leaves cleanly: the cluster comes back, and is probed again (no answer).
    other_stop.cancel();
    other_run.await.expect("ran");
    until("owned here again", || owned(&manager, &name)).await;
    until("probed again", || requests.load(Ordering::SeqCst) > sent).await;
    assert_eq!(health(&manager), ClusterHealth::unknown(), "health carried over");

    stop.cancel();
    running.await.expect("ran").expect("stopped cleanly");
}

/// Leader election and sharding together are refused at start, before anything
/// runs, with an error that names both sets of Leases and says what to do.
#[tokio::test]
async fn leader_election_and_sharding_together_are_refused_at_start() {
    let manager = Manager::new(cluster("local"))
        .without_health_probes()
        .with_leader_election(crate::manager::LeaderElection::new("op").namespace("ops"))
        .with_sharding(Sharding::new("op").namespace("ops"));
    let start = manager.start(CancellationToken::new());
    let err = tokio::time::timeout(Duration::from_secs(10), start)
        .await
        .expect("refused at once, not run")
        .expect_err("refused");
    assert!(matches!(err, crate::Error::LeaderElectionWithSharding { .. }));
    assert_eq!(
        err.to_string(),
        "leader election on lease ops/op and sharding on leases ops/op cannot both be on: controllers \
         would run on the leader alone, which works on its share of the clusters only; set one of them"
    );
    assert!(manager.coordinator().is_none(), "nothing started");
}
