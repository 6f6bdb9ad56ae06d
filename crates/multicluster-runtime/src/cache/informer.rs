//! One shared watch of one resource type in one cluster, feeding a store.

use std::collections::HashMap;
use std::fmt;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::watcher;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::error::error_chain;
use super::store::Scope;
use super::{CacheError, InformerEvent, Store, WatchSpec};
use crate::ClusterName;

/// Changes an object before it is stored.
pub(crate) type Transform<K> = Arc<dyn Fn(&mut K) + Send + Sync>;

/// A watch of one resource type in one cluster, shared by every controller that asks
/// the [`Cache`](super::Cache) for it.
///
/// It follows the cluster with kube's [`watcher()`], retrying with exponential backoff
/// (from 0.8 s up to 30 s) for as long as the cache runs, so an unreachable cluster
/// only delays its own informers and they catch up when it comes back. It keeps the
/// objects in its [`Store`] and tells [subscribers](Self::subscribe) what changed.
///
/// # Lists and deletions
///
/// The watcher lists everything first, and again whenever it cannot resume a broken
/// watch. While it lists, listed objects replace stored ones; when the list is
/// complete, objects it did not contain are removed and reported as
/// [`InformerEvent::Deleted`]: they were deleted while nobody was watching. Only
/// objects new to the store or with a changed `resourceVersion` are reported as
/// [`InformerEvent::Applied`]. The end of the first list makes the informer
/// [synced](Self::is_synced).
///
/// # Namespace-scoped informers
///
/// An informer obtained from a [scoped cache](super::Cache::scoped) is a handle on the
/// host cache's informer: the same watch, the same sync state, the same objects, but
/// its [`store`](Self::store) and [`subscribe`](Self::subscribe) see only the view's
/// namespace (and cluster-scoped objects). See [`subscribe`](Self::subscribe) for
/// what delivering events per namespace costs.
pub struct Informer<K> {
    core: Arc<Core<K>>,
    /// The store as this handle sees it: the core's, or a view of it.
    store: Store<K>,
    scope: Option<Scope>,
}

/// The shared part of an informer: the watch's state, whatever handle reads it.
struct Core<K> {
    cluster: ClusterName,
    resource: Arc<str>,
    spec: WatchSpec,
    /// The unscoped store, written by the informer's task.
    store: Store<K>,
    phase: watch::Sender<Phase>,
    /// Taken when the informer stops, so that subscribers see their channels close.
    channels: Mutex<Option<Channels<K>>>,
    /// Capacity of each per-namespace channel.
    namespace_capacity: usize,
    last_error: Mutex<Option<Arc<watcher::Error>>>,
}

/// Where events go: everything to `all`; each namespace's events also to that
/// namespace's channel, if a scoped handle subscribed to it.
struct Channels<K> {
    all: broadcast::Sender<InformerEvent<K>>,
    namespaces: HashMap<String, broadcast::Sender<InformerEvent<K>>>,
    /// When `namespaces` reaches this size, channels nobody listens to any more are
    /// dropped (amortized: the threshold doubles).
    prune_at: usize,
}

/// The smallest pruning threshold of per-namespace channels.
const PRUNE_AT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Syncing,
    Synced,
    Stopped,
}

/// What the informer does to each object before storing it.
pub(crate) struct Prepare<K> {
    pub(crate) strip_managed_fields: bool,
    pub(crate) transform: Option<Transform<K>>,
}

impl<K: Resource> Prepare<K> {
    fn apply(&self, object: &mut K) {
        if self.strip_managed_fields {
            object.meta_mut().managed_fields = None;
        }
        if let Some(transform) = &self.transform {
            transform(object);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K> Informer<K> {
    /// A new informer, not yet running. `event_capacity` is the capacity of the
    /// channel of all events, `namespace_capacity` that of each per-namespace channel.
    pub(crate) fn new(
        cluster: ClusterName,
        resource: Arc<str>,
        spec: WatchSpec,
        event_capacity: usize,
        namespace_capacity: usize,
    ) -> Self {
        let (all, _) = broadcast::channel(event_capacity);
        let store = Store::new(cluster.clone(), resource.clone());
        let core = Core {
            store: store.share(),
            cluster,
            resource,
            spec,
            phase: watch::Sender::new(Phase::Syncing),
            channels: Mutex::new(Some(Channels {
                all,
                namespaces: HashMap::new(),
                prune_at: PRUNE_AT,
            })),
            namespace_capacity,
            last_error: Mutex::new(None),
        };
        Informer {
            core: Arc::new(core),
            store,
            scope: None,
        }
    }

    /// A handle on the same informer that sees only `scope`'s namespace.
    pub(crate) fn scoped(&self, scope: Scope) -> Self {
        Informer {
            core: self.core.clone(),
            store: self.core.store.scoped(scope.clone()),
            scope: Some(scope),
        }
    }

    /// The cluster watched: for a namespace-scoped informer, the cluster the view
    /// stands for.
    pub fn cluster(&self) -> &ClusterName {
        match &self.scope {
            Some(scope) => &scope.cluster,
            None => &self.core.cluster,
        }
    }

    /// The namespace this handle is scoped to, `None` for a whole cluster's informer.
    pub fn namespace_scope(&self) -> Option<&str> {
        self.scope.as_ref().map(|scope| &*scope.namespace)
    }

    /// The resource type watched, e.g. `ConfigMap (v1)`.
    pub fn resource(&self) -> &str {
        &self.core.resource
    }

    /// The selection watched.
    pub fn spec(&self) -> &WatchSpec {
        &self.core.spec
    }

    /// The objects. Complete once the informer [is synced](Self::is_synced); before,
    /// it may hold part of the first list.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Whether the first list is complete (and the informer not stopped). Stays true
    /// through later relists and watch errors: the store is then stale, not empty.
    pub fn is_synced(&self) -> bool {
        *self.core.phase.borrow() == Phase::Synced
    }

    /// Whether the informer stopped: its cache's cancellation token was cancelled.
    /// The store keeps its last contents but no longer changes.
    pub fn is_stopped(&self) -> bool {
        *self.core.phase.borrow() == Phase::Stopped
    }

    /// The most recent watch error, kept after the watch recovers; `None` if the watch
    /// never failed. Every error is also logged as a warning.
    pub fn last_error(&self) -> Option<Arc<watcher::Error>> {
        lock(&self.core.last_error).clone()
    }

    /// Waits until the informer is synced, at most `timeout`.
    ///
    /// # Errors
    /// - [`CacheError::SyncTimeout`] after `timeout`, with the last watch error;
    ///   the informer keeps trying.
    /// - [`CacheError::Stopped`] if the informer stopped.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), CacheError> {
        let mut phase = self.core.phase.subscribe();
        let settled = tokio::time::timeout(timeout, phase.wait_for(|p| *p != Phase::Syncing)).await;
        match settled {
            Ok(Ok(reached)) if *reached == Phase::Synced => Ok(()),
            // Stopped; or the sender is gone, which cannot happen while `self` lives.
            Ok(_) => Err(self.stopped_error()),
            Err(_) => Err(CacheError::SyncTimeout {
                cluster: self.cluster().clone(),
                resource: self.core.resource.to_string(),
                waited: timeout,
                last_error: self.last_error(),
            }),
        }
    }

    /// Waits until the informer stopped.
    pub async fn stopped(&self) {
        let mut phase = self.core.phase.subscribe();
        // An error means the sender is gone: stopped as well.
        let _ = phase.wait_for(|p| *p == Phase::Stopped).await;
    }

    /// Events for every change the informer makes to its store from now on.
    ///
    /// Changes made before the call are not replayed: subscribe first, then read the
    /// store, and treat events as hints to look again (an event may be about an object
    /// the read already saw). The channel holds
    /// [`CacheOptions::event_capacity`](super::CacheOptions::event_capacity) events;
    /// a receiver that falls further behind gets
    /// [`RecvError::Lagged`](broadcast::error::RecvError::Lagged), has lost events,
    /// and must re-read the whole [`store`](Self::store) to catch up. The channel
    /// closes ([`RecvError::Closed`](broadcast::error::RecvError::Closed)) when the
    /// informer stops.
    ///
    /// # Namespace-scoped informers
    ///
    /// A scoped handle's receiver gets only the events of its namespace, and those of
    /// cluster-scoped objects. The informer keeps one channel per namespace that has
    /// subscribers (created by the first `subscribe`, dropped once its last receiver
    /// is gone) and sends each event to the channel of the object's namespace only:
    /// an event costs one map lookup more, however many namespaces are subscribed, and
    /// wakes only the subscribers of its namespace. An event about a cluster-scoped
    /// object goes to every namespace's channel. Each per-namespace channel holds
    /// [`CacheOptions::namespace_event_capacity`](super::CacheOptions::namespace_event_capacity)
    /// events, allocated when it is created.
    pub fn subscribe(&self) -> broadcast::Receiver<InformerEvent<K>> {
        let mut channels = lock(&self.core.channels);
        // Stopped: a receiver of a channel that is already closed.
        let Some(channels) = channels.as_mut() else {
            return broadcast::channel(1).1;
        };
        let Some(scope) = &self.scope else {
            return channels.all.subscribe();
        };
        if let Some(sender) = channels.namespaces.get(&*scope.namespace) {
            return sender.subscribe();
        }
        if channels.namespaces.len() >= channels.prune_at {
            channels
                .namespaces
                .retain(|_, sender| sender.receiver_count() > 0);
            channels.prune_at = (channels.namespaces.len() * 2).max(PRUNE_AT);
        }
        let (sender, receiver) = broadcast::channel(self.core.namespace_capacity);
        channels.namespaces.insert(scope.namespace.to_string(), sender);
        receiver
    }

    /// How many per-namespace event channels the informer keeps (some may have no
    /// receivers left until they are pruned).
    #[cfg(test)]
    fn namespace_channels(&self) -> usize {
        lock(&self.core.channels)
            .as_ref()
            .map_or(0, |c| c.namespaces.len())
    }

    pub(crate) fn stopped_error(&self) -> CacheError {
        CacheError::Stopped {
            cluster: self.cluster().clone(),
            resource: self.core.resource.to_string(),
        }
    }

    /// Marks the informer stopped and closes the subscriptions.
    pub(crate) fn mark_stopped(&self) {
        self.core.mark_stopped();
    }
}

impl<K> Core<K> {
    fn mark_stopped(&self) {
        self.phase.send_replace(Phase::Stopped);
        lock(&self.channels).take();
    }

    fn record_error(&self, error: watcher::Error) {
        tracing::warn!(
            cluster = %self.cluster,
            resource = %self.resource,
            error = error_chain(&error),
            "watch failed, retrying with backoff"
        );
        *lock(&self.last_error) = Some(Arc::new(error));
    }
}

impl<K: Resource> Core<K> {
    fn publish(&self, event: InformerEvent<K>) {
        let mut channels = lock(&self.channels);
        let Some(channels) = channels.as_mut() else {
            return;
        };
        if !channels.namespaces.is_empty() {
            let namespace = event.object().meta().namespace.as_deref().unwrap_or("");
            // A send fails only when nobody listens any more: drop that channel.
            if namespace.is_empty() {
                channels
                    .namespaces
                    .retain(|_, sender| sender.send(event.clone()).is_ok());
            } else if let Some(sender) = channels.namespaces.get(namespace)
                && sender.send(event.clone()).is_err()
            {
                channels.namespaces.remove(namespace);
            }
        }
        // An error only means that nobody subscribed.
        let _ = channels.all.send(event);
    }
}

impl<K: Resource + Send + Sync + 'static> Informer<K> {
    /// The informer's task: applies `events` to the store until `token` is cancelled.
    ///
    /// Marking the informer stopped is tied to dropping the future, so it also
    /// happens if the task panics or the runtime shuts down before running it.
    pub(crate) fn run<S>(
        self: Arc<Self>,
        events: S,
        prepare: Prepare<K>,
        token: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    {
        let core = StopOnDrop(self.core.clone());
        async move {
            let mut events = pin!(events);
            loop {
                let next = tokio::select! {
                    biased;
                    () = token.cancelled() => break,
                    next = events.next() => next,
                };
                match next {
                    Some(Ok(event)) => core.0.handle(event, &prepare),
                    Some(Err(error)) => core.0.record_error(error),
                    // The watcher never ends; should it, there is nothing left to follow.
                    None => break,
                }
            }
        }
    }
}

impl<K: Resource> Core<K> {
    fn handle(&self, event: watcher::Event<K>, prepare: &Prepare<K>) {
        match event {
            watcher::Event::Init => {
                tracing::debug!(cluster = %self.cluster, resource = %self.resource, "listing");
                self.store.begin_relist();
            }
            watcher::Event::InitApply(mut object) => {
                prepare.apply(&mut object);
                if let Some(event) = self.store.relist_apply(object) {
                    self.publish(event);
                }
            }
            watcher::Event::InitDone => {
                for event in self.store.finish_relist() {
                    self.publish(event);
                }
                let first = self.phase.send_if_modified(|phase| {
                    let first = *phase == Phase::Syncing;
                    if first {
                        *phase = Phase::Synced;
                    }
                    first
                });
                tracing::debug!(
                    cluster = %self.cluster,
                    resource = %self.resource,
                    objects = self.store.len(),
                    first,
                    "listed"
                );
            }
            watcher::Event::Apply(mut object) => {
                prepare.apply(&mut object);
                if let Some(event) = self.store.apply(object) {
                    self.publish(event);
                }
            }
            watcher::Event::Delete(mut object) => {
                prepare.apply(&mut object);
                self.publish(self.store.delete(object));
            }
        }
    }
}

struct StopOnDrop<K>(Arc<Core<K>>);

impl<K> Drop for StopOnDrop<K> {
    fn drop(&mut self) {
        self.0.mark_stopped();
        tracing::debug!(cluster = %self.0.cluster, resource = %self.0.resource, "informer stopped");
    }
}

impl<K> fmt::Debug for Informer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Informer")
            .field("cluster", self.cluster())
            .field("namespace_scope", &self.namespace_scope())
            .field("resource", &self.core.resource)
            .field("spec", &self.core.spec)
            .field("phase", &*self.core.phase.borrow())
            .field("objects", &self.store.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use kube::api::ObjectMeta;
    use tokio::sync::broadcast::error::RecvError;

    use super::*;

    fn config_map(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn informer() -> Arc<Informer<ConfigMap>> {
        Arc::new(Informer::new(
            ClusterName::from("eu-1"),
            Arc::from("ConfigMap (v1)"),
            WatchSpec::default(),
            16,
            4,
        ))
    }

    fn summary(event: &InformerEvent<ConfigMap>) -> String {
        let version = |cm: &ConfigMap| cm.metadata.resource_version.clone().unwrap_or_default();
        let name = |cm: &ConfigMap| cm.metadata.name.clone().unwrap_or_default();
        match event {
            InformerEvent::Applied { old, new } => {
                format!(
                    "applied {}@{} (old {:?})",
                    name(new),
                    version(new),
                    old.as_deref().map(version)
                )
            }
            InformerEvent::Deleted(object) => format!("deleted {}@{}", name(object), version(object)),
        }
    }

    #[tokio::test]
    async fn follows_the_watch_protocol_and_stops_on_cancel() {
        use watcher::Event::*;
        let informer = informer();
        let mut events = informer.subscribe();
        let token = CancellationToken::new();
        let stream = futures::stream::iter(vec![
            Err(watcher::Error::NoResourceVersion),
            Ok(Init),
            Ok(InitApply(config_map("a", "1"))),
            Ok(InitApply(config_map("b", "1"))),
            Ok(InitDone),
            Ok(Apply(config_map("a", "2"))),
            Ok(Delete(config_map("b", "3"))),
            Ok(Apply(config_map("c", "4"))),
            // A relist: "a" unchanged, "c" vanished, "d" is new.
            Ok(Init),
            Ok(InitApply(config_map("a", "2"))),
            Ok(InitApply(config_map("d", "5"))),
            Ok(InitDone),
        ])
        .chain(futures::stream::pending());
        let prepare = Prepare {
            strip_managed_fields: true,
            transform: Some(Arc::new(|cm: &mut ConfigMap| {
                cm.data = Some([("seen".to_owned(), "yes".to_owned())].into());
            })),
        };
        let task = tokio::spawn(informer.clone().run(stream, prepare, token.clone()));

        informer.wait_synced(Duration::from_secs(5)).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 7 {
            let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
            seen.push(summary(&event.expect("an event").expect("no lag")));
        }
        assert_eq!(
            seen,
            [
                "applied a@1 (old None)",
                "applied b@1 (old None)",
                "applied a@2 (old Some(\"1\"))",
                "deleted b@3",
                "applied c@4 (old None)",
                "applied d@5 (old None)",
                "deleted c@4",
            ]
        );
        assert!(informer.is_synced());
        assert!(matches!(
            informer.last_error().as_deref(),
            Some(watcher::Error::NoResourceVersion)
        ));
        let a = informer.store().get(Some("default"), "a").unwrap();
        assert_eq!(a.metadata.managed_fields, None);
        assert_eq!(
            a.data.as_ref().and_then(|d| d.get("seen")).map(String::as_str),
            Some("yes")
        );
        let mut names: Vec<_> = informer
            .store()
            .list()
            .iter()
            .filter_map(|cm| cm.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "d"]);

        token.cancel();
        task.await.unwrap();
        assert!(informer.is_stopped());
        assert!(!informer.is_synced());
        assert!(matches!(events.recv().await, Err(RecvError::Closed)));
        assert!(matches!(
            informer.subscribe().recv().await,
            Err(RecvError::Closed)
        ));
        assert!(matches!(
            informer.wait_synced(Duration::from_secs(1)).await,
            Err(CacheError::Stopped { .. })
        ));
        informer.stopped().await;
        // The store keeps its last contents.
        assert_eq!(informer.store().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn sync_timeout_reports_the_last_watch_error() {
        let informer = informer();
        let stream = futures::stream::iter(vec![Err(watcher::Error::NoResourceVersion)])
            .chain(futures::stream::pending());
        let prepare = Prepare {
            strip_managed_fields: false,
            transform: None,
        };
        tokio::spawn(informer.clone().run(stream, prepare, CancellationToken::new()));
        tokio::task::yield_now().await;
        let error = informer.wait_synced(Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(error, CacheError::SyncTimeout { .. }));
        assert!(
            error.to_string().starts_with(
                "cache of ConfigMap (v1) in cluster eu-1 not synced after 10s; last watch error: no metadata"
            ),
            "{error}"
        );
    }

    fn in_namespace(namespace: Option<&str>, name: &str, version: &str) -> ConfigMap {
        let mut cm = config_map(name, version);
        cm.metadata.namespace = namespace.map(str::to_owned);
        cm
    }

    fn scope(namespace: &str) -> Scope {
        Scope {
            cluster: ClusterName::from(format!("view-{namespace}")),
            namespace: Arc::from(namespace),
        }
    }

    fn drain(events: &mut broadcast::Receiver<InformerEvent<ConfigMap>>) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(summary(&event));
        }
        seen
    }

    #[tokio::test]
    async fn scoped_handles_share_the_watch_and_see_one_namespace() {
        use watcher::Event::*;
        let host = informer();
        let a = host.scoped(scope("a"));
        let b = host.scoped(scope("b"));
        assert_eq!(a.cluster(), "view-a");
        assert_eq!(a.namespace_scope(), Some("a"));
        assert_eq!(host.namespace_scope(), None);
        let (mut all, mut in_a, mut in_b) = (host.subscribe(), a.subscribe(), b.subscribe());
        assert_eq!(host.namespace_channels(), 2);
        let stream = futures::stream::iter(vec![
            Ok(Init),
            Ok(InitApply(in_namespace(Some("a"), "one", "1"))),
            Ok(InitApply(in_namespace(Some("b"), "one", "1"))),
            Ok(InitApply(in_namespace(Some("c"), "one", "1"))),
            Ok(InitDone),
            // Stored under no namespace, as cluster-scoped objects are.
            Ok(Apply(in_namespace(None, "global", "2"))),
            Ok(Delete(in_namespace(Some("a"), "one", "3"))),
        ])
        .chain(futures::stream::pending());
        let prepare = Prepare {
            strip_managed_fields: false,
            transform: None,
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(host.clone().run(stream, prepare, token.clone()));
        a.wait_synced(Duration::from_secs(5)).await.unwrap();
        assert!(a.is_synced() && b.is_synced());
        // The last event deletes a/one.
        tokio::time::timeout(Duration::from_secs(5), async {
            while host.store().get(Some("a"), "one").is_some() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the stream is applied");

        assert_eq!(
            drain(&mut all),
            [
                "applied one@1 (old None)",
                "applied one@1 (old None)",
                "applied one@1 (old None)",
                "applied global@2 (old None)",
                "deleted one@3",
            ]
        );
        assert_eq!(
            drain(&mut in_a),
            [
                "applied one@1 (old None)",
                "applied global@2 (old None)",
                "deleted one@3"
            ]
        );
        assert_eq!(
            drain(&mut in_b),
            ["applied one@1 (old None)", "applied global@2 (old None)"]
        );

        assert!(b.store().get(Some("b"), "one").is_some());
        assert!(b.store().get(Some("c"), "one").is_none());
        assert!(b.store().get(None, "global").is_some());
        assert_eq!(b.store().len(), 2);
        assert_eq!(b.store().list().len(), 2);
        assert_eq!(b.store().namespaces(), ["b"]);
        assert!(b.store().list_namespace("c").is_empty());
        assert_eq!(b.store().cluster(), "view-b");
        assert_eq!(a.store().len(), 1);

        // A namespace nobody listens to any more loses its channel at its next event.
        drop(in_b);
        host.core.publish(InformerEvent::Deleted(Arc::new(in_namespace(
            Some("b"),
            "one",
            "4",
        ))));
        assert_eq!(host.namespace_channels(), 1);

        token.cancel();
        task.await.unwrap();
        assert!(a.is_stopped());
        assert!(matches!(in_a.recv().await, Err(RecvError::Closed)));
        assert!(matches!(b.subscribe().recv().await, Err(RecvError::Closed)));
        let error = a.wait_synced(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "cache of ConfigMap (v1) in cluster view-a is stopped"
        );
    }

    #[test]
    fn channels_of_gone_subscribers_are_pruned_as_namespaces_come_and_go() {
        let host = informer();
        for index in 0..(PRUNE_AT * 4) {
            let view = host.scoped(scope(&format!("ns-{index}")));
            drop(view.subscribe());
        }
        assert!(
            host.namespace_channels() <= PRUNE_AT,
            "{}",
            host.namespace_channels()
        );
        let kept: Vec<_> = (0..3)
            .map(|i| host.scoped(scope(&format!("kept-{i}"))).subscribe())
            .collect();
        for index in 0..(PRUNE_AT * 4) {
            drop(host.scoped(scope(&format!("ns-{index}"))).subscribe());
        }
        assert!(host.namespace_channels() <= PRUNE_AT + kept.len());
        assert!(host.namespace_channels() >= kept.len());
    }

    #[tokio::test]
    async fn dropping_the_task_unstarted_marks_the_informer_stopped() {
        let informer = informer();
        let prepare = Prepare {
            strip_managed_fields: false,
            transform: None,
        };
        let future = informer
            .clone()
            .run(futures::stream::pending(), prepare, CancellationToken::new());
        drop(future);
        assert!(informer.is_stopped());
    }
}
