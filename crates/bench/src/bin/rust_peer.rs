//! The Rust peer: one controller on this library that reconciles every labelled
//! ConfigMap of the fleet, reading each from its cluster's shared cache.
//!
//! Clusters come from a directory of kubeconfigs through the programmatic
//! [`Clusters`] provider (the counterpart of Go's `providers/clusters`). See
//! `bench/README.md` for the arguments and the JSON line it prints.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use mcr_bench::{NamespaceClients, PeerArgs, Tally, WRITTEN_AT};
use multicluster_runtime::cache::WatchSpec;
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::providers::namespace::Namespaces;
use multicluster_runtime::{Cluster, ClusterOptions, Manager};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    mcr_bench::run_peer("rust-peer", run).await
}

async fn run(args: PeerArgs, start: Instant, wall_start: SystemTime) -> Result<mcr_bench::Report, String> {
    let files = mcr_bench::kubeconfig_files(&args.kubeconfigs)?;
    let manager = match args.namespaces_as_clusters {
        None => fleet_manager(&files).await?,
        Some(clients) => namespace_manager(&files, clients).await?,
    };

    let tally = Arc::new(Tally::new(wall_start, args.expected, args.updates));
    Controller::builder::<ConfigMap>(&manager)
        .named("bench-configmaps")
        .watch_spec(WatchSpec::default().labels(&args.selector))
        .concurrency(args.concurrency)
        .register(reconcile, error_policy, tally.clone())
        .await
        .map_err(|e| e.to_string())?;

    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });
    let mut report = mcr_bench::measure("rust", &args, files.len(), start, &tally).await;
    if args.namespaces_as_clusters.is_some() {
        report.clusters = manager.engaged_clusters().len();
    }
    token.cancel();
    drop(running);
    Ok(report)
}

/// A manager over the fleet of kubeconfigs through the programmatic provider.
async fn fleet_manager(files: &[(String, std::path::PathBuf)]) -> Result<Manager, String> {
    let provider = Arc::new(Clusters::new());
    for (name, path) in files {
        let config = mcr_bench::load_config(path).await?;
        let cluster = Cluster::connect(name.as_str(), config, ClusterOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        provider.add(Arc::new(cluster)).await.map_err(|e| e.to_string())?;
    }
    // The manager's own cluster: the first of the fleet, as for the Go peer. The
    // controller engages only the provider's clusters.
    let local_config = mcr_bench::load_config(&files[0].1).await?;
    let local = Cluster::connect("", local_config, ClusterOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Manager::with_provider(Arc::new(local), provider))
}

/// A manager whose clusters are the labelled namespaces of the first kubeconfig's
/// cluster, which is also the manager's own (so all share one cache).
async fn namespace_manager(
    files: &[(String, std::path::PathBuf)],
    clients: NamespaceClients,
) -> Result<Manager, String> {
    let config = mcr_bench::load_config(&files[0].1).await?;
    let host = Arc::new(
        Cluster::connect("", config.clone(), ClusterOptions::default())
            .await
            .map_err(|e| e.to_string())?,
    );
    let provider = match clients {
        NamespaceClients::Shared => Namespaces::new(host.clone()),
        NamespaceClients::PerNamespace => Namespaces::with_config(host.clone(), config),
    };
    let provider = provider.selector(&format!("{}=yes", mcr_bench::MEMBER_LABEL));
    Ok(Manager::with_provider(host, Arc::new(provider)))
}

async fn reconcile(
    req: ReconcileRequest<ConfigMap>,
    tally: Arc<Tally>,
) -> Result<Action, std::convert::Infallible> {
    if let Some(cm) = &req.object {
        let key = mcr_bench::object_key(
            req.request.cluster.as_str(),
            cm.namespace().as_deref(),
            &cm.name_any(),
        );
        tally.record(key, cm.annotations().get(WRITTEN_AT).map(String::as_str));
    }
    Ok(Action::await_change())
}

fn error_policy(_: &Request, _: &std::convert::Infallible, _: Arc<Tally>) -> Action {
    Action::backoff()
}
