//! A fleet for controller tests: cluster 0 is the manager's local cluster, the others
//! are offered by a `Clusters` provider; and a reconciler that records what it saw.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_envtest::Fleet;
use multicluster_runtime::controller::queue::PauseReason;
use multicluster_runtime::controller::{Action, Controller, ControllerBuilder, ReconcileRequest, Request};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, ClusterName, Manager};
use tokio_util::sync::CancellationToken;

use super::{WAIT, wait_until};

/// A fleet whose cluster 0 is the manager's local cluster and whose clusters
/// 1..=n are offered by a `Clusters` provider as `c1`..`cn`.
pub struct Env {
    pub fleet: Fleet,
    pub manager: Manager,
    pub provider: Arc<Clusters>,
    pub token: CancellationToken,
}

impl Env {
    pub async fn new(provider_clusters: usize) -> Self {
        Self::with_spare(provider_clusters, 0).await
    }

    /// Like `new`, with `spare` more fleet clusters that are not added to the provider.
    pub async fn with_spare(provider_clusters: usize, spare: usize) -> Self {
        let fleet = Fleet::start(1 + provider_clusters + spare)
            .await
            .expect("start fleet");
        let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
        let provider = Arc::new(Clusters::new());
        let manager = Manager::with_provider(local, provider.clone());
        let env = Env {
            fleet,
            manager,
            provider,
            token: CancellationToken::new(),
        };
        for index in 1..=provider_clusters {
            env.add(index).await;
        }
        env
    }

    pub fn client(&self, index: usize) -> Client {
        self.fleet.cluster(index).client().expect("client")
    }

    /// A new `Cluster` instance for fleet cluster `index`, named `c<index>`.
    pub fn cluster(&self, index: usize) -> Arc<Cluster> {
        Arc::new(Cluster::new(format!("c{index}"), self.client(index)))
    }

    pub async fn add(&self, index: usize) -> Arc<Cluster> {
        let cluster = self.cluster(index);
        self.provider.add(cluster.clone()).await.expect("add cluster");
        cluster
    }

    pub fn start(&self) {
        let (manager, token) = (self.manager.clone(), self.token.clone());
        tokio::spawn(async move { manager.start(token).await.expect("manager runs") });
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Every reconcile a controller made: the request, whether the object existed.
#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<(Request, bool)>>,
}

impl Recorder {
    pub fn record(&self, request: &Request, exists: bool) {
        self.seen.lock().unwrap().push((request.clone(), exists));
    }

    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().iter().map(|(r, _)| r.clone()).collect()
    }

    pub fn count(&self, cluster: &str, name: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.cluster == cluster && r.name() == name)
            .count()
    }

    pub fn count_cluster(&self, cluster: &str) -> usize {
        self.requests().iter().filter(|r| r.cluster == cluster).count()
    }

    pub async fn wait(&self, what: &str, done: impl Fn(&[(Request, bool)]) -> bool) {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if done(&self.seen.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}; seen: {:?}", self.requests());
    }

    pub async fn wait_for(&self, cluster: &str, name: &str, times: usize) {
        let what = format!("{times} reconcile(s) of {name} in {cluster}");
        self.wait(&what, |seen| {
            seen.iter()
                .filter(|(r, _)| r.cluster == cluster && r.name() == name)
                .count()
                >= times
        })
        .await;
    }
}

pub async fn record(req: ReconcileRequest<ConfigMap>, recorder: Arc<Recorder>) -> Result<Action, Infallible> {
    recorder.record(&req.request, req.object.is_some());
    Ok(Action::await_change())
}

pub fn backoff_policy<E>(_: &Request, _: &E, _: Arc<Recorder>) -> Action {
    Action::backoff()
}

/// A controller of ConfigMaps that records every reconcile.
pub async fn recording(builder: ControllerBuilder<ConfigMap>) -> (Arc<Controller>, Arc<Recorder>) {
    with_reconciler(builder, record).await
}

/// A controller of ConfigMaps with the given reconciler and a recorder as context.
pub async fn with_reconciler<R, F>(
    builder: ControllerBuilder<ConfigMap>,
    reconcile: R,
) -> (Arc<Controller>, Arc<Recorder>)
where
    R: Fn(ReconcileRequest<ConfigMap>, Arc<Recorder>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Action, Infallible>> + Send + 'static,
{
    let recorder = Arc::new(Recorder::default());
    let controller = builder
        .register(reconcile, backoff_policy, recorder.clone())
        .await
        .expect("controller");
    (controller, recorder)
}

pub async fn create_cm(client: Client, name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.data = Some(
        data.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    );
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create configmap")
}

pub async fn patch_cm(client: Client, name: &str, key: &str, value: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let patch = serde_json::json!({ "data": { key: value } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch configmap");
}

pub async fn wait_engaged(controller: &Controller, clusters: &[&str]) {
    let started = Instant::now();
    while !clusters
        .iter()
        .all(|c| controller.cluster_names().iter().any(|n| n == c))
    {
        assert!(
            started.elapsed() < WAIT,
            "clusters {clusters:?} not engaged: {:?}",
            controller.cluster_names()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `controller` holds nothing of `clusters`: none is waiting for its
/// caches, and none has an item queued (ready or delayed) or running. Whatever was
/// queued for them before has been reconciled to its end by then, retries included.
pub async fn wait_idle(controller: &Controller, clusters: &[&str]) {
    let queue = controller.queue();
    wait_until(&format!("the queue of {clusters:?} idle"), || {
        clusters.iter().all(|name| {
            let name = ClusterName::from(*name);
            !queue.pause_reasons(&name).contains(PauseReason::Syncing)
                && queue.depth(&name) == 0
                && queue.processing_len_of(&name) == 0
        })
    })
    .await;
}
