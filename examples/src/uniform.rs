//! The uniform reconciler: the same logic in every cluster of the fleet.
//!
//! Every ConfigMap labelled `example.com/managed=true`, in any cluster, gets the
//! annotation `example.com/reconciled-in: <cluster name>`. The watch itself is
//! filtered by that label, so the caches hold only managed ConfigMaps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use multicluster_runtime::Manager;
use multicluster_runtime::cache::WatchSpec;
use multicluster_runtime::controller::{Action, Controller, ControllerBuilder, ReconcileRequest, Request};

/// The label that opts a ConfigMap in.
pub const MANAGED: &str = "example.com/managed";
/// The annotation the reconciler writes.
pub const RECONCILED_IN: &str = "example.com/reconciled-in";

/// What the reconciler has done, for progress output and tests.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    per_cluster: Mutex<BTreeMap<String, usize>>,
}

impl Progress {
    /// Progress counted from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Progress {
            started: Instant::now(),
            per_cluster: Mutex::default(),
        })
    }

    /// Reconciles that changed something, by cluster.
    pub fn per_cluster(&self) -> BTreeMap<String, usize> {
        self.per_cluster.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, request: &Request) {
        let mut counts = self.per_cluster.lock().unwrap_or_else(|p| p.into_inner());
        let first = counts.is_empty();
        *counts.entry(request.cluster.to_string()).or_default() += 1;
        let elapsed = self.started.elapsed().as_secs_f64();
        let note = if first { "   (first reconcile)" } else { "" };
        println!("reconciled  {request}  after {elapsed:.1} s{note}");
    }
}

/// Builds the controller: managed ConfigMaps of every provider cluster.
pub fn controller(manager: &Manager) -> ControllerBuilder<ConfigMap> {
    Controller::builder::<ConfigMap>(manager)
        .named("uniform")
        .watch_spec(WatchSpec::default().labels(&format!("{MANAGED}=true")))
        .concurrency(4)
}

/// Annotates the ConfigMap with the name of its cluster, once.
pub async fn reconcile(
    req: ReconcileRequest<ConfigMap>,
    progress: Arc<Progress>,
) -> Result<Action, kube::Error> {
    let Some(cm) = &req.object else {
        return Ok(Action::await_change());
    }; // deleted: nothing to undo
    let cluster = req.request.cluster.as_str();
    if cm.annotations().get(RECONCILED_IN).map(String::as_str) == Some(cluster) {
        return Ok(Action::await_change());
    }
    let api: Api<ConfigMap> = Api::namespaced(req.client(), req.request.namespace().unwrap_or("default"));
    let patch = serde_json::json!({ "metadata": { "annotations": { RECONCILED_IN: cluster } } });
    api.patch(req.request.name(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    progress.record(&req.request);
    Ok(Action::await_change())
}

/// Retries a failed reconcile with exponential backoff.
pub fn error_policy(request: &Request, error: &kube::Error, _: Arc<Progress>) -> Action {
    tracing::warn!(%request, %error, "reconcile failed; backing off");
    Action::backoff()
}

/// Creates a managed ConfigMap `name` in `default` (existing is fine).
pub async fn create_managed(client: kube::Client, name: &str) -> Result<(), kube::Error> {
    create_managed_in(client, "default", name).await
}

/// Creates a managed ConfigMap `name` in `namespace` (existing is fine).
pub async fn create_managed_in(client: kube::Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.metadata.labels = Some([(MANAGED.to_owned(), "true".to_owned())].into());
    cm.data = Some([("greeting".to_owned(), "hello".to_owned())].into());
    match Api::<ConfigMap>::namespaced(client, namespace)
        .create(&PostParams::default(), &cm)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err),
    }
}
