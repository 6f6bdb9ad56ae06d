//! Clusters from kubeconfig Secrets: one cluster per labelled Secret of a namespace
//! of the host cluster.
//!
//! Available with the cargo feature `secret` (or `providers`, which enables every provider).
//!
//! A Secret in the configured namespace that carries the label
//! `sigs.k8s.io/multicluster-runtime-kubeconfig: "true"` (see [`DEFAULT_LABEL_KEY`])
//! and holds a kubeconfig under the data key `kubeconfig` ([`DEFAULT_DATA_KEY`]) gives
//! a cluster named after the Secret. This is the Rust counterpart of Go's
//! `multicluster-runtime/providers/kubeconfig`.
//!
//! - **Changes.** A change of what the chosen context connects with (server, CA,
//!   credentials, namespace; see [`kubeconfig::fingerprint`]) replaces the cluster:
//!   the old instance's token is cancelled and a new instance is engaged. Any other
//!   change (labels, annotations, other contexts) changes nothing.
//! - **Deletion** of the Secret, or removal of its label, disengages the cluster.
//! - **Bad content** (the key missing or empty, a malformed kubeconfig, a context that
//!   does not exist, a kubeconfig the [`KubeconfigPolicy`] refuses) gives no cluster:
//!   a cluster engaged from earlier content is disengaged, so the fleet always
//!   follows what the Secrets say now. The provider logs a warning and publishes a
//!   Warning Event on the Secret (reasons [`REASON_MISSING`], [`REASON_INVALID`],
//!   [`REASON_REFUSED`]), once per Secret and defect; it never fails for it. A
//!   Secret is looked at again when it changes (or the watch relists), not on a
//!   timer: its content decides, and only an allowed exec plugin that fails may
//!   succeed later.
//! - **Isolation.** Each Secret is handled by its own worker, in order. Building a
//!   cluster does not contact it (caches sync lazily, in the components that use
//!   them), so an unreachable or slow cluster holds up nothing, and neither does a
//!   Secret whose handling is slow (e.g. an allowed exec plugin that hangs, bounded
//!   by [`SecretsOptions::build_timeout`]).
//! - **Sync.** If the first list of Secrets does not complete within
//!   [`SecretsOptions::sync_timeout`], an error naming the namespace is logged (again
//!   after each further timeout) while the watch keeps retrying with backoff.
//! - **Watching.** The provider follows the Secrets with an [`Informer`] of the
//!   shared cache (one watch of the namespace with the label selector): the informer
//!   relists after a broken watch and reports Secrets deleted meanwhile; the provider
//!   has no watch loop of its own.
//!
//! # Security
//!
//! Whoever can write a Secret in the namespace chooses what the controller connects
//! to. By default ([`KubeconfigPolicy::untrusted`]) a kubeconfig that asks for an exec
//! credential plugin, an auth provider or a local file (certificate, key, token file)
//! is refused, so writing a Secret cannot run a program in the controller or make it
//! read its own files. An operator who controls who writes these Secrets can allow
//! exec plugins with [`SecretsOptions::policy`]. Logs, errors and Events name the
//! Secret and the defect, never the content. The informer keeps each labelled Secret
//! with its kubeconfig key only (other keys and annotations are dropped before it
//! is stored); the clusters keep a fingerprint of it and the clients built from it.
//!
//! The [`KubeconfigPolicy`] also refuses a `proxy-url` and
//! `insecure-skip-tls-verify: true` by default, and its
//! [`endpoints`](KubeconfigPolicy::endpoints) can limit servers to an allow-list and
//! refuse a deny-list (e.g. [`EndpointPolicy::deny_local`]: loopback, link-local,
//! cloud metadata). A refused Secret gives a `KubeconfigRefused` Warning Event whose
//! note names the entry (by position), the field and the rule, and copies nothing of
//! the Secret: not the exec command, an auth provider's name, or the server's host
//! (Events are read by more people than the Secret).
//!
//! # RBAC
//!
//! In the namespace, on the host cluster: `list`, `watch` on `secrets`, and
//! `create`, `patch` on `events` in the `events.k8s.io` group. The provider watches
//! only that namespace (with the label selector), so a namespaced Role suffices:
//! `deploy/rbac/secret-provider.yaml`, which the tests use as it is.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use k8s_openapi::api::core::v1::Secret;
//! use kube::api::{Api, PostParams};
//! use kube::config::Kubeconfig;
//! use multicluster_runtime::providers::kubeconfig::KubeconfigPolicy;
//! use multicluster_runtime::providers::secret::{Secrets, SecretsOptions, kubeconfig_secret};
//! use multicluster_runtime::{Cluster, Manager};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run(host: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! // One cluster per labelled kubeconfig Secret in namespace `fleet-system`.
//! let mut options = SecretsOptions::new("fleet-system");
//! // Exec credential plugins are refused unless the operator, who controls who can
//! // write those Secrets, allows them explicitly:
//! if std::env::var_os("ALLOW_EXEC_PLUGINS").is_some() {
//!     options = options.policy(KubeconfigPolicy::untrusted().allow_exec(true));
//! }
//! let provider = Arc::new(Secrets::new(host.clone(), options));
//! let manager = Manager::with_provider(Arc::new(Cluster::new("", host.clone())), provider);
//!
//! // Register a cluster: a Secret named after it, labelled, holding its kubeconfig.
//! let kubeconfig = Kubeconfig::read_from("eu-1.kubeconfig")?;
//! let secret: Secret = kubeconfig_secret("eu-1", "fleet-system", &kubeconfig);
//! Api::<Secret>::namespaced(host, "fleet-system").create(&PostParams::default(), &secret).await?;
//!
//! // ... add controllers ...
//! manager.start(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

mod content;
mod queue;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::Kubeconfig;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::content::{Plan, Problem};
use self::queue::KeyedQueue;
use crate::cache::follow::{Step, Steps};
use crate::cache::{Cache, CacheOptions, FieldIndex, Informer, WatchSpec};
#[cfg(doc)]
use crate::cluster::kubeconfig::EndpointPolicy;
use crate::cluster::kubeconfig::{self, KubeconfigPolicy};
use crate::cluster::{Cluster, ClusterName, ClusterOptions};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider, ProviderRunnable};
use crate::providers::clusters::Clusters;

/// The label key that marks a Secret as a kubeconfig for this provider.
pub const DEFAULT_LABEL_KEY: &str = "sigs.k8s.io/multicluster-runtime-kubeconfig";
/// The value [`DEFAULT_LABEL_KEY`] must have.
pub const DEFAULT_LABEL_VALUE: &str = "true";
/// The data key holding the kubeconfig.
pub const DEFAULT_DATA_KEY: &str = "kubeconfig";
/// The reporting controller of the provider's Events.
pub const DEFAULT_REPORTER: &str = "multicluster-runtime-secrets";
/// Event reason: the data key is missing or empty.
pub const REASON_MISSING: &str = "MissingKubeconfig";
/// Event reason: the content is not a usable kubeconfig.
pub const REASON_INVALID: &str = "InvalidKubeconfig";
/// Event reason: the kubeconfig asks for something the policy refuses.
pub const REASON_REFUSED: &str = "KubeconfigRefused";
/// The Event action of the provider's Events.
const EVENT_ACTION: &str = "Engage";
/// Kubernetes caps an Event's note at 1 kB.
const NOTE_LIMIT: usize = 1024;
/// Name of this provider in errors.
const PROVIDER: &str = "secrets";

/// Settings of a [`Secrets`] provider: where the Secrets are, how they are marked,
/// and what their kubeconfigs may do.
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::providers::kubeconfig::KubeconfigPolicy;
/// use multicluster_runtime::providers::secret::SecretsOptions;
///
/// let options = SecretsOptions::new("fleet-system")
///     .label("example.com/fleet-member", "yes")
///     .data_key("value")
///     .context("admin")
///     .sync_timeout(Duration::from_secs(60))
///     .policy(KubeconfigPolicy::untrusted().allow_exec(true));
/// assert_eq!(options.namespace_name(), "fleet-system");
/// ```
#[derive(Debug, Clone)]
pub struct SecretsOptions {
    namespace: String,
    label_key: String,
    label_value: String,
    data_key: String,
    context: Option<String>,
    policy: KubeconfigPolicy,
    cluster: ClusterOptions,
    sync_timeout: Duration,
    build_timeout: Duration,
    reporter: Reporter,
}

impl SecretsOptions {
    /// Secrets of `namespace` with the default label and data key, the kubeconfigs'
    /// current contexts, the [untrusted](KubeconfigPolicy::untrusted) policy, a
    /// 30-second sync timeout and a 30-second build timeout.
    ///
    /// The namespace has no default: Secrets of `default` are seldom where cluster
    /// credentials belong, and watching every namespace would need read access to
    /// every Secret of the host cluster.
    pub fn new(namespace: impl Into<String>) -> Self {
        SecretsOptions {
            namespace: namespace.into(),
            label_key: DEFAULT_LABEL_KEY.into(),
            label_value: DEFAULT_LABEL_VALUE.into(),
            data_key: DEFAULT_DATA_KEY.into(),
            context: None,
            policy: KubeconfigPolicy::untrusted(),
            cluster: ClusterOptions::default(),
            sync_timeout: Duration::from_secs(30),
            build_timeout: Duration::from_secs(30),
            reporter: Reporter {
                controller: DEFAULT_REPORTER.into(),
                instance: None,
            },
        }
    }

    /// Only Secrets labelled `key: value` are kubeconfigs (default
    /// [`DEFAULT_LABEL_KEY`]`: "true"`).
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.label_key = key.into();
        self.label_value = value.into();
        self
    }

    /// The data key holding the kubeconfig (default [`DEFAULT_DATA_KEY`]).
    #[must_use]
    pub fn data_key(mut self, key: impl Into<String>) -> Self {
        self.data_key = key.into();
        self
    }

    /// Use the context of this name in every kubeconfig, instead of each one's
    /// current context. A kubeconfig without it gives no cluster.
    #[must_use]
    pub fn context(mut self, name: impl Into<String>) -> Self {
        self.context = Some(name.into());
        self
    }

    /// What kubeconfigs may ask for (default [`KubeconfigPolicy::untrusted`]: no exec
    /// plugins, auth providers or local files). Allow exec plugins only if the
    /// operator controls who can write the Secrets: the plugin runs in the controller.
    #[must_use]
    pub fn policy(mut self, policy: KubeconfigPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Options of every cluster built: of its cache and of its client (request
    /// timeout, user agent, rate limit). A cluster rebuilt after its Secret changes
    /// gets them again.
    #[must_use]
    pub fn cluster_options(mut self, options: ClusterOptions) -> Self {
        self.cluster = options;
        self
    }

    /// How long the first list of Secrets may take before an error is logged (it is
    /// logged again after each further period; the watch keeps retrying).
    #[must_use]
    pub fn sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// How long building one cluster's client may take; it only takes long when an
    /// allowed exec credential plugin is slow. A Secret that exceeds it gives no
    /// cluster and a Warning Event.
    #[must_use]
    pub fn build_timeout(mut self, timeout: Duration) -> Self {
        self.build_timeout = timeout;
        self
    }

    /// Who the provider's Events say reported them (default [`DEFAULT_REPORTER`]
    /// without an instance).
    #[must_use]
    pub fn reporter(mut self, reporter: Reporter) -> Self {
        self.reporter = reporter;
        self
    }

    /// The namespace whose Secrets are watched.
    pub fn namespace_name(&self) -> &str {
        &self.namespace
    }

    /// The label selector of the watched Secrets, e.g.
    /// `sigs.k8s.io/multicluster-runtime-kubeconfig=true`.
    pub fn label_selector(&self) -> String {
        format!("{}={}", self.label_key, self.label_value)
    }

    /// A Secret named `name` in this provider's namespace, labelled and keyed as
    /// this provider expects, holding `kubeconfig` (as JSON, which is YAML). The
    /// provider turns it into a cluster named `name`.
    pub fn kubeconfig_secret(&self, name: &str, kubeconfig: &Kubeconfig) -> Secret {
        let data = serde_json::to_vec(kubeconfig)
            .expect("a Kubeconfig serializes to JSON: its maps have string keys");
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    self.label_key.clone(),
                    self.label_value.clone(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(self.data_key.clone(), ByteString(data))])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        }
    }
}

/// A Secret named `name` in `namespace` that a [`Secrets`] provider with default
/// label and data key turns into a cluster named `name`: labelled
/// [`DEFAULT_LABEL_KEY`]`: "true"`, holding `kubeconfig` under [`DEFAULT_DATA_KEY`].
///
/// ```
/// use kube::config::Kubeconfig;
/// use multicluster_runtime::providers::secret::{DEFAULT_DATA_KEY, kubeconfig_secret};
///
/// let kubeconfig = Kubeconfig::from_yaml("apiVersion: v1\nkind: Config\n").unwrap();
/// let secret = kubeconfig_secret("eu-1", "fleet-system", &kubeconfig);
/// assert!(secret.data.unwrap().contains_key(DEFAULT_DATA_KEY));
/// ```
pub fn kubeconfig_secret(name: &str, namespace: &str, kubeconfig: &Kubeconfig) -> Secret {
    SecretsOptions::new(namespace).kubeconfig_secret(name, kubeconfig)
}

/// A provider of one cluster per labelled kubeconfig Secret in a namespace of the
/// host cluster; see the [module documentation](self).
///
/// The manager starts it ([`Provider::into_runnable`]). Cheap to clone: clones share
/// the clusters.
#[derive(Clone)]
pub struct Secrets {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    options: SecretsOptions,
    clusters: Clusters,
    queue: Arc<KeyedQueue<Change>>,
    /// The per-Secret workers and the Event publishing of a run; [`Secrets::start`]
    /// returns once they have ended.
    tasks: TaskTracker,
    /// Per Secret name, the fingerprint of the last defect reported, so that a
    /// relist or a no-op update does not repeat the warning.
    reported: Mutex<HashMap<String, u64>>,
    running: AtomicBool,
    synced: AtomicBool,
}

/// What became of a Secret.
enum Change {
    Applied(SecretData),
    Deleted,
}

/// The parts of a Secret the provider uses. Not `Debug`: it holds the kubeconfig.
struct SecretData {
    reference: ObjectReference,
    kubeconfig: Option<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("namespace", &self.inner.options.namespace)
            .field("selector", &self.inner.options.label_selector())
            .field("clusters", &self.names())
            .finish()
    }
}

impl Secrets {
    /// A provider watching Secrets through `client` (of the host cluster) as
    /// `options` say.
    pub fn new(client: kube::Client, options: SecretsOptions) -> Self {
        Secrets {
            inner: Arc::new(Inner {
                client,
                options,
                clusters: Clusters::new(),
                queue: Arc::default(),
                tasks: TaskTracker::new(),
                reported: Mutex::default(),
                running: AtomicBool::new(false),
                synced: AtomicBool::new(false),
            }),
        }
    }

    /// The provider's settings.
    pub fn options(&self) -> &SecretsOptions {
        &self.inner.options
    }

    /// The names of the clusters known now, in no particular order.
    pub fn names(&self) -> Vec<ClusterName> {
        self.inner.clusters.names()
    }

    /// Whether the first list of Secrets has completed (every Secret that existed at
    /// start has been seen, though its cluster may still be being built).
    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Provider for Secrets {
    async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        self.inner.clusters.get(name).await
    }

    async fn index_field(&self, index: FieldIndex) -> Result<()> {
        self.inner.clusters.index_field(index).await
    }

    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
        Some(self)
    }
}

#[async_trait]
impl ProviderRunnable for Secrets {
    /// Watches the Secrets and engages their clusters into `aware` until `token` is
    /// cancelled. Bad Secrets and watch failures are logged and retried, never
    /// returned.
    ///
    /// # Errors
    /// [`Error::Provider`] if the provider runs already.
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()> {
        if self.inner.running.swap(true, Ordering::AcqRel) {
            return Err(Error::Provider {
                provider: PROVIDER.into(),
                source: "started while running already".into(),
            });
        }
        let _running = Running(&self.inner.running);
        // Closed and emptied by the end of the previous run.
        self.inner.tasks.reopen();
        let span = tracing::info_span!("secrets_provider", namespace = %self.inner.options.namespace);
        let (clusters, watched) = tokio::join!(
            self.inner.clusters.start(token.clone(), aware),
            self.inner.clone().watch(token).instrument(span),
        );
        // The workers and Event publishing stop with `token`.
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        clusters.and(watched)
    }
}

/// Clears the running flag when [`Secrets::start`] ends, also when its future is
/// dropped.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Inner {
    /// Follows the labelled Secrets of the namespace until `token` is cancelled,
    /// through an informer of a cache of its own (one namespaced watch with the
    /// label selector), which does the relisting and tells what changed.
    async fn watch(self: Arc<Self>, token: CancellationToken) -> Result<()> {
        let cache_token = token.child_token();
        // The cache's watch ends with this function, however it ends.
        let stop = cache_token.clone().drop_guard();
        let cache = Cache::new(
            ClusterName::local(),
            self.client.clone(),
            CacheOptions::default(),
            cache_token,
        );
        let followed = self.follow(&cache, &token).await;
        drop(stop);
        cache.stopped().await;
        followed
    }

    /// Follows the Secrets through `cache` until `token` is cancelled.
    async fn follow(self: &Arc<Self>, cache: &Cache, token: &CancellationToken) -> Result<()> {
        let options = &self.options;
        // Keep only the kubeconfig: not the other keys of the Secret, nor annotations
        // (`kubectl apply` copies the whole Secret into one).
        let key = options.data_key.clone();
        cache.set_transform::<Secret>(move |secret| {
            if let Some(data) = secret.data.as_mut() {
                data.retain(|name, _| *name == key);
            }
            secret.metadata.annotations = None;
        });
        let spec = WatchSpec::default()
            .namespace(&options.namespace)
            .labels(&options.label_selector());
        let informer = cache.informer_with::<Secret>(&(), spec);
        self.synced.store(false, Ordering::Release);
        let what = format!(
            "kubeconfig Secrets of namespace {} ({})",
            options.namespace,
            options.label_selector()
        );
        let mut steps = Steps::new(informer, options.sync_timeout, what);
        loop {
            let step = tokio::select! {
                () = token.cancelled() => return Ok(()),
                step = steps.next() => step,
            };
            match step {
                Some(Step::Resync { missed }) => {
                    self.resync(steps.informer(), token);
                    if missed == 0 {
                        self.synced.store(true, Ordering::Release);
                        tracing::info!(
                            namespace = %options.namespace,
                            secrets = steps.informer().store().len(),
                            "kubeconfig Secrets listed"
                        );
                    }
                }
                Some(Step::Applied { new, .. }) => {
                    self.submit(new.name_any(), Change::Applied(self.extract(&new)), token);
                }
                Some(Step::Deleted(old)) => self.submit(old.name_any(), Change::Deleted, token),
                // Stopped: the token was cancelled meanwhile.
                None => return Ok(()),
            }
        }
    }

    /// Makes the clusters follow the informer's store: each Secret is handled again
    /// (an unchanged one changes nothing), and a registered cluster whose Secret is
    /// gone is removed.
    fn resync(self: &Arc<Self>, informer: &Informer<Secret>, token: &CancellationToken) {
        let secrets = informer.store().list();
        let present: HashSet<String> = secrets.iter().map(|secret| secret.name_any()).collect();
        for secret in secrets {
            self.submit(secret.name_any(), Change::Applied(self.extract(&secret)), token);
        }
        for name in self.clusters.names() {
            if !present.contains(name.as_str()) {
                self.submit(name.as_str().to_owned(), Change::Deleted, token);
            }
        }
    }

    /// Keeps what the provider needs of a Secret.
    fn extract(&self, secret: &Secret) -> SecretData {
        let kubeconfig = secret
            .data
            .as_ref()
            .and_then(|data| data.get(&self.options.data_key))
            .map(|bytes| bytes.0.clone());
        SecretData {
            reference: secret.object_ref(&()),
            kubeconfig,
        }
    }

    fn submit(self: &Arc<Self>, name: String, change: Change, token: &CancellationToken) {
        let inner = self.clone();
        let span = tracing::Span::current();
        let run = token.clone();
        self.queue
            .submit(name, change, token, &self.tasks, move |name, change| {
                let (inner, run) = (inner.clone(), run.clone());
                async move {
                    match change {
                        Change::Applied(secret) => inner.apply(name, secret, &run).await,
                        Change::Deleted => inner.delete(&name),
                    }
                }
                .instrument(span.clone())
            });
    }

    fn origin(&self, name: &str) -> String {
        format!("Secret {}/{name}", self.options.namespace)
    }

    /// Engages, replaces or keeps the cluster of a Secret that was added or changed.
    async fn apply(&self, name: String, secret: SecretData, run: &CancellationToken) {
        let origin = self.origin(&name);
        let options = &self.options;
        let plan = content::plan(
            secret.kubeconfig.as_deref(),
            &options.data_key,
            options.context.as_deref(),
            &options.policy,
            &origin,
        );
        let plan = match plan {
            Ok(plan) => plan,
            Err(problem) => return self.reject(&name, &secret, problem, run),
        };
        let mut failed = None;
        let fingerprint = plan.fingerprint;
        let changed = self
            .clusters
            .replace_if_changed(name.as_str(), fingerprint, async || {
                self.build(&name, plan, &origin).await.map_err(|problem| {
                    let error = Error::Provider {
                        provider: PROVIDER.into(),
                        source: problem.message.clone().into(),
                    };
                    failed = Some(problem);
                    error
                })
            })
            .await;
        match (changed, failed) {
            (_, Some(problem)) => self.reject(&name, &secret, problem, run),
            (Ok(true), None) => {
                self.clear_report(&name);
                tracing::info!(namespace = %options.namespace, secret = %name, "cluster from kubeconfig Secret engaged");
            }
            (Ok(false), None) => {
                self.clear_report(&name);
                tracing::debug!(namespace = %options.namespace, secret = %name, "kubeconfig unchanged");
            }
            (Err(err), None) => tracing::error!(
                namespace = %options.namespace,
                secret = %name,
                error = %crate::redact::describe(&err),
                "cluster from kubeconfig Secret registered, but engaging it failed"
            ),
        }
    }

    /// A new cluster for `plan`. Builds the client on a blocking thread: kube runs
    /// an exec credential plugin, if allowed and present, while building it.
    async fn build(&self, name: &str, plan: Plan, origin: &str) -> Result<Arc<Cluster>, Problem> {
        let config = kubeconfig::client_config(&plan.kubeconfig, Some(&plan.context), origin).await?;
        let timeout = self.options.build_timeout;
        let options = &self.options.cluster.client;
        let endpoints = &self.options.policy.endpoints;
        let client =
            kubeconfig::build_client(config, options, endpoints, timeout, origin, &plan.context).await?;
        drop(plan);
        let cluster = Cluster::with_options(name, client, self.options.cluster.clone());
        Ok(Arc::new(cluster))
    }

    /// Disengages the cluster of a deleted (or unlabelled) Secret.
    fn delete(&self, name: &str) {
        self.clear_report(name);
        if self.clusters.remove(&ClusterName::from(name)) {
            tracing::info!(namespace = %self.options.namespace, secret = %name, "kubeconfig Secret gone; cluster disengaged");
        }
    }

    /// A Secret that gives no cluster: disengages any cluster it gave before, and
    /// reports the problem once (log and Event).
    fn reject(&self, name: &str, secret: &SecretData, problem: Problem, run: &CancellationToken) {
        let removed = self.clusters.remove(&ClusterName::from(name));
        let key = {
            let mut hasher = DefaultHasher::new();
            (&secret.reference.uid, &problem).hash(&mut hasher);
            hasher.finish()
        };
        let repeated = self
            .reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(name.to_owned(), key)
            == Some(key);
        if repeated && !removed {
            tracing::debug!(namespace = %self.options.namespace, secret = %name, reason = problem.reason.as_str(), "kubeconfig Secret still unusable");
            return;
        }
        tracing::warn!(
            namespace = %self.options.namespace,
            secret = %name,
            reason = problem.reason.as_str(),
            disengaged = removed,
            "kubeconfig Secret gives no cluster: {}",
            problem.message
        );
        self.publish(secret.reference.clone(), problem, run);
    }

    /// Publishes a Warning Event on the Secret, in the background: on the run's
    /// tasks, given up when the run ends (the warning is logged already).
    fn publish(&self, reference: ObjectReference, problem: Problem, run: &CancellationToken) {
        let recorder = Recorder::new(self.client.clone(), self.options.reporter.clone());
        let namespace = self.options.namespace.clone();
        let event = Event {
            type_: EventType::Warning,
            reason: problem.reason.as_str().into(),
            note: Some(truncate(problem.message, NOTE_LIMIT)),
            action: EVENT_ACTION.into(),
            secondary: None,
        };
        let run = run.clone();
        self.tasks.spawn(
            async move {
                let published = run
                    .run_until_cancelled(recorder.publish(&event, &reference))
                    .await;
                if let Some(Err(err)) = published {
                    tracing::warn!(
                        namespace = %namespace,
                        secret = ?reference.name,
                        error = %crate::redact::describe(&err),
                        "cannot publish an Event on the kubeconfig Secret"
                    );
                }
            }
            .in_current_span(),
        );
    }

    fn clear_report(&self, name: &str) {
        self.reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(name);
    }
}

/// `text` cut to at most `limit` bytes, at a character boundary.
fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_labelled_and_keyed_as_the_options_say() {
        let kubeconfig = Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\ncurrent-context: a\ncontexts:\n- name: a\n  context:\n    cluster: a\n",
        )
        .expect("kubeconfig");
        let secret = kubeconfig_secret("eu-1", "fleet", &kubeconfig);
        assert_eq!(secret.metadata.name.as_deref(), Some("eu-1"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("fleet"));
        let labels = secret.metadata.labels.expect("labels");
        assert_eq!(labels.get(DEFAULT_LABEL_KEY).map(String::as_str), Some("true"));
        let data = secret.data.expect("data");
        let parsed = kubeconfig::parse(&data[DEFAULT_DATA_KEY].0, "t").expect("round trip");
        assert_eq!(parsed.current_context.as_deref(), Some("a"));

        let options = SecretsOptions::new("other").label("k", "v").data_key("cfg");
        let secret = options.kubeconfig_secret("x", &kubeconfig);
        assert_eq!(options.label_selector(), "k=v");
        assert!(secret.data.expect("data").contains_key("cfg"));
        assert_eq!(secret.metadata.labels.expect("labels")["k"], "v");
    }

    #[test]
    fn notes_are_truncated_at_a_character_boundary() {
        assert_eq!(truncate("short".into(), 10), "short");
        let long = "é".repeat(600);
        let cut = truncate(long, NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT && cut.ends_with('…'), "{}", cut.len());
    }
}
