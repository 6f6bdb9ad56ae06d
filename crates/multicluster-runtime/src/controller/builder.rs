//! Building a controller: what it watches, where, and how it reconciles.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::events::Reporter;

use super::engage::EngageOptions;
use super::metrics::ControllerFamilies;
use super::predicate::Predicate;
use super::queue::QueueConfig;
use super::reconcile::{ReconcileRequest, TypedReconciler};
use super::request::{Action, Request};
use super::source::{MapContext, Mapper, Source, TypedSource, map_owner, map_self};
use super::{Controller, Host, RunControl, Settings, Trigger};
use crate::cache::{CacheObject, WatchSpec};
use crate::cluster::ClusterName;
use crate::error::Result;
use crate::manager::Manager;

/// How long a source waits for a cluster's cache before it logs that it still waits.
const DEFAULT_SYNC_WAIT: Duration = Duration::from_secs(30);

/// Builds a [`Controller`] for the primary type `K` (Go's `For`).
///
/// ```no_run
/// # use std::sync::Arc;
/// # use k8s_openapi::api::core::v1::{ConfigMap, Secret};
/// # use multicluster_runtime::controller::{Action, Controller, ReconcileRequest};
/// # async fn demo(manager: multicluster_runtime::Manager) -> multicluster_runtime::Result<()> {
/// async fn reconcile(req: ReconcileRequest<ConfigMap>, _ctx: Arc<()>) -> Result<Action, kube::Error> {
///     println!("{} in cluster {}", req.request.name(), req.request.cluster);
///     Ok(Action::await_change())
/// }
/// Controller::builder::<ConfigMap>(&manager)
///     .named("configmaps")
///     .owns::<Secret>()
///     .concurrency(4)
///     .register(reconcile, |_req, _err, _ctx| Action::backoff(), Arc::new(()))
///     .await?;
/// # Ok(()) }
/// ```
pub struct ControllerBuilder<K: CacheObject> {
    manager: Manager,
    dyntype: K::DynamicType,
    spec: WatchSpec,
    predicates: Vec<Predicate<K>>,
    name: String,
    engage: EngageOptions,
    queue: QueueConfig,
    sync_wait: Duration,
    sources: Vec<PendingSource>,
    local_sources: Vec<PendingSource>,
    /// Whether `K` is namespaced, where the type does not say (dynamic types).
    namespaced: Option<bool>,
    triggers: Vec<Trigger>,
    reporter: Option<Reporter>,
}

/// A secondary watch, made when the controller is registered: by then every setting
/// it depends on (the primary type's scope, the sync wait) is final, whatever order
/// the setters were called in.
type PendingSource = Box<dyn FnOnce(&Final) -> Arc<dyn Source> + Send>;

/// The settings a secondary watch depends on, as they are at registration.
struct Final {
    /// Whether the primary type is namespaced.
    namespaced: bool,
    sync_timeout: Duration,
}

impl Controller {
    /// Starts building a controller for `K` on `manager`.
    pub fn builder<K: CacheObject>(manager: &Manager) -> ControllerBuilder<K>
    where
        K::DynamicType: Default,
    {
        ControllerBuilder::new_with(manager, K::DynamicType::default())
    }
}

impl<K: CacheObject> ControllerBuilder<K> {
    /// Starts building a controller for a dynamic type (e.g. `DynamicObject` with
    /// its `ApiResource`).
    pub fn new_with(manager: &Manager, dyntype: K::DynamicType) -> Self {
        let name = K::kind(&dyntype).to_lowercase();
        ControllerBuilder {
            manager: manager.clone(),
            dyntype,
            spec: WatchSpec::default(),
            predicates: Vec::new(),
            name,
            engage: EngageOptions::default(),
            queue: QueueConfig::default(),
            sync_wait: DEFAULT_SYNC_WAIT,
            sources: Vec::new(),
            local_sources: Vec::new(),
            namespaced: None,
            triggers: Vec::new(),
            reporter: None,
        }
    }

    /// The controller's name, in logs, spans and errors (default: the kind in lower
    /// case).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Who the controller is in the Events it records through
    /// [`ReconcileRequest::recorder`]: `reportingController` and
    /// `reportingInstance`. Default: the controller's [name](Self::named), and the
    /// host name as instance (the pod name, in a Deployment).
    ///
    /// ```no_run
    /// # async fn example(manager: &multicluster_runtime::Manager) {
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// use kube::runtime::events::Reporter;
    /// use multicluster_runtime::controller::Controller;
    ///
    /// let builder = Controller::builder::<ConfigMap>(manager).named("settings-sync").reporter(Reporter {
    ///     controller: "example.com/settings-sync".into(),
    ///     instance: std::env::var("POD_NAME").ok(),
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn reporter(mut self, reporter: Reporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Watches only primary objects matching `spec` (label and field selectors).
    #[must_use]
    pub fn watch_spec(mut self, spec: WatchSpec) -> Self {
        self.spec = spec;
        self
    }

    /// Reconciles a primary object only for changes that `predicate` passes
    /// (deletions always pass). Several predicates must all pass. Children and
    /// mapped types are not filtered.
    #[must_use]
    pub fn with_predicate(mut self, predicate: Predicate<K>) -> Self {
        self.predicates.push(predicate);
        self
    }

    /// Reconciles the controlling owner (of type `K`) when a child of type `C`
    /// changes, in the child's cluster and namespace. A cluster's reconciles wait
    /// until its informer of `C` has synced, so the reconciler can read the
    /// children from it.
    #[must_use]
    pub fn owns<C: CacheObject>(self) -> Self
    where
        C::DynamicType: Default,
    {
        self.owns_with::<C>(C::DynamicType::default(), WatchSpec::default())
    }

    /// [`owns`](Self::owns) for a dynamic child type or with selectors.
    ///
    /// The owner's request has the child's namespace if `K` is namespaced, and no
    /// namespace if `K` is cluster-scoped (e.g. a `Namespace` owning ConfigMaps).
    /// For a dynamic `K` the scope comes from [`cluster_scoped`](Self::cluster_scoped)
    /// (default: namespaced).
    #[must_use]
    pub fn owns_with<C: CacheObject>(mut self, dyntype: C::DynamicType, spec: WatchSpec) -> Self {
        let owner = self.dyntype.clone();
        self.sources.push(Box::new(move |settings: &Final| {
            let mapper = map_owner::<K, C>(&owner, settings.namespaced);
            source(dyntype, spec, mapper, settings)
        }));
        self
    }

    /// Declares that the primary type is cluster-scoped (`true`) or namespaced. Only
    /// needed for dynamic types, whose scope the type does not tell, and only for
    /// [`owns`](Self::owns) (before or after it): static types know their scope.
    #[must_use]
    pub fn cluster_scoped(mut self, cluster_scoped: bool) -> Self {
        self.namespaced = Some(!cluster_scoped);
        self
    }

    /// Watches `T` in every engaged cluster and reconciles what `mapper` returns;
    /// requests may name any cluster.
    ///
    /// A cluster's reconciles wait until its own informer of `T` has synced. A
    /// request for another cluster waits for that cluster's informers only: a
    /// reconciler reading `T` in the cluster the object came from should read it
    /// through [`Cache::get`](crate::cache::Cache::get), which waits for the sync.
    #[must_use]
    pub fn watches<T: CacheObject>(
        self,
        mapper: impl Fn(&MapContext, &T) -> Vec<Request> + Send + Sync + 'static,
    ) -> Self
    where
        T::DynamicType: Default,
    {
        self.watches_with(T::DynamicType::default(), WatchSpec::default(), mapper)
    }

    /// [`watches`](Self::watches) for a dynamic type or with selectors.
    #[must_use]
    pub fn watches_with<T: CacheObject>(
        mut self,
        dyntype: T::DynamicType,
        spec: WatchSpec,
        mapper: impl Fn(&MapContext, &T) -> Vec<Request> + Send + Sync + 'static,
    ) -> Self {
        let mapper: Mapper<T> = Arc::new(mapper);
        self.sources.push(Box::new(move |settings: &Final| {
            source(dyntype, spec, mapper, settings)
        }));
        self
    }

    /// Watches `T` in the manager's local cluster only (whatever the engage options)
    /// and reconciles what `mapper` returns: typically one request per fleet cluster
    /// (`context.clusters`), to fan a local object out. A cluster engaged later gets
    /// the requests that the local objects map to it.
    ///
    /// No cluster is reconciled before the local informer of `T` has synced, so a
    /// reconciler can read the local object behind a request from it and take
    /// `None` for "deleted" (a copier deleting copies whose original is gone would
    /// otherwise delete them all at every restart). Every cluster waits for the
    /// local cluster here: a local watch that cannot sync holds them all, and is
    /// logged every [`sync_timeout`](Self::sync_timeout).
    #[must_use]
    pub fn watches_local<T: CacheObject>(
        self,
        mapper: impl Fn(&MapContext, &T) -> Vec<Request> + Send + Sync + 'static,
    ) -> Self
    where
        T::DynamicType: Default,
    {
        self.watches_local_with(T::DynamicType::default(), WatchSpec::default(), mapper)
    }

    /// [`watches_local`](Self::watches_local) for a dynamic type or with selectors.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use k8s_openapi::api::core::v1::ConfigMap;
    /// # use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    /// # use multicluster_runtime::cache::WatchSpec;
    /// # use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
    /// # async fn demo(manager: multicluster_runtime::Manager) -> multicluster_runtime::Result<()> {
    /// # async fn reconcile(_: ReconcileRequest<ConfigMap>, _: Arc<()>) -> Result<Action, kube::Error> { Ok(Action::await_change()) }
    /// // Fan each local `Template` (a custom resource) labelled `fleet=all` out to
    /// // a ConfigMap of the same name in every fleet cluster.
    /// let gvk = GroupVersionKind::gvk("example.com", "v1", "Template");
    /// let spec = WatchSpec::default().labels("fleet=all");
    /// Controller::builder::<ConfigMap>(&manager)
    ///     .watches_local_with(ApiResource::from_gvk(&gvk), spec, |context, template: &DynamicObject| {
    ///         let name = template.metadata.name.clone().unwrap_or_default();
    ///         let namespace = template.metadata.namespace.as_deref();
    ///         context.clusters.iter().map(|c| Request::new(c.clone(), namespace, name.clone())).collect()
    ///     })
    ///     .register(reconcile, |_, _, _| Action::backoff(), Arc::new(()))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn watches_local_with<T: CacheObject>(
        mut self,
        dyntype: T::DynamicType,
        spec: WatchSpec,
        mapper: impl Fn(&MapContext, &T) -> Vec<Request> + Send + Sync + 'static,
    ) -> Self {
        let mapper: Mapper<T> = Arc::new(mapper);
        self.local_sources.push(Box::new(move |settings: &Final| {
            source(dyntype, spec, mapper, settings)
        }));
        self
    }

    /// Reconciles every request `requests` yields (kube-runtime's `reconcile_on`),
    /// for outside events such as a message from another system or a timer.
    ///
    /// Requests go through the controller's queue like those of its watches: they
    /// are deduplicated, fair across clusters and held while their cluster's cache
    /// syncs. A request may name any cluster; one for a cluster that this controller
    /// is not engaged with (unknown, removed, or filtered out) ends quietly, with no
    /// reconcile and no retry. The stream is polled while the manager runs the
    /// controller and dropped when it stops.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use k8s_openapi::api::core::v1::ConfigMap;
    /// # use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multicluster_runtime::Result<()> {
    /// # let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
    /// # let manager = multicluster_runtime::Manager::new(Arc::new(multicluster_runtime::Cluster::new("", client)));
    /// # async fn reconcile(_: ReconcileRequest<ConfigMap>, _: Arc<()>) -> Result<Action, kube::Error> { Ok(Action::await_change()) }
    /// let (requests, incoming) = futures::channel::mpsc::unbounded::<Request>();
    /// let controller = Controller::builder::<ConfigMap>(&manager)
    ///     .reconcile_on(incoming)
    ///     .register(reconcile, |_, _, _| Action::backoff(), Arc::new(()))
    ///     .await?;
    /// // Later, from anywhere: reconcile `default/settings` in cluster `eu-1`.
    /// requests.unbounded_send(Request::new("eu-1", Some("default"), "settings")).unwrap();
    /// // Read once the manager runs the controller; nothing is queued before.
    /// assert!(controller.queue().is_empty());
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn reconcile_on(mut self, requests: impl Stream<Item = Request> + Send + 'static) -> Self {
        self.triggers.push(Trigger::Requests(requests.boxed()));
        self
    }

    /// Reconciles every cached primary object of every engaged cluster each time
    /// `trigger` yields (kube-runtime's `reconcile_all_on`), e.g. when a
    /// configuration the reconciler reads was reloaded.
    ///
    /// The requests go through the controller's queue. A cluster whose cache has
    /// not synced yet is skipped: it reconciles all of its objects once it has.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use k8s_openapi::api::core::v1::ConfigMap;
    /// # use multicluster_runtime::controller::{Action, Controller, ReconcileRequest};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> multicluster_runtime::Result<()> {
    /// # let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
    /// # let manager = multicluster_runtime::Manager::new(Arc::new(multicluster_runtime::Cluster::new("", client)));
    /// # async fn reconcile(_: ReconcileRequest<ConfigMap>, _: Arc<()>) -> Result<Action, kube::Error> { Ok(Action::await_change()) }
    /// let (reload, reloads) = futures::channel::mpsc::unbounded::<()>();
    /// Controller::builder::<ConfigMap>(&manager)
    ///     .reconcile_all_on(reloads)
    ///     .register(reconcile, |_, _, _| Action::backoff(), Arc::new(()))
    ///     .await?;
    /// // The configuration changed: look at every ConfigMap of the fleet again.
    /// reload.unbounded_send(()).unwrap();
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn reconcile_all_on(mut self, trigger: impl Stream<Item = ()> + Send + 'static) -> Self {
        self.triggers.push(Trigger::All(trigger.boxed()));
        self
    }

    /// Whether to work on the manager's local cluster (default: only when the manager
    /// has no provider).
    #[must_use]
    pub fn engage_local(mut self, engage: bool) -> Self {
        self.engage.local = Some(engage);
        self
    }

    /// Whether to work on the provider's clusters (default: yes).
    #[must_use]
    pub fn engage_providers(mut self, engage: bool) -> Self {
        self.engage.providers = engage;
        self
    }

    /// Works only on clusters whose name `filter` accepts.
    #[must_use]
    pub fn cluster_filter(mut self, filter: impl Fn(&ClusterName) -> bool + Send + Sync + 'static) -> Self {
        self.engage.filter = Some(Arc::new(filter));
        self
    }

    /// At most `limit` reconciles at once, across all clusters (default: the queue's
    /// default, see [`QueueConfig`]).
    #[must_use]
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.queue = self.queue.concurrency(limit);
        self
    }

    /// At most `limit` reconciles at once in any one cluster while other clusters
    /// have work (default: half of [`concurrency`](Self::concurrency), at least 1),
    /// so that a cluster whose reconciles hang cannot take every slot; see
    /// [`QueueConfig::cluster_concurrency`].
    #[must_use]
    pub fn cluster_concurrency(mut self, limit: usize) -> Self {
        self.queue = self.queue.cluster_concurrency(limit);
        self
    }

    /// Whether a cluster at its [cap](Self::cluster_concurrency) may borrow idle
    /// slots, all but one, while no other cluster has work (default: yes); see
    /// [`QueueConfig::borrow_idle_slots`].
    #[must_use]
    pub fn borrow_idle_slots(mut self, borrow: bool) -> Self {
        self.queue = self.queue.borrow_idle_slots(borrow);
        self
    }

    /// The exponential backoff of failing keys: `base`, doubling per failure, at
    /// most `max` (default 5 ms to 1000 s).
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.queue = self.queue.backoff(base, max);
        self
    }

    /// How long an informer may take to sync before the controller logs an error
    /// about it; it keeps waiting, and other clusters are not affected. No object
    /// of a cluster is reconciled before every informer the controller follows for
    /// it has synced: the primary type's, those of [`owns`](Self::owns) and
    /// [`watches`](Self::watches) in the cluster, and those of
    /// [`watches_local`](Self::watches_local) in the local cluster. Default 30 s.
    #[must_use]
    pub fn sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_wait = timeout;
        self
    }

    /// Registers the controller with the manager and returns at once; the manager
    /// runs it: nothing is reconciled before [`Manager::start`].
    ///
    /// This is not kube-runtime's `Controller::run`, which *is* the loop: here the
    /// loop is the manager's, so several controllers share one start and one
    /// shutdown. The controller is engaged with every cluster the manager has
    /// engaged and will engage, and reconciles while the manager runs. The returned
    /// handle is for inspection ([`Controller::cluster_names`], [`Controller::queue`]),
    /// not something to await.
    ///
    /// `reconcile` gets each request with the cached object (`None` once deleted);
    /// an error goes to `error_policy`, whose [`Action`] decides the retry (usually
    /// [`Action::backoff`]), and is logged with its chain of causes. A reconciler that
    /// panics is retried with backoff.
    ///
    /// # Errors
    /// An engagement with an already engaged cluster failed.
    ///
    /// # Panics
    /// If the manager runs already and this is polled outside a Tokio runtime (the
    /// controller is spawned at once). A reconciler, mapper or predicate that panics
    /// is caught and logged instead.
    ///
    /// # Cancel safety
    /// Not cancel safe: the controller is added to the manager's runnables before
    /// the engagements are awaited, so dropping the future may leave it registered
    /// and engaged with only some clusters (later clusters still reach it).
    pub async fn register<R, F, E, P, C>(
        self,
        reconcile: R,
        error_policy: P,
        context: Arc<C>,
    ) -> Result<Arc<Controller>>
    where
        R: Fn(ReconcileRequest<K>, Arc<C>) -> F + Send + Sync + 'static,
        F: Future<Output = std::result::Result<Action, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
        P: Fn(&Request, &E, Arc<C>) -> Action + Send + Sync + Clone + 'static,
        C: Send + Sync + 'static,
    {
        let primary = TypedSource {
            dyntype: self.dyntype.clone(),
            spec: self.spec.clone(),
            predicates: self.predicates,
            mapper: map_self::<K>(),
            sync_timeout: self.sync_wait,
        };
        let settings = Final {
            namespaced: self
                .namespaced
                .unwrap_or_else(|| static_scope::<K>().unwrap_or(true)),
            sync_timeout: self.sync_wait,
        };
        let mut sources: Vec<Arc<dyn Source>> = vec![Arc::new(primary)];
        sources.extend(self.sources.into_iter().map(|make| make(&settings)));
        let local_sources = self
            .local_sources
            .into_iter()
            .map(|make| make(&settings))
            .collect();
        let reconciler = TypedReconciler {
            dyntype: self.dyntype,
            spec: self.spec,
            reconcile,
            error_policy,
            context,
            reporter: self
                .reporter
                .unwrap_or_else(|| Reporter::from(self.name.as_str())),
        };
        let settings = Settings {
            name: self.name,
            engage: self.engage,
            queue: self.queue,
            sources,
            local_sources,
            reconciler: Arc::new(reconciler),
            triggers: self.triggers,
        };
        let controller = Controller::new(host(&self.manager), settings);
        self.manager.add_cluster_runnable(controller.clone()).await?;
        Ok(controller)
    }
}

/// A secondary watch of `T` through `mapper`.
fn source<T: CacheObject>(
    dyntype: T::DynamicType,
    spec: WatchSpec,
    mapper: Mapper<T>,
    settings: &Final,
) -> Arc<dyn Source> {
    Arc::new(TypedSource {
        dyntype,
        spec,
        predicates: Vec::new(),
        mapper,
        sync_timeout: settings.sync_timeout,
    })
}

/// Whether `K` is namespaced, as far as its type says: `None` for dynamic types.
fn static_scope<K: CacheObject>() -> Option<bool> {
    use std::any::TypeId;
    let scope = TypeId::of::<K::Scope>();
    if scope == TypeId::of::<kube::core::NamespaceResourceScope>() {
        Some(true)
    } else if scope == TypeId::of::<kube::core::ClusterResourceScope>() {
        Some(false)
    } else {
        None
    }
}

/// The registration glue: what a controller needs of the manager, taken here once,
/// so that the controller itself knows nothing of the manager.
fn host(manager: &Manager) -> Host {
    Host {
        has_provider: manager.provider().is_some(),
        local: manager.local_cluster().clone(),
        families: manager.metrics().shared(ControllerFamilies::register),
        run_control: Arc::new(manager.clone()),
    }
}

impl RunControl for Manager {
    fn graceful_shutdown_timeout(&self) -> Duration {
        Manager::graceful_shutdown_timeout(self)
    }

    fn leadership_lost(&self) -> futures::future::BoxFuture<'static, ()> {
        let manager = self.clone();
        Box::pin(async move { manager.leadership_lost().await })
    }

    fn campaigns_again(&self) -> bool {
        Manager::campaigns_again(self)
    }
}
