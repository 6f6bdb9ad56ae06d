//! The per-cluster shared informer cache.
//!
//! A [`Cache`] belongs to one cluster. Controllers ask it for an [`Informer`] of a
//! type; the first request starts a watch, later requests for the same type and
//! [`WatchSpec`] get the same informer. However many controllers read ConfigMaps of a
//! cluster, the cluster serves one ConfigMap watch.
//!
//! Each informer keeps the objects in a [`Store`] (with a namespace index and named
//! [field indexes](Cache::index_field)) and broadcasts [`InformerEvent`]s. Watches
//! retry with backoff for as long as the cache runs, so a broken cluster only affects
//! its own informers; cancelling the cache's token (the cluster left the fleet) stops
//! them all. An informer's first list is streamed as watch events where the
//! apiserver can stream it, and listed in pages where it cannot
//! ([`CacheOptions::streaming_lists`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use multicluster_runtime::ClusterName;
//! use multicluster_runtime::cache::{Cache, CacheOptions, InformerEvent};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let token = CancellationToken::new();
//! let cache = Cache::new(ClusterName::from("eu-1"), client, CacheOptions::default(), token.clone());
//!
//! // Indexes can be registered before or after the informer starts.
//! cache.index_field::<ConfigMap>("app", |cm| {
//!     cm.metadata.labels.iter().flatten().filter(|(k, _)| *k == "app").map(|(_, v)| v.clone()).collect()
//! })?;
//!
//! let informer = cache.informer::<ConfigMap>();
//! let mut events = informer.subscribe();
//! informer.wait_synced(Duration::from_secs(30)).await?;
//! let web = informer.store().by_index("app", "web")?;
//! println!("{} ConfigMaps of app=web", web.len());
//!
//! while let Ok(event) = events.recv().await {
//!     if let InformerEvent::Applied { old, new } = event {
//!         println!("{:?} changed (was known: {})", new.metadata.name, old.is_some());
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Watching some namespaces only (least privilege)
//!
//! A controller whose credentials may read a type only in some namespaces (a Role
//! per namespace, no ClusterRole) cannot watch it cluster-wide: the apiserver
//! answers 403. Name the namespaces, for the whole cache with
//! [`CacheOptions::default_namespaces`] (controller-runtime's `DefaultNamespaces`),
//! or for one watch with [`WatchSpec::namespace`] (its `ByObject.Namespaces`). The
//! informer then runs one watch per namespace and merges them into one store, so
//! reads and [indexes](Cache::index_field) see all the namespaces' objects as one.
//! Cluster-scoped types are not affected. A [`get`](Cache::get) or
//! [`list`](Cache::list) in a namespace the informer does not watch is
//! [`CacheError::NamespaceNotWatched`], not an empty answer.
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use multicluster_runtime::ClusterName;
//! use multicluster_runtime::cache::{Cache, CacheError, CacheOptions};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let options = CacheOptions::default().default_namespaces(["team-a", "team-b"]);
//! let cache = Cache::new(ClusterName::from("eu-1"), client, options, CancellationToken::new());
//! let both = cache.list::<ConfigMap>(None).await?; // team-a's and team-b's
//! assert_eq!(cache.watch_count(), 2);
//! let elsewhere = cache.get::<ConfigMap>(Some("kube-system"), "x").await;
//! assert!(matches!(elsewhere, Err(CacheError::NamespaceNotWatched { .. })));
//! # Ok(())
//! # }
//! ```
//!
//! # Namespace-scoped views
//!
//! [`Cache::scoped`] gives a view of a cache that presents one namespace as a cluster
//! of its own (what the namespace provider hands out). A view shares everything with
//! its host cache: the informers and their watches, the stores, indexes and
//! transforms. Its informers are handles on the host's whose [`Store`] reads and
//! [`subscribe`](Informer::subscribe) events cover only the view's namespace, plus
//! cluster-scoped objects, which every view sees. However many views read
//! ConfigMaps, the host serves one ConfigMap watch.
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use multicluster_runtime::cache::Cache;
//!
//! # async fn example(host: Cache) -> Result<(), Box<dyn std::error::Error>> {
//! let team_a = host.scoped("team-a", "team-a");
//! let mine = team_a.list::<ConfigMap>(None).await?; // only team-a's ConfigMaps
//! assert!(mine.iter().all(|cm| cm.metadata.namespace.as_deref() == Some("team-a")));
//! assert_eq!(team_a.watch_count(), host.watch_count()); // the host's watch
//! # Ok(())
//! # }
//! ```

mod compact;
mod error;
mod event;
pub(crate) mod follow;
mod index;
mod informer;
mod key;
mod list_watch;
mod namespaces;
mod options;
mod retry;
mod store;
#[cfg(test)]
mod testing;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::any::TypeId;

use futures::StreamExt;
use kube::api::Api;
use kube::core::{ClusterResourceScope, PartialObjectMeta};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::compact::CompactTypes;
pub use self::error::CacheError;
pub use self::event::InformerEvent;
pub use self::index::FieldIndex;
use self::informer::AnyInformer;
pub use self::informer::{Informer, InformerStatus};
pub use self::key::ObjectKey;
pub use self::options::{CacheOptions, WatchNamespaces, WatchSpec};
pub use self::store::Store;

use self::index::Extractor;
use self::informer::{Prepare, Transform};
use self::key::{InformerKey, TypeKey};
use self::store::Scope;
use crate::ClusterName;

/// A Kubernetes object type the cache can hold: any kube [`Resource`] that can be
/// deserialized, cloned and shared between tasks. Implemented for every such type,
/// including `DynamicObject` and [`PartialObjectMeta<K>`].
pub trait CacheObject:
    Resource<DynamicType: Clone + Send + Sync + 'static, Scope: 'static>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> CacheObject for K where
    K: Resource<DynamicType: Clone + Send + Sync + 'static, Scope: 'static>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// The shared informer cache of one cluster.
///
/// Cloning is cheap; clones are the same cache. See the [module docs](self).
///
/// Informers are started on the Tokio runtime current when they are first requested;
/// one requested outside a runtime, or after the token was cancelled, never starts and
/// reports [`CacheError::Stopped`].
///
/// A cache may be a [namespace-scoped view](Self::scoped) of another (its *host*):
/// then it shares the host's informers and sees one namespace of them.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
    /// Present for a namespace-scoped view of the cache `inner`.
    view: Option<Arc<View>>,
}

/// What a namespace-scoped view adds to its host: the scope, and its handles on the
/// host's informers, so that asking twice gives the same handle.
///
/// A view reads a type or two, and there may be thousands of views: its handles are
/// a list, searched in order, which holds exactly what it was given where a map
/// would start with room for several keys.
struct View {
    scope: Scope,
    informers: Mutex<Vec<(InformerKey, Erased)>>,
}

/// The handle filed under `key` in a view's list, if it is an `Informer<K>`.
fn view_handle<K: Send + Sync + 'static>(
    informers: &[(InformerKey, Erased)],
    key: &InformerKey,
) -> Option<Arc<Informer<K>>> {
    let (_, existing) = informers.iter().find(|(known, _)| known == key)?;
    existing.clone().downcast::<Informer<K>>().ok()
}

struct Inner {
    cluster: ClusterName,
    client: Client,
    options: CacheOptions,
    token: CancellationToken,
    /// The informers' tasks, so that [`Cache::stopped`] can wait for them.
    tasks: TaskTracker,
    registry: Mutex<Registry>,
    watches: AtomicUsize,
    /// Bumped by [`Cache::reconnect`]; every informer follows it.
    reconnects: watch::Sender<u64>,
}

/// What the cache knows by type. Values are type-erased because one cache holds
/// informers of many types; the [`TypeKey`] in each key says what to downcast to.
#[derive(Default)]
struct Registry {
    /// `Informer<K>`s.
    informers: HashMap<InformerKey, Erased>,
    /// `Extractor<K>`s with their index names, applied to every informer of the type.
    indexes: HashMap<TypeKey, Vec<(String, Erased)>>,
    /// `Transform<K>`s, applied by informers created after they were set.
    transforms: HashMap<TypeKey, Erased>,
    /// The same informers as `informers`, for reports that need no type.
    statuses: Vec<Arc<dyn AnyInformer>>,
    /// What stops each informer's task, and how many watches it runs.
    running: Vec<(CancellationToken, usize)>,
}

type Erased = Arc<dyn Any + Send + Sync>;

/// The event stream of one run of an informer's watch (or watches).
type Events<K> = futures::stream::BoxStream<'static, watcher::Result<watcher::Event<K>>>;

impl Cache {
    /// A cache of `cluster`, reading through `client`. Its watches run until `token` is
    /// cancelled; cancel it when the cluster leaves the fleet.
    pub fn new(
        cluster: ClusterName,
        client: Client,
        options: CacheOptions,
        token: CancellationToken,
    ) -> Self {
        Cache {
            inner: Arc::new(Inner {
                cluster,
                client,
                options,
                token,
                tasks: TaskTracker::new(),
                registry: Mutex::new(Registry::default()),
                watches: AtomicUsize::new(0),
                reconnects: watch::Sender::new(0),
            }),
            view: None,
        }
    }

    /// A view of this cache that presents `namespace` as the cluster `cluster`.
    ///
    /// The view shares the informers of this cache (its *host*): asking the view for
    /// an informer starts the host's if needed, so a type costs one watch on the host
    /// however many views read it, and the view's informers sync, fail and stop with
    /// the host's. What differs is what a view reads:
    ///
    /// - its informers' [`Store`]s return only objects of `namespace`: a `get` in
    ///   another namespace is `None`, [`list`](Store::list) and
    ///   [`by_index`](Store::by_index) read only that namespace's objects (the store
    ///   files objects by namespace, so no other namespace is scanned);
    /// - their [`subscribe`](Informer::subscribe) delivers only that namespace's
    ///   events;
    /// - cluster-scoped objects (Namespaces, Nodes, CRDs, …) are **not** filtered:
    ///   they belong to no namespace, every view sees all of them, as the view's
    ///   client would read them too.
    ///
    /// Everything registered through a view is registered on the host, for every
    /// view: [`index_field`](Self::index_field) (a second registration of a name
    /// is [`CacheError::IndexExists`], whichever view made the first) and
    /// [`set_transform`](Self::set_transform). [`watch_count`](Self::watch_count),
    /// [`options`](Self::options), [`client`](Self::client) and
    /// [`is_stopped`](Self::is_stopped) are the host's. A view has no watches of its
    /// own, so it has nothing to stop: dropping it frees its handles only. Scoping a
    /// view again gives a view of the same host (the new scope replaces the old one).
    ///
    /// A view of the empty namespace `""` sees cluster-scoped objects only.
    ///
    /// Objects keep their real namespace: a view of `team-a` shows ConfigMaps in
    /// namespace `team-a`, not in `default` as Go's namespace provider rewrites them;
    /// nothing is copied.
    ///
    /// A view costs a small allocation, plus one handle per type it is asked for and,
    /// per type someone subscribes to through it, a channel of
    /// [`CacheOptions::namespace_event_capacity`] events.
    pub fn scoped(&self, cluster: impl Into<ClusterName>, namespace: &str) -> Cache {
        Cache {
            inner: self.inner.clone(),
            view: Some(Arc::new(View {
                scope: Scope {
                    cluster: cluster.into(),
                    namespace: Arc::from(namespace),
                },
                informers: Mutex::new(Vec::new()),
            })),
        }
    }

    /// The namespace this cache is a view of, `None` for a cluster's own cache.
    pub fn namespace_scope(&self) -> Option<&str> {
        self.view.as_ref().map(|view| &*view.scope.namespace)
    }

    /// The cluster cached: for a [namespace-scoped view](Self::scoped), the cluster
    /// the view stands for.
    pub fn cluster(&self) -> &ClusterName {
        match &self.view {
            Some(view) => &view.scope.cluster,
            None => &self.inner.cluster,
        }
    }

    /// The client the cache watches through.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The settings.
    pub fn options(&self) -> &CacheOptions {
        &self.inner.options
    }

    /// Whether the cache's token was cancelled.
    pub fn is_stopped(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Completes once the cache's token is cancelled and every informer task it
    /// started has ended: nothing of the cache runs any more, and its watches hold
    /// no connection. A [namespace-scoped view](Self::scoped) waits for its host.
    ///
    /// It does not stop the cache: whoever owns it cancels the token (a cluster's
    /// owner calls [`Cluster::stop`](crate::Cluster::stop)), then may wait here.
    /// An informer task ends at its next poll once cancelled, so the wait is short
    /// unless a thread of the runtime is blocked; bound it with a timeout where a
    /// hang would matter.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn stopped(&self) {
        self.inner.token.cancelled().await;
        // An informer starts under the registry's lock, and only while the token is
        // live: once the lock has been taken here, no task can be added any more.
        drop(self.inner.registry());
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Asks every watch of the cache that failed for want of an answer from the
    /// apiserver to stop waiting out its backoff and connect again now.
    ///
    /// A watch that fails retries with exponential backoff, up to 30 s between
    /// attempts, so after an outage it may take that long to notice the cluster is
    /// back. Call this when you know it is (the manager does after every successful
    /// [health probe](crate::manager#cluster-health)): each watch whose last
    /// attempt got no answer (connection refused or reset, a timeout) is dropped and
    /// started anew at once, with a full list (which brings the store up to date,
    /// deletions included); its backoff starts over. Watches that work, and watches
    /// the apiserver refused with a status (403, 404), are left alone; when there
    /// are none to wake, this wakes no informer. For a
    /// [namespace-scoped view](Self::scoped), the host's watches are asked.
    /// [`Informer::reconnects`] counts the watches this restarted.
    pub fn reconnect(&self) {
        // Cheap when nothing fails, as the manager asks after every successful
        // health probe: no informer is woken.
        let unreachable = self.inner.registry().statuses.iter().any(|i| i.unreachable());
        if unreachable {
            self.inner
                .reconnects
                .send_modify(|asked| *asked = asked.wrapping_add(1));
        }
    }

    /// Stops every informer the cache has started and forgets them: their watches
    /// end, their stores are dropped with the last handle, and the next request for
    /// a type starts a new informer, with a new list. Field indexes and transforms
    /// stay registered. For a [namespace-scoped view](Self::scoped), nothing: the
    /// watches are the host's, shared with other views.
    ///
    /// The manager calls it when a [sharded](crate::manager::Sharding) replica hands
    /// a cluster over: a cluster it does not own costs it no watch and no memory.
    pub fn stop_informers(&self) {
        if self.view.is_some() {
            return;
        }
        let mut registry = self.inner.registry();
        registry.informers.clear();
        registry.statuses.clear();
        for (token, watches) in registry.running.drain(..) {
            token.cancel();
            self.inner.watches.fetch_sub(watches, Ordering::Relaxed);
        }
    }

    /// How many watches the cache runs: one per informer, or one per namespace
    /// for an informer [limited to namespaces](WatchNamespaces::Only). A
    /// [namespace-scoped view](Self::scoped) reports its host's.
    pub fn watch_count(&self) -> usize {
        self.inner.watches.load(Ordering::Relaxed)
    }

    /// The status of every informer the cache started, in the order they were
    /// started. A [namespace-scoped view](Self::scoped) reports its host's.
    pub fn informer_statuses(&self) -> Vec<InformerStatus> {
        self.inner
            .registry()
            .statuses
            .iter()
            .map(|i| i.status())
            .collect()
    }

    /// The informer of all objects of `K`, in the cache's
    /// [default namespaces](CacheOptions::default_namespaces) (all namespaces unless
    /// set); started on first use.
    pub fn informer<K>(&self) -> Arc<Informer<K>>
    where
        K: CacheObject,
        K::DynamicType: Default,
    {
        self.informer_with(&K::DynamicType::default(), WatchSpec::default())
    }

    /// The informer of the objects of `K` (of resource type `dyntype`) selected by
    /// `spec`; started on first use. Requests with the same type and spec share it,
    /// after the spec's namespaces are resolved against the cache's
    /// [default](CacheOptions::default_namespaces): see [`WatchNamespaces`].
    ///
    /// For a namespaced type watched in [some namespaces](WatchNamespaces::Only), the
    /// informer runs one watch per namespace and merges them into its one store;
    /// it is synced once every namespace was listed. A cluster-scoped type is always
    /// watched cluster-wide, whatever the spec says.
    ///
    /// # Caveats
    /// Whether a type is cluster-scoped is known from its Rust type. A
    /// `DynamicObject` of a cluster-scoped kind must be asked for with
    /// [`WatchSpec::all_namespaces`] in a cache with default namespaces, or its
    /// watches fail with 404.
    ///
    /// ```no_run
    /// # fn example(cache: multicluster_runtime::cache::Cache) {
    /// use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    /// use multicluster_runtime::cache::WatchSpec;
    ///
    /// let gvk = GroupVersionKind::gvk("apps", "v1", "Deployment");
    /// let deployments = ApiResource::from_gvk(&gvk);
    /// let informer = cache.informer_with::<DynamicObject>(&deployments, WatchSpec::default().labels("tier=web"));
    /// # }
    /// ```
    pub fn informer_with<K: CacheObject>(
        &self,
        dyntype: &K::DynamicType,
        spec: WatchSpec,
    ) -> Arc<Informer<K>> {
        let namespaced = TypeId::of::<K::Scope>() != TypeId::of::<ClusterResourceScope>();
        let key = InformerKey {
            ty: TypeKey::of::<K>(dyntype),
            spec: spec.resolved(&self.inner.options.default_namespaces, namespaced),
        };
        let Some(view) = &self.view else {
            return self.host_informer::<K>(dyntype, key);
        };
        if let Some(informer) = view_handle::<K>(&lock(&view.informers), &key) {
            return informer;
        }
        let host = self.host_informer::<K>(dyntype, key.clone());
        let mut informers = lock(&view.informers);
        // Another thread may have made the handle meanwhile: keep the first.
        if let Some(informer) = view_handle::<K>(&informers, &key) {
            return informer;
        }
        let informer = Arc::new(host.scoped(view.scope.clone()));
        match informers.iter_mut().find(|(known, _)| *known == key) {
            Some((_, slot)) => *slot = informer.clone(),
            None => {
                // Room for this handle only: a first push would make room for four.
                informers.reserve_exact(1);
                informers.push((key, informer.clone()));
            }
        }
        informer
    }

    /// The host's informer for `key`, started if new.
    fn host_informer<K: CacheObject>(&self, dyntype: &K::DynamicType, key: InformerKey) -> Arc<Informer<K>> {
        let mut registry = self.inner.registry();
        if let Some(existing) = registry.informers.get(&key)
            && let Ok(informer) = existing.clone().downcast::<Informer<K>>()
        {
            return informer;
        }
        // Under the registry lock, so that an index registered concurrently is either
        // seen here or applied by `register_index` to this informer, never lost.
        let informer = self.start_informer::<K>(dyntype, &key, &mut registry);
        registry.informers.insert(key, informer.clone());
        registry.statuses.push(informer.clone());
        informer
    }

    /// The metadata-only informer of `K` (all namespaces, no selector): it stores
    /// only `metadata` of each object, which is all that some controllers need and
    /// much less memory. It is separate from [`informer::<K>`](Self::informer).
    pub fn metadata_informer<K>(&self) -> Arc<Informer<PartialObjectMeta<K>>>
    where
        K: CacheObject,
        K::DynamicType: Default,
    {
        self.metadata_informer_with::<K>(&K::DynamicType::default(), WatchSpec::default())
    }

    /// Like [`metadata_informer`](Self::metadata_informer), for a dynamic type and a
    /// selection.
    ///
    /// Indexes and transforms of metadata-only informers are registered for
    /// `PartialObjectMeta<K>`, e.g. `cache.index_field::<PartialObjectMeta<Pod>>(..)`.
    pub fn metadata_informer_with<K: CacheObject>(
        &self,
        dyntype: &K::DynamicType,
        spec: WatchSpec,
    ) -> Arc<Informer<PartialObjectMeta<K>>> {
        // `Api<PartialObjectMeta<K>>` makes metadata-only requests, so the generic
        // informer does the rest.
        self.informer_with::<PartialObjectMeta<K>>(dyntype, spec)
    }

    /// Sets a function applied to every object of `K` before it is stored, after
    /// `managedFields` were dropped (if [`CacheOptions::strip_managed_fields`]). Use it
    /// to drop fields you never read.
    ///
    /// It applies to informers of `K` created **after** the call; existing ones keep
    /// what they had, since objects already stored could not be transformed
    /// consistently. Set transforms before starting controllers. A second call
    /// replaces the function.
    ///
    /// # Panics
    ///
    /// A panic of `transform` does not unwind into the cache. The informer logs it as
    /// an ERROR (cluster, resource, callback kind `transform`, the object's
    /// namespace and name), stores nothing of that object, and restarts its watch
    /// with backoff (500 ms doubling up to 30 s), so that the store stays
    /// stale-but-consistent rather than lacking an object it should have; see
    /// [`Informer::restarts`]. An object the transform always panics on stops the
    /// informer from following the cluster until it changes: the transform should
    /// not panic.
    pub fn set_transform<K>(&self, transform: impl Fn(&mut K) + Send + Sync + 'static)
    where
        K: CacheObject,
        K::DynamicType: Default,
    {
        self.set_transform_with::<K>(&K::DynamicType::default(), transform);
    }

    /// Like [`set_transform`](Self::set_transform), for a dynamic type.
    pub fn set_transform_with<K: CacheObject>(
        &self,
        dyntype: &K::DynamicType,
        transform: impl Fn(&mut K) + Send + Sync + 'static,
    ) {
        let transform: Transform<K> = Arc::new(transform);
        let ty = TypeKey::of::<K>(dyntype);
        self.inner.registry().transforms.insert(ty, Arc::new(transform));
    }

    /// Registers an index named `name` over objects of `K`, filing each object under
    /// the values `extractor` returns; read it with [`Store::by_index`] or
    /// [`list_by_index`](Self::list_by_index).
    ///
    /// The index applies to every informer of `K`, whatever its selection: informers
    /// created later get it when they start, existing ones build it at once from the
    /// objects they hold, without holding up the informer or readers meanwhile.
    ///
    /// `extractor` runs in the informer's task while it writes its store: it should
    /// be quick, and must not read the cache (that would wait for itself).
    ///
    /// # Panics
    ///
    /// A panic of `extractor` does not unwind into the cache: that object is filed
    /// under no value of this index (stored all the same, in the other indexes as
    /// usual), and the panic is logged as an ERROR with the cluster, the resource,
    /// the index name, the callback kind `index extractor` and the object's
    /// namespace and name. The informer goes on; registering the index succeeds
    /// even if the extractor panics for some stored objects.
    ///
    /// # Errors
    /// [`CacheError::IndexExists`] if an index of that name exists for `K`, as in
    /// controller-runtime: several providers sharing one cache can tell that one of
    /// them registered the index already.
    pub fn index_field<K>(
        &self,
        name: &str,
        extractor: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) -> Result<(), CacheError>
    where
        K: CacheObject,
        K::DynamicType: Default,
    {
        self.index_field_with::<K>(&K::DynamicType::default(), name, extractor)
    }

    /// Like [`index_field`](Self::index_field), for a dynamic type.
    ///
    /// # Errors
    /// As for [`index_field`](Self::index_field).
    pub fn index_field_with<K: CacheObject>(
        &self,
        dyntype: &K::DynamicType,
        name: &str,
        extractor: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) -> Result<(), CacheError> {
        self.register_index::<K>(dyntype, name, Arc::new(extractor))
    }

    pub(crate) fn register_index<K: CacheObject>(
        &self,
        dyntype: &K::DynamicType,
        name: &str,
        extractor: Extractor<K>,
    ) -> Result<(), CacheError> {
        let ty = TypeKey::of::<K>(dyntype);
        // Recorded and the running informers listed in one step under the registry's
        // lock: an informer started later files its objects in the index itself, one
        // listed here gets the index below. The backfill, which runs the extractor
        // over every stored object, happens after the lock is released, so that
        // other types' informers and readers of this cache do not wait for it.
        let informers: Vec<Arc<Informer<K>>> = {
            let mut registry = self.inner.registry();
            let exists = registry
                .indexes
                .get(&ty)
                .is_some_and(|names| names.iter().any(|(n, _)| n == name));
            if exists {
                return Err(CacheError::IndexExists {
                    cluster: self.cluster().clone(),
                    resource: ty.resource.to_string(),
                    index: name.to_owned(),
                });
            }
            let informers = registry
                .informers
                .iter()
                .filter(|(key, _)| key.ty == ty)
                .filter_map(|(_, informer)| informer.clone().downcast::<Informer<K>>().ok())
                .collect();
            registry
                .indexes
                .entry(ty)
                .or_default()
                .push((name.to_owned(), Arc::new(extractor.clone())));
            informers
        };
        for informer in informers {
            informer.store().add_index(name, extractor.clone())?;
        }
        Ok(())
    }

    /// The object `name` in `namespace` (`None` for cluster-scoped objects), from the
    /// [`informer::<K>`](Self::informer), once it is synced.
    ///
    /// This read, [`list`](Self::list) and [`list_by_index`](Self::list_by_index)
    /// never answer from an informer that has not finished its first list: they wait
    /// for it, so `Ok(None)` means the object is not in the cluster (as of the
    /// informer's last event), not that it was not listed yet. Use them for any
    /// informer nothing else has made sync, such as another cluster's cache read
    /// from a reconcile. A [`Store`] answers at once instead; see its docs.
    ///
    /// # Errors
    /// [`CacheError::NamespaceNotWatched`] if the informer watches some namespaces
    /// and `namespace` is not one of them: the object may exist, the cache cannot
    /// tell. [`CacheError::SyncTimeout`] if the informer does not sync within
    /// [`CacheOptions::sync_timeout`]; [`CacheError::Stopped`] if the cache stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits for the informer to sync, then reads its store.
    /// Dropping the future leaves the informer it started running for later reads.
    pub async fn get<K>(&self, namespace: Option<&str>, name: &str) -> Result<Option<Arc<K>>, CacheError>
    where
        K: CacheObject,
        K::DynamicType: Default,
    {
        let informer = self.informer::<K>();
        check_watched(&informer, namespace)?;
        informer.wait_synced(self.inner.options.sync_timeout).await?;
        Ok(informer.store().get(namespace, name))
    }

    /// The objects of `K` in `namespace`, or in all namespaces watched for `None`,
    /// from the [`informer::<K>`](Self::informer), once it is synced. In no
    /// particular order.
    ///
    /// # Errors
    /// As for [`get`](Self::get).
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits for the informer to sync, then reads its store.
    /// Dropping the future leaves the informer it started running for later reads.
    pub async fn list<K>(&self, namespace: Option<&str>) -> Result<Vec<Arc<K>>, CacheError>
    where
        K: CacheObject,
        K::DynamicType: Default,
    {
        let informer = self.informer::<K>();
        check_watched(&informer, namespace)?;
        informer.wait_synced(self.inner.options.sync_timeout).await?;
        Ok(match namespace {
            Some(namespace) => informer.store().list_namespace(namespace),
            None => informer.store().list(),
        })
    }

    /// The objects of `K` filed under `value` in the index `index`, from the
    /// [`informer::<K>`](Self::informer), once it is synced.
    ///
    /// # Errors
    /// As for [`get`](Self::get), and [`CacheError::UnknownIndex`] if no index of
    /// that name was registered for `K`.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits for the informer to sync, then reads its store.
    /// Dropping the future leaves the informer it started running for later reads.
    pub async fn list_by_index<K>(&self, index: &str, value: &str) -> Result<Vec<Arc<K>>, CacheError>
    where
        K: CacheObject,
        K::DynamicType: Default,
    {
        self.synced_informer::<K>().await?.store().by_index(index, value)
    }

    async fn synced_informer<K>(&self) -> Result<Arc<Informer<K>>, CacheError>
    where
        K: CacheObject,
        K::DynamicType: Default,
    {
        let informer = self.informer::<K>();
        informer.wait_synced(self.inner.options.sync_timeout).await?;
        Ok(informer)
    }

    fn start_informer<K: CacheObject>(
        &self,
        dyntype: &K::DynamicType,
        key: &InformerKey,
        registry: &mut Registry,
    ) -> Arc<Informer<K>> {
        let inner = &self.inner;
        let resource: Arc<str> = Arc::from(key.ty.resource.to_string());
        let informer = Arc::new(Informer::new(
            inner.cluster.clone(),
            resource.clone(),
            key.spec.clone(),
            inner.options.effective_event_capacity(),
            inner.options.effective_namespace_event_capacity(),
        ));
        if let Some(codec) = inner.options.compact.codec::<K>() {
            informer.store().set_codec(codec);
        }
        for (name, extractor) in registry.indexes.get(&key.ty).into_iter().flatten() {
            if let Some(extractor) = extractor.downcast_ref::<Extractor<K>>() {
                // Cannot fail: the store is new and the registry holds unique names.
                let _ = informer.store().add_index(name, extractor.clone());
            }
        }
        if inner.token.is_cancelled() {
            informer.mark_stopped();
            return informer;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                cluster = %inner.cluster,
                resource = %resource,
                "informer requested outside a Tokio runtime; it will not start"
            );
            informer.mark_stopped();
            return informer;
        };
        let prepare = Prepare {
            strip_managed_fields: inner.options.strip_managed_fields,
            transform: registry
                .transforms
                .get(&key.ty)
                .and_then(|transform| transform.downcast_ref::<Transform<K>>())
                .cloned(),
        };
        let config = key.spec.watcher_config();
        let list_watch = list_watch::ListWatch {
            cluster: inner.cluster.clone(),
            resource: resource.to_string(),
            namespace: String::new(),
            streaming: Arc::new(AtomicBool::new(inner.options.streaming_lists)),
        };
        let client = inner.client.clone();
        let dyntype = dyntype.clone();
        let (watch, watches): (Box<dyn FnMut() -> Events<K> + Send>, usize) = match &key.spec.namespaces {
            WatchNamespaces::Only(names) => {
                let names: Vec<String> = names.iter().cloned().collect();
                let count = names.len();
                let store = informer.store().share();
                // New watchers for every restart: each starts with a full list, and
                // the merge with one Init, so the store relists as a whole.
                let watch = move || {
                    let watches = names
                        .iter()
                        .map(|ns| {
                            let list_watch = list_watch::ListWatch {
                                namespace: ns.clone(),
                                ..list_watch.clone()
                            };
                            let events = namespaces::watch_namespace::<K>(
                                client.clone(),
                                &dyntype,
                                ns,
                                config.clone(),
                                list_watch,
                            );
                            (ns.clone(), events)
                        })
                        .collect();
                    namespaces::merge(watches, store.share()).boxed()
                };
                (Box::new(watch), count)
            }
            WatchNamespaces::All | WatchNamespaces::CacheDefault => {
                let api = Api::<K>::all_with(client, &dyntype);
                // A new watcher for every restart: it starts with a full list.
                let watch =
                    move || list_watch::watch(api.clone(), config.clone(), list_watch.clone()).boxed();
                (Box::new(watch), 1)
            }
        };
        let reconnects = inner.reconnects.subscribe();
        let stop = inner.token.child_token();
        self.inner.tasks.spawn_on(
            informer
                .clone()
                .run_with(watch, prepare, stop.clone(), reconnects),
            &runtime,
        );
        registry.running.push((stop, watches));
        inner.watches.fetch_add(watches, Ordering::Relaxed);
        tracing::debug!(cluster = %inner.cluster, resource = %resource, spec = ?key.spec, "watch started");
        informer
    }
}

/// Fails if `informer` watches some namespaces and `namespace` is another one.
/// Cluster-scoped reads (`None`) always pass: a cluster-scoped type is watched
/// cluster-wide, and a namespaced one has no object without a namespace.
fn check_watched<K>(informer: &Informer<K>, namespace: Option<&str>) -> Result<(), CacheError> {
    let Some(namespace) = namespace.filter(|ns| !ns.is_empty()) else {
        return Ok(());
    };
    match &informer.spec().namespaces {
        WatchNamespaces::Only(watched) if !watched.contains(namespace) => {
            Err(CacheError::NamespaceNotWatched {
                cluster: informer.cluster().clone(),
                resource: informer.resource().to_owned(),
                namespace: namespace.to_owned(),
                watched: watched.iter().cloned().collect(),
            })
        }
        _ => Ok(()),
    }
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("cluster", self.cluster())
            .field("namespace_scope", &self.namespace_scope())
            .field("options", &self.inner.options)
            .field("watches", &self.watch_count())
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}
