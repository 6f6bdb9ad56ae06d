//! The quick start: one controller across a fleet that changes while it runs.
//!
//! Without arguments it builds what is missing (the first time: kube-apiserver and
//! etcd, a few minutes), starts a local fleet of real apiservers, and runs the
//! uniform reconciler (`examples/src/uniform.rs`) across it:
//!
//! 1. three clusters are discovered and engaged, and their ConfigMaps reconciled;
//! 2. a fourth cluster joins while it runs, and is reconciled too;
//! 3. one cluster leaves: its work stops, the others carry on;
//! 4. Ctrl-C stops everything cleanly.
//!
//!     cargo run -p examples --example quickstart
//!
//! Against real clusters instead, point it at a kubeconfig file or a directory of
//! them (one cluster per context; the manager's own cluster is the current
//! context of `$KUBECONFIG` or `~/.kube/config`):
//!
//!     cargo run -p examples --example quickstart -- --kubeconfig ~/fleet/

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use examples::fleet::LocalFleet;
use examples::uniform::{self, Progress};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::providers::file::Files;
use multicluster_runtime::{Cluster, Manager};

#[derive(Parser)]
#[command(about = "Run one controller across a fleet of clusters")]
struct Args {
    /// Fleet clusters to start locally (plus the manager's own and one that joins later).
    #[arg(long, default_value_t = 3)]
    clusters: usize,
    /// Use the clusters of this kubeconfig file or directory instead of a local fleet.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let args = Args::parse();
    match args.kubeconfig {
        Some(path) => real_fleet(path).await,
        None => local_fleet(args.clusters.max(2)).await,
    }
}

/// The demo on a local fleet: apiserver 0 is the manager's, 1..=n the fleet, n+1 joins later.
async fn local_fleet(clusters: usize) -> anyhow::Result<()> {
    let fleet = LocalFleet::start(clusters + 2).await?;
    // Times count from here: building and starting the control planes is not the
    // controller's doing.
    let progress = Progress::new();
    println!("--- fleet ready; reconcile times below count from now");
    let provider = Arc::new(Clusters::new());
    // Metrics and readiness on a free local port, printed once it listens.
    let manager = Manager::with_provider(fleet.local()?, provider.clone())
        .with_http_endpoint(([127, 0, 0, 1], 0).into());
    uniform::controller(&manager)
        .register(uniform::reconcile, uniform::error_policy, progress.clone())
        .await?;

    let endpoint = manager.clone();
    let script = async {
        print_endpoint(&endpoint).await;
        for index in 1..=clusters {
            join(&fleet, &provider, index).await?;
        }
        tokio::time::sleep(Duration::from_secs(8)).await;
        join(&fleet, &provider, clusters + 1).await?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        println!("--- {} leaves the fleet", LocalFleet::name(1));
        provider.remove(&LocalFleet::name(1).into());
        println!("--- reconciles per cluster so far: {:?}", progress.per_cluster());
        Ok(())
    };
    examples::run_demo(manager, script).await
}

/// Prints where the manager serves its metrics and readiness, once it does (it
/// binds as it starts; if it cannot, `start` fails and says why).
async fn print_endpoint(manager: &Manager) {
    for _ in 0..200 {
        if let Some(address) = manager.http_address() {
            println!("--- metrics: curl http://{address}/metrics");
            println!("--- readiness of every cluster: curl 'http://{address}/readyz?verbose'");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds fleet apiserver `index` to the provider, with a managed ConfigMap in it.
async fn join(fleet: &LocalFleet, provider: &Clusters, index: usize) -> anyhow::Result<()> {
    let cluster = fleet.member(index)?;
    let kubeconfig = fleet
        .fleet()
        .cluster(index)
        .kubeconfig_path()
        .display()
        .to_string();
    println!(
        "--- {} joins (kubectl --kubeconfig {kubeconfig} get cm)",
        cluster.name()
    );
    uniform::create_managed(cluster.client(), "app-settings").await?;
    provider.add(cluster).await?;
    Ok(())
}

/// The demo on real clusters: every context of the kubeconfig(s) at `path`.
async fn real_fleet(path: PathBuf) -> anyhow::Result<()> {
    let progress = Progress::new();
    let local = Arc::new(Cluster::new("", kube::Client::try_default().await?));
    let provider = Arc::new(Files::builder().path(path).build());
    let manager = Manager::with_provider(local, provider);
    uniform::controller(&manager)
        .register(uniform::reconcile, uniform::error_policy, progress)
        .await?;
    println!(
        "--- watching the kubeconfigs; label a ConfigMap {}=true in any cluster to see it reconciled",
        uniform::MANAGED
    );
    examples::run_demo(manager, async { Ok(()) }).await
}
