//! The Cluster API provider: one cluster per Cluster API `Cluster` whose control
//! plane is initialized.
//!
//! Available with the cargo feature `capi` (or `providers`, which enables every provider).
//!
//! [`ClusterApi`] follows the `cluster.x-k8s.io` `Cluster` objects of a *host*
//! cluster (the management cluster, usually the manager's own) and the kubeconfig
//! Secrets Cluster API writes for them:
//!
//! - **Name**: a `Cluster` `ns/name` becomes the cluster `ns/name`.
//! - **Ready**: engaged once its control plane is initialized, see
//!   [`control_plane_initialized`] for exactly what is checked per API version
//!   (v1beta2 by default, v1beta1 selectable with [`ClusterApiOptions::version`]), or
//!   your own check ([`ClusterApiOptions::ready_when`]). A cluster that was engaged
//!   stays engaged if the check turns false later (status is rewritten, e.g. after
//!   `clusterctl move`); only deletion disengages it.
//! - **Credentials**: the Secret `<name>-kubeconfig` in the `Cluster`'s namespace,
//!   key `value`, its current context (or its only one). When the Secret changes
//!   such that the connection settings change (rotated certificate, other server),
//!   the cluster is rebuilt and engaged again; other changes (labels, annotations,
//!   an identical rewrite) change nothing.
//! - **Deletion**: the cluster is disengaged as soon as the `Cluster` has a
//!   `deletionTimestamp` (Cluster API is tearing it down; its apiserver is about to
//!   go), or is gone.
//! - **Bad input**: a ready `Cluster` whose Secret is missing, malformed, or asks for
//!   something the [`KubeconfigPolicy`] refuses is logged once as a warning naming
//!   the `Cluster` and the reason (never the content) and not engaged; it is retried
//!   whenever the `Cluster` or its Secret changes (and with backoff if building the
//!   client fails). An engaged cluster whose Secret turns bad keeps its previous
//!   credentials. Other clusters are never affected.
//!
//! # Trust
//!
//! Cluster API's controllers write the kubeconfig Secrets, but anyone who can write
//! Secrets in a `Cluster`'s namespace can write one too. So they are read with
//! [`KubeconfigPolicy::untrusted`] by default: no exec credential plugins, no local
//! files, no auth providers, no `proxy-url`, no `insecure-skip-tls-verify`.
//! Kubeconfigs from Cluster API use embedded client certificates, which that policy
//! allows. Relax it with [`ClusterApiOptions::kubeconfig_policy`] only when Secret
//! writers are trusted (e.g. a provider that writes exec-based kubeconfigs), or
//! tighten it with an [`EndpointPolicy`](crate::cluster::kubeconfig::EndpointPolicy)
//! that holds servers to the fleet's address ranges.
//!
//! # RBAC
//!
//! With [`ClusterApiOptions::namespace`], a Role in that namespace: `list` and
//! `watch` on `clusters.cluster.x-k8s.io` and on `secrets`
//! (`deploy/rbac/capi-provider.yaml`, used as it is by the test `p06`); without, the
//! same rules in a ClusterRole.
//!
//! # Host watches
//!
//! The provider reads `Cluster`s through the host cluster's shared [`Cache`], so
//! controllers of the host that watch them share that watch.
//!
//! Secrets are read through a cache of the provider's own (one watch, with the same
//! namespaces as the host's `Cluster` watch), which holds as little as it can:
//!
//! - **Only Cluster API's Secrets reach it.** The watch asks the apiserver for the
//!   Secrets labelled [`CLUSTER_NAME_LABEL`] and of type [`SECRET_TYPE`] (what
//!   Cluster API sets on the kubeconfig Secrets it writes), so no other Secret of the
//!   namespaces is ever sent to the controller. Change the selection with
//!   [`ClusterApiOptions::secret_label_selector`] and
//!   [`ClusterApiOptions::secret_field_selector`] if another writer labels them
//!   differently.
//! - **Only the kubeconfig is kept.** Before a Secret is stored, every data key but
//!   [`KUBECONFIG_SECRET_KEY`] is dropped (Cluster API's certificate Secrets,
//!   `<cluster>-ca`, `-etcd`, `-sa`, `-proxy`, match the selection and hold private
//!   keys under other keys), and so are annotations (`kubectl apply` copies a whole
//!   Secret into one); a Secret whose name is not `<cluster>-kubeconfig` keeps no
//!   data at all. [`ClusterApi::secrets`] shows what is held.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use multicluster_runtime::providers::capi::{ClusterApi, ClusterApiOptions, ClusterApiVersion};
//! use multicluster_runtime::{Cluster, Manager};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let management = Arc::new(Cluster::new("", kube::Client::try_default().await?));
//! let options = ClusterApiOptions::default()
//!     .version(ClusterApiVersion::V1Beta2)
//!     .namespace("fleet");
//! let provider = Arc::new(ClusterApi::new(&management, options));
//! let manager = Manager::with_provider(management, provider.clone());
//! // ... add controllers to the manager: they run in every workload cluster ...
//! manager.start(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::object_clusters::{self, Engine, Plan, Planner, Watches};
use crate::cache::{Cache, FieldIndex, Informer, ObjectKey, WatchSpec};
use crate::cluster::kubeconfig::KubeconfigPolicy;
use crate::cluster::{Cluster, ClusterName, ClusterOptions};
use crate::error::Result;
use crate::multicluster::{Aware, Provider, ProviderRunnable};
use crate::providers::clusters::Clusters;

/// The API group of Cluster API's core types.
pub const GROUP: &str = "cluster.x-k8s.io";
/// The suffix of the name of a `Cluster`'s kubeconfig Secret: `<cluster>-kubeconfig`.
pub const KUBECONFIG_SECRET_SUFFIX: &str = "-kubeconfig";
/// The key of the kubeconfig in that Secret.
pub const KUBECONFIG_SECRET_KEY: &str = "value";
/// The label Cluster API sets on the Secrets it writes for a `Cluster`, with the
/// `Cluster`'s name as its value.
pub const CLUSTER_NAME_LABEL: &str = "cluster.x-k8s.io/cluster-name";
/// The type of the Secrets Cluster API writes for a `Cluster` (kubeconfig and
/// certificates).
pub const SECRET_TYPE: &str = "cluster.x-k8s.io/secret";
/// The condition type both API versions use for an initialized control plane.
pub const CONTROL_PLANE_INITIALIZED: &str = "ControlPlaneInitialized";

const PROVIDER: &str = "capi";

/// A check whether a `Cluster` may be engaged, over the object as the host serves it.
pub type ReadyFn = Arc<dyn Fn(&DynamicObject) -> bool + Send + Sync>;

/// The version of the Cluster API `Cluster` type to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClusterApiVersion {
    /// `cluster.x-k8s.io/v1beta2` (Cluster API 1.11 and later). The default.
    #[default]
    V1Beta2,
    /// `cluster.x-k8s.io/v1beta1`.
    V1Beta1,
}

impl ClusterApiVersion {
    /// The version string, e.g. `v1beta2`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterApiVersion::V1Beta2 => "v1beta2",
            ClusterApiVersion::V1Beta1 => "v1beta1",
        }
    }

    /// The `Cluster` resource of this version.
    pub fn api_resource(self) -> ApiResource {
        ApiResource {
            group: GROUP.into(),
            version: self.as_str().into(),
            api_version: format!("{GROUP}/{}", self.as_str()),
            kind: "Cluster".into(),
            plural: "clusters".into(),
        }
    }
}

impl fmt::Display for ClusterApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the control plane of `cluster` (a `Cluster` read as `version`) is
/// initialized: the default readiness check.
///
/// - v1beta2: `status.initialization.controlPlaneInitialized` is `true`, or the
///   condition `ControlPlaneInitialized` in `status.conditions` has status `"True"`.
/// - v1beta1: `status.controlPlaneReady` is `true`, or the condition
///   `ControlPlaneInitialized` has status `"True"` in `status.conditions` or in
///   `status.v1beta2.conditions` (where Cluster API 1.9+ reports the new conditions).
///
/// ```
/// use kube::api::DynamicObject;
/// use multicluster_runtime::providers::capi::{control_plane_initialized, ClusterApiVersion};
///
/// let cluster: DynamicObject = serde_json::from_value(serde_json::json!({
///     "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
///     "metadata": { "name": "eu-1", "namespace": "fleet" },
///     "status": { "initialization": { "controlPlaneInitialized": true } },
/// })).unwrap();
/// assert!(control_plane_initialized(ClusterApiVersion::V1Beta2, &cluster));
/// assert!(!control_plane_initialized(ClusterApiVersion::V1Beta1, &cluster));
/// ```
pub fn control_plane_initialized(version: ClusterApiVersion, cluster: &DynamicObject) -> bool {
    let status = cluster.data.get("status");
    let at = |path: &[&str]| path.iter().try_fold(status?, |value, key| value.get(key));
    let field = |path: &[&str]| at(path).and_then(Value::as_bool) == Some(true);
    let condition = |path: &[&str]| {
        at(path).is_some_and(|conditions| condition_is_true(conditions, CONTROL_PLANE_INITIALIZED))
    };
    match version {
        ClusterApiVersion::V1Beta2 => {
            field(&["initialization", "controlPlaneInitialized"]) || condition(&["conditions"])
        }
        ClusterApiVersion::V1Beta1 => {
            field(&["controlPlaneReady"])
                || condition(&["conditions"])
                || condition(&["v1beta2", "conditions"])
        }
    }
}

/// Whether the list `conditions` has a condition of type `kind` with status `"True"`.
fn condition_is_true(conditions: &Value, kind: &str) -> bool {
    conditions.as_array().is_some_and(|all| {
        all.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(kind)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

/// Settings of a [`ClusterApi`] provider.
///
/// ```
/// use multicluster_runtime::providers::capi::{ClusterApiOptions, ClusterApiVersion};
/// use multicluster_runtime::providers::kubeconfig::KubeconfigPolicy;
///
/// let options = ClusterApiOptions::default()
///     .version(ClusterApiVersion::V1Beta1)
///     .namespace("fleet")
///     .secret_label_selector("cluster.x-k8s.io/cluster-name=eu-1")
///     .kubeconfig_policy(KubeconfigPolicy::untrusted());
/// assert_eq!(options.secret_spec().field_selector.as_deref(), Some("type=cluster.x-k8s.io/secret"));
/// ```
#[derive(Clone)]
pub struct ClusterApiOptions {
    version: ClusterApiVersion,
    namespace: Option<String>,
    secret_label_selector: String,
    secret_field_selector: String,
    kubeconfig_policy: KubeconfigPolicy,
    cluster_options: ClusterOptions,
    ready: Option<ReadyFn>,
}

impl Default for ClusterApiOptions {
    fn default() -> Self {
        ClusterApiOptions {
            version: ClusterApiVersion::default(),
            namespace: None,
            secret_label_selector: CLUSTER_NAME_LABEL.into(),
            secret_field_selector: format!("type={SECRET_TYPE}"),
            kubeconfig_policy: KubeconfigPolicy::default(),
            cluster_options: ClusterOptions::default(),
            ready: None,
        }
    }
}

impl fmt::Debug for ClusterApiOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterApiOptions")
            .field("version", &self.version)
            .field("namespace", &self.namespace)
            .field("secret_label_selector", &self.secret_label_selector)
            .field("secret_field_selector", &self.secret_field_selector)
            .field("kubeconfig_policy", &self.kubeconfig_policy)
            .field("cluster_options", &self.cluster_options)
            .field("custom_ready", &self.ready.is_some())
            .finish()
    }
}

impl ClusterApiOptions {
    /// Which version of `Cluster` to read. Default: [`ClusterApiVersion::V1Beta2`].
    #[must_use]
    pub fn version(mut self, version: ClusterApiVersion) -> Self {
        self.version = version;
        self
    }

    /// Follows `Cluster`s (and Secrets) of this namespace only. Default: all
    /// namespaces.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Watches only the Secrets matching this label selector. Default:
    /// [`CLUSTER_NAME_LABEL`] (any value), which Cluster API sets on the Secrets it
    /// writes. An empty selector selects by label no longer (then the
    /// [field selector](Self::secret_field_selector) alone decides).
    #[must_use]
    pub fn secret_label_selector(mut self, selector: impl Into<String>) -> Self {
        self.secret_label_selector = selector.into();
        self
    }

    /// Watches only the Secrets matching this field selector. Default:
    /// `type=`[`SECRET_TYPE`], the type of the Secrets Cluster API writes. An empty
    /// selector selects by field no longer.
    #[must_use]
    pub fn secret_field_selector(mut self, selector: impl Into<String>) -> Self {
        self.secret_field_selector = selector.into();
        self
    }

    /// What kubeconfigs from the Secrets may ask for. Default:
    /// [`KubeconfigPolicy::untrusted`] (see the [module docs](self#trust)).
    #[must_use]
    pub fn kubeconfig_policy(mut self, policy: KubeconfigPolicy) -> Self {
        self.kubeconfig_policy = policy;
        self
    }

    /// Settings of every engaged [`Cluster`]: of its cache and of its client
    /// (request timeout, user agent, rate limit). A cluster rebuilt after its
    /// credentials rotate gets them again.
    #[must_use]
    pub fn cluster_options(mut self, options: ClusterOptions) -> Self {
        self.cluster_options = options;
        self
    }

    /// Engages a `Cluster` when `ready` returns true for it, instead of
    /// [`control_plane_initialized`].
    #[must_use]
    pub fn ready_when(mut self, ready: impl Fn(&DynamicObject) -> bool + Send + Sync + 'static) -> Self {
        self.ready = Some(Arc::new(ready));
        self
    }

    fn ready_fn(&self) -> ReadyFn {
        match &self.ready {
            Some(ready) => ready.clone(),
            None => {
                let version = self.version;
                Arc::new(move |cluster| control_plane_initialized(version, cluster))
            }
        }
    }

    fn namespace_spec(&self) -> WatchSpec {
        match &self.namespace {
            // A namespaced watch: a Role in that namespace is all the RBAC it needs.
            Some(namespace) => WatchSpec::default().namespace(namespace),
            None => WatchSpec::default(),
        }
    }

    /// Which Secrets the provider watches: those of its namespaces that match its
    /// label and field selectors (empty selectors select everything).
    pub fn secret_spec(&self) -> WatchSpec {
        self.namespace_spec()
            .labels(&self.secret_label_selector)
            .fields(&self.secret_field_selector)
            .normalized()
    }
}

/// A provider of one cluster per Cluster API `Cluster` of a host cluster; see the
/// [module docs](self).
///
/// Before the manager starts it, it knows no clusters. Field indexes registered
/// through [`Provider::index_field`] apply to every cluster it engages.
pub struct ClusterApi {
    clusters: Clusters,
    host: Cache,
    options: ClusterApiOptions,
    /// The informer of the kubeconfig Secrets while the provider runs.
    secrets: Mutex<Option<Arc<Informer<Secret>>>>,
}

impl fmt::Debug for ClusterApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterApi")
            .field("host", self.host.cluster())
            .field("options", &self.options)
            .field("clusters", &self.clusters.names())
            .finish()
    }
}

impl ClusterApi {
    /// A provider that reads `Cluster`s and Secrets of `host` (the management
    /// cluster) through its shared cache.
    pub fn new(host: &Cluster, options: ClusterApiOptions) -> Self {
        ClusterApi {
            clusters: Clusters::new(),
            host: host.cache().clone(),
            options,
            secrets: Mutex::new(None),
        }
    }

    /// The informer of the Secrets the provider reads kubeconfigs from, while it
    /// runs (`None` before it starts and after it stops): the Secrets its
    /// [selection](ClusterApiOptions::secret_spec) gives, each holding no data key
    /// but [`KUBECONFIG_SECRET_KEY`] (see [Host watches](self#host-watches)).
    pub fn secrets(&self) -> Option<Arc<Informer<Secret>>> {
        self.secrets_slot().clone()
    }

    fn secrets_slot(&self) -> MutexGuard<'_, Option<Arc<Informer<Secret>>>> {
        self.secrets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The name of the cluster of the `Cluster` `namespace/name`.
    pub fn cluster_name(namespace: &str, name: &str) -> ClusterName {
        ClusterName::new(format!("{namespace}/{name}"))
    }

    /// The names of the clusters engaged now, in no particular order.
    pub fn names(&self) -> Vec<ClusterName> {
        self.clusters.names()
    }
}

#[async_trait]
impl Provider for ClusterApi {
    async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        self.clusters.get(name).await
    }

    async fn index_field(&self, index: FieldIndex) -> Result<()> {
        self.clusters.index_field(index).await
    }

    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
        Some(self)
    }
}

#[async_trait]
impl ProviderRunnable for ClusterApi {
    /// Follows the host's `Cluster`s and Secrets, engaging and disengaging clusters,
    /// until `token` is cancelled; then every cluster's token is cancelled.
    ///
    /// # Errors
    /// [`Error::Provider`](crate::Error::Provider) if the host cluster's informers
    /// stop (its cache was stopped) while `token` is not cancelled.
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()> {
        let options = &self.options;
        let primary = self
            .host
            .informer_with::<DynamicObject>(&options.version.api_resource(), options.namespace_spec());
        // The Secrets through a cache of the provider's own: its transform (which
        // applies to every Secret informer of a cache) must not touch the host's
        // other Secret informers. Its watch ends with this function, however it ends.
        let cache_token = token.child_token();
        let stop = cache_token.clone().drop_guard();
        let cache = Cache::new(
            self.host.cluster().clone(),
            self.host.client().clone(),
            self.host.options().clone(),
            cache_token,
        );
        cache.set_transform::<Secret>(keep_kubeconfig_only);
        let secrets = cache.informer_with::<Secret>(&(), options.secret_spec());
        *self.secrets_slot() = Some(secrets.clone());
        let planner = CapiPlanner {
            clusters: primary.clone(),
            secrets: secrets.clone(),
            ready: options.ready_fn(),
            policy: options.kubeconfig_policy.clone(),
            version: options.version,
            custom_ready: options.ready.is_some(),
        };
        let engine = Arc::new(Engine::new(
            planner,
            self.clusters.clone(),
            options.cluster_options.clone(),
        ));
        let watches = Watches {
            primary,
            secrets: Some(secrets),
        };
        let result = engine.run(watches, token, aware).await;
        *self.secrets_slot() = None;
        drop(stop);
        cache.stopped().await;
        result
    }
}

/// The cache transform of the Secrets: a kubeconfig Secret keeps its kubeconfig key
/// only, any other Secret no data; annotations go too.
fn keep_kubeconfig_only(secret: &mut Secret) {
    let kubeconfig = cluster_of_secret(secret).is_some();
    if let Some(data) = secret.data.as_mut() {
        data.retain(|key, _| kubeconfig && key == KUBECONFIG_SECRET_KEY);
    }
    secret.string_data = None;
    secret.metadata.annotations = None;
}

/// Decides what the cluster of a `Cluster` object should be.
struct CapiPlanner {
    clusters: Arc<Informer<DynamicObject>>,
    secrets: Arc<Informer<Secret>>,
    ready: ReadyFn,
    policy: KubeconfigPolicy,
    version: ClusterApiVersion,
    custom_ready: bool,
}

impl Planner for CapiPlanner {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    fn cluster_name(&self, key: &ObjectKey) -> ClusterName {
        ClusterApi::cluster_name(key.namespace.as_deref().unwrap_or_default(), &key.name)
    }

    fn plan(&self, key: &ObjectKey) -> Plan {
        let namespace = key.namespace.as_deref();
        let Some(cluster) = self.clusters.store().get(namespace, &key.name) else {
            return Plan::Gone("the Cluster was deleted".into());
        };
        if cluster.metadata.deletion_timestamp.is_some() {
            return Plan::Gone("the Cluster is being deleted".into());
        }
        if !(self.ready)(&cluster) {
            return Plan::Wait(if self.custom_ready {
                "the readiness check is false".into()
            } else {
                match self.version {
                    ClusterApiVersion::V1Beta2 => "its control plane is not initialized yet \
                        (status.initialization.controlPlaneInitialized is not true)"
                        .into(),
                    ClusterApiVersion::V1Beta1 => "its control plane is not initialized yet \
                        (status.controlPlaneReady is not true)"
                        .into(),
                }
            });
        }
        let secret_name = format!("{}{KUBECONFIG_SECRET_SUFFIX}", key.name);
        let origin = format!("Secret {}/{secret_name}", namespace.unwrap_or_default());
        let Some(secret) = self.secrets.store().get(namespace, &secret_name) else {
            return Plan::Invalid(format!("{origin} not found"));
        };
        let Some(data) = secret.data.as_ref().and_then(|d| d.get(KUBECONFIG_SECRET_KEY)) else {
            return Plan::Invalid(format!("{origin} has no key {KUBECONFIG_SECRET_KEY:?}"));
        };
        match object_clusters::secret_target(&data.0, &self.policy, origin) {
            Ok(target) => Plan::Engage(Box::new(target)),
            Err(why) => Plan::Invalid(why),
        }
    }

    fn secret_keys(&self, secret: &Secret) -> Vec<ObjectKey> {
        cluster_of_secret(secret).into_iter().collect()
    }
}

/// The `Cluster` whose kubeconfig Secret `secret` would be, by its name.
fn cluster_of_secret(secret: &Secret) -> Option<ObjectKey> {
    let name = secret.metadata.name.as_deref()?;
    let cluster = name
        .strip_suffix(KUBECONFIG_SECRET_SUFFIX)
        .filter(|c| !c.is_empty())?;
    Some(ObjectKey::new(secret.metadata.namespace.as_deref(), cluster))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(api_version: &str, status: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": api_version,
            "kind": "Cluster",
            "metadata": { "name": "c", "namespace": "ns" },
            "status": status,
        }))
        .expect("a Cluster")
    }

    fn condition(status: &str) -> Value {
        json!([{ "type": "Ready", "status": "True" }, { "type": CONTROL_PLANE_INITIALIZED, "status": status }])
    }

    #[test]
    fn v1beta2_readiness() {
        let ready = |status| {
            control_plane_initialized(
                ClusterApiVersion::V1Beta2,
                &cluster("cluster.x-k8s.io/v1beta2", status),
            )
        };
        assert!(ready(
            json!({ "initialization": { "controlPlaneInitialized": true } })
        ));
        assert!(!ready(
            json!({ "initialization": { "controlPlaneInitialized": false } })
        ));
        assert!(!ready(
            json!({ "initialization": { "infrastructureProvisioned": true } })
        ));
        assert!(ready(json!({ "conditions": condition("True") })));
        assert!(!ready(json!({ "conditions": condition("False") })));
        assert!(!ready(json!({ "controlPlaneReady": true })));
        assert!(!ready(json!(null)));
    }

    #[test]
    fn v1beta1_readiness() {
        let ready = |status| {
            control_plane_initialized(
                ClusterApiVersion::V1Beta1,
                &cluster("cluster.x-k8s.io/v1beta1", status),
            )
        };
        assert!(ready(json!({ "controlPlaneReady": true })));
        assert!(!ready(
            json!({ "controlPlaneReady": false, "phase": "Provisioned" })
        ));
        assert!(ready(json!({ "conditions": condition("True") })));
        assert!(ready(json!({ "v1beta2": { "conditions": condition("True") } })));
        assert!(!ready(
            json!({ "v1beta2": { "conditions": condition("Unknown") } })
        ));
        assert!(!ready(
            json!({ "initialization": { "controlPlaneInitialized": true } })
        ));
        assert!(!ready(json!({})));
    }

    #[test]
    fn resources_per_version() {
        let v2 = ClusterApiVersion::default().api_resource();
        assert_eq!(
            (v2.api_version.as_str(), v2.plural.as_str()),
            ("cluster.x-k8s.io/v1beta2", "clusters")
        );
        assert_eq!(ClusterApiVersion::V1Beta1.api_resource().version, "v1beta1");
    }

    #[test]
    fn secrets_map_to_their_cluster() {
        let cluster_of = |name: &str| {
            let mut secret = Secret::default();
            secret.metadata.name = Some(name.into());
            secret.metadata.namespace = Some("ns".into());
            cluster_of_secret(&secret)
        };
        assert_eq!(
            cluster_of("eu-1-kubeconfig"),
            Some(ObjectKey::new(Some("ns"), "eu-1"))
        );
        assert_eq!(cluster_of("-kubeconfig"), None);
        assert_eq!(cluster_of("eu-1-ca"), None);
    }

    proptest::proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        /// Cluster API objects and their Secrets' names, as anyone allowed to write
        /// them may set them.
        #[test]
        fn p05_fuzz_capi_objects(
            status in crate::providers::fuzz::any_json(),
            version in proptest::sample::select(vec![ClusterApiVersion::V1Beta2, ClusterApiVersion::V1Beta1]),
            api_version in proptest::sample::select(vec!["cluster.x-k8s.io/v1beta2", "cluster.x-k8s.io/v1beta1", "x/v1"]),
            secret_name in "\\PC{0,30}",
            data in crate::providers::fuzz::kubeconfig_bytes(),
        ) {
            let object = cluster(api_version, status);
            let _ = control_plane_initialized(version, &object);
            let mut secret = Secret::default();
            secret.metadata.name = Some(secret_name);
            secret.metadata.namespace = Some("ns".into());
            let _ = cluster_of_secret(&secret);
            let policy = KubeconfigPolicy::untrusted();
            if let Err(why) = object_clusters::secret_target(&data, &policy, "Secret ns/x-kubeconfig".into()) {
                crate::providers::fuzz::assert_no_marker("capi secret", &why);
            }
        }
    }
}
