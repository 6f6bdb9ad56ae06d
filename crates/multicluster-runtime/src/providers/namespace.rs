//! Namespaces as clusters: each namespace of a host cluster becomes a cluster of the
//! fleet.
//!
//! Available with the cargo feature `namespace` (or `providers`, which enables every provider).
//!
//! [`Namespaces`] watches the Namespaces of a *host* cluster and engages one cluster
//! per namespace, named after it. Each namespace-cluster has
//!
//! - a client whose default namespace is its namespace, so `Api::default_namespaced`
//!   reads and writes there (the client is not otherwise restricted: it has the
//!   host's credentials);
//! - a cache that is a [namespace-scoped view](crate::cache::Cache::scoped) of the
//!   host cluster's cache: reads and events cover only its namespace (plus
//!   cluster-scoped objects, which every view sees), while the watches are the
//!   host's, one per type for the whole host however many namespaces there are.
//!
//! Field indexes ([`Provider::index_field`]) are registered once, on the host cache,
//! and every namespace-cluster reads them through its view, seeing only its
//! namespace's entries.
//!
//! It is the cheapest way to run a fleet of thousands of clusters on one apiserver,
//! for tests, demos and benchmarks, and a way to give tenants that each own a
//! namespace a controller of their own.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
//! use multicluster_runtime::providers::namespace::Namespaces;
//! use multicluster_runtime::{Cluster, Manager};
//! use tokio_util::sync::CancellationToken;
//!
//! async fn reconcile(req: ReconcileRequest<ConfigMap>, _: Arc<()>) -> Result<Action, kube::Error> {
//!     // `req.request.cluster` is the namespace; so is `req.request.namespace()`.
//!     tracing::info!(cluster = %req.request.cluster, name = req.request.name(), "seen");
//!     Ok(Action::await_change())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = kube::Config::infer().await?;
//! let host = Arc::new(Cluster::connect("", config, Default::default()).await?);
//! // Every namespace labelled `tenant`, except the system ones.
//! let provider = Arc::new(Namespaces::new(host.clone()).selector("tenant"));
//! // The host is also the local cluster: the manager and the namespace-clusters
//! // share one cache.
//! let manager = Manager::with_provider(host, provider);
//! Controller::builder::<ConfigMap>(&manager)
//!     .register(reconcile, |_: &Request, _: &kube::Error, _| Action::backoff(), Arc::new(()))
//!     .await?;
//! manager.start(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```
//!
//! # Which namespaces, and when
//!
//! - All namespaces, or those matching a [label selector](Namespaces::selector),
//!   except [excluded names](Namespaces::exclude) (by default
//!   [`SYSTEM_NAMESPACES`]). The cluster name is the namespace name.
//! - A namespace that appears (or starts matching the selector) is engaged.
//! - A namespace that is deleted (or stops matching the selector) is removed: its
//!   cluster's token is cancelled, its work stops, and [`Provider::get`] answers
//!   `ClusterNotFound`.
//! - A namespace that is *terminating* stays engaged until it is gone, so that
//!   controllers can remove their finalizers from its objects (otherwise the
//!   namespace would never finish terminating), as in Go's namespace provider. With
//!   [`disengage_terminating`](Namespaces::disengage_terminating), terminating
//!   namespaces are removed, and never engaged, instead.
//! - **A change that re-engages**: the cluster is identified by the namespace's UID.
//!   A namespace deleted and re-created under the same name (a new UID) is a new
//!   cluster: the old instance is removed and a new one engaged, even if the watch
//!   missed the deletion. Label or annotation changes that keep the namespace
//!   selected change nothing.
//! - A namespace whose cluster cannot be built (its client fails) is skipped with an
//!   error naming it, and retried at its next change; the others carry on. Clients
//!   are built on a blocking thread (TLS setup is blocking work), never on the
//!   provider's async task, and given up after [`BUILD_TIMEOUT`]. An invalid label
//!   selector makes [`start`](ProviderRunnable::start) fail with an error that
//!   quotes it and the apiserver's reason.
//!
//! # Differences from Go's namespace provider
//!
//! Objects keep their real namespace: the namespace-cluster `team-a` shows its
//! ConfigMaps in namespace `team-a` (Go rewrites them to `default`, which costs a
//! copy of every object read). Requests carry that namespace, so reconcilers address
//! objects as usual. Cluster-scoped objects are shared by all namespace-clusters.
//!
//! # Scale: what is shared, what each namespace costs
//!
//! Shared, once for the host: every watch (one per type and selector, plus the
//! provider's metadata-only watch of Namespaces, whose objects it keeps without
//! their labels and annotations), every stored object (the store
//! files objects by namespace, so a namespace-cluster's reads never scan the
//! others), every index.
//!
//! Per namespace-cluster: a [`Cluster`] with its cancellation token, the cache view
//! (a small allocation, plus one handle per type read through it), and a client. By
//! default ([`Namespaces::new`]) that client is a thin handle on the host's own
//! client: the namespace as its default namespace, and every request sent through
//! the host's connection pool, so a thousand namespaces cost no more connections or
//! TLS setups than one; it is made on the cluster's first use of it
//! ([`Cluster::client`]), since a reconciler that reads only the cache never sends a
//! request, and health probes go through the host's client. [`Namespaces::with_config`] builds one client per namespace
//! instead (its own connection pool and TLS configuration, some tens of KB each),
//! and [`Namespaces::with_clients`] takes any client, e.g. one with the
//! namespace's own credentials.
//!
//! Per namespace and type with a subscriber (e.g. a controller engaged with the
//! namespace-cluster): one event channel of
//! [`CacheOptions::namespace_event_capacity`](crate::cache::CacheOptions::namespace_event_capacity)
//! slots (32 by default, ≈50 bytes each). The informer sends each event to the
//! channel of the object's namespace only, so an event wakes the subscribers of one
//! namespace, not of all; an event about a cluster-scoped object goes to every
//! namespace's channel.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Namespace;
use kube::Resource;
use kube::api::ObjectMeta;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use serde::{Deserialize, Deserializer};
use tokio_util::sync::CancellationToken;

use crate::cache::follow::{Step, Steps};
use crate::cache::{CacheError, FieldIndex, Informer, WatchSpec};
use crate::cluster::kubeconfig::BUILD_TIMEOUT;
use crate::cluster::{ClientOptions, Cluster, ClusterName};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider, ProviderRunnable};
use crate::providers::clusters::Clusters;

/// Namespaces that are not clusters unless [`Namespaces::exclude`] says otherwise:
/// those Kubernetes itself uses.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// The provider's name in errors.
const PROVIDER: &str = "namespaces";

/// Builds the client of one namespace-cluster from the namespace's name.
type ClientFactory = Arc<dyn Fn(&str) -> Result<kube::Client, kube::Error> + Send + Sync>;

/// Where the namespace-clusters' clients come from.
enum Clients {
    /// The host's client, shared: its connection pool, the namespace as default
    /// namespace.
    Shared,
    /// The host's connection settings, with the namespace as default namespace.
    Config(Box<kube::Config>),
    /// The user's factory.
    Factory(ClientFactory),
}

/// A provider of one cluster per namespace of a host cluster, all sharing the host's
/// cache. See the [module docs](self).
///
/// Configure it before handing it to the manager: the builder methods take and
/// return the provider.
pub struct Namespaces {
    host: Arc<Cluster>,
    clients: Clients,
    selector: Option<String>,
    exclude: BTreeSet<String>,
    disengage_terminating: bool,
    client_options: ClientOptions,
    clusters: Clusters,
}

impl fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespaces")
            .field("host", self.host.name())
            .field("selector", &self.selector)
            .field("exclude", &self.exclude)
            .field("disengage_terminating", &self.disengage_terminating)
            .field("clusters", &self.clusters.names().len())
            .finish_non_exhaustive()
    }
}

impl Namespaces {
    /// A provider of the namespaces of `host`, whose namespace-clusters share the
    /// host's client: its credentials and connection pool, with the namespace as
    /// default namespace (so `Api::default_namespaced` addresses it).
    ///
    /// This is the cheap way for fleets of thousands; see the
    /// [module docs](self#scale-what-is-shared-what-each-namespace-costs).
    /// [`with_config`](Self::with_config) and [`with_clients`](Self::with_clients)
    /// give each namespace a client of its own.
    pub fn new(host: Arc<Cluster>) -> Self {
        Self::with(host, Clients::Shared)
    }

    /// A provider of the namespaces of `host`, whose namespace-clusters get one
    /// client each, built from `config` with the namespace as default namespace.
    ///
    /// Each client has its own connection pool and TLS configuration, which costs
    /// some tens of KB per namespace; prefer [`new`](Self::new) unless the
    /// namespace-clusters must not share connections (e.g. `config` differs from the
    /// host's, or each should have its own request flow to the apiserver).
    pub fn with_config(host: Arc<Cluster>, config: kube::Config) -> Self {
        Self::with(host, Clients::Config(Box::new(config)))
    }

    /// A provider of the namespaces of `host`, whose namespace-clusters get the
    /// clients `clients` makes from the namespace name. A client should have the
    /// namespace as its default namespace.
    ///
    /// `clients` is called on a blocking thread, so it may build a client from a
    /// `kube::Config` (blocking TLS setup); it is given up after [`BUILD_TIMEOUT`].
    /// An error, a panic or a timeout skips that namespace (logged; retried at the
    /// namespace's next change), not the others.
    pub fn with_clients(
        host: Arc<Cluster>,
        clients: impl Fn(&str) -> Result<kube::Client, kube::Error> + Send + Sync + 'static,
    ) -> Self {
        Self::with(host, Clients::Factory(Arc::new(clients)))
    }

    fn with(host: Arc<Cluster>, clients: Clients) -> Self {
        Namespaces {
            host,
            clients,
            selector: None,
            exclude: SYSTEM_NAMESPACES.iter().map(|ns| (*ns).to_owned()).collect(),
            disengage_terminating: false,
            client_options: ClientOptions::default(),
            clusters: Clusters::new(),
        }
    }

    /// Only namespaces matching this label selector (`kubectl -l` syntax, e.g.
    /// `tenant`, `env in (prod,staging)`, `team=a,tier!=test`) are clusters; by
    /// default, all. The apiserver does the selecting: a namespace whose labels stop
    /// matching is removed, one that starts matching is engaged.
    ///
    /// The selector is checked when the provider starts; an invalid one makes
    /// [`start`](ProviderRunnable::start) fail.
    #[must_use]
    pub fn selector(mut self, selector: &str) -> Self {
        self.selector = Some(selector.to_owned()).filter(|s| !s.trim().is_empty());
        self
    }

    /// Namespaces never to make clusters of, replacing the default
    /// [`SYSTEM_NAMESPACES`]; pass nothing to exclude none.
    #[must_use]
    pub fn exclude<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude = names.into_iter().map(Into::into).collect();
        self
    }

    /// Whether a namespace that starts terminating is removed at once (and one that
    /// is terminating when first seen never engaged), rather than when it is gone.
    /// Default: `false`, so that controllers can remove their finalizers from the
    /// namespace's objects; enable it when no controller of the fleet puts
    /// finalizers on namespaced objects and work on a dying namespace is waste.
    #[must_use]
    pub fn disengage_terminating(mut self, disengage: bool) -> Self {
        self.disengage_terminating = disengage;
        self
    }

    /// Settings of the client of every namespace-cluster built from the host's
    /// `kube::Config` (see [`new`](Self::new)): request timeout, user agent, rate
    /// limit. Each namespace-cluster has a client, and so a rate limit, of its own.
    /// Clients from a [`with_clients`](Self::with_clients) factory are used as the
    /// factory builds them ([`ClientOptions::build`] gives them the options).
    #[must_use]
    pub fn client_options(mut self, options: ClientOptions) -> Self {
        self.client_options = options;
        self
    }

    /// The host cluster.
    pub fn host(&self) -> &Arc<Cluster> {
        &self.host
    }

    /// The names of the namespace-clusters, in no particular order.
    pub fn names(&self) -> Vec<ClusterName> {
        self.clusters.names()
    }

    fn watch_spec(&self) -> WatchSpec {
        match &self.selector {
            Some(selector) => WatchSpec::default().labels(selector),
            None => WatchSpec::default(),
        }
    }

    fn provider_error(reason: impl Into<crate::BoxError>) -> Error {
        Error::Provider {
            provider: PROVIDER.into(),
            source: reason.into(),
        }
    }

    /// Asks the apiserver whether it accepts the selector, so that a typo fails the
    /// provider at once instead of leaving a watch retrying it forever.
    async fn check_selector(&self) -> Result<()> {
        let Some(selector) = &self.selector else {
            return Ok(());
        };
        let api: Api<Namespace> = Api::all(self.host.client());
        match api
            .list_metadata(&ListParams::default().labels(selector).limit(1))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 400 => Err(Self::provider_error(format!(
                "invalid namespace label selector {selector:?}: {}",
                status.message
            ))),
            // Anything else (e.g. the host is unreachable) is for the watch to retry.
            _ => Ok(()),
        }
    }

    /// Follows the host's Namespaces until `token` is cancelled, keeping the
    /// registered namespace-clusters in line with them.
    async fn follow(&self, token: &CancellationToken) -> Result<()> {
        let informer = self
            .host
            .cache()
            .informer_with::<NamespaceIdentity>(&(), self.watch_spec());
        let timeout = self.host.cache().options().sync_timeout;
        let mut steps = Steps::new(informer, timeout, "namespace provider");
        loop {
            let step = tokio::select! {
                () = token.cancelled() => return Ok(()),
                step = steps.next() => step,
            };
            match step {
                Some(Step::Resync { .. }) => self.resync(steps.informer()).await,
                Some(Step::Applied { new, .. }) => self.observe(&new).await,
                Some(Step::Deleted(namespace)) => {
                    self.forget(&namespace, "deleted");
                }
                None => return Err(self.host_stopped()),
            }
        }
    }

    fn host_stopped(&self) -> Error {
        Self::provider_error(format!("the cache of host cluster {} stopped", self.host.name()))
    }

    /// Makes the registered clusters match the namespaces in the informer's store.
    async fn resync(&self, informer: &Informer<NamespaceIdentity>) {
        let namespaces = informer.store().list();
        let present: HashSet<&str> = namespaces
            .iter()
            .filter_map(|ns| ns.meta().name.as_deref())
            .collect();
        for name in self.clusters.names() {
            if !present.contains(name.as_str()) && self.clusters.remove(&name) {
                tracing::info!(cluster = %name, "namespace gone; cluster removed");
            }
        }
        for namespace in &namespaces {
            self.observe(namespace).await;
        }
    }

    /// Engages, re-engages or removes the cluster of `namespace` as it now is.
    async fn observe(&self, namespace: &NamespaceIdentity) {
        let meta = namespace.meta();
        let Some(name) = meta.name.as_deref().filter(|name| !name.is_empty()) else {
            return;
        };
        if self.exclude.contains(name) {
            return;
        }
        if meta.deletion_timestamp.is_some() && self.disengage_terminating {
            if !self.forget(namespace, "terminating") {
                tracing::debug!(cluster = name, "namespace terminating; not engaged");
            }
            return;
        }
        let fingerprint = uid_fingerprint(meta.uid.as_deref());
        let build = async || self.build(name).await;
        match self.clusters.replace_if_changed(name, fingerprint, build).await {
            Ok(true) => tracing::info!(cluster = name, uid = ?meta.uid, "namespace engaged as a cluster"),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(cluster = name, error = %crate::redact::describe(&error), "cannot engage namespace as a cluster")
            }
        }
    }

    /// Removes the cluster of `namespace`; whether there was one.
    fn forget(&self, namespace: &NamespaceIdentity, why: &str) -> bool {
        let Some(name) = namespace.meta().name.as_deref() else {
            return false;
        };
        let removed = self.clusters.remove(&ClusterName::from(name));
        if removed {
            tracing::info!(cluster = name, why, "namespace-cluster removed");
        }
        removed
    }

    /// The cluster of the namespace `name`: its client, a view of the host cache.
    /// A client through the host is made on the cluster's first use of it.
    async fn build(&self, name: &str) -> Result<Arc<Cluster>> {
        let cache = self.host.cache().scoped(name, name);
        if let Clients::Shared = &self.clients {
            return Ok(Arc::new(Cluster::through_host(name, &self.host, cache)));
        }
        let client = self.client(&ClusterName::from(name)).await?;
        Ok(Arc::new(Cluster::with_cache(name, client, cache)))
    }

    /// The client of the namespace `name`, built on a blocking thread.
    async fn client(&self, name: &ClusterName) -> Result<kube::Client> {
        let factory = match &self.clients {
            Clients::Shared => return Ok(crate::cluster::shared_client(self.host.client(), name.as_str())),
            Clients::Config(config) => {
                let mut config = kube::Config::clone(config);
                config.default_namespace = name.to_string();
                return Ok(crate::cluster::build_client(name, config, &self.client_options).await?);
            }
            Clients::Factory(factory) => factory.clone(),
        };
        let namespace = name.to_string();
        let building = tokio::task::spawn_blocking(move || factory(&namespace));
        let reason = match tokio::time::timeout(BUILD_TIMEOUT, building).await {
            Ok(Ok(Ok(client))) => return Ok(client),
            Ok(Ok(Err(error))) => crate::redact::describe(&error),
            Ok(Err(_)) => "the client factory panicked".into(),
            Err(_) => format!("the client factory took longer than {BUILD_TIMEOUT:?}"),
        };
        Err(Error::Client {
            cluster: name.clone(),
            reason,
        })
    }
}

/// A Namespace as the provider keeps it: its metadata without labels, annotations,
/// finalizers, owners or managed fields, which are dropped as it is read. What the
/// provider reads (name, UID, deletion timestamp) stays, and so does the resource
/// version the watch resumes from; the label selector is applied by the apiserver.
///
/// A namespace's labels were most of what the provider kept of it, ≈ 650 of
/// ≈ 1,100 bytes per namespace-cluster (v04, issue 21). A type of its own, so that
/// its informer is the provider's: a user reading Namespace metadata from the
/// host's cache gets an informer of its own, with every field.
#[derive(Clone, Debug)]
struct NamespaceIdentity(PartialObjectMeta<Namespace>);

type NamespaceMeta = PartialObjectMeta<Namespace>;

impl<'de> Deserialize<'de> for NamespaceIdentity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut namespace = NamespaceMeta::deserialize(deserializer)?;
        let meta = &mut namespace.metadata;
        meta.labels = None;
        meta.annotations = None;
        meta.finalizers = None;
        meta.owner_references = None;
        meta.managed_fields = None;
        Ok(NamespaceIdentity(namespace))
    }
}

impl Resource for NamespaceIdentity {
    type DynamicType = <NamespaceMeta as Resource>::DynamicType;
    type Scope = <NamespaceMeta as Resource>::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        NamespaceMeta::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        NamespaceMeta::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        NamespaceMeta::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        NamespaceMeta::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        NamespaceMeta::plural(dt)
    }

    fn metadata_api() -> bool {
        NamespaceMeta::metadata_api()
    }

    fn url_path(dt: &Self::DynamicType, namespace: Option<&str>) -> String {
        NamespaceMeta::url_path(dt, namespace)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// What identifies a namespace's incarnation: its UID.
fn uid_fingerprint(uid: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    uid.hash(&mut hasher);
    hasher.finish()
}

#[async_trait]
impl Provider for Namespaces {
    async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        self.clusters.get(name).await
    }

    /// Registers the index once, on the host cache, which every namespace-cluster
    /// reads through its view. An index of that name already on the host (e.g. the
    /// manager registered it on its local cluster, which is the host) is fine: the
    /// caches are shared.
    async fn index_field(&self, index: FieldIndex) -> Result<()> {
        match index.apply(self.host.cache()) {
            Ok(()) | Err(CacheError::IndexExists { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
        Some(self)
    }
}

#[async_trait]
impl ProviderRunnable for Namespaces {
    /// Follows the host's namespaces until `token` is cancelled; then every
    /// namespace-cluster is disengaged.
    ///
    /// # Errors
    /// An invalid label selector, or the host cluster's cache stopping.
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()> {
        self.check_selector().await?;
        let run = token.child_token();
        let (engaged, followed) = tokio::join!(self.clusters.start(run.clone(), aware), async {
            let followed = self.follow(&run).await;
            // Whatever ended the loop, the namespace-clusters end with it.
            run.cancel();
            followed
        });
        engaged.and(followed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> kube::Config {
        kube::Config::new("https://127.0.0.1:6443".parse().expect("a URL"))
    }

    #[tokio::test]
    async fn clients_are_built_off_thread_and_a_panicking_factory_skips_its_namespace() {
        let host = Arc::new(
            Cluster::connect("host", config(), Default::default())
                .await
                .expect("host"),
        );
        let shared = Namespaces::new(host.clone());
        let client = shared.client(&"team-s".into()).await.expect("client");
        assert_eq!(client.default_namespace(), "team-s");

        let from_config = Namespaces::with_config(host.clone(), config());
        let client = from_config.client(&"team-a".into()).await.expect("client");
        assert_eq!(client.default_namespace(), "team-a");

        let factory = Namespaces::with_clients(host, |namespace| {
            assert_ne!(namespace, "bad", "no client for this one");
            let mut config = config();
            config.default_namespace = namespace.to_owned();
            kube::Client::try_from(config)
        });
        let client = factory.client(&"team-b".into()).await.expect("client");
        assert_eq!(client.default_namespace(), "team-b");
        let Err(error) = factory.client(&"bad".into()).await else {
            panic!("a client from a panicking factory");
        };
        assert_eq!(
            error.to_string(),
            "cannot build a client for cluster bad: the client factory panicked"
        );
    }

    #[tokio::test]
    async fn a_shared_client_is_made_on_first_use_from_any_thread() {
        let host = Arc::new(
            Cluster::connect("host", config(), Default::default())
                .await
                .expect("host"),
        );
        let cluster = Namespaces::new(host).build("team-s").await.expect("cluster");
        assert!(!cluster.client_is_made());
        // Probes and aliases do not make it.
        let _ = cluster.unnamespaced_client();
        let alias = Cluster::alias("alias".into(), &cluster);
        assert!(!cluster.client_is_made());
        // First used outside the runtime's threads: its buffer's task still has a
        // runtime to run on.
        let namespace = std::thread::spawn(move || alias.client().default_namespace().to_owned())
            .join()
            .expect("no panic");
        assert_eq!(namespace, "team-s");
        assert!(cluster.client_is_made(), "the alias made the same client");
        assert_eq!(cluster.client().default_namespace(), "team-s");
    }

    /// v04 (issue 21): the provider keeps what identifies a namespace and whether it
    /// is terminating, not its labels and annotations (≈ 650 bytes per
    /// namespace-cluster, most of what it kept), and reads it through an informer
    /// of its own type, so users of the host cache's Namespace metadata still get
    /// every field.
    #[test]
    fn v04_the_provider_keeps_a_namespaces_identity_not_its_labels() {
        let item = serde_json::json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "team-a",
                "uid": "0b5c9d3e",
                "resourceVersion": "42",
                "deletionTimestamp": "2026-12-07T05:00:00Z",
                "labels": {"kubernetes.io/metadata.name": "team-a", "tenant": "a"},
                "annotations": {"note": "x"},
                "finalizers": ["kubernetes"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Thing", "name": "t", "uid": "u"}],
            }
        });
        let kept: NamespaceIdentity = serde_json::from_value(item).expect("a namespace");
        let meta = kept.meta();
        assert_eq!(meta.name.as_deref(), Some("team-a"));
        assert_eq!(meta.uid.as_deref(), Some("0b5c9d3e"));
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert!(meta.deletion_timestamp.is_some());
        assert_eq!(
            (
                &meta.labels,
                &meta.annotations,
                &meta.finalizers,
                &meta.owner_references
            ),
            (&None, &None, &None, &None)
        );
        assert_eq!(NamespaceIdentity::url_path(&(), None), "/api/v1/namespaces");
        assert!(NamespaceIdentity::metadata_api(), "a metadata-only watch");
        assert_ne!(
            std::any::TypeId::of::<NamespaceIdentity>(),
            std::any::TypeId::of::<PartialObjectMeta<Namespace>>(),
            "not the informer users get from metadata_informer::<Namespace>()"
        );
    }

    #[test]
    fn a_new_uid_is_a_new_fingerprint() {
        assert_eq!(uid_fingerprint(Some("a")), uid_fingerprint(Some("a")));
        assert_ne!(uid_fingerprint(Some("a")), uid_fingerprint(Some("b")));
        assert_ne!(uid_fingerprint(Some("")), uid_fingerprint(None));
    }
}
