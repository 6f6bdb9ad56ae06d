//! A production-shaped fleet operator: what `deploy/operator/` runs.
//!
//! It discovers the fleet from kubeconfig Secrets in its own namespace, elects a
//! leader among its replicas (or splits the fleet between them: `--sharding`), serves its probes (`/healthz`, `/readyz`) on a plain
//! port for the kubelet and `/metrics` over HTTPS to callers its cluster authorizes
//! (a bearer token allowed to `get` `/metrics`), probes the health of every cluster, records an Event in the cluster of each object it
//! changes, and drains its reconciles on SIGTERM. Its reconciler annotates every
//! ConfigMap labelled `example.com/managed=true` with the name of its cluster, as in
//! the other examples.
//!
//! In a cluster (see `deploy/operator/README.md`):
//!
//!     operator --secrets-namespace fleet-system --leader-elect \
//!         --health-probe-bind-address [::]:8081 --metrics-bind-address [::]:8443 \
//!         --metrics-cert-dir /certs --identity "$POD_NAME" --log-format json
//!
//! On this machine, against a local fleet of real apiservers whose kubeconfig
//! Secrets it writes into the first one:
//!
//!     cargo run -p examples --example operator -- --local-fleet 3
//!
//! then, while it runs: `curl 'localhost:8081/readyz?verbose'` (reasons withheld)
//! and, with a token allowed to get `/metrics`,
//! `curl -k -H "Authorization: Bearer $TOKEN" https://localhost:8443/metrics`.
//!
//! With `--webhook-address [::]:9443 --webhook-url https://<name the members
//! resolve>:9443` it also serves a validating webhook in every member (refusing
//! ConfigMaps with the key `forbidden`), wired into each as it joins;
//! `--webhook-cert-dir` takes cert-manager's `tls.crt`, `tls.key` and `ca.crt`
//! (`deploy/operator/components/webhook`). Locally:
//!
//!     cargo run -p examples --example operator -- --local-fleet 2 \
//!         --webhook-address 127.0.0.1:9443 --webhook-url https://127.0.0.1:9443

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use examples::admission;
use examples::fleet::LocalFleet;
use examples::uniform::{self, MANAGED, RECONCILED_IN};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use kube_envtest::Fleet;
use multicluster_runtime::cache::WatchSpec;
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::manager::{
    LeaderElection, MetricsEndpoint, ProbeEndpoint, ServingCertificate, Sharding,
};
use multicluster_runtime::providers::kubeconfig::{EndpointPolicy, EndpointRule, KubeconfigPolicy};
use multicluster_runtime::providers::secret::{Secrets, SecretsOptions, kubeconfig_secret};
use multicluster_runtime::webhook::{Webhook, WebhookServer};
use multicluster_runtime::{Cluster, Manager};
use tokio_util::sync::CancellationToken;

/// The operator's command line.
#[derive(Parser, Debug, Clone)]
#[command(about = "A fleet operator with leader election, metrics, probes and Events")]
pub struct Args {
    /// Namespace of the manager's cluster that holds the fleet's kubeconfig Secrets.
    #[arg(long, default_value = "fleet-system")]
    pub secrets_namespace: String,
    /// Where to serve /healthz, /livez and /readyz, plain HTTP for the kubelet
    /// (failure reasons withheld).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub health_probe_bind_address: SocketAddr,
    /// Where to serve /metrics.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub metrics_bind_address: SocketAddr,
    /// Serve /metrics over HTTPS to callers whose bearer token the manager's
    /// cluster accepts and allows to get /metrics; `false`: plain HTTP, anyone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_secure: bool,
    /// A directory with `tls.crt` and `tls.key` for /metrics (a mounted
    /// kubernetes.io/tls Secret), read again when they change; without it, a
    /// self-signed certificate.
    #[arg(long)]
    pub metrics_cert_dir: Option<PathBuf>,
    /// Elect a leader among the replicas on the Lease `fleet-operator`.
    #[arg(long, conflicts_with = "sharding")]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease [default: $POD_NAMESPACE, else the
    /// Secrets' namespace].
    #[arg(long)]
    pub leader_election_namespace: Option<String>,
    /// Split the fleet between the replicas instead (`Manager::with_sharding`): each
    /// works on the clusters it owns, on Leases named `fleet-operator-…` in
    /// --sharding-namespace.
    #[arg(long)]
    pub sharding: bool,
    /// Namespace of the sharding Leases: one that nothing else writes Leases in.
    #[arg(long, default_value = "fleet-coordination")]
    pub sharding_namespace: String,
    /// This replica's name in its Leases (leader election, sharding): in a pod, the
    /// pod's name [default: $POD_NAME, else the host name and a random suffix].
    #[arg(long)]
    pub identity: Option<String>,
    /// `text` (readable, coloured on a terminal) or `json` (one object per line,
    /// for log collectors).
    #[arg(long, value_enum, default_value_t = examples::LogFormat::Text)]
    pub log_format: examples::LogFormat,
    /// Seconds that reconciles in flight get to finish on SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Start a local fleet of this many apiservers (plus the manager's own) and
    /// write their kubeconfig Secrets, instead of running in a cluster. Implies
    /// --allow-loopback-servers: local apiservers listen on 127.0.0.1.
    #[arg(long)]
    pub local_fleet: Option<usize>,
    /// Accept kubeconfig Secrets whose server is a loopback address (127.0.0.0/8,
    /// ::1, localhost). Off by default: in a pod, loopback is the operator itself.
    /// Link-local and cloud metadata addresses stay refused.
    #[arg(long)]
    pub allow_loopback_servers: bool,
    /// Serve a validating admission webhook for every member on this address (e.g.
    /// `[::]:9443`): ConfigMaps with the key `forbidden` are refused. Needs
    /// --webhook-url.
    #[arg(long, requires = "webhook_url")]
    pub webhook_address: Option<SocketAddr>,
    /// Where the members' apiservers reach the webhook server,
    /// `https://host[:port]` (a name that resolves from every member, e.g. a
    /// load balancer's).
    #[arg(long, requires = "webhook_address")]
    pub webhook_url: Option<String>,
    /// A directory with `tls.crt`, `tls.key` and `ca.crt` for the webhook server (a
    /// cert-manager Secret): the certificate, read again when it is renewed, and
    /// the authority the members verify it with; without it, a self-signed
    /// authority of this process.
    #[arg(long, requires = "webhook_address")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// A file whose bytes key the tags of the members' webhook paths (a Secret
    /// mounted into every replica): replicas behind one Service must share it;
    /// without it, a random key of this process.
    #[arg(long, requires = "webhook_address")]
    pub webhook_key_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    examples::init_tracing_as(args.log_format);
    let token = CancellationToken::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            examples::shutdown_signal().await;
            tracing::info!("shutdown signal: draining reconciles");
            token.cancel();
        }
    });
    let _fleet; // a local fleet must outlive the manager
    let host = match args.local_fleet {
        Some(clusters) => {
            let fleet = LocalFleet::start(clusters + 1).await?;
            let host = fleet.client(0)?;
            let members = local_members(fleet.fleet(), clusters)?;
            seed(&host, &args.secrets_namespace, &members).await?;
            _fleet = fleet;
            host
        }
        None => kube::Client::try_default().await?,
    };
    let manager = build(&args, host).await?;
    let scheme = if args.metrics_secure { "https" } else { "http" };
    println!(
        "--- serving http://{0}/healthz, http://{0}/readyz?verbose and {scheme}://{1}/metrics",
        args.health_probe_bind_address, args.metrics_bind_address
    );
    manager.start(token).await?;
    println!("--- stopped cleanly");
    Ok(())
}

/// The manager: the Secret provider on the cluster `host`, the probe and metrics
/// endpoints, leader election or sharding if asked for, and the controller. Health
/// probes are on by default.
///
/// # Errors
/// The controller cannot be registered.
pub async fn build(args: &Args, host: kube::Client) -> anyhow::Result<Manager> {
    let provider = provider(args, host.clone());
    let mut manager = Manager::with_provider(Arc::new(Cluster::new("", host)), provider)
        .with_probe_endpoint(ProbeEndpoint::new(args.health_probe_bind_address))
        .with_metrics_endpoint(metrics_endpoint(args))
        .with_graceful_shutdown_timeout(Duration::from_secs(args.shutdown_timeout));
    let identity = args.identity.clone().or_else(|| std::env::var("POD_NAME").ok());
    if args.leader_elect {
        let namespace = args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| args.secrets_namespace.clone());
        let mut election = LeaderElection::new("fleet-operator").namespace(namespace);
        if let Some(identity) = &identity {
            election = election.identity(identity);
        }
        manager = manager.with_leader_election(election);
    }
    if args.sharding {
        let mut sharding = Sharding::new("fleet-operator").namespace(&args.sharding_namespace);
        if let Some(identity) = &identity {
            sharding = sharding.identity(identity);
        }
        manager = manager.with_sharding(sharding);
    }
    if let Some(server) = webhook_server(args)? {
        manager.add_cluster_runnable(Arc::new(server)).await?;
    }
    Controller::builder::<ConfigMap>(&manager)
        .named("fleet-operator")
        .watch_spec(WatchSpec::default().labels(&format!("{MANAGED}=true")))
        .register(reconcile, error_policy, Arc::new(()))
        .await?;
    Ok(manager)
}

/// The webhook server, if `--webhook-address` asks for one: a validating webhook
/// refusing ConfigMaps with the key `forbidden` in every member.
///
/// # Errors
/// The CA bundle or the key file cannot be read, or the server's settings are
/// refused.
pub fn webhook_server(args: &Args) -> anyhow::Result<Option<WebhookServer>> {
    let (Some(address), Some(url)) = (args.webhook_address, &args.webhook_url) else {
        return Ok(None);
    };
    let mut builder = WebhookServer::builder(address, url.as_str())
        .validating(
            Webhook::new("no-forbidden-key.fleet-operator.example.com"),
            admission::no_forbidden_key,
            Arc::new(()),
        )
        // Under sharding a member that moves is wired again by its new owner.
        .remove_on_disengage(!args.sharding);
    if let Some(dir) = &args.webhook_cert_dir {
        let ca = dir.join("ca.crt");
        let bundle = std::fs::read(&ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
        builder = builder
            .certificate(ServingCertificate::files(
                dir.join("tls.crt"),
                dir.join("tls.key"),
            ))
            .ca_bundle(bundle);
    }
    if let Some(file) = &args.webhook_key_file {
        let key = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        anyhow::ensure!(!key.is_empty(), "{}: the webhook key is empty", file.display());
        builder = builder.attribution_key(key);
    }
    Ok(Some(builder.build()?))
}

/// `/metrics` as the arguments ask: by default HTTPS, callers authorized.
fn metrics_endpoint(args: &Args) -> MetricsEndpoint {
    if !args.metrics_secure {
        return MetricsEndpoint::plain(args.metrics_bind_address);
    }
    let endpoint = MetricsEndpoint::secure(args.metrics_bind_address);
    match &args.metrics_cert_dir {
        Some(dir) => endpoint.certificate(ServingCertificate::files(
            dir.join("tls.crt"),
            dir.join("tls.key"),
        )),
        None => endpoint,
    }
}

/// The Secret provider of the operator, on the cluster `host`.
///
/// Whoever writes a Secret in the namespace chooses what the operator connects to,
/// so it reads them with the policy for untrusted kubeconfigs (no exec plugins, local
/// files, proxies or skipped TLS verification) and refuses servers at loopback,
/// link-local and cloud metadata addresses ([`EndpointPolicy::deny_local`]), loopback
/// excepted with `--allow-loopback-servers` or `--local-fleet`.
pub fn provider(args: &Args, host: kube::Client) -> Arc<Secrets> {
    let allow_loopback = args.allow_loopback_servers || args.local_fleet.is_some();
    let policy = KubeconfigPolicy::untrusted().endpoints(endpoint_policy(allow_loopback));
    let options = SecretsOptions::new(args.secrets_namespace.as_str()).policy(policy);
    Arc::new(Secrets::new(host, options))
}

/// [`EndpointPolicy::deny_local`], without the entries that refuse a loopback
/// server if `allow_loopback`.
pub fn endpoint_policy(allow_loopback: bool) -> EndpointPolicy {
    let local = EndpointPolicy::deny_local();
    if !allow_loopback {
        return local;
    }
    let loopback = ["https://127.0.0.1", "https://[::1]", "https://localhost"];
    let refuses_loopback = |rule: &EndpointRule| {
        let alone = EndpointPolicy::any().deny_rule(rule.clone());
        loopback.iter().any(|url| alone.check_server(url).is_err())
    };
    local
        .denied()
        .iter()
        .filter(|rule| !refuses_loopback(rule))
        .fold(EndpointPolicy::any(), |policy, rule| {
            policy.deny_rule(rule.clone())
        })
}

/// Annotates the ConfigMap with its cluster's name, and records an Event on it in
/// that cluster when it did.
async fn reconcile(req: ReconcileRequest<ConfigMap>, _: Arc<()>) -> Result<Action, kube::Error> {
    let Some(cm) = &req.object else {
        return Ok(Action::await_change());
    };
    let cluster = req.cluster_name().as_str();
    if cm.annotations().get(RECONCILED_IN).map(String::as_str) == Some(cluster) {
        return Ok(Action::await_change());
    }
    let patch = serde_json::json!({ "metadata": { "annotations": { RECONCILED_IN: cluster } } });
    let api: Api<ConfigMap> = req.namespaced_api();
    api.patch(req.name(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let event = Event {
        type_: EventType::Normal,
        reason: "Annotated".into(),
        note: Some(format!("annotated {RECONCILED_IN}={cluster}")),
        action: "Annotate".into(),
        secondary: None,
    };
    req.recorder().publish(&event, &cm.object_ref(&())).await?;
    tracing::info!(request = %req.request, "annotated");
    Ok(Action::await_change())
}

fn error_policy(request: &Request, error: &kube::Error, _: Arc<()>) -> Action {
    tracing::warn!(%request, %error, "reconcile failed; backing off");
    Action::backoff()
}

/// A fleet cluster to register: its name, an admin client to seed it, and the
/// kubeconfig the operator is to use for it.
pub struct Member {
    /// The cluster's name, and its Secret's.
    pub name: String,
    /// A client that may create the managed ConfigMap.
    pub admin: kube::Client,
    /// What goes into the Secret.
    pub kubeconfig: Kubeconfig,
}

/// Creates `namespace` in `host` and, for each member, a managed ConfigMap in it and
/// its kubeconfig Secret in `namespace`.
///
/// # Errors
/// A write fails.
pub async fn seed(host: &kube::Client, namespace: &str, members: &[Member]) -> anyhow::Result<()> {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(namespace.to_owned());
    match Api::<Namespace>::all(host.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => return Err(err.into()),
    }
    let secrets: Api<Secret> = Api::namespaced(host.clone(), namespace);
    for member in members {
        uniform::create_managed(member.admin.clone(), "app-settings").await?;
        let secret = kubeconfig_secret(&member.name, namespace, &member.kubeconfig);
        secrets.create(&PostParams::default(), &secret).await?;
    }
    Ok(())
}

/// The members `1..=clusters` of a local fleet, with admin credentials.
fn local_members(fleet: &Fleet, clusters: usize) -> anyhow::Result<Vec<Member>> {
    (1..=clusters)
        .map(|index| {
            Ok(Member {
                name: LocalFleet::name(index),
                admin: fleet.cluster(index).client()?,
                kubeconfig: fleet.cluster(index).kubeconfig().clone(),
            })
        })
        .collect()
}
