//! The manager: the local cluster, the provider, and everything that runs.
//!
//! Providers engage clusters into the manager; the manager engages each into every
//! cluster-aware component (controllers above all), including components added after
//! the cluster appeared. It also probes the health of each engaged cluster.
//!
//! # Leader election
//!
//! With [`Manager::with_leader_election`], replicas of one program elect a leader on a
//! Lease in the local cluster. Every replica engages its clusters, so caches and
//! watches are warm on all of them; only runnables that
//! [need leadership](Runnable::needs_leader_election) (controllers, by default) run on
//! the leader alone. They start once the lease is acquired and are cancelled at once
//! when it is lost, which the leader notices within its renew deadline, before any
//! other replica can take the lease. On a clean shutdown the lease is released once
//! they have stopped, so the next leader takes over at its next try.
//!
//! # Graceful shutdown
//!
//! Once the token given to [`Manager::start`] is cancelled, controllers stop leasing
//! new items and the reconciles in flight get up to
//! [`graceful_shutdown_timeout`](Manager::with_graceful_shutdown_timeout) (30 s by
//! default) to finish. Those still running then are cancelled, logged and returned in
//! [`Error::ShutdownTimedOut`]. A lost lease cuts them at once instead.
//!
//! # Sharding
//!
//! With [`Manager::with_sharding`], replicas of one program split the provider's
//! clusters between them on Leases in the local cluster: every replica's provider
//! still discovers every cluster, but each replica engages into its components
//! (controllers) only the clusters it owns, so a cluster owned elsewhere costs it no
//! watch, no cache, no probe and no queue entry. Ownership is rendezvous hashing
//! over the live replicas (a join or a leave moves about 1/N of the clusters), each
//! owned cluster is fenced by a Lease, and a replica hands a cluster over only once
//! its reconciles of it have finished, so **no cluster is reconciled by two replicas
//! at once**. A replica that dies loses its clusters to the others one lease
//! duration (20 s) after its last renewal. See [`Sharding`] and
//! `docs/decisions/sharding.md`.
//!
//! Leader election and sharding are two strategies for dividing the work between
//! replicas; a manager uses at most one, and [`Manager::start`] refuses both with
//! [`Error::LeaderElectionWithSharding`] (see `docs/decisions/coordination.md`).
//!
//! ```no_run
//! # use std::sync::Arc;
//! use multicluster_runtime::manager::Sharding;
//! # async fn run(local: Arc<multicluster_runtime::Cluster>, provider: Arc<multicluster_runtime::providers::clusters::Clusters>) -> multicluster_runtime::Result<()> {
//! let manager = multicluster_runtime::Manager::with_provider(local, provider)
//!     // Each replica: a unique identity, e.g. the pod name.
//!     .with_sharding(Sharding::new("fleet-operator").namespace("operators").identity("fleet-operator-0"));
//! manager.start(tokio_util::sync::CancellationToken::new()).await?;
//! println!("owned here: {:?}", manager.owned_clusters());
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics, health and readiness
//!
//! Every manager keeps a Prometheus registry, [`Manager::metrics`], with
//! controller-runtime's metrics per controller *and cluster*, its workqueue metrics,
//! and the fleet's own (engaged clusters, engagements, caches synced, leadership);
//! the [`metrics`] module lists them. Register your own metrics there too.
//!
//! While the manager runs, the [operational endpoints](#the-operational-endpoints)
//! serve:
//!
//! - `/metrics`: the registry as OpenMetrics text;
//! - `/healthz` (and `/livez`): liveness, from the [healthz checks](Manager::add_healthz_check);
//! - `/readyz`: readiness ([`Manager::readyz`]): the manager runs, its own cluster has
//!   synced, and every [readyz check](Manager::add_readyz_check) passes. Clusters of
//!   the provider are listed but do not count unless
//!   [all are required](Manager::with_readiness_requiring_all_clusters): one
//!   cluster that is slow or down must not take the process out of service for the
//!   others.
//!
//! [`Manager::readyz`] in code (and `?verbose` where reasons are
//! [shown](ProbeEndpoint::show_reasons)) gives one line per check and per engaged
//! cluster with its [`ClusterState`], like kube-apiserver's:
//!
//! ```text
//! [+]manager running
//! [+]cluster "" synced
//! [+]cluster "eu-1" synced
//! [+]cluster "us-1" syncing since 2026-12-01T15:04:05Z (controller web, ConfigMap (v1))
//! [-]database failed: connection refused
//! readyz check failed
//! ```
//!
//! # The operational endpoints
//!
//! They need the cargo feature `endpoint`, on by default; without it the manager
//! still keeps its [metrics](Manager::metrics) and health checks, and the HTTP
//! server, TLS and certificate dependencies are not built.
//!
//! - [`Manager::with_probe_endpoint`]: `/healthz`, `/livez`, `/readyz` over plain
//!   HTTP for the kubelet. Anyone on the pod network reaches it, so a failure says
//!   only which check failed, as kube-apiserver answers callers it has not
//!   authenticated, and the provider's clusters are one line without their names:
//!
//!   ```text
//!   [+]manager ok
//!   [+]cluster "" ok
//!   [+]clusters ok
//!   [-]database failed: reason withheld
//!   readyz check failed
//!   ```
//!
//!   unless [`ProbeEndpoint::show_reasons`] allows the details.
//! - [`Manager::with_metrics_endpoint`]: `/metrics`. [`MetricsEndpoint::secure`]
//!   serves it over HTTPS (a [self-signed or file](ServingCertificate) certificate,
//!   files read again when they change) to callers whose bearer token the
//!   manager's cluster accepts (TokenReview) and who may `get` the non-resource URL
//!   `/metrics` there (SubjectAccessReview): 401 without or with a bad token, 403
//!   when not allowed — controller-runtime's secure metrics with its
//!   `WithAuthenticationAndAuthorization` filter.
//! - [`Manager::with_http_endpoint`]: everything on one plain port, reasons shown,
//!   for development and tests.
//!
//! Each endpoint serves a [limited number](ProbeEndpoint::max_connections) of
//! connections at once (more are closed at once) and each
//! [for a limited time](ProbeEndpoint::connection_timeout); IPv6 addresses work,
//! and `[::]` serves IPv4 too. See `docs/decisions/metrics.md`.
//!
//! ```no_run
//! use multicluster_runtime::manager::{HealthCheck, MetricsEndpoint, ProbeEndpoint, ServingCertificate};
//! # async fn run(manager: multicluster_runtime::Manager) -> multicluster_runtime::Result<()> {
//! let manager = manager
//!     .with_probe_endpoint(ProbeEndpoint::new("[::]:8081".parse().unwrap()))
//!     .with_metrics_endpoint(
//!         MetricsEndpoint::secure("[::]:8443".parse().unwrap())
//!             .certificate(ServingCertificate::files("/certs/tls.crt", "/certs/tls.key")),
//!     );
//! manager.add_readyz_check(HealthCheck::from_fn("config-loaded", || Ok::<(), String>(())));
//! manager.start(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```
//!
//! # Cluster health
//!
//! Every engaged cluster, the local one included, is probed with `GET /readyz`
//! ([`PROBE_PATH`]) every [interval](HealthProbes::interval) (5 s by default), each
//! probe given a [timeout](HealthProbes::timeout) (3 s). Clusters that send through
//! one client (a host and its namespace-clusters) share one probe per interval; each
//! still has a health of its own. After
//! [`failure_threshold`](HealthProbes::failure_threshold) failures in a row (3) the
//! cluster is [unhealthy](HealthState::Unhealthy):
//!
//! - a warning is logged, and a [`HealthEvent`] goes to every
//!   [`health_events`](Manager::health_events) receiver;
//! - each controller holds the cluster's queued items (they keep their delays and
//!   backoff, so an outage does not burn a retry budget) and starts no reconcile of
//!   it; other clusters are not affected.
//!
//! After [`success_threshold`](HealthProbes::success_threshold) successes in a row
//! (1) it is healthy again: its failing watches
//! [reconnect at once](crate::cache::Cache::reconnect) instead of waiting out a
//! backoff of up to 30 s, the controllers let its items through and enqueue every
//! cached object of it, and an event and a log line say so. A recovered cluster is
//! thus reconciling again within one probe interval of its return, plus a list.
//!
//! An answer of 403 or 404 counts as success (the apiserver is there, the path is
//! not allowed or not served); 401 counts as failure (the credentials are
//! rejected). Errors never quote credentials.
//!
//! Read the state with [`cluster_health`](Manager::cluster_health) (a snapshot of
//! every engaged cluster), [`watch_cluster_health`](Manager::watch_cluster_health)
//! (one cluster) or [`health_events`](Manager::health_events) (every change);
//! [`health_transitions`](Manager::health_transitions) counts the changes. Tune or
//! turn off probing with [`with_health_probes`](Manager::with_health_probes) and
//! [`without_health_probes`](Manager::without_health_probes). See
//! `docs/decisions/cluster-health.md`.
//!
//! ```
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! use multicluster_runtime::manager::{HealthProbes, HealthState};
//! use multicluster_runtime::{Cluster, Manager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
//! let manager = Manager::new(Arc::new(Cluster::new("", client)))
//!     .with_health_probes(HealthProbes::default().interval(Duration::from_secs(10)).failure_threshold(5));
//! let mut events = manager.health_events();
//! tokio::spawn(async move {
//!     while let Ok(event) = events.recv().await {
//!         if let HealthState::Unhealthy { last_error, .. } = &event.health.state {
//!             eprintln!("cluster {:?} is down: {last_error}", event.cluster);
//!         }
//!     }
//! });
//! # drop(manager);
//! # }
//! ```
//!
//! # Engagement order
//!
//! Engagements of one cluster name pass through the manager one at a time (see
//! `cluster::engagement`). A new instance under a known name is engaged into every
//! component *before* the old instance's token is cancelled: each component swaps
//! the instances in one step, so work queued under the name carries over instead of
//! being dropped while the name is briefly unknown. A removal passes through the
//! same gate, after any engagement of the name still on its way, so that with
//! sharding the coordinator hears of engagements and removals in their order.

mod checks;
mod coordination;
#[cfg(feature = "endpoint")]
mod endpoint;
#[cfg(test)]
mod fake_apiserver;
mod health;
mod leader;
mod lease;
pub mod metrics;
mod signal;

use std::collections::{BTreeMap, HashMap};
#[cfg(feature = "endpoint")]
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::FieldIndex;
use crate::cluster::engagement::{Engage, Engagements, Gates};
use crate::cluster::{Cluster, ClusterName, SyncBoard};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Engagement, Provider};
use crate::redact;
use crate::term::{Term, Work};

pub use crate::cluster::{ClusterHealth, HealthState};
pub use crate::runnable::Runnable;
pub use checks::{CHECK_TIMEOUT, ClusterState, HealthCheck, Report, ReportLine};
pub use coordination::{CLUSTER_ANNOTATION, FENCE_LABEL, MAX_WEIGHT, PEER_LABEL, Sharding};
#[cfg(feature = "endpoint")]
pub use endpoint::{
    DEFAULT_CONNECTION_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_RELOAD_INTERVAL, DEFAULT_REVIEW_CACHE_TTL,
    DEFAULT_ROTATION, MetricsEndpoint, ProbeEndpoint, REVIEW_CACHE_ENTRIES, ServingCertificate,
};
pub use health::{HealthEvent, HealthProbes, PROBE_PATH};
pub use leader::{LeaderElection, OnLeadershipLoss};
pub use metrics::Metrics;
pub use signal::shutdown_signal;

/// How long reconciles in flight may take to finish once the manager stops, unless
/// [`Manager::with_graceful_shutdown_timeout`] says otherwise.
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs controllers and other runnables across the local cluster and the clusters of
/// a provider.
///
/// Cheap to clone: clones share one manager.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    local: Arc<Cluster>,
    provider: Option<Arc<dyn Provider>>,
    engaged: Mutex<Engaged>,
    /// One engagement of a name at a time.
    gates: Gates,
    runnables: Mutex<Runnables>,
    /// Every task the manager spawns; `start` returns once they have all ended.
    tasks: TaskTracker,
    /// Cancelled when `start` returns: ends whatever the manager still runs.
    stopped: CancellationToken,
    options: Mutex<Options>,
    /// Whether this replica leads (always, once started, without leader election).
    leader: watch::Sender<bool>,
    metrics: Metrics,
    checks: Mutex<checks::Checks>,
    /// Where the endpoints listen, once they do.
    #[cfg(feature = "endpoint")]
    endpoints: Mutex<Addresses>,
    /// Health events of every cluster, and their count.
    health: health::Hub,
    /// Decides which clusters are engaged into the components, if sharding is on.
    coordinator: OnceLock<Arc<coordination::Coordinator>>,
    /// Where the coordinator keeps its Leases in tests, instead of the local cluster.
    #[cfg(test)]
    lease_store: OnceLock<Arc<dyn lease::LeaseStore>>,
}

/// Where each endpoint listens.
#[cfg(feature = "endpoint")]
#[derive(Default)]
struct Addresses {
    all: Option<SocketAddr>,
    probes: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
}

#[cfg(feature = "endpoint")]
impl Addresses {
    fn set(&mut self, role: endpoint::Role, address: Option<SocketAddr>) {
        let slot = match role {
            endpoint::Role::All => &mut self.all,
            endpoint::Role::Probes => &mut self.probes,
            endpoint::Role::Metrics => &mut self.metrics,
        };
        *slot = address;
    }
}

/// Settings read when the manager starts.
#[derive(Clone)]
struct Options {
    leader_election: Option<LeaderElection>,
    graceful_shutdown_timeout: Duration,
    /// Where to serve `/metrics` and the probes together; nowhere if `None`.
    #[cfg(feature = "endpoint")]
    http_endpoint: Option<SocketAddr>,
    /// Where to serve the probes alone.
    #[cfg(feature = "endpoint")]
    probe_endpoint: Option<ProbeEndpoint>,
    /// Where to serve `/metrics` alone.
    #[cfg(feature = "endpoint")]
    metrics_endpoint: Option<MetricsEndpoint>,
    /// Whether every engaged cluster must have synced for readiness.
    require_all_clusters: bool,
    /// `None`: clusters are not probed.
    health_probes: Option<HealthProbes>,
    /// `None`: every engaged cluster is engaged into the components.
    sharding: Option<Sharding>,
}

/// The engaged clusters and the components they are engaged into, under one lock so
/// that a cluster engaged while a component is being added reaches that component:
/// whichever of the two takes the lock second sees the other.
///
/// With sharding, `shards` holds the term of each cluster this replica owns: only
/// those are engaged into the components.
#[derive(Default)]
struct Engaged {
    clusters: Engagements<Instance>,
    components: Vec<Arc<dyn Aware>>,
    shards: HashMap<ClusterName, Term>,
}

/// What the manager keeps beside each engaged instance.
struct Instance {
    /// Written by the instance's prober only: the health of a cluster goes with its
    /// engagement.
    health: watch::Sender<ClusterHealth>,
    /// Ends the instance's engagement into the components; `None` while it is not
    /// engaged into them (a cluster another replica owns).
    components: Option<CancellationToken>,
    /// Which components still wait for their caches of the instance, for
    /// readiness; new each time the instance is engaged into the components.
    sync: SyncBoard,
}

impl Instance {
    /// The token of the instance's engagement into the components, while it lasts.
    fn engagement(&self) -> Option<&CancellationToken> {
        self.components.as_ref().filter(|t| !t.is_cancelled())
    }
}

impl Engaged {
    /// What a component gets for the instance of `name` engaged into the components
    /// now: the cluster, a token of its own, the health record, the ownership term
    /// (with sharding) and the sync board. `None` if the instance is not engaged
    /// into the components.
    fn engagement_of(&self, name: &ClusterName) -> Option<Engagement> {
        let entry = self.clusters.get(name)?;
        let token = entry.value.engagement()?.child_token();
        let term = (!name.is_local())
            .then(|| self.shards.get(name).cloned())
            .flatten();
        let engagement = Engagement::new(name.clone(), entry.cluster.clone(), token).with_manager_state(
            Some(entry.value.health.subscribe()),
            term,
            entry.value.sync.clone(),
        );
        Some(engagement)
    }
}

/// Runnables waiting for start, or the means to run them once started.
enum Runnables {
    Pending(Vec<Arc<dyn Runnable>>),
    Running {
        token: CancellationToken,
        failures: mpsc::UnboundedSender<Error>,
        /// Runnables that run on the leader only, when leader election is on.
        leaders: Option<Leaders>,
    },
    Stopped,
}

/// The leader-only runnables, and the current term if this replica leads: each
/// runnable started in it is inside the term while it runs.
#[derive(Default)]
struct Leaders {
    all: Vec<Arc<dyn Runnable>>,
    term: Option<Term>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("provider", &self.inner.provider.is_some())
            .field("engaged", &self.engaged_clusters())
            .finish()
    }
}

impl Manager {
    /// A manager for the local cluster only.
    pub fn new(local: Arc<Cluster>) -> Self {
        Self::build(local, None)
    }

    /// A manager for the local cluster and the clusters of `provider`. If the
    /// provider runs ([`Provider::into_runnable`]), the manager starts it.
    pub fn with_provider<P: Provider + 'static>(local: Arc<Cluster>, provider: Arc<P>) -> Self {
        let manager = Self::build(local, Some(provider));
        manager.inner.metrics.set_provider(&type_label::<P>());
        manager
    }

    fn build(local: Arc<Cluster>, provider: Option<Arc<dyn Provider>>) -> Self {
        let inner = Inner {
            local,
            provider,
            engaged: Mutex::default(),
            gates: Gates::default(),
            runnables: Mutex::new(Runnables::Pending(Vec::new())),
            tasks: TaskTracker::new(),
            stopped: CancellationToken::new(),
            options: Mutex::new(Options {
                leader_election: None,
                graceful_shutdown_timeout: DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT,
                #[cfg(feature = "endpoint")]
                http_endpoint: None,
                #[cfg(feature = "endpoint")]
                probe_endpoint: None,
                #[cfg(feature = "endpoint")]
                metrics_endpoint: None,
                require_all_clusters: false,
                health_probes: Some(HealthProbes::default()),
                sharding: None,
            }),
            leader: watch::Sender::new(false),
            metrics: Metrics::new(),
            checks: Mutex::default(),
            #[cfg(feature = "endpoint")]
            endpoints: Mutex::default(),
            health: health::Hub::default(),
            coordinator: OnceLock::new(),
            #[cfg(test)]
            lease_store: OnceLock::new(),
        };
        let manager = Manager {
            inner: Arc::new(inner),
        };
        let collector = metrics::StateCollector::new(&manager);
        manager.inner.metrics.register_collector(Box::new(collector));
        manager
    }

    /// Serves `/metrics`, `/healthz`, `/livez` and `/readyz` together on `address`
    /// while the manager runs, over plain HTTP without authentication, failure
    /// reasons and cluster names shown, as before the endpoints were split (see
    /// [The operational endpoints](self#the-operational-endpoints)): for
    /// development, tests and a port nobody else reaches. In a cluster use
    /// [`with_probe_endpoint`](Self::with_probe_endpoint) and
    /// [`with_metrics_endpoint`](Self::with_metrics_endpoint) instead. The
    /// connection limits are the defaults. Off unless set. Port 0 picks a free port: see
    /// [`http_address`](Self::http_address). Read when the manager starts, which
    /// fails with [`Error::Endpoint`] if the address cannot be bound.
    #[cfg(feature = "endpoint")]
    #[must_use]
    pub fn with_http_endpoint(self, address: SocketAddr) -> Self {
        lock(&self.inner.options).http_endpoint = Some(address);
        self
    }

    /// Serves the probes, `/healthz`, `/livez` and `/readyz`, as `endpoint` says,
    /// while the manager runs: plain HTTP for the kubelet, failure reasons withheld
    /// unless [shown](ProbeEndpoint::show_reasons). Off unless set; port 0 picks a
    /// free port ([`probe_address`](Self::probe_address)). Read when the manager
    /// starts, which fails with [`Error::Endpoint`] if the address cannot be bound.
    #[cfg(feature = "endpoint")]
    #[must_use]
    pub fn with_probe_endpoint(self, endpoint: ProbeEndpoint) -> Self {
        lock(&self.inner.options).probe_endpoint = Some(endpoint);
        self
    }

    /// Serves `/metrics` as `endpoint` says while the manager runs:
    /// [`MetricsEndpoint::secure`] for HTTPS with callers authorized against the
    /// manager's cluster. Off unless set; port 0 picks a free port
    /// ([`metrics_address`](Self::metrics_address)). Read when the manager starts,
    /// which fails with [`Error::Endpoint`] if the address cannot be bound, the
    /// certificate cannot be used, or authorization is asked for without TLS.
    #[cfg(feature = "endpoint")]
    #[must_use]
    pub fn with_metrics_endpoint(self, endpoint: MetricsEndpoint) -> Self {
        lock(&self.inner.options).metrics_endpoint = Some(endpoint);
        self
    }

    /// Where the [combined endpoint](Self::with_http_endpoint) listens, once the
    /// manager has started it.
    #[cfg(feature = "endpoint")]
    pub fn http_address(&self) -> Option<SocketAddr> {
        lock(&self.inner.endpoints).all
    }

    /// Where the [probe endpoint](Self::with_probe_endpoint) listens, once the
    /// manager has started it.
    #[cfg(feature = "endpoint")]
    pub fn probe_address(&self) -> Option<SocketAddr> {
        lock(&self.inner.endpoints).probes
    }

    /// Where the [metrics endpoint](Self::with_metrics_endpoint) listens, once the
    /// manager has started it.
    #[cfg(feature = "endpoint")]
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        lock(&self.inner.endpoints).metrics
    }

    /// Whether metrics carry a `cluster` label (the default). Without it, every
    /// metric is summed over the clusters, which bounds the number of series when
    /// the fleet is large, at the cost of telling clusters apart (see
    /// [Cardinality](metrics#cardinality)). Set it before controllers are built.
    #[must_use]
    pub fn with_cluster_label(self, on: bool) -> Self {
        self.inner.metrics.set_cluster_label(on);
        self
    }

    /// Whether readiness requires every engaged cluster to have synced, not only the
    /// local one (default `false`; see [`readyz`](Self::readyz)).
    #[must_use]
    pub fn with_readiness_requiring_all_clusters(self, require: bool) -> Self {
        lock(&self.inner.options).require_all_clusters = require;
        self
    }

    /// The metrics registry; register your own metrics in it.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Adds a liveness check to `/healthz`.
    pub fn add_healthz_check(&self, check: HealthCheck) {
        lock(&self.inner.checks).healthz.push(check);
    }

    /// Adds a readiness check to `/readyz`.
    pub fn add_readyz_check(&self, check: HealthCheck) {
        lock(&self.inner.checks).readyz.push(check);
    }

    /// Whether the manager runs: started, and not stopped yet.
    pub fn is_running(&self) -> bool {
        matches!(*self.runnables(), Runnables::Running { .. }) && !self.inner.stopped.is_cancelled()
    }

    /// The engaged instances, by name.
    pub(crate) fn engaged_instances(&self) -> Vec<(ClusterName, Arc<Cluster>)> {
        self.engaged()
            .clusters
            .live()
            .map(|(name, engaged)| (name.clone(), engaged.cluster.clone()))
            .collect()
    }

    /// The lease of leader election, `namespace/name`, if it is on.
    pub(crate) fn lease_name(&self) -> Option<String> {
        lock(&self.inner.options)
            .leader_election
            .as_ref()
            .map(LeaderElection::lease)
    }

    /// Elect a leader among the replicas on a Lease in the local cluster (see
    /// [Leader election](self#leader-election)). Read when the manager starts; not
    /// together with [`with_sharding`](Self::with_sharding)
    /// ([`Error::LeaderElectionWithSharding`]).
    #[must_use]
    pub fn with_leader_election(self, election: LeaderElection) -> Self {
        lock(&self.inner.options).leader_election = Some(election);
        self
    }

    /// Split the provider's clusters between the replicas of this program (see
    /// [Sharding](self#sharding)): this replica engages into its components only the
    /// clusters it owns. Read when the manager starts; not together with
    /// [`with_leader_election`](Self::with_leader_election)
    /// ([`Error::LeaderElectionWithSharding`]).
    #[must_use]
    pub fn with_sharding(self, sharding: Sharding) -> Self {
        lock(&self.inner.options).sharding = Some(sharding);
        self
    }

    /// The clusters this replica works on: every engaged cluster without sharding,
    /// the owned ones with it (the local cluster included, under the empty name).
    pub fn owned_clusters(&self) -> Vec<ClusterName> {
        let mut owned: Vec<_> = self
            .engaged()
            .clusters
            .live()
            .filter(|(_, e)| e.value.engagement().is_some())
            .map(|(name, _)| name.clone())
            .collect();
        owned.sort();
        owned
    }

    /// Whether this replica works on `name` now (see
    /// [`owned_clusters`](Self::owned_clusters)).
    pub(crate) fn owns(&self, name: &ClusterName) -> bool {
        self.engaged()
            .clusters
            .get(name)
            .is_some_and(|e| e.value.engagement().is_some())
    }

    /// Keeps the sharding Leases in `store` instead of the local cluster.
    #[cfg(test)]
    pub(crate) fn with_lease_store(self, store: Arc<dyn lease::LeaseStore>) -> Self {
        let _ = self.inner.lease_store.set(store);
        self
    }

    /// The components still waiting for their caches of the instance `cluster` of
    /// `name`, with since when (what they reported through their engagement).
    pub(crate) fn sync_waiting(
        &self,
        name: &ClusterName,
        cluster: &Arc<Cluster>,
    ) -> Vec<(String, std::time::SystemTime)> {
        let engaged = self.engaged();
        match engaged.clusters.get(name) {
            Some(entry) if Arc::ptr_eq(&entry.cluster, cluster) => entry.value.sync.waiting(),
            _ => Vec::new(),
        }
    }

    /// The sharded coordinator, once started with sharding.
    pub(crate) fn coordinator(&self) -> Option<&Arc<coordination::Coordinator>> {
        self.inner.coordinator.get()
    }

    /// How long reconciles in flight may take to finish once the manager stops
    /// (default [`DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT`], 30 s); see
    /// [Graceful shutdown](self#graceful-shutdown).
    #[must_use]
    pub fn with_graceful_shutdown_timeout(self, timeout: Duration) -> Self {
        lock(&self.inner.options).graceful_shutdown_timeout = timeout;
        self
    }

    /// How to probe the health of each engaged cluster (see
    /// [Cluster health](self#cluster-health)); on by default with
    /// [`HealthProbes::default`]. Read as each cluster is engaged.
    #[must_use]
    pub fn with_health_probes(self, probes: HealthProbes) -> Self {
        lock(&self.inner.options).health_probes = Some(probes);
        self
    }

    /// Do not probe clusters: every cluster's health stays
    /// [`Unknown`](HealthState::Unknown) and nothing is paused for it. Read as each
    /// cluster is engaged.
    #[must_use]
    pub fn without_health_probes(self) -> Self {
        lock(&self.inner.options).health_probes = None;
        self
    }

    /// The health probe settings, `None` if probes are off.
    pub fn health_probes(&self) -> Option<HealthProbes> {
        lock(&self.inner.options).health_probes.clone()
    }

    /// The health of every engaged cluster (the local one under the empty name), as
    /// its latest probe left it. A plain snapshot, cheap enough for every scrape of a
    /// metrics or readiness endpoint.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use multicluster_runtime::{Cluster, Manager};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
    /// let manager = Manager::new(Arc::new(Cluster::new("", client)));
    /// // Nothing is engaged before the manager starts.
    /// assert!(manager.cluster_health().is_empty());
    /// for (cluster, health) in manager.cluster_health() {
    ///     println!("{cluster:?}: {} ({} transitions)", health.state.name(), health.transitions);
    /// }
    /// # }
    /// ```
    pub fn cluster_health(&self) -> BTreeMap<ClusterName, ClusterHealth> {
        self.engaged()
            .clusters
            .live()
            .map(|(name, engaged)| (name.clone(), engaged.value.health.borrow().clone()))
            .collect()
    }

    /// Follows the health of the engaged cluster `name`: the receiver sees its
    /// current health and every change, and closes when this engagement of the
    /// cluster ends. `None` if `name` is not engaged.
    pub fn watch_cluster_health(&self, name: &ClusterName) -> Option<watch::Receiver<ClusterHealth>> {
        self.engaged()
            .clusters
            .get(name)
            .map(|e| e.value.health.subscribe())
    }

    /// Follows the health of the engaged instance `cluster` of `name`: `None` if
    /// another instance (or none) is engaged under the name.
    pub(crate) fn watch_instance_health(
        &self,
        name: &ClusterName,
        cluster: &Arc<Cluster>,
    ) -> Option<watch::Receiver<ClusterHealth>> {
        let engaged = self.engaged();
        let entry = engaged.clusters.get(name)?;
        Arc::ptr_eq(&entry.cluster, cluster).then(|| entry.value.health.subscribe())
    }

    /// Every change of a cluster's health [state](HealthState), of every cluster, from
    /// now on. A receiver that falls more than 256 events behind gets
    /// [`RecvError::Lagged`](broadcast::error::RecvError::Lagged) and should read
    /// [`cluster_health`](Self::cluster_health) to catch up.
    pub fn health_events(&self) -> broadcast::Receiver<HealthEvent> {
        self.inner.health.subscribe()
    }

    /// How many changes of health state there were, of every cluster, since the
    /// manager was made: a counter that only grows, for metrics.
    pub fn health_transitions(&self) -> u64 {
        self.inner.health.transitions()
    }

    /// The graceful shutdown timeout.
    pub fn graceful_shutdown_timeout(&self) -> Duration {
        lock(&self.inner.options).graceful_shutdown_timeout
    }

    /// Whether this replica leads now: it holds the lease, or the manager runs
    /// without leader election. `false` before start and after it returned.
    pub fn is_leader(&self) -> bool {
        *self.inner.leader.borrow()
    }

    /// Follows [`is_leader`](Self::is_leader): the receiver sees every change.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.inner.leader.subscribe()
    }

    /// Completes once this replica has lost a lease it held; never without leader
    /// election. Leader-only work uses it to stop at once rather than drain.
    pub(crate) async fn leadership_lost(&self) {
        if lock(&self.inner.options).leader_election.is_none() {
            return std::future::pending().await;
        }
        let mut leader = self.inner.leader.subscribe();
        let _ = leader.wait_for(|leads| !*leads).await;
    }

    /// Whether leader-only work that stops now will be started again in this
    /// manager's run: the lease was lost and the manager campaigns again.
    pub(crate) fn campaigns_again(&self) -> bool {
        let options = lock(&self.inner.options);
        let campaign = options
            .leader_election
            .as_ref()
            .is_some_and(|e| e.loss_policy() == OnLeadershipLoss::Campaign);
        campaign && !self.is_leader() && !self.inner.stopped.is_cancelled()
    }

    /// The manager's own cluster.
    pub fn local_cluster(&self) -> &Arc<Cluster> {
        &self.inner.local
    }

    /// The provider, if any.
    pub fn provider(&self) -> Option<&Arc<dyn Provider>> {
        self.inner.provider.as_ref()
    }

    /// The cluster called `name`; the empty name is the local cluster.
    ///
    /// With [sharding](Self::with_sharding), only a cluster this replica owns (see
    /// [`owned_clusters`](Self::owned_clusters)): a reconciler that reaches into
    /// another cluster must not write to one that another replica works on.
    ///
    /// # Errors
    /// [`Error::ClusterNotFound`] if neither the manager nor its provider knows it;
    /// [`Error::NotOwned`] if it is known, sharding is on and another replica owns it
    /// (or this one has not taken it yet).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads (the provider's [`Provider::get`] should only read,
    /// too).
    pub async fn get_cluster(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        if name.is_local() {
            return Ok(self.inner.local.clone());
        }
        let sharded = lock(&self.inner.options).sharding.is_some();
        let not_owned = || Error::NotOwned {
            cluster: name.clone(),
        };
        if let Some(engaged) = self.engaged().clusters.get(name) {
            if sharded && engaged.value.engagement().is_none() {
                return Err(not_owned());
            }
            return Ok(engaged.cluster.clone());
        }
        let found = match &self.inner.provider {
            Some(provider) => provider.get(name).await,
            None => Err(Error::ClusterNotFound(name.clone())),
        };
        // Known to the provider, but not engaged here: with sharding, not ours.
        match found {
            Ok(_) if sharded => Err(not_owned()),
            other => other,
        }
    }

    /// Names of the clusters engaged right now (the local cluster once started).
    pub fn engaged_clusters(&self) -> Vec<ClusterName> {
        self.engaged().clusters.names()
    }

    /// Adds a field index to the local cluster and to every cluster of the provider,
    /// now and later.
    ///
    /// # Errors
    /// [`Error::Cache`] with [`CacheError::IndexExists`](crate::cache::CacheError::IndexExists)
    /// if an index of that name for that type exists already.
    ///
    /// # Cancel safety
    /// Not cancel safe: the local cluster gets the index first, then the provider's
    /// clusters; dropping the future in between leaves it on the local cluster only
    /// (registering it again then fails with `IndexExists`).
    pub async fn index_field(&self, index: FieldIndex) -> Result<()> {
        index.apply(self.inner.local.cache())?;
        if let Some(provider) = &self.inner.provider {
            provider.index_field(index).await?;
        }
        Ok(())
    }

    /// Adds a runnable; it starts with the manager, or at once if the manager runs
    /// (with leader election, once this replica leads if it
    /// [needs leadership](Runnable::needs_leader_election)).
    ///
    /// # Panics
    /// If the manager runs and this is called outside a Tokio runtime.
    pub fn add(&self, runnable: Arc<dyn Runnable>) {
        let mut runnables = self.runnables();
        match &mut *runnables {
            Runnables::Pending(pending) => pending.push(runnable),
            Runnables::Running {
                token,
                failures,
                leaders,
            } => {
                let failures = failures.clone();
                match leaders {
                    Some(leaders) if runnable.needs_leader_election() => {
                        leaders.all.push(runnable.clone());
                        if let Some(term) = &leaders.term
                            && let Some(work) = term.enter()
                        {
                            self.spawn_runnable(runnable, term.stop_token(), failures, Some(work));
                        }
                    }
                    _ => self.spawn_runnable(runnable, token.child_token(), failures, None),
                }
            }
            Runnables::Stopped => tracing::warn!(
                runnable = runnable.name(),
                "manager stopped; runnable not started"
            ),
        }
    }

    /// Adds a cluster-aware component and engages it with every cluster engaged so
    /// far; later clusters reach it as they are engaged.
    ///
    /// # Errors
    /// The first engagement that failed (the others are still made).
    ///
    /// # Cancel safety
    /// Not cancel safe: the component is added first and engaged with the clusters
    /// one by one. If the future is dropped, the component stays added (clusters
    /// engaged later reach it) but some clusters engaged earlier may never have.
    pub async fn add_aware(&self, component: Arc<dyn Aware>) -> Result<()> {
        let names = {
            let mut engaged = self.engaged();
            engaged.components.push(component.clone());
            engaged.clusters.names()
        };
        let mut first_error = None;
        for name in names {
            // Through the name's gate, and with the instance engaged *now*: one that
            // replaced or removed the listed instance meanwhile has already passed
            // through and reached this component, which is in the list.
            let _gate = self.inner.gates.enter(&name).await;
            // Only where the instance is engaged into the components (with sharding,
            // the clusters this replica owns).
            let Some(engagement) = self.engaged().engagement_of(&name) else {
                continue;
            };
            if let Err(err) = engage_component(&component, engagement).await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Adds something that is both a [`Runnable`] and [`Aware`], such as a
    /// controller: it runs with the manager and is engaged with every cluster.
    ///
    /// # Errors
    /// As for [`add_aware`](Self::add_aware).
    ///
    /// # Cancel safety
    /// As for [`add_aware`](Self::add_aware); the runnable is added before the future
    /// first waits.
    pub async fn add_cluster_runnable<C: Runnable + Aware + 'static>(&self, component: Arc<C>) -> Result<()> {
        self.add(component.clone());
        self.add_aware(component).await
    }

    /// Runs everything until `token` is cancelled or something fails: engages the
    /// local cluster, starts the runnables, and starts the provider if it runs. With
    /// leader election, runnables that need leadership start once this replica
    /// leads (see [Leader election](self#leader-election)).
    ///
    /// Returns only once every task the manager spawned has ended, on success and on
    /// every error path alike: every engagement is cancelled, every runnable and the
    /// provider have returned, the lease (if held) is released, and the local
    /// cluster's cache is stopped. The informers of the stopped caches (the local
    /// cluster's, and those of engaged clusters that their provider stopped) are
    /// waited for too, up to 10 s; one still running then is logged. Reconciles in flight get the
    /// [graceful shutdown timeout](Self::with_graceful_shutdown_timeout); a runnable
    /// that ignores its token keeps `start` from returning.
    ///
    /// # Errors
    /// [`Error::AlreadyStarted`] if started before; [`Error::LeaderElection`] for
    /// unusable leader election options, [`Error::Sharding`] for unusable sharding
    /// options, [`Error::LeaderElectionWithSharding`] if both are set; [`Error::LeadershipLost`] once the lease is
    /// lost (unless the manager [campaigns again](OnLeadershipLoss::Campaign));
    /// otherwise the failure of the local cluster's engagement, or the first
    /// runnable or provider failure; if none, [`Error::ShutdownTimedOut`] when
    /// reconciles were cut short on the way out.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future cancels everything it started but does
    /// not wait for it. Cancel `token` and await the future instead.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns its tasks there).
    pub async fn start(&self, token: CancellationToken) -> Result<()> {
        let options = lock(&self.inner.options).clone();
        if let Some(election) = &options.leader_election
            && let Some(reason) = election.invalid()
        {
            return Err(Error::LeaderElection {
                lease: election.lease(),
                reason,
            });
        }
        if let Some(sharding) = &options.sharding
            && let Some(reason) = sharding.invalid()
        {
            return Err(Error::Sharding {
                leases: sharding.describe(),
                reason,
            });
        }
        if let (Some(election), Some(sharding)) = (&options.leader_election, &options.sharding) {
            return Err(Error::LeaderElectionWithSharding {
                lease: election.lease(),
                leases: sharding.describe(),
            });
        }
        #[cfg(feature = "endpoint")]
        let bound = {
            let mut servings = Vec::new();
            servings.extend(options.http_endpoint.map(endpoint::Serving::all));
            servings.extend(options.probe_endpoint.as_ref().map(endpoint::Serving::probes));
            servings.extend(options.metrics_endpoint.as_ref().map(endpoint::Serving::metrics));
            let mut bound = Vec::new();
            for serving in servings {
                bound.push(endpoint::bind(serving).await?);
            }
            bound
        };
        let run = token.child_token();
        let _stop_on_drop = run.clone().drop_guard();
        let (failures, mut failed) = mpsc::unbounded_channel();
        let pending = {
            let mut runnables = self.runnables();
            let running = Runnables::Running {
                token: run.clone(),
                failures: failures.clone(),
                leaders: options.leader_election.as_ref().map(|_| Leaders::default()),
            };
            match std::mem::replace(&mut *runnables, running) {
                Runnables::Pending(pending) => pending,
                other => {
                    *runnables = other;
                    return Err(Error::AlreadyStarted);
                }
            }
        };
        if options.leader_election.is_none() {
            self.inner.leader.send_replace(true);
        }
        #[cfg(feature = "endpoint")]
        for bound in bound {
            let address = bound.listener.local_addr().ok();
            lock(&self.inner.endpoints).set(bound.serving.role, address);
            tracing::info!(?address, serving = bound.serving.describe(), "endpoint listens");
            let (this, token) = (self.clone(), run.clone());
            self.inner
                .tasks
                .spawn(async move { endpoint::serve(this, bound, token).await });
        }
        let outcome = self
            .run(
                &run,
                pending,
                options.leader_election,
                options.sharding,
                failures,
                &mut failed,
            )
            .await;
        run.cancel();
        *self.runnables() = Runnables::Stopped;
        // Whatever a provider left engaged ends with the manager. The components go
        // too: a controller holds the manager, so keeping them would keep the
        // manager, its clusters and their clients (with their tasks) alive for ever.
        let (ended, components): (Vec<_>, _) = {
            let mut engaged = self.engaged();
            let components = std::mem::take(&mut engaged.components);
            (engaged.clusters.drain().collect(), components)
        };
        drop(components);
        let mut caches = Vec::with_capacity(ended.len() + 1);
        for (_, engaged) in ended {
            engaged.token.cancel();
            caches.push(engaged.cluster.cache().clone());
        }
        self.inner.stopped.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.leader.send_replace(false);
        // Nothing runs for the local cluster any more; its watches end with the manager.
        self.inner.local.stop();
        caches.push(self.inner.local.cache().clone());
        wait_for_stopped_caches(caches).await;
        outcome.and_then(|()| shutdown_outcome(&mut failed))
    }

    /// Engages the local cluster, starts the runnables and the provider, and waits
    /// for the end or the first failure.
    async fn run(
        &self,
        run: &CancellationToken,
        pending: Vec<Arc<dyn Runnable>>,
        election: Option<LeaderElection>,
        sharding: Option<Sharding>,
        failures: mpsc::UnboundedSender<Error>,
        failed: &mut mpsc::UnboundedReceiver<Error>,
    ) -> Result<()> {
        self.engage(run.child_token(), ClusterName::local(), self.inner.local.clone())
            .await?;
        if let Some(sharding) = sharding {
            // Before the provider starts, so that every cluster it engages is seen.
            let store: Arc<dyn lease::LeaseStore> = Arc::new(lease::KubeLeases::new(
                self.inner.local.clone(),
                sharding.namespace_name(),
            ));
            #[cfg(test)]
            let store = self.inner.lease_store.get().cloned().unwrap_or(store);
            let host = Arc::new(ManagerHost(Arc::downgrade(&self.inner)));
            let coordinator = coordination::Coordinator::new(sharding, store, host);
            let _ = self.inner.coordinator.set(coordinator.clone());
            self.inner.tasks.spawn(coordinator.run(run.child_token()));
        }
        for runnable in pending {
            self.add(runnable);
        }
        if let Some(election) = election {
            let (this, run, failures) = (self.clone(), run.clone(), failures.clone());
            self.inner
                .tasks
                .spawn(async move { this.elect(election, run, failures).await });
        }
        if let Some(provider) = self.inner.provider.clone().and_then(Provider::into_runnable) {
            let aware: Arc<dyn Aware> = Arc::new(self.clone());
            let (provider_token, failures) = (run.child_token(), failures.clone());
            self.inner.tasks.spawn(async move {
                if let Err(err) = provider.start(provider_token, aware).await {
                    tracing::error!(error = %redact::describe(&err), "provider failed");
                    let _ = failures.send(err);
                }
            });
        }
        drop(failures);
        tokio::select! {
            () = run.cancelled() => Ok(()),
            Some(err) = failed.recv() => Err(err),
        }
    }

    fn spawn_runnable(
        &self,
        runnable: Arc<dyn Runnable>,
        token: CancellationToken,
        failures: mpsc::UnboundedSender<Error>,
        work: Option<Work>,
    ) {
        drop(self.inner.tasks.spawn(async move {
            // Inside the leadership term until the runnable returns.
            let _work = work;
            if let Err(err) = runnable.run(token).await {
                tracing::error!(runnable = runnable.name(), error = %redact::describe(&err), "runnable failed");
                let _ = failures.send(err);
            }
        }));
    }

    /// Campaigns for the lease, runs the leader-only runnables while it is held, and
    /// stops them at once when it is lost; on the way out (after `run` is
    /// cancelled) keeps renewing until they have stopped, then releases the lease.
    async fn elect(
        &self,
        election: LeaderElection,
        run: CancellationToken,
        failures: mpsc::UnboundedSender<Error>,
    ) {
        let store = lease::KubeLeases::new(self.inner.local.clone(), election.namespace_name());
        let mut elector = lease::Elector::new(Arc::new(store), election.claim());
        tracing::info!(
            lease = election.lease(),
            identity = election.holder_identity(),
            "campaigning for leadership"
        );
        let mut terms = Leadership {
            manager: self.clone(),
            lease: election.lease(),
            identity: election.holder_identity().to_owned(),
            policy: election.loss_policy(),
            release_within: election.release_within(),
            run: run.clone(),
            failures,
            term: None,
        };
        lease::hold_terms(&mut elector, &run, &mut terms).await;
    }

    /// Starts every leader-only runnable in `term`.
    fn begin_term(&self, term: &Term) {
        let mut runnables = self.runnables();
        if let Runnables::Running {
            failures,
            leaders: Some(leaders),
            ..
        } = &mut *runnables
        {
            leaders.term = Some(term.clone());
            for runnable in leaders.all.clone() {
                if let Some(work) = term.enter() {
                    self.spawn_runnable(runnable, term.stop_token(), failures.clone(), Some(work));
                }
            }
        }
    }

    fn end_term(&self) {
        if let Runnables::Running {
            leaders: Some(leaders),
            ..
        } = &mut *self.runnables()
        {
            leaders.term = None;
        }
    }

    /// Removes the engagement `generation` of `name` once its token is cancelled.
    fn watch_disengage(
        &self,
        name: ClusterName,
        cluster: Arc<Cluster>,
        token: CancellationToken,
        generation: u64,
    ) {
        let (inner, stopped) = (Arc::downgrade(&self.inner), self.inner.stopped.clone());
        self.inner.tasks.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = stopped.cancelled() => return,
            }
            let Some(inner) = inner.upgrade() else {
                return;
            };
            // The instance's health follower (its token is a child of this one)
            // writes no more; its endpoint forgets it.
            inner.health.leave(&cluster);
            // Through the gate: an engagement on its way (through user code) tells
            // the coordinator of itself first, so this `gone` comes after it.
            let _gate = tokio::select! {
                gate = inner.gates.enter(&name) => gate,
                () = stopped.cancelled() => return,
            };
            let removed = lock(&inner.engaged).clusters.disengage(&name, generation);
            if removed.is_some() {
                inner.metrics.cluster_disengaged(&name, false);
                if let Some(coordinator) = inner.coordinator.get() {
                    coordinator.gone(&name, generation);
                }
                tracing::info!(cluster = %name, "cluster disengaged");
            }
        });
    }

    /// Probes the engagement of `cluster` under `name` until `token` is cancelled,
    /// if probes are on: the endpoint's probe task writes its health to `cell`.
    fn follow_health(
        &self,
        name: ClusterName,
        cluster: Arc<Cluster>,
        token: CancellationToken,
        cell: watch::Sender<ClusterHealth>,
    ) {
        let Some(probes) = self.health_probes() else {
            return;
        };
        let follower = health::Follower::new(name, cluster, &probes, cell, token);
        let tasks = health::ProbeTasks {
            tasks: &self.inner.tasks,
            stopped: &self.inner.stopped,
        };
        self.inner.health.follow(follower, &probes, &tasks);
    }

    fn engaged(&self) -> MutexGuard<'_, Engaged> {
        lock(&self.inner.engaged)
    }

    fn runnables(&self) -> MutexGuard<'_, Runnables> {
        lock(&self.inner.runnables)
    }
}

/// What the runnables reported while they stopped: their cut-short reconciles,
/// gathered into one [`Error::ShutdownTimedOut`], or the first other failure.
/// How long [`Manager::start`] waits, on its way out, for the informers of the
/// caches stopped by then to end.
const CACHE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for the informer tasks of those of `caches` that were stopped: the local
/// cluster's, and those of engaged clusters that their provider stopped when it
/// returned (a cache left running is its owner's). Bounded, so that one stuck
/// informer cannot hang shutdown; that is logged instead.
async fn wait_for_stopped_caches(caches: Vec<crate::cache::Cache>) {
    let stopped: Vec<_> = caches.into_iter().filter(|c| c.is_stopped()).collect();
    let all = futures::future::join_all(stopped.iter().map(|c| c.stopped()));
    if tokio::time::timeout(CACHE_STOP_TIMEOUT, all).await.is_err() {
        let clusters: Vec<_> = stopped.iter().map(|c| c.cluster().to_string()).collect();
        tracing::warn!(
            ?clusters,
            timeout = ?CACHE_STOP_TIMEOUT,
            "informers still run after their caches were stopped; not waiting for them any longer"
        );
    }
}

fn shutdown_outcome(failed: &mut mpsc::UnboundedReceiver<Error>) -> Result<()> {
    let mut timed_out: Option<(Duration, Vec<crate::error::CutShort>)> = None;
    while let Ok(err) = failed.try_recv() {
        match err {
            Error::ShutdownTimedOut { timeout, cut_short } => {
                timed_out.get_or_insert((timeout, Vec::new())).1.extend(cut_short);
            }
            other => return Err(other),
        }
    }
    match timed_out {
        Some((timeout, cut_short)) => Err(Error::ShutdownTimedOut { timeout, cut_short }),
        None => Ok(()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A type's name without its path and generics, e.g. `Clusters`, for labels.
fn type_label<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_owned()
}

#[async_trait]
impl Aware for Manager {
    /// Engages `cluster` into every cluster-aware component (with
    /// [sharding](Manager::with_sharding), once this replica owns it).
    ///
    /// The same instance again is a no-op, and so is an engagement whose token is
    /// cancelled already (it was replaced or removed on its way here). A new instance
    /// under a known name is engaged into every component first; then the old
    /// instance's token is cancelled (see [Engagement order](self#engagement-order)).
    /// After [`start`](Manager::start) has returned, nothing is engaged any more.
    async fn engage(&self, token: CancellationToken, name: ClusterName, cluster: Arc<Cluster>) -> Result<()> {
        let _gate = self.inner.gates.enter(&name).await;
        if self.inner.stopped.is_cancelled() {
            tracing::debug!(cluster = %name, "manager stopped; cluster not engaged");
            return Ok(());
        }
        let own = token.child_token();
        let coordinator = self.coordinator().filter(|_| !name.is_local());
        let (generation, replaced, owned) = {
            let mut engaged = self.engaged();
            let instance = Instance {
                health: watch::Sender::new(ClusterHealth::unknown()),
                components: None,
                sync: SyncBoard::default(),
            };
            match engaged
                .clusters
                .engage(&name, cluster.clone(), own.clone(), instance)
            {
                Engage::Stale => {
                    tracing::debug!(cluster = %name, "engagement ended before it arrived; ignored");
                    return Ok(());
                }
                Engage::Unchanged => return Ok(()),
                Engage::New { generation, replaced } => {
                    let owned = coordinator.is_none() || engaged.shards.contains_key(&name);
                    (generation, replaced, owned)
                }
            }
        };
        // An instance removed (its token cancelled) whose disengage has not run yet
        // is not replaced: this is a removal followed by a fresh engagement.
        let (replaced, removed) = match replaced {
            Some(old) if old.token.is_cancelled() => (None, Some(old)),
            other => (other, None),
        };
        // Under the gate, as the removal's `gone` is: the coordinator hears of the
        // engagements in the order they happen.
        if let Some(coordinator) = coordinator {
            coordinator.known(&name, generation);
        }
        let replacing = replaced.is_some();
        tracing::info!(cluster = %name, replacing, "cluster engaged");
        self.watch_disengage(name.clone(), cluster.clone(), own.clone(), generation);
        let result = if owned {
            self.engage_components(&name, &cluster, &own, generation).await
        } else {
            Ok(())
        };
        if let Some(old) = replaced {
            self.inner.metrics.cluster_disengaged(&name, true);
            old.token.cancel();
        }
        if removed.is_some() {
            tracing::info!(cluster = %name, "removed instance disengaged before its successor");
            self.inner.metrics.cluster_disengaged(&name, false);
        }
        self.inner.metrics.cluster_engaged(&name, result.is_ok());
        result
    }
}

impl Manager {
    /// Engages the instance `generation` of `name` into every component, under a
    /// token of its own (a child of the instance's `own`), and probes its health
    /// while it is engaged there. Called through the name's gate.
    async fn engage_components(
        &self,
        name: &ClusterName,
        cluster: &Arc<Cluster>,
        own: &CancellationToken,
        generation: u64,
    ) -> Result<()> {
        let engagement = own.child_token();
        let (components, health) = {
            let mut engaged = self.engaged();
            let Some(entry) = engaged
                .clusters
                .get_any_mut(name)
                .filter(|e| e.generation == generation)
            else {
                return Ok(());
            };
            entry.value.components = Some(engagement.clone());
            entry.value.sync = SyncBoard::default();
            let health = entry.value.health.clone();
            // An instance engaged here again (with sharding, owned again) starts
            // from no probe: what it had before it left is stale.
            health.send_if_modified(|h| {
                let stale = *h != ClusterHealth::unknown();
                if stale {
                    *h = ClusterHealth::unknown();
                }
                stale
            });
            (engaged.components.clone(), health)
        };
        self.follow_health(name.clone(), cluster.clone(), engagement.clone(), health);
        let mut first_error = None;
        for component in components {
            // Read for each component: with sharding the term may change meanwhile.
            let Some(handed) = self
                .engaged()
                .engagement_of(name)
                .filter(|e| Arc::ptr_eq(&e.cluster, cluster))
            else {
                break;
            };
            let result = engage_component(&component, handed).await;
            if let Err(err) = result {
                tracing::error!(cluster = %name, error = %redact::describe(&err), "engage failed");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Leader election's terms: each runs the leader-only runnables while the Lease is
/// held.
struct Leadership {
    manager: Manager,
    /// `namespace/name` of the Lease, and this replica's identity, for logs.
    lease: String,
    identity: String,
    policy: OnLeadershipLoss,
    release_within: Duration,
    /// The manager's run: once cancelled, the term drains and the Lease is released.
    run: CancellationToken,
    failures: mpsc::UnboundedSender<Error>,
    /// The term begun last.
    term: Option<Term>,
}

#[async_trait]
impl lease::Terms for Leadership {
    fn begin(&mut self) -> (CancellationToken, futures::future::BoxFuture<'static, ()>) {
        tracing::info!(lease = self.lease, identity = self.identity, "elected leader");
        let term = Term::within(&self.run);
        self.manager.inner.leader.send_replace(true);
        self.manager.begin_term(&term);
        self.term = Some(term.clone());
        // Once the run is cancelled, the term's runnables drain; renewals go on
        // meanwhile, so that nobody else leads while they finish.
        let drained = CancellationToken::new();
        let (run, until) = (self.run.clone(), drained.clone());
        let drain = async move {
            run.cancelled().await;
            term.end(false).await;
            drained.cancel();
        };
        (until, Box::pin(drain))
    }

    async fn end(&mut self, held: Result<(), lease::Lost>, elector: &mut lease::Elector) -> bool {
        let (lease, identity) = (self.lease.clone(), self.identity.clone());
        let Some(term) = self.term.take() else {
            return false;
        };
        match held {
            Ok(()) => {
                self.manager.end_term();
                match tokio::time::timeout(self.release_within, elector.release()).await {
                    Ok(Ok(())) => tracing::info!(lease, identity, "lease released"),
                    Ok(Err(err)) => tracing::warn!(lease, identity, error = %err, "cannot release lease"),
                    Err(_) => tracing::warn!(lease, identity, "lease not released in time; it will expire"),
                }
                self.manager.inner.leader.send_replace(false);
                false
            }
            Err(reason) => {
                // Not leading first, then cut: leader-only work sees the loss and
                // stops at once instead of draining.
                self.manager.inner.leader.send_replace(false);
                term.cut();
                self.manager.end_term();
                term.end(true).await;
                tracing::error!(
                    lease,
                    identity,
                    reason,
                    "leadership lost; leader-only work stopped"
                );
                if self.policy == OnLeadershipLoss::Fail || self.run.is_cancelled() {
                    let _ = self.failures.send(Error::LeadershipLost {
                        lease,
                        identity,
                        reason,
                    });
                    return false;
                }
                tracing::info!(
                    lease = self.lease,
                    identity = self.identity,
                    "campaigning for leadership"
                );
                true
            }
        }
    }
}

/// Engages one component, containing a panic of its `engage` (a user's component, a
/// controller's cluster filter): it fails that engagement only, instead of unwinding
/// into the provider's task that engages the cluster (which would then stop
/// following that cluster) or the coordinator's.
async fn engage_component(component: &Arc<dyn Aware>, engagement: Engagement) -> Result<()> {
    let name = engagement.name.clone();
    let engaging = AssertUnwindSafe(component.engage_with(engagement));
    match engaging.catch_unwind().await {
        Ok(result) => result,
        Err(_) => {
            // The payload is not logged: it may quote anything; the panic hook has
            // reported it already.
            tracing::error!(cluster = %name, callback = "Aware::engage", "a component panicked while engaging the cluster; it does not work on it");
            Err(Error::Engage {
                cluster: name,
                component: "a cluster-aware component".into(),
                source: "it panicked while engaging the cluster".into(),
            })
        }
    }
}

/// The manager as the coordinator sees it: weak, since the manager owns the
/// coordinator.
struct ManagerHost(Weak<Inner>);

impl ManagerHost {
    fn manager(&self) -> Option<Manager> {
        self.0.upgrade().map(|inner| Manager { inner })
    }
}

#[async_trait]
impl coordination::Host for ManagerHost {
    async fn start(&self, name: &ClusterName, term: &Term) -> bool {
        let Some(manager) = self.manager() else {
            return false;
        };
        let _gate = manager.inner.gates.enter(name).await;
        let current = {
            let mut engaged = manager.engaged();
            if manager.inner.stopped.is_cancelled() {
                return false;
            }
            let Some(entry) = engaged.clusters.get(name) else {
                return false;
            };
            let current = (entry.cluster.clone(), entry.token.clone(), entry.generation);
            engaged.shards.insert(name.clone(), term.clone());
            current
        };
        let (cluster, own, generation) = current;
        // A component that fails to engage has logged it; the cluster stays owned,
        // as it would stay engaged without sharding.
        let _ = manager.engage_components(name, &cluster, &own, generation).await;
        true
    }

    async fn stop(&self, name: &ClusterName, term: &Term) {
        let Some(manager) = self.manager() else {
            return;
        };
        let _gate = manager.inner.gates.enter(name).await;
        let mut engaged = manager.engaged();
        if !engaged.shards.get(name).is_some_and(|t| t.same(term)) {
            return;
        }
        engaged.shards.remove(name);
        if let Some(entry) = engaged.clusters.get_any_mut(name)
            && let Some(components) = entry.value.components.take()
        {
            components.cancel();
            // Its health follower ended with it.
            manager.inner.health.leave(&entry.cluster);
        }
    }

    async fn forget(&self, name: &ClusterName) {
        let Some(manager) = self.manager() else {
            return;
        };
        let _gate = manager.inner.gates.enter(name).await;
        let engaged = manager.engaged();
        if engaged.shards.contains_key(name) {
            return;
        }
        if let Some(entry) = engaged.clusters.get_any(name) {
            entry.cluster.cache().stop_informers();
        }
    }
}
