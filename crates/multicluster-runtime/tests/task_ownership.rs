//! t03: every task has an owner. A full run of the manager (a `Multi` over the
//! Secrets and the namespace providers, a controller, the HTTP endpoint, health
//! probes, and leader election or sharding) leaves no task of its own alive once
//! `Manager::start` has returned.
//!
//! Each test counts the alive tasks of a runtime of its own. Its fixtures (the
//! apiservers, the Secrets, the namespaces) are made on another runtime, so that
//! nothing of theirs is counted.
#![cfg(all(feature = "secret", feature = "namespace", feature = "multi"))]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use kube_envtest::Fleet;
use multicluster_runtime::controller::Controller;
use multicluster_runtime::manager::{LeaderElection, Sharding};
use multicluster_runtime::providers::multi::Multi;
use multicluster_runtime::providers::namespace::Namespaces;
use multicluster_runtime::providers::secret::{DEFAULT_DATA_KEY, Secrets, SecretsOptions, kubeconfig_secret};
use multicluster_runtime::{Cluster, Manager};
use support::fleet::recording;
use support::http;
use tokio::runtime::{Builder, Runtime};
use tokio_util::sync::CancellationToken;

const SECRETS_NS: &str = "fleet";
const TENANT_LABEL: &str = "t03-tenant";

/// How the replicas divide the work in a run.
#[derive(Clone, Copy)]
enum Coordination {
    LeaderElection,
    Sharding,
}

/// Apiservers made on a runtime of their own: cluster 0 is the local cluster (and
/// the host of the Secrets and of the tenant namespace), 1 and 2 the targets of two
/// kubeconfig Secrets, plus a Secret that gives no cluster (so that an Event is
/// published). Every cluster holds a ConfigMap for the controller.
struct Fixture {
    fleet: Fleet,
    _runtime: Runtime,
}

fn fixture() -> Fixture {
    let runtime = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let fleet = runtime.block_on(async {
        let fleet = Fleet::start(3).await.expect("start fleet");
        let host = fleet.cluster(0).client().expect("client");
        let namespaces = Api::<Namespace>::all(host.clone());
        for namespace in [
            namespace(SECRETS_NS, None),
            namespace("tenant-a", Some(TENANT_LABEL)),
        ] {
            namespaces
                .create(&PostParams::default(), &namespace)
                .await
                .expect("namespace");
        }
        create_config_map(&host, "tenant-a").await;
        let secrets = Api::<Secret>::namespaced(host, SECRETS_NS);
        for index in 1..=2 {
            let name = format!("c{index}");
            let secret = kubeconfig_secret(&name, SECRETS_NS, fleet.cluster(index).kubeconfig());
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .expect("Secret");
            create_config_map(&fleet.cluster(index).client().expect("client"), "default").await;
        }
        let mut broken = kubeconfig_secret("broken", SECRETS_NS, fleet.cluster(1).kubeconfig());
        broken.data = Some(BTreeMap::from([(
            DEFAULT_DATA_KEY.to_owned(),
            ByteString(b"{".to_vec()),
        )]));
        secrets
            .create(&PostParams::default(), &broken)
            .await
            .expect("Secret");
        fleet
    });
    Fixture {
        fleet,
        _runtime: runtime,
    }
}

fn namespace(name: &str, label: Option<&str>) -> Namespace {
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(name.to_owned());
    namespace.metadata.labels = label.map(|key| BTreeMap::from([(key.to_owned(), "yes".to_owned())]));
    namespace
}

async fn create_config_map(client: &Client, namespace: &str) {
    let mut config_map = ConfigMap::default();
    config_map.metadata.name = Some("t03".into());
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &config_map)
        .await
        .expect("ConfigMap");
}

/// Runs one manager to its end on a fresh runtime and checks that the runtime has
/// no more alive tasks afterwards than before the manager was built.
fn run_and_count(coordination: Coordination) {
    let fixture = fixture();
    let runtime = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = runtime.metrics();
    let baseline = metrics.num_alive_tasks();
    let at_return = runtime.block_on(run(&fixture.fleet, coordination));
    // Everything the run held is dropped now. What may still be alive is not the
    // library's: each `kube::Client` (made by the test, by the Secrets provider,
    // by the namespace provider) has a request-buffer task, and its connection pool
    // one task per open connection; both end once polled after the last handle of
    // their client has gone, so they are given a bounded wait. A task of the
    // library that `start` did not wait for would be counted at return too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut alive = metrics.num_alive_tasks();
    while alive > baseline && Instant::now() < deadline {
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        alive = metrics.num_alive_tasks();
    }
    assert_eq!(
        alive, baseline,
        "tasks still alive after Manager::start returned and every handle was dropped \
         ({at_return} alive when it returned, {baseline} before the manager was built)"
    );
}

/// Builds the manager, runs it until every cluster was reconciled, stops it, and
/// returns how many tasks were alive right when `start` returned (for the message).
async fn run(fleet: &Fleet, coordination: Coordination) -> usize {
    let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
    let secrets = Arc::new(Secrets::new(local.client(), SecretsOptions::new(SECRETS_NS)));
    let namespaces = Arc::new(Namespaces::new(local.clone()).selector(TENANT_LABEL));
    let multi = Arc::new(Multi::new());
    multi.add_provider("secrets", secrets).await.expect("add Secrets");
    multi
        .add_provider("ns", namespaces)
        .await
        .expect("add namespaces");
    let manager = Manager::with_provider(local, multi).with_http_endpoint("127.0.0.1:0".parse().unwrap());
    let manager = match coordination {
        Coordination::LeaderElection => {
            manager.with_leader_election(LeaderElection::new("t03").identity("t03-0"))
        }
        Coordination::Sharding => manager.with_sharding(Sharding::new("t03").identity("t03-0")),
    };
    let (controller, recorder) = recording(Controller::builder::<ConfigMap>(&manager).named("t03")).await;
    let token = CancellationToken::new();
    let mut clusters = vec![Arc::downgrade(manager.local_cluster())];
    let (outcome, ()) = tokio::join!(manager.start(token.clone()), async {
        for cluster in ["secrets#c1", "secrets#c2", "ns#tenant-a"] {
            recorder.wait_for(cluster, "t03", 1).await;
            let engaged = manager.get_cluster(&cluster.into()).await.expect("engaged");
            clusters.push(Arc::downgrade(&engaged));
        }
        let address = manager.http_address().expect("the endpoint serves");
        assert_eq!(http::get(address, "/readyz").await.status, 200);
        token.cancel();
    });
    let at_return = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    outcome.expect("the manager runs and stops cleanly");
    drop((controller, recorder, manager));
    // No task of the library holds a cluster any more, so dropping the test's
    // handles frees them at once: no waiting here.
    for cluster in clusters {
        assert_eq!(cluster.strong_count(), 0, "a cluster outlives Manager::start");
    }
    at_return
}

/// t03, with leader election.
#[test]
fn t03_every_task_owned_with_leader_election() {
    run_and_count(Coordination::LeaderElection);
}

/// t03, with sharding.
#[test]
fn t03_every_task_owned_with_sharding() {
    run_and_count(Coordination::Sharding);
}
