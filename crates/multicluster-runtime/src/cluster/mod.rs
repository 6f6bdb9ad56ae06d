//! Clusters: a name, a client and a shared cache.

mod client;
pub(crate) mod engagement;
mod events;
mod health;
pub mod kubeconfig;
mod name;
mod sync;

use kube::runtime::events::{Recorder, Reporter};
use tokio_util::sync::CancellationToken;

use self::events::Recorders;

use crate::cache::{Cache, CacheOptions};

use client::ClusterClient;
pub(crate) use client::Endpoint;
pub(crate) use client::build_client;
#[cfg(feature = "namespace")]
pub(crate) use client::shared_client;
pub use client::{ClientError, ClientOptions, InvalidRateLimit, RateLimit, ResponseLimits, ResponseTooLarge};
pub use health::{ClusterHealth, HealthState};
pub use name::ClusterName;
pub(crate) use sync::SyncBoard;

/// Settings for a [`Cluster`].
///
/// A provider applies the options it was given to every cluster it builds, so a
/// cluster that replaces another (rotated credentials) keeps them.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClusterOptions {
    /// Settings of the cluster's shared cache.
    pub cache: CacheOptions,
    /// Settings of the cluster's client: request timeout, user agent, rate limit.
    /// They take effect where the client is built from a `kube::Config` (by a
    /// provider, [`Cluster::connect`] or [`Cluster::from_config`]); a client
    /// handed to [`Cluster::with_options`] is used as it is.
    pub client: ClientOptions,
}

impl ClusterOptions {
    /// Sets [`cache`](Self::cache).
    #[must_use]
    pub fn cache(mut self, cache: CacheOptions) -> Self {
        self.cache = cache;
        self
    }

    /// Sets [`client`](Self::client).
    ///
    /// ```
    /// use multicluster_runtime::ClusterOptions;
    /// use multicluster_runtime::cluster::{ClientOptions, RateLimit};
    ///
    /// // For a provider whose clusters are small: at most 5 requests a second each.
    /// let options = ClusterOptions::default()
    ///     .client(ClientOptions::default().rate_limit(RateLimit::new(5.0, 5).expect("valid")));
    /// assert!(options.client.rate_limit.is_some());
    /// ```
    #[must_use]
    pub fn client(mut self, client: ClientOptions) -> Self {
        self.client = client;
        self
    }
}

/// One cluster of the fleet: its name, a client, and the cache that every controller
/// engaged with this cluster shares.
///
/// Providers create clusters and hand them to the manager as `Arc<Cluster>`. A new
/// instance under a known name (rotated credentials, another server) replaces the old
/// one; the same instance again is a no-op. [`Cluster::stop`] ends the cache's
/// watches; so does dropping the last handle. A cluster made with
/// [`Cluster::with_cache`] does not own its cache and leaves it running.
pub struct Cluster {
    name: ClusterName,
    client: ClusterClient,
    endpoint: Endpoint,
    cache: Cache,
    token: CancellationToken,
    recorders: Recorders,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl Cluster {
    /// A cluster with default options.
    pub fn new(name: impl Into<ClusterName>, client: kube::Client) -> Self {
        Self::with_options(name, client, ClusterOptions::default())
    }

    /// A cluster with the given options. The client is used as it is: its
    /// [client options](ClusterOptions::client) apply only where this library builds
    /// the client (see [`ClientOptions::build`]).
    pub fn with_options(name: impl Into<ClusterName>, client: kube::Client, options: ClusterOptions) -> Self {
        let name = name.into();
        let token = CancellationToken::new();
        let cache = Cache::new(name.clone(), client.clone(), options.cache, token.child_token());
        Cluster {
            name,
            client: ClusterClient::Ready(client),
            endpoint: Endpoint::new(),
            cache,
            token,
            recorders: Recorders::default(),
        }
    }

    /// A cluster that uses a cache it does not own, such as a
    /// [namespace-scoped view](Cache::scoped) of a host cluster's cache.
    ///
    /// [`stop`](Self::stop) and dropping the cluster mark it stopped but leave the
    /// cache running: its watches belong to whoever made the cache (for a view, the
    /// host cluster, shared by every view), and stop when that owner stops them.
    ///
    /// ```no_run
    /// # fn example(host: &multicluster_runtime::Cluster, client: kube::Client) {
    /// use multicluster_runtime::Cluster;
    ///
    /// // The namespace `team-a` of the host, as a cluster of its own.
    /// let team_a = Cluster::with_cache("team-a", client, host.cache().scoped("team-a", "team-a"));
    /// team_a.stop(); // the host's watches go on
    /// # }
    /// ```
    pub fn with_cache(name: impl Into<ClusterName>, client: kube::Client, cache: Cache) -> Self {
        Self::with_client(name.into(), ClusterClient::Ready(client), Endpoint::new(), cache)
    }

    /// Like [`with_cache`](Self::with_cache), with a client that sends through
    /// `host`'s client and has the cluster's name as its default namespace, made on
    /// the cluster's first use of it (what the namespace provider's clusters use).
    /// It shares `host`'s [`Endpoint`], so the manager probes the two once.
    #[cfg(feature = "namespace")]
    pub(crate) fn through_host(name: impl Into<ClusterName>, host: &Cluster, cache: Cache) -> Self {
        let name = name.into();
        let client = ClusterClient::through_host(host.client(), name.as_str());
        Self::with_client(name, client, host.endpoint, cache)
    }

    fn with_client(name: ClusterName, client: ClusterClient, endpoint: Endpoint, cache: Cache) -> Self {
        Cluster {
            name,
            client,
            endpoint,
            cache,
            // Not the cache's parent: cancelling it stops nothing of the cache.
            token: CancellationToken::new(),
            recorders: Recorders::default(),
        }
    }

    /// The cluster `of` under another name: the same client and the same cache
    /// (whose errors still name `of`), owned by `of`. Stopping or dropping the alias
    /// leaves the cache running.
    #[cfg_attr(not(feature = "multi"), allow(dead_code))]
    pub(crate) fn alias(name: ClusterName, of: &Cluster) -> Self {
        // The same client, made or not: an alias does not make it.
        let mut alias = Self::with_client(name, of.client.clone(), of.endpoint, of.cache().clone());
        // One recorder per reporter for the client, whatever the name.
        alias.recorders = of.recorders.clone();
        alias
    }

    /// A cluster whose client is built from `config` with the
    /// [client options](ClusterOptions::client) of `options`, on a blocking thread.
    ///
    /// Building a client sets up TLS, and runs the exec credential plugin if the
    /// config has one; this keeps that work off the async worker threads and gives
    /// up after [`BUILD_TIMEOUT`](crate::cluster::kubeconfig::BUILD_TIMEOUT).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use multicluster_runtime::Cluster;
    ///
    /// let config = kube::Config::infer().await?;
    /// let cluster = Cluster::connect("eu-1", config, Default::default()).await?;
    /// assert_eq!(cluster.name(), "eu-1");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError`] if the client cannot be built (e.g. bad TLS material) or
    /// building it takes too long; the reason never quotes credentials. It converts
    /// into [`crate::Error::Client`] with `?`.
    pub async fn connect(
        name: impl Into<ClusterName>,
        config: kube::Config,
        options: ClusterOptions,
    ) -> Result<Self, ClientError> {
        let name = name.into();
        let client = build_client(&name, config, &options.client).await?;
        Ok(Self::with_options(name, client, options))
    }

    /// A cluster whose client is built from `config` with the
    /// [client options](ClusterOptions::client) of `options`, on the calling thread.
    ///
    /// This blocks the thread while TLS is set up (and an exec credential plugin,
    /// if any, runs): in async code use [`connect`](Self::connect) instead.
    ///
    /// # Errors
    /// [`ClientError`] if the client cannot be built (e.g. bad TLS material); it
    /// converts into [`crate::Error::Client`] with `?`.
    pub fn from_config(
        name: impl Into<ClusterName>,
        config: kube::Config,
        options: ClusterOptions,
    ) -> Result<Self, ClientError> {
        let name = name.into();
        let client = options.client.build(config).map_err(|source| ClientError {
            cluster: name.clone(),
            reason: crate::redact::describe(&source),
        })?;
        Ok(Self::with_options(name, client, options))
    }

    /// The cluster's name.
    pub fn name(&self) -> &ClusterName {
        &self.name
    }

    /// A client for the cluster (cheap to clone).
    pub fn client(&self) -> kube::Client {
        self.client.get().clone()
    }

    /// A client for requests that name no namespace (health probes): the cluster's
    /// own, or, for a cluster that sends through a host's client, the host's, so
    /// that probing does not make a client the cluster may never need.
    pub(crate) fn unnamespaced_client(&self) -> kube::Client {
        self.client.unnamespaced().clone()
    }

    /// Which client and apiserver answer [`unnamespaced_client`](Self::unnamespaced_client):
    /// the same for clusters that send through one host's client, and for a cluster
    /// and its aliases.
    pub(crate) fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// Whether the cluster's client was made yet.
    #[cfg(test)]
    pub(crate) fn client_is_made(&self) -> bool {
        self.client.is_made()
    }

    /// The cluster's shared cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The cluster's Event recorder for `reporter`: it writes Events into this
    /// cluster, with the cluster's client (and so its
    /// [client options](ClusterOptions::client)), into the namespace of the object
    /// they are about (`default` for a cluster-scoped object).
    ///
    /// The recorder is made on first use and shared by every later call with the
    /// same reporter, for the life of the cluster: an Event published again within
    /// minutes counts up on the existing Event instead of adding one. In a
    /// reconciler, [`ReconcileRequest::recorder`](crate::controller::ReconcileRequest::recorder)
    /// gives the recorder of the request's cluster with the controller as reporter.
    ///
    /// An Event carries only what is published: its reason, note and references,
    /// and the reporter's names. Keep credentials and Secret data out of notes:
    /// anyone who may read Events in the namespace can read them.
    ///
    /// ```no_run
    /// # async fn example(cluster: &multicluster_runtime::Cluster, config_map: &k8s_openapi::api::core::v1::ConfigMap) -> Result<(), kube::Error> {
    /// use kube::Resource;
    /// use kube::runtime::events::{Event, EventType, Reporter};
    ///
    /// let reporter = Reporter { controller: "settings-sync".into(), instance: Some("pod-0".into()) };
    /// let event = Event {
    ///     type_: EventType::Normal,
    ///     reason: "Synced".into(),
    ///     note: Some("copied to every cluster".into()),
    ///     action: "Sync".into(),
    ///     secondary: None,
    /// };
    /// cluster.recorder(&reporter).publish(&event, &config_map.object_ref(&())).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # RBAC
    /// `create` and `patch` on `events` in the API group `events.k8s.io`.
    pub fn recorder(&self, reporter: &Reporter) -> Recorder {
        self.recorders.get(self.client.get(), reporter)
    }

    /// Stops every watch of the cluster's cache. Readers keep the last state. For a
    /// cluster made [`with_cache`](Self::with_cache), only marks the cluster stopped.
    pub fn stop(&self) {
        self.token.cancel();
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> kube::Config {
        kube::Config::new("https://127.0.0.1:6443".parse().expect("a URL"))
    }

    #[tokio::test]
    async fn connect_builds_the_client_off_the_async_threads() {
        let cluster = Cluster::connect("eu-1", config(), ClusterOptions::default())
            .await
            .expect("a client");
        assert_eq!(cluster.name(), "eu-1");
        assert_eq!(cluster.cache().cluster(), "eu-1");
        assert!(!cluster.is_stopped());
    }

    #[tokio::test]
    async fn connect_and_from_config_apply_the_client_options() {
        let options = ClusterOptions::default()
            .client(ClientOptions::default().user_agent(http::HeaderValue::from_static("mcr-test/1")));
        let (config, heads) = client::tests::server(true).await;
        let connected = Cluster::connect("eu-1", config.clone(), options.clone())
            .await
            .expect("a client");
        connected.client().apiserver_version().await.expect("version");
        let built = Cluster::from_config("eu-2", config, options).expect("a client");
        built.client().apiserver_version().await.expect("version");
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 2);
        assert!(
            heads
                .iter()
                .all(|head| head.to_ascii_lowercase().contains("user-agent: mcr-test/1")),
            "{heads:?}"
        );
    }

    #[tokio::test]
    async fn connect_names_the_cluster_when_the_client_cannot_be_built() {
        let mut config = config();
        config.root_cert = Some(vec![b"not a certificate".to_vec()]);
        let error = Cluster::connect("eu-1", config, ClusterOptions::default())
            .await
            .expect_err("bad TLS material");
        assert_eq!(error.cluster, "eu-1", "{error}");
        assert!(error.to_string().contains("eu-1"), "{error}");
    }
}
