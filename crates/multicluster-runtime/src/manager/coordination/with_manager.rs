//! The coordinator driving a real [`Manager`]: engagements, gates and health on the
//! manager's side, Leases in the in-memory store, time on tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Sharding;
use crate::cluster::{Cluster, ClusterName};
use crate::error::Result;
use crate::manager::Manager;
use crate::manager::lease::memory::{MemoryLeases, Records};
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
