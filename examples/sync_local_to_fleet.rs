//! Sync local → fleet: a ConfigMap of the manager's own cluster copied into every
//! fleet cluster, drift in a copy reverted, copies removed with the original.
//!
//! Starts a local fleet (the manager's cluster plus three), creates the original
//! `shared-settings` (labelled `example.com/sync=true`) in the local cluster, then
//! edits one copy by hand after a few seconds to show the revert. Stop with Ctrl-C.
//!
//!     cargo run -p examples --example sync_local_to_fleet

use std::sync::Arc;
use std::time::Duration;

use examples::fleet::LocalFleet;
use examples::sync;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, Manager};
use tokio_util::sync::CancellationToken;

/// Runs the sync controller from `local` to `clusters` until `token` is cancelled.
pub async fn run(
    local: Arc<Cluster>,
    clusters: Vec<Arc<Cluster>>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let provider = Arc::new(Clusters::new());
    let manager = Manager::with_provider(local, provider.clone());
    sync::controller(&manager)
        .register(sync::reconcile, sync::error_policy, Arc::new(manager.clone()))
        .await?;
    for cluster in clusters {
        provider.add(cluster).await?;
    }
    manager.start(token).await?;
    Ok(())
}

/// The original, in the local cluster.
pub fn original(value: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("shared-settings".into());
    cm.metadata.labels = Some([(sync::SYNC.to_owned(), "true".to_owned())].into());
    cm.data = Some([("log-level".to_owned(), value.to_owned())].into());
    cm
}

#[allow(dead_code)] // the integration test includes this file for `run`
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let fleet = LocalFleet::start(4).await?;
    let local_api: Api<ConfigMap> = Api::namespaced(fleet.client(0)?, "default");
    local_api
        .create(&PostParams::default(), &original("info"))
        .await?;
    println!("created the original default/shared-settings in the local cluster");
    let members = (1..=3)
        .map(|i| fleet.member(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let token = CancellationToken::new();
    let running = tokio::spawn(run(fleet.local()?, members, token.clone()));

    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("editing the copy in cluster-2 by hand (drift) ...");
    let drift = serde_json::json!({ "data": { "log-level": "debug" } });
    let copy: Api<ConfigMap> = Api::namespaced(fleet.client(2)?, "default");
    copy.patch("shared-settings", &PatchParams::default(), &Patch::Merge(&drift))
        .await?;

    examples::shutdown_signal().await;
    token.cancel();
    running.await??;
    println!("stopped");
    Ok(())
}
