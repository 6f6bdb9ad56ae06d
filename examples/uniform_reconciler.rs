//! The uniform reconciler: the same ConfigMap logic in every cluster of a fleet.
//!
//! Starts a local fleet (the manager's own cluster plus three), creates a managed
//! ConfigMap in each fleet cluster, and runs one controller that annotates every
//! managed ConfigMap with the name of its cluster. Each reconcile line names its
//! cluster. Stop with Ctrl-C.
//!
//!     cargo run -p examples --example uniform_reconciler
//!
//! Try `kubectl --kubeconfig <printed path> get cm -o yaml` while it runs.

use std::sync::Arc;

use examples::fleet::LocalFleet;
use examples::uniform::{self, Progress};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, Manager};
use tokio_util::sync::CancellationToken;

/// Runs the uniform controller over `clusters` until `token` is cancelled.
pub async fn run(
    local: Arc<Cluster>,
    clusters: Vec<Arc<Cluster>>,
    progress: Arc<Progress>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let provider = Arc::new(Clusters::new());
    let manager = Manager::with_provider(local, provider.clone());
    uniform::controller(&manager)
        .register(uniform::reconcile, uniform::error_policy, progress)
        .await?;
    for cluster in clusters {
        uniform::create_managed(cluster.client(), "app-settings").await?;
        provider.add(cluster).await?;
    }
    manager.start(token).await?;
    Ok(())
}

#[allow(dead_code)] // the integration test includes this file for `run`
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let fleet = LocalFleet::start(4).await?;
    for (index, cluster) in fleet.fleet().clusters().iter().enumerate().skip(1) {
        println!(
            "{} kubeconfig: {}",
            LocalFleet::name(index),
            cluster.kubeconfig_path().display()
        );
    }
    let members = (1..=3)
        .map(|i| fleet.member(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let token = CancellationToken::new();
    let running = tokio::spawn(run(fleet.local()?, members, Progress::new(), token.clone()));
    examples::shutdown_signal().await;
    token.cancel();
    running.await??;
    println!("stopped");
    Ok(())
}
