//! The reconciler's view of a request, and its type-erased form.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::Api;
use kube::core::{NamespaceResourceScope, Resource};
use kube::runtime::events::{Recorder, Reporter};

use super::request::{Action, Request};
use crate::cache::{CacheObject, Informer, ObjectKey, WatchSpec};
use crate::cluster::{Cluster, ClusterName};

/// One request as the reconciler sees it: which object, in which cluster, and the
/// object itself from the cluster's cache.
///
/// # Reading caches
///
/// A request reaches the reconciler only once these informers have synced (the
/// controller holds the cluster's requests until then), so reads of them are
/// complete, through [`Cache::get`](crate::cache::Cache::get) and its siblings or
/// straight from an informer's [`Store`](crate::cache::Store):
///
/// - the primary type's in the request's cluster, which [`object`](Self::object)
///   comes from;
/// - those of the controller's [`owns`](super::ControllerBuilder::owns) and
///   [`watches`](super::ControllerBuilder::watches) in the request's cluster (the
///   same type and [`WatchSpec`]);
/// - those of its [`watches_local`](super::ControllerBuilder::watches_local) in the
///   manager's local cluster.
///
/// Any other informer may not have listed yet: another type or selection, a
/// watched type in *another* cluster than the request's, the cache of a cluster
/// the controller does not work on. Read those through
/// [`Cache::get`](crate::cache::Cache::get),
/// [`list`](crate::cache::Cache::list) or
/// [`list_by_index`](crate::cache::Cache::list_by_index), which wait for the
/// informer to sync (up to the cache's
/// [`sync_timeout`](crate::cache::CacheOptions::sync_timeout), then
/// [`CacheError::SyncTimeout`](crate::cache::CacheError::SyncTimeout)); a `Store`
/// answers at once, and before the first list it holds nothing.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconcileRequest<K> {
    /// The cluster and object key.
    pub request: Request,
    /// The object as cached, or `None` if it does not exist (any more).
    pub object: Option<Arc<K>>,
    /// The cluster the object lives in: its client and cache. Its
    /// [`name`](Cluster::name) is [`cluster_name`](Self::cluster_name).
    pub cluster: Arc<Cluster>,
    /// Who the controller is in the Events it records: its name and this
    /// replica's instance (see [`ControllerBuilder::reporter`](super::ControllerBuilder::reporter)).
    pub reporter: Reporter,
}

impl<K> ReconcileRequest<K> {
    /// A request as a controller hands it to its reconciler, for calling a
    /// reconciler directly (in a test, say). The type is `#[non_exhaustive]`, so
    /// that it can carry more without breaking reconcilers; this is how to build one.
    pub fn new(request: Request, object: Option<Arc<K>>, cluster: Arc<Cluster>, reporter: Reporter) -> Self {
        ReconcileRequest {
            request,
            object,
            cluster,
            reporter,
        }
    }

    /// A client for the request's cluster.
    pub fn client(&self) -> kube::Client {
        self.cluster.client()
    }

    /// The name under which the request's cluster is engaged, the authoritative
    /// one (under a [`Multi`](crate::providers::multi) provider, with the member's
    /// prefix); the same as `req.cluster.name()`.
    pub fn cluster_name(&self) -> &ClusterName {
        &self.request.cluster
    }

    /// The Event recorder of the request's cluster, with the controller as
    /// [reporter](Self::reporter): Events land in the cluster the object lives in,
    /// next to the object. The recorder is the cluster's, shared by every
    /// reconcile of the controller there ([`Cluster::recorder`]), so an Event
    /// published again counts up on the existing one.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use k8s_openapi::api::core::v1::ConfigMap;
    /// # use multicluster_runtime::controller::{Action, ReconcileRequest};
    /// use kube::Resource;
    /// use kube::runtime::events::{Event, EventType};
    ///
    /// async fn reconcile(req: ReconcileRequest<ConfigMap>, _: Arc<()>) -> Result<Action, kube::Error> {
    ///     let Some(config_map) = &req.object else { return Ok(Action::await_change()) };
    ///     let event = Event {
    ///         type_: EventType::Normal,
    ///         reason: "Checked".into(),
    ///         note: Some(format!("seen in cluster {}", req.cluster_name())),
    ///         action: "Check".into(),
    ///         secondary: None,
    ///     };
    ///     req.recorder().publish(&event, &config_map.object_ref(&())).await?;
    ///     Ok(Action::await_change())
    /// }
    /// ```
    pub fn recorder(&self) -> Recorder {
        self.cluster.recorder(&self.reporter)
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.request.name()
    }

    /// The object's namespace; `None` for a cluster-scoped object.
    pub fn namespace(&self) -> Option<&str> {
        self.request.namespace()
    }

    /// An [`Api`] for `T` in every namespace of the request's cluster (kube's
    /// `Api::all`), e.g. for cluster-scoped types.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::sync::Arc;
    /// # use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    /// # use multicluster_runtime::Cluster;
    /// # use multicluster_runtime::controller::{ReconcileRequest, Request};
    /// # let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:6443".parse().unwrap())).unwrap();
    /// # let req = ReconcileRequest::<ConfigMap>::new(
    /// #     Request::new("eu-1", Some("team-a"), "settings"),
    /// #     None,
    /// #     Arc::new(Cluster::new("eu-1", client)),
    /// #     "settings-sync".into(),
    /// # );
    /// let namespaces = req.api::<Namespace>();
    /// assert_eq!(namespaces.resource_url(), "/api/v1/namespaces");
    /// # }
    /// ```
    pub fn api<T>(&self) -> Api<T>
    where
        T: Resource,
        T::DynamicType: Default,
    {
        Api::all(self.cluster.client())
    }

    /// An [`Api`] for the namespaced type `T` in the request's namespace and cluster;
    /// for a request without a namespace (a cluster-scoped primary object), in every
    /// namespace.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::sync::Arc;
    /// # use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    /// # use multicluster_runtime::Cluster;
    /// # use multicluster_runtime::controller::{ReconcileRequest, Request};
    /// # let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:6443".parse().unwrap())).unwrap();
    /// # let req = ReconcileRequest::<ConfigMap>::new(
    /// #     Request::new("eu-1", Some("team-a"), "settings"),
    /// #     None,
    /// #     Arc::new(Cluster::new("eu-1", client)),
    /// #     "settings-sync".into(),
    /// # );
    /// // In a reconciler of ConfigMaps: the Secrets next to the ConfigMap.
    /// let secrets = req.namespaced_api::<Secret>();
    /// assert_eq!(secrets.namespace(), Some("team-a"));
    /// assert_eq!((req.cluster_name().as_str(), req.namespace(), req.name()), ("eu-1", Some("team-a"), "settings"));
    /// # }
    /// ```
    pub fn namespaced_api<T>(&self) -> Api<T>
    where
        T: Resource<Scope = NamespaceResourceScope>,
        T::DynamicType: Default,
    {
        match self.namespace() {
            Some(namespace) => Api::namespaced(self.cluster.client(), namespace),
            None => Api::all(self.cluster.client()),
        }
    }
}

/// How a reconcile ended, after the error policy had its say.
pub(crate) enum Outcome {
    Done(Action),
    Failed { action: Action, error: String },
}

/// Where a reconciler reads one cluster's primary objects (its informer), with the
/// type erased; the controller keeps one per engaged cluster, so that a reconcile
/// does not look the informer up in the cluster's cache each time.
pub(crate) type Reader = Arc<dyn Any + Send + Sync>;

/// A reconciler with its object type and context erased, so the runner is not generic.
pub(crate) trait Reconciler: Send + Sync {
    /// The reader of `cluster`'s primary objects, for [`reconcile`](Self::reconcile).
    fn reader(&self, cluster: &Cluster) -> Reader;

    fn reconcile(
        &self,
        request: Request,
        cluster: Arc<Cluster>,
        reader: &Reader,
    ) -> BoxFuture<'static, Outcome>;

    /// The keys of every primary object in `cluster`'s cache.
    fn cached_keys(&self, cluster: &Cluster) -> Vec<ObjectKey>;
}

pub(crate) struct TypedReconciler<K: CacheObject, R, P, C> {
    pub dyntype: K::DynamicType,
    pub spec: WatchSpec,
    pub reconcile: R,
    pub error_policy: P,
    pub context: Arc<C>,
    pub reporter: Reporter,
}

impl<K, R, P, C, F, E> Reconciler for TypedReconciler<K, R, P, C>
where
    K: CacheObject,
    R: Fn(ReconcileRequest<K>, Arc<C>) -> F + Send + Sync,
    F: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
    P: Fn(&Request, &E, Arc<C>) -> Action + Send + Sync + Clone + 'static,
    C: Send + Sync + 'static,
{
    fn cached_keys(&self, cluster: &Cluster) -> Vec<ObjectKey> {
        let informer = cluster
            .cache()
            .informer_with::<K>(&self.dyntype, self.spec.clone());
        let mut keys = Vec::with_capacity(informer.store().len());
        informer
            .store()
            .for_each(|object| keys.extend(ObjectKey::of(&*object)));
        keys
    }

    fn reader(&self, cluster: &Cluster) -> Reader {
        cluster
            .cache()
            .informer_with::<K>(&self.dyntype, self.spec.clone())
    }

    fn reconcile(
        &self,
        request: Request,
        cluster: Arc<Cluster>,
        reader: &Reader,
    ) -> BoxFuture<'static, Outcome> {
        let object = match reader.downcast_ref::<Informer<K>>() {
            Some(informer) => informer.store().get(request.namespace(), request.name()),
            // Not reached: the reader was made by `reader` above.
            None => cluster
                .cache()
                .informer_with::<K>(&self.dyntype, self.spec.clone())
                .store()
                .get(request.namespace(), request.name()),
        };
        let target = ReconcileRequest {
            request: request.clone(),
            object,
            cluster,
            reporter: self.reporter.clone(),
        };
        let attempt = (self.reconcile)(target, self.context.clone());
        let (policy, context) = (self.error_policy.clone(), self.context.clone());
        Box::pin(async move {
            match attempt.await {
                Ok(action) => Outcome::Done(action),
                Err(error) => Outcome::Failed {
                    action: policy(&request, &error, context),
                    error: crate::redact::describe(&error),
                },
            }
        })
    }
}
