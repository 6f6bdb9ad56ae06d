//! The Rust peer: one controller on this library that reconciles every labelled
//! ConfigMap of the fleet, reading each from its cluster's shared cache.
//!
//! Clusters come from a directory of kubeconfigs through the programmatic
//! [`Clusters`] provider (the counterpart of Go's `providers/clusters`), from
//! kubeconfig Secrets through [`Secrets`] (P4), or from the namespaces of one
//! cluster through [`Namespaces`] (P6). See `bench/README.md` for the arguments and
//! the JSON line it prints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use mcr_bench::{NamespaceClients, PeerArgs, Tally, WRITTEN_AT};
use multicluster_runtime::cache::{CacheOptions, InformerEvent, WatchSpec};
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::providers::namespace::Namespaces;
use multicluster_runtime::providers::secret::{Secrets, SecretsOptions};
use multicluster_runtime::{Cluster, ClusterOptions, Manager};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    mcr_bench::run_peer("rust-peer", run).await
}

/// What each reconcile needs: the tally and the artificial cost (P5).
struct Context {
    tally: Tally,
    sleep: Duration,
}

async fn run(args: PeerArgs, start: Instant, wall_start: SystemTime) -> Result<mcr_bench::Report, String> {
    let files = mcr_bench::kubeconfig_files(&args.kubeconfigs)?;
    let mut secrets = None;
    let mut fleet = Vec::new();
    mcr_bench::mark("started");
    let options = cluster_options(&args);
    let manager = match (&args.namespaces_as_clusters, &args.kubeconfig_secrets) {
        (Some(clients), _) => namespace_manager(&files, *clients, &options).await?,
        (None, Some(namespace)) => {
            let (manager, provider, host) = secret_manager(&files, namespace, &options).await?;
            secrets = Some((provider, host, namespace.clone()));
            manager
        }
        (None, None) => {
            let (manager, clusters) = fleet_manager(&files, &options).await?;
            fleet = clusters;
            manager
        }
    };
    let manager = if args.no_health_probes {
        manager.without_health_probes()
    } else {
        manager
    };

    let context = Arc::new(Context {
        tally: Tally::new(wall_start, args.expected, args.updates),
        sleep: args.reconcile_sleep,
    });
    Controller::builder::<ConfigMap>(&manager)
        .named("bench-configmaps")
        .watch_spec(WatchSpec::default().labels(&args.selector))
        .concurrency(args.concurrency)
        .register(reconcile, error_policy, context.clone())
        .await
        .map_err(|e| e.to_string())?;

    let token = CancellationToken::new();
    // Where an update's time goes: the same updates, timed where the informer hands
    // them to its subscribers (the controller's source among them).
    let stage = Arc::new(Tally::new(wall_start, args.expected, args.updates));
    for cluster in &fleet {
        let informer = cluster
            .cache()
            .informer_with::<ConfigMap>(&(), WatchSpec::default().labels(&args.selector));
        let (stage, name, token) = (stage.clone(), cluster.name().to_string(), token.clone());
        tokio::spawn(async move {
            // Subscribed once the first list is in, as the controller's sources are:
            // a subscriber during the first list would hold the listed objects in the
            // informer's channel until it read them, memory that a user's process
            // does not spend. The updates this stage times start after every
            // object was reconciled, so after every informer synced.
            if informer.wait_synced(Duration::from_secs(300)).await.is_err() {
                return;
            }
            mcr_bench::mark(format_args!("listed {name}"));
            let mut events = informer.subscribe();
            loop {
                let event = tokio::select! {
                    () = token.cancelled() => return,
                    event = events.recv() => event,
                };
                match event {
                    // Updates only: the first list is not what this stage times, and
                    // recording it would load the peer's own first sync.
                    Ok(InformerEvent::Applied { old: Some(_), new }) => stage.record(
                        &name,
                        new.namespace().as_deref(),
                        &new.name_any(),
                        new.annotations().get(WRITTEN_AT).map(String::as_str),
                    ),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
    for cluster in &fleet {
        let informer = cluster
            .cache()
            .informer_with::<ConfigMap>(&(), WatchSpec::default().labels(&args.selector));
        let name = cluster.name().to_string();
        let mut events = informer.subscribe();
        tokio::spawn(async move {
            if events.recv().await.is_ok() {
                mcr_bench::mark(format_args!("first listed object of {name}"));
            }
        });
    }
    mcr_bench::mark("manager starting");
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });
    // P4 starts its clock once the provider has listed the (absent) Secrets.
    let provider = secrets.as_ref().map(|(provider, _, _)| provider.clone());
    let ready = async move {
        while let Some(provider) = &provider
            && !provider.is_synced()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut report = mcr_bench::measure("rust", &args, files.len(), start, &context.tally, ready).await;
    if !fleet.is_empty() {
        let mut latencies = stage.latencies();
        (report.stage_p50_ms, report.stage_p99_ms, _) = mcr_bench::percentiles(&mut latencies);
    }
    if args.namespaces_as_clusters.is_some() {
        report.clusters = manager.engaged_clusters().len();
    }
    if let Some((_, host, namespace)) = &secrets {
        let stamps = secret_stamps(host.clone(), namespace).await?;
        report.clusters = stamps.len();
        let latencies = mcr_bench::engage_latencies(&stamps, &context.tally.first_reconciles());
        mcr_bench::report_engagements(&mut report, latencies);
    }
    token.cancel();
    drop(running);
    Ok(report)
}

/// The options of every cluster the peer connects: with `--compact-cache`, its
/// ConfigMaps are cached in the compact stored form.
fn cluster_options(args: &PeerArgs) -> ClusterOptions {
    let cache = CacheOptions::default();
    let cache = if args.compact_cache {
        cache.compact::<ConfigMap>()
    } else {
        cache
    };
    ClusterOptions::default().cache(cache)
}

/// A manager over the fleet of kubeconfigs through the programmatic provider, and
/// the provider's clusters.
async fn fleet_manager(
    files: &[(String, std::path::PathBuf)],
    options: &ClusterOptions,
) -> Result<(Manager, Vec<Arc<Cluster>>), String> {
    let provider = Arc::new(Clusters::new());
    let mut clusters = Vec::new();
    for (name, path) in files {
        let config = mcr_bench::load_config(path).await?;
        let cluster = Cluster::connect(name.as_str(), config, options.clone())
            .await
            .map_err(|e| e.to_string())?;
        let cluster = Arc::new(cluster);
        provider.add(cluster.clone()).await.map_err(|e| e.to_string())?;
        clusters.push(cluster);
    }
    // The manager's own cluster: the first of the fleet, as for the Go peer. The
    // controller engages only the provider's clusters.
    let local_config = mcr_bench::load_config(&files[0].1).await?;
    let local = Cluster::connect("", local_config, options.clone())
        .await
        .map_err(|e| e.to_string())?;
    Ok((Manager::with_provider(Arc::new(local), provider), clusters))
}

/// A manager whose clusters are the labelled namespaces of the first kubeconfig's
/// cluster, which is also the manager's own (so all share one cache).
async fn namespace_manager(
    files: &[(String, std::path::PathBuf)],
    clients: NamespaceClients,
    options: &ClusterOptions,
) -> Result<Manager, String> {
    let config = mcr_bench::load_config(&files[0].1).await?;
    let host = Arc::new(
        Cluster::connect("", config.clone(), options.clone())
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

/// A manager whose clusters come from the kubeconfig Secrets of `namespace` on the
/// first kubeconfig's cluster, which is also the manager's own.
async fn secret_manager(
    files: &[(String, std::path::PathBuf)],
    namespace: &str,
    options: &ClusterOptions,
) -> Result<(Manager, Arc<Secrets>, kube::Client), String> {
    let config = mcr_bench::load_config(&files[0].1).await?;
    let host = Cluster::connect("", config, options.clone())
        .await
        .map_err(|e| e.to_string())?;
    let client = host.client();
    let provider = Arc::new(Secrets::new(client.clone(), SecretsOptions::new(namespace)));
    let manager = Manager::with_provider(Arc::new(host), provider.clone());
    Ok((manager, provider, client))
}

/// Per kubeconfig Secret of `namespace`, the write time the driver stamped on it.
async fn secret_stamps(host: kube::Client, namespace: &str) -> Result<HashMap<String, u128>, String> {
    let list = Api::<Secret>::namespaced(host, namespace)
        .list(&ListParams::default().labels(&SecretsOptions::new(namespace).label_selector()))
        .await
        .map_err(|e| format!("listing the kubeconfig Secrets: {e}"))?;
    Ok(list
        .items
        .iter()
        .filter_map(|secret| {
            let stamp = secret.annotations().get(WRITTEN_AT)?.parse().ok()?;
            Some((secret.name_any(), stamp))
        })
        .collect())
}

async fn reconcile(
    req: ReconcileRequest<ConfigMap>,
    context: Arc<Context>,
) -> Result<Action, std::convert::Infallible> {
    if !context.sleep.is_zero() {
        tokio::time::sleep(context.sleep).await;
    }
    if let Some(cm) = &req.object {
        context.tally.record(
            req.request.cluster.as_str(),
            cm.namespace().as_deref(),
            &cm.name_any(),
            cm.annotations().get(WRITTEN_AT).map(String::as_str),
        );
    }
    Ok(Action::await_change())
}

fn error_policy(_: &Request, _: &std::convert::Infallible, _: Arc<Context>) -> Action {
    Action::backoff()
}
