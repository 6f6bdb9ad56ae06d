//! Engagements racing each other, explored by a property test: replacements of one
//! cluster from several tasks, a removal, and components added meanwhile, with the
//! tasks interleaved at random points on a single-threaded runtime (so each case is
//! one reproducible schedule). No apiserver is needed: nothing here talks to one.
//!
//! Whatever the schedule, once everything has settled the provider, the manager and
//! every component hold the same live instance, or none of them holds any.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use multicluster_runtime::async_trait;
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Aware, Cluster, ClusterName, Manager, Provider};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

/// Yield counts drawn by the tasks at their interleaving points.
#[derive(Clone, Default)]
struct Schedule(Arc<Mutex<VecDeque<u8>>>);

impl Schedule {
    async fn point(&self) {
        let yields = self.0.lock().unwrap().pop_front().unwrap_or(0);
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
    }
}

/// A component that follows the contract as simply as possible, and is slow to
/// engage by a scheduled number of yields.
struct Component {
    schedule: Schedule,
    clusters: Arc<Mutex<Held>>,
}

/// What a component holds: each cluster with the token of its engagement.
type Held = HashMap<ClusterName, (Arc<Cluster>, CancellationToken)>;

#[async_trait]
impl Aware for Component {
    async fn engage(
        &self,
        token: CancellationToken,
        name: ClusterName,
        cluster: Arc<Cluster>,
    ) -> multicluster_runtime::Result<()> {
        self.schedule.point().await;
        if token.is_cancelled() || self.holds(&name).is_some_and(|held| Arc::ptr_eq(&held, &cluster)) {
            return Ok(()); // over already, or the same instance again
        }
        let replaced = self
            .clusters
            .lock()
            .unwrap()
            .insert(name.clone(), (cluster.clone(), token.clone()));
        if let Some((_, old)) = replaced {
            old.cancel();
        }
        let clusters = self.clusters.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            let mut clusters = clusters.lock().unwrap();
            if clusters.get(&name).is_some_and(|(c, _)| Arc::ptr_eq(c, &cluster)) {
                clusters.remove(&name);
            }
        });
        Ok(())
    }
}

impl Component {
    fn holds(&self, name: &ClusterName) -> Option<Arc<Cluster>> {
        let clusters = self.clusters.lock().unwrap();
        clusters
            .get(name)
            .filter(|(_, token)| !token.is_cancelled())
            .map(|(cluster, _)| cluster.clone())
    }
}

/// A new instance named `name`; instances share one client (building clients is
/// the slow part, and nothing here sends a request).
fn instance(name: &str) -> Arc<Cluster> {
    thread_local! {
        static CLIENT: kube::Client = {
            let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
            kube::Client::try_from(config).unwrap()
        };
    }
    Arc::new(Cluster::new(name, CLIENT.with(Clone::clone)))
}

async fn race(
    replacers: usize,
    replacements: usize,
    remove_last: bool,
    yields: Vec<u8>,
) -> Result<(), TestCaseError> {
    let schedule = Schedule(Arc::new(Mutex::new(yields.into())));
    let provider = Arc::new(Clusters::new());
    let manager = Manager::with_provider(instance(""), provider.clone());
    let component = |schedule: &Schedule| {
        Arc::new(Component {
            schedule: schedule.clone(),
            clusters: Arc::default(),
        })
    };
    let early = component(&schedule);
    manager.add_aware(early.clone()).await.expect("added");
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });
    provider.add(instance("c")).await.expect("added");

    let mut tasks = Vec::new();
    for _ in 0..replacers {
        let (provider, schedule) = (provider.clone(), schedule.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..replacements {
                schedule.point().await;
                provider.replace(instance("c")).await.expect("replace");
            }
        }));
    }
    let late = component(&schedule);
    let adder = tokio::spawn({
        let (manager, late, schedule) = (manager.clone(), late.clone(), schedule.clone());
        async move {
            schedule.point().await;
            manager.add_aware(late).await.expect("added late");
        }
    });
    for task in tasks {
        task.await.expect("replacer");
    }
    adder.await.expect("adder");
    let name = ClusterName::from("c");
    if remove_last {
        provider.remove(&name);
    }
    // Let the tasks that follow cancelled tokens run.
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }

    let registered = provider.get(&name).await.ok();
    let engaged = manager.get_cluster(&name).await.ok();
    prop_assert_eq!(registered.is_some(), !remove_last);
    let same = |a: &Option<Arc<Cluster>>, b: &Option<Arc<Cluster>>| match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    prop_assert!(
        same(&registered, &engaged),
        "the manager holds another instance than the provider"
    );
    prop_assert_eq!(manager.engaged_clusters().contains(&name), !remove_last);
    prop_assert!(
        same(&registered, &early.holds(&name)),
        "the early component holds another instance"
    );
    prop_assert!(
        same(&registered, &late.holds(&name)),
        "the late component holds another instance"
    );
    if let Some(cluster) = &registered {
        prop_assert!(!cluster.is_stopped());
    }
    token.cancel();
    running.await.expect("manager task").expect("manager");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn replacements_removal_and_late_components_agree(
        replacers in 1..=3usize,
        replacements in 1..=6usize,
        remove_last in any::<bool>(),
        yields in proptest::collection::vec(0..4u8, 0..200),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(race(replacers, replacements, remove_last, yields))?;
    }
}
