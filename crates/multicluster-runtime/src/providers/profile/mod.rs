//! The ClusterProfile inventory provider: one cluster per healthy `ClusterProfile`
//! (`multicluster.x-k8s.io/v1alpha1`, `sigs.k8s.io/cluster-inventory-api`).
//!
//! Available with the cargo feature `profile` (or `providers`, which enables every provider).
//!
//! [`ClusterProfiles`] follows the `ClusterProfile`s of a *host* cluster (the hub
//! that holds the inventory, usually the manager's own):
//!
//! - **Name**: a profile `ns/name` becomes the cluster `ns/name`
//!   ([`ClusterProfilesOptions::cluster_name`] changes that).
//! - **Ready**: engaged while its `ControlPlaneHealthy` condition is `True`
//!   ([`control_plane_healthy`]; [`ClusterProfilesOptions::ready_when`] changes the
//!   check). A profile that turns unhealthy stays engaged by default (a flapping
//!   condition would otherwise restart every controller's work for the cluster);
//!   with [`ClusterProfilesOptions::disengage_when_unhealthy`] it is disengaged, and
//!   engaged again when it recovers.
//! - **Credentials**, from one or both strategies:
//!   - *access providers* ([`ClusterProfilesOptions::access_providers`]): the
//!     profile's `status.accessProviders` give the endpoint (server, CA, …), the
//!     operator's provider file the exec credential plugin; see [`access`] for the
//!     file format and what is taken from the profile;
//!   - *labelled Secrets* ([`ClusterProfilesOptions::secret_consumer`]): exactly one
//!     Secret in the profile's namespace labelled
//!     `x-k8s.io/cluster-inventory-consumer=<consumer>` and
//!     `x-k8s.io/cluster-profile=<profile name>`, with a kubeconfig under the key
//!     `Config` (its current context, or its only one).
//!
//!   With both, a profile that offers an access provider of the file uses it; the
//!   others use their Secret.
//! - **Changes**: the cluster is rebuilt and engaged again when its connection
//!   settings change (endpoint, CA, plugin, Secret kubeconfig), never for other
//!   changes (properties, conditions, labels, an identical rewrite). A client whose
//!   exec plugin issued a client certificate with an expiry is rebuilt shortly before
//!   it expires. If the plugin fails (or hangs for more than a minute), the profile is
//!   retried with exponential backoff (5 s doubling up to 5 min); the plugin's output
//!   is never logged, since it may hold credentials.
//! - **Deletion**: disengaged when the profile has a `deletionTimestamp` or is gone.
//! - **Bad input**: a healthy profile without usable credentials is logged once as
//!   a warning naming the profile and the reason (never credentials) and is not
//!   engaged; it is retried whenever the profile or its Secret changes. An engaged
//!   cluster whose credentials turn bad keeps its previous ones. Other profiles are
//!   never affected, and a slow exec plugin only delays its own profile.
//!
//! # Trust
//!
//! Exec plugins run only as the operator's provider file says: a profile picks a
//! provider by name and cannot name a program. Secret kubeconfigs are read with
//! [`KubeconfigPolicy::untrusted`] by default (no exec plugins, no local files), since
//! anyone who can write Secrets in the inventory namespace could forge one;
//! [`ClusterProfilesOptions::kubeconfig_policy`] relaxes that.
//!
//! # RBAC
//!
//! With a namespace set, a Role there: `list` and `watch` on
//! `clusterprofiles.multicluster.x-k8s.io` and, with a Secret consumer, on
//! `secrets` (`deploy/rbac/profile-provider.yaml`); without, the same rules in a
//! ClusterRole.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use multicluster_runtime::providers::profile::{AccessProviders, ClusterProfiles, ClusterProfilesOptions};
//! use multicluster_runtime::{Cluster, Manager};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Arc::new(Cluster::new("", kube::Client::try_default().await?));
//! let options = ClusterProfilesOptions::default()
//!     .namespace("fleet-inventory")
//!     .access_providers(AccessProviders::from_file("/etc/clusterprofile-provider-file.json")?)
//!     .secret_consumer("my-controller")
//!     .disengage_when_unhealthy(true);
//! let provider = Arc::new(ClusterProfiles::new(&hub, options)?);
//! let manager = Manager::with_provider(hub, provider.clone());
//! // ... add controllers to the manager: they run in every healthy cluster ...
//! manager.start(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

pub mod access;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use self::access::{AccessProvider, AccessProviders, CliArgsPolicy, EnvVarsPolicy};
use super::object_clusters::{self, Engine, Plan, Planner, Watches};
use crate::cache::{Cache, FieldIndex, Informer, ObjectKey, WatchSpec};
use crate::cluster::kubeconfig::KubeconfigPolicy;
use crate::cluster::{Cluster, ClusterName, ClusterOptions};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider, ProviderRunnable};
use crate::providers::clusters::Clusters;

/// The API group of the cluster inventory API.
pub const GROUP: &str = "multicluster.x-k8s.io";
/// The version of `ClusterProfile` read.
pub const VERSION: &str = "v1alpha1";
/// The condition a healthy profile has with status `True`.
pub const CONTROL_PLANE_HEALTHY: &str = "ControlPlaneHealthy";
/// The label naming the consumer a credentials Secret is for.
pub const CONSUMER_LABEL: &str = "x-k8s.io/cluster-inventory-consumer";
/// The label naming the profile a credentials Secret is for.
pub const PROFILE_LABEL: &str = "x-k8s.io/cluster-profile";
/// The key of the kubeconfig in a credentials Secret.
pub const SECRET_KEY: &str = "Config";

const PROVIDER: &str = "profile";

/// A check whether a profile may be engaged.
pub type ReadyFn = Arc<dyn Fn(&DynamicObject) -> bool + Send + Sync>;
/// The cluster name of the profile `(namespace, name)`.
pub type NameFn = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// The `ClusterProfile` resource.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: "ClusterProfile".into(),
        plural: "clusterprofiles".into(),
    }
}

/// Whether `profile`'s condition `ControlPlaneHealthy` (in `status.conditions`) has
/// status `"True"`: the default readiness check.
///
/// ```
/// use kube::api::DynamicObject;
/// use multicluster_runtime::providers::profile::control_plane_healthy;
///
/// let profile: DynamicObject = serde_json::from_value(serde_json::json!({
///     "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ClusterProfile",
///     "metadata": { "name": "eu-1", "namespace": "inventory" },
///     "status": { "conditions": [{ "type": "ControlPlaneHealthy", "status": "True" }] },
/// })).unwrap();
/// assert!(control_plane_healthy(&profile));
/// ```
pub fn control_plane_healthy(profile: &DynamicObject) -> bool {
    let conditions = profile.data.get("status").and_then(|s| s.get("conditions"));
    conditions.and_then(Value::as_array).is_some_and(|all| {
        all.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(CONTROL_PLANE_HEALTHY)
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

/// Settings of a [`ClusterProfiles`] provider. At least one credential strategy
/// ([`access_providers`](Self::access_providers) or
/// [`secret_consumer`](Self::secret_consumer)) must be set.
///
/// ```
/// use multicluster_runtime::providers::profile::ClusterProfilesOptions;
///
/// let options = ClusterProfilesOptions::default()
///     .namespace("inventory")
///     .secret_consumer("my-controller")
///     .cluster_name(|_namespace, name| name.to_owned());
/// ```
#[derive(Clone, Default)]
pub struct ClusterProfilesOptions {
    namespace: Option<String>,
    consumer: Option<String>,
    access: Option<AccessProviders>,
    kubeconfig_policy: KubeconfigPolicy,
    ready: Option<ReadyFn>,
    disengage_when_unhealthy: bool,
    allow_insecure: bool,
    naming: Option<NameFn>,
    cluster_options: ClusterOptions,
}

impl fmt::Debug for ClusterProfilesOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterProfilesOptions")
            .field("namespace", &self.namespace)
            .field("consumer", &self.consumer)
            .field(
                "access_providers",
                &self.access.as_ref().map(AccessProviders::names),
            )
            .field("kubeconfig_policy", &self.kubeconfig_policy)
            .field("custom_ready", &self.ready.is_some())
            .field("disengage_when_unhealthy", &self.disengage_when_unhealthy)
            .field("allow_insecure_skip_tls_verify", &self.allow_insecure)
            .field("custom_naming", &self.naming.is_some())
            .field("cluster_options", &self.cluster_options)
            .finish()
    }
}

impl ClusterProfilesOptions {
    /// Follows the profiles (and Secrets) of this namespace only. Default: all
    /// namespaces.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Uses the labelled-Secret strategy for the consumer `consumer`: the value of
    /// the `x-k8s.io/cluster-inventory-consumer` label of the Secrets to read.
    #[must_use]
    pub fn secret_consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = Some(consumer.into());
        self
    }

    /// Uses the access-provider strategy with the operator's providers.
    #[must_use]
    pub fn access_providers(mut self, providers: AccessProviders) -> Self {
        self.access = Some(providers);
        self
    }

    /// What kubeconfigs from Secrets may ask for. Default:
    /// [`KubeconfigPolicy::untrusted`]. For kubeconfigs built from access providers,
    /// whose exec plugin is the operator's, only its `proxy-url`, TLS-verification
    /// and [`endpoints`](KubeconfigPolicy::endpoints) rules apply to the cluster
    /// the profile describes (TLS verification may also be skipped with
    /// [`allow_insecure_skip_tls_verify`](Self::allow_insecure_skip_tls_verify)).
    #[must_use]
    pub fn kubeconfig_policy(mut self, policy: KubeconfigPolicy) -> Self {
        self.kubeconfig_policy = policy;
        self
    }

    /// Engages a profile while `ready` returns true for it, instead of
    /// [`control_plane_healthy`].
    #[must_use]
    pub fn ready_when(mut self, ready: impl Fn(&DynamicObject) -> bool + Send + Sync + 'static) -> Self {
        self.ready = Some(Arc::new(ready));
        self
    }

    /// Whether an engaged profile that stops being ready is disengaged. Default:
    /// `false`, it stays engaged until deleted.
    #[must_use]
    pub fn disengage_when_unhealthy(mut self, disengage: bool) -> Self {
        self.disengage_when_unhealthy = disengage;
        self
    }

    /// Whether a profile's access provider may set `insecure-skip-tls-verify: true`.
    /// Default: `false`, such a profile is not engaged.
    #[must_use]
    pub fn allow_insecure_skip_tls_verify(mut self, allow: bool) -> Self {
        self.allow_insecure = allow;
        self
    }

    /// Names the cluster of the profile `(namespace, name)`. Default:
    /// `namespace/name`. Names must stay unique across the followed profiles.
    #[must_use]
    pub fn cluster_name(mut self, naming: impl Fn(&str, &str) -> String + Send + Sync + 'static) -> Self {
        self.naming = Some(Arc::new(naming));
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

    fn namespace_spec(&self) -> WatchSpec {
        match &self.namespace {
            // A namespaced watch: a Role in that namespace is all the RBAC it needs.
            Some(namespace) => WatchSpec::default().namespace(namespace),
            None => WatchSpec::default(),
        }
    }
}

/// A provider of one cluster per healthy `ClusterProfile` of a host cluster; see the
/// [module docs](self).
///
/// Before the manager starts it, it knows no clusters. Field indexes registered
/// through [`Provider::index_field`] apply to every cluster it engages.
pub struct ClusterProfiles {
    clusters: Clusters,
    host: Cache,
    options: ClusterProfilesOptions,
}

impl fmt::Debug for ClusterProfiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterProfiles")
            .field("host", self.host.cluster())
            .field("options", &self.options)
            .field("clusters", &self.clusters.names())
            .finish()
    }
}

impl ClusterProfiles {
    /// A provider that reads the profiles (and credential Secrets) of `host`, the
    /// cluster holding the inventory, through its shared cache.
    ///
    /// # Errors
    /// [`Error::Provider`] if `options` set no credential strategy, or an empty
    /// consumer name.
    pub fn new(host: &Cluster, options: ClusterProfilesOptions) -> Result<Self> {
        let refuse = |reason: &str| Error::Provider {
            provider: PROVIDER.into(),
            source: reason.to_owned().into(),
        };
        if options.consumer.is_none() && options.access.is_none() {
            return Err(refuse(
                "no credential strategy: set access_providers, secret_consumer, or both",
            ));
        }
        if options.consumer.as_deref() == Some("") {
            return Err(refuse("the Secret consumer name is empty"));
        }
        Ok(ClusterProfiles {
            clusters: Clusters::new(),
            host: host.cache().clone(),
            options,
        })
    }

    /// The names of the clusters engaged now, in no particular order.
    pub fn names(&self) -> Vec<ClusterName> {
        self.clusters.names()
    }
}

#[async_trait]
impl Provider for ClusterProfiles {
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
impl ProviderRunnable for ClusterProfiles {
    /// Follows the host's profiles (and Secrets), engaging and disengaging clusters,
    /// until `token` is cancelled; then every cluster's token is cancelled.
    ///
    /// # Errors
    /// [`Error::Provider`] if the host cluster's informers stop (its cache was
    /// stopped) while `token` is not cancelled.
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()> {
        let options = &self.options;
        let scope = options.namespace_spec();
        let primary = self
            .host
            .informer_with::<DynamicObject>(&api_resource(), scope.clone());
        let secrets = options.consumer.as_ref().map(|consumer| {
            let spec = scope.labels(&format!("{CONSUMER_LABEL}={consumer}"));
            self.host.informer_with::<Secret>(&(), spec)
        });
        let planner = ProfilePlanner {
            profiles: primary.clone(),
            secrets: secrets.clone(),
            consumer: options.consumer.clone(),
            access: options.access.clone(),
            policy: options.kubeconfig_policy.clone(),
            ready: options.ready.clone(),
            disengage_when_unhealthy: options.disengage_when_unhealthy,
            access_policy: KubeconfigPolicy {
                allow_insecure_skip_tls_verify: options.allow_insecure
                    || options.kubeconfig_policy.allow_insecure_skip_tls_verify,
                ..options.kubeconfig_policy.clone()
            },
            naming: options.naming.clone(),
        };
        let engine = Arc::new(Engine::new(
            planner,
            self.clusters.clone(),
            options.cluster_options.clone(),
        ));
        engine.run(Watches { primary, secrets }, token, aware).await
    }
}

/// Decides what the cluster of a profile should be.
struct ProfilePlanner {
    profiles: Arc<Informer<DynamicObject>>,
    secrets: Option<Arc<Informer<Secret>>>,
    consumer: Option<String>,
    access: Option<AccessProviders>,
    policy: KubeconfigPolicy,
    ready: Option<ReadyFn>,
    disengage_when_unhealthy: bool,
    /// The operator's policy for kubeconfigs built from access providers: their
    /// servers and proxies, and whether TLS verification may be skipped.
    access_policy: KubeconfigPolicy,
    naming: Option<NameFn>,
}

impl Planner for ProfilePlanner {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    fn cluster_name(&self, key: &ObjectKey) -> ClusterName {
        let namespace = key.namespace.as_deref().unwrap_or_default();
        match &self.naming {
            Some(naming) => ClusterName::new(naming(namespace, &key.name)),
            None => ClusterName::new(format!("{namespace}/{}", key.name)),
        }
    }

    fn plan(&self, key: &ObjectKey) -> Plan {
        let namespace = key.namespace.as_deref();
        let Some(profile) = self.profiles.store().get(namespace, &key.name) else {
            return Plan::Gone("the ClusterProfile was deleted".into());
        };
        if profile.metadata.deletion_timestamp.is_some() {
            return Plan::Gone("the ClusterProfile is being deleted".into());
        }
        let ready = match &self.ready {
            Some(ready) => ready(&profile),
            None => control_plane_healthy(&profile),
        };
        if !ready {
            let why = match &self.ready {
                Some(_) => "the readiness check is false".to_owned(),
                None => format!("it is not healthy (condition {CONTROL_PLANE_HEALTHY} is not True)"),
            };
            return if self.disengage_when_unhealthy {
                Plan::Disengage(why)
            } else {
                Plan::Wait(why)
            };
        }
        let origin = format!("ClusterProfile {key}");
        if let Some(access) = &self.access {
            match access.target_for(&profile, &origin, &self.access_policy) {
                Some(Ok(target)) => return Plan::Engage(Box::new(target)),
                Some(Err(why)) => return Plan::Invalid(why),
                None if self.consumer.is_none() => {
                    let offered: Vec<&str> = access::offered(&profile).into_keys().collect();
                    return Plan::Invalid(format!(
                        "{origin} offers no access provider of the provider file (it offers {offered:?}, \
                         the file has {:?})",
                        access.names()
                    ));
                }
                None => {}
            }
        }
        self.secret_plan(key)
    }

    fn secret_keys(&self, secret: &Secret) -> Vec<ObjectKey> {
        let Some(consumer) = &self.consumer else {
            return Vec::new();
        };
        profile_of_secret(secret, consumer).into_iter().collect()
    }
}

impl ProfilePlanner {
    /// The plan from the labelled Secret of `key`.
    fn secret_plan(&self, key: &ObjectKey) -> Plan {
        let (Some(consumer), Some(secrets)) = (&self.consumer, &self.secrets) else {
            return Plan::Invalid("no credential strategy applies".into());
        };
        let namespace = key.namespace.as_deref().unwrap_or_default();
        let mut matching: Vec<Arc<Secret>> = secrets
            .store()
            .list_namespace(namespace)
            .into_iter()
            .filter(|secret| profile_of_secret(secret, consumer).as_ref() == Some(key))
            .collect();
        let selector = format!("{CONSUMER_LABEL}={consumer}, {PROFILE_LABEL}={}", key.name);
        let secret = match matching.len() {
            0 => {
                let also = if self.access.is_some() {
                    " and it offers no access provider of the provider file"
                } else {
                    ""
                };
                return Plan::Invalid(format!(
                    "no Secret in namespace {namespace} is labelled {selector}{also}"
                ));
            }
            1 => matching.remove(0),
            n => {
                let mut names: Vec<&str> = matching
                    .iter()
                    .filter_map(|s| s.metadata.name.as_deref())
                    .collect();
                names.sort_unstable();
                return Plan::Invalid(format!(
                    "{n} Secrets in namespace {namespace} are labelled {selector} ({}); expected exactly one",
                    names.join(", ")
                ));
            }
        };
        let origin = format!(
            "Secret {namespace}/{}",
            secret.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(data) = secret.data.as_ref().and_then(|d| d.get(SECRET_KEY)) else {
            return Plan::Invalid(format!("{origin} has no key {SECRET_KEY:?}"));
        };
        match object_clusters::secret_target(&data.0, &self.policy, origin) {
            Ok(target) => Plan::Engage(Box::new(target)),
            Err(why) => Plan::Invalid(why),
        }
    }
}

/// The profile a credentials Secret is for, if it is labelled for `consumer`.
fn profile_of_secret(secret: &Secret, consumer: &str) -> Option<ObjectKey> {
    let labels = secret.metadata.labels.as_ref()?;
    if labels.get(CONSUMER_LABEL).map(String::as_str) != Some(consumer) {
        return None;
    }
    let profile = labels.get(PROFILE_LABEL).filter(|p| !p.is_empty())?;
    Some(ObjectKey::new(
        secret.metadata.namespace.as_deref(),
        profile.as_str(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(conditions: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ClusterProfile",
            "metadata": { "name": "p", "namespace": "inv" },
            "status": { "conditions": conditions },
        }))
        .expect("a profile")
    }

    #[test]
    fn health_is_the_control_plane_healthy_condition() {
        assert!(control_plane_healthy(&profile(
            json!([{ "type": CONTROL_PLANE_HEALTHY, "status": "True" }])
        )));
        assert!(!control_plane_healthy(&profile(
            json!([{ "type": CONTROL_PLANE_HEALTHY, "status": "False" }])
        )));
        assert!(!control_plane_healthy(&profile(
            json!([{ "type": "Joined", "status": "True" }])
        )));
        assert!(!control_plane_healthy(&profile(Value::Null)));
    }

    #[test]
    fn secrets_map_to_their_profile_for_this_consumer_only() {
        let secret = |labels: &[(&str, &str)]| {
            let mut secret = Secret::default();
            secret.metadata.namespace = Some("inv".into());
            secret.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
            secret
        };
        let mine = secret(&[(CONSUMER_LABEL, "me"), (PROFILE_LABEL, "p")]);
        assert_eq!(
            profile_of_secret(&mine, "me"),
            Some(ObjectKey::new(Some("inv"), "p"))
        );
        assert_eq!(profile_of_secret(&mine, "other"), None);
        assert_eq!(profile_of_secret(&secret(&[(CONSUMER_LABEL, "me")]), "me"), None);
        assert_eq!(profile_of_secret(&secret(&[(PROFILE_LABEL, "p")]), "me"), None);
    }

    #[tokio::test]
    async fn a_credential_strategy_is_required() {
        let config = kube::Config::new("https://127.0.0.1:9".parse().expect("a URL"));
        let cluster = Cluster::new("", kube::Client::try_from(config).expect("a client"));
        let err = ClusterProfiles::new(&cluster, ClusterProfilesOptions::default()).expect_err("no strategy");
        assert!(err.to_string().contains("no credential strategy"), "{err}");
        let err = ClusterProfiles::new(&cluster, ClusterProfilesOptions::default().secret_consumer(""))
            .expect_err("empty consumer");
        assert!(err.to_string().contains("empty"), "{err}");
        assert!(
            ClusterProfiles::new(&cluster, ClusterProfilesOptions::default().secret_consumer("me")).is_ok()
        );
    }
}
