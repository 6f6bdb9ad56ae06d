//! One shared watch of one resource type in one cluster, feeding a store.

use std::collections::HashMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::watcher;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::store::Scope;
use super::{CacheError, InformerEvent, Store, WatchSpec};
use crate::ClusterName;
use crate::backoff::Backoff;
use crate::redact;

/// How long the informer waits before it watches again after a transform panicked:
/// 500 ms after the first panic in a row, doubling up to 30 s.
const RESTART_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

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
/// # Panicking callbacks
///
/// User code that runs inside the informer cannot stop it:
///
/// - A panicking [index extractor](super::Cache::index_field) files that object
///   under no value of that index. The object is stored, the other indexes are
///   right, and the informer goes on.
/// - A panicking [transform](super::Cache::set_transform) means the object cannot be
///   stored as asked: the informer stores nothing of it, drops its watch, waits
///   (500 ms after the first panic in a row, doubling up to 30 s; the count starts
///   over once a list completes) and watches again, which lists everything anew.
///   Until a list gets through, the store keeps what it had: stale, but it never
///   reports an object deleted that was not. [`restarts`](Self::restarts) counts
///   these restarts.
///
/// Each panic is logged as an ERROR with the cluster, the resource, the callback
/// kind (`index extractor`, `transform`), the index name and the object's namespace
/// and name, never its content; the panic message goes to the panic hook as usual.
/// With `panic = "abort"` nothing can be caught and the process ends.
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
    /// The last watch error, described: a raw error could quote credentials.
    last_error: Mutex<Option<Arc<str>>>,
    /// How many watches were dropped because a transform panicked.
    restarts: AtomicU64,
    /// When the informer was made: it has been syncing since then until synced.
    created: SystemTime,
    /// How many failing watches were dropped and replaced on request.
    reconnects: AtomicU64,
    /// How many watch or list attempts failed.
    failures: AtomicU64,
    /// Whether the watch's last failure found the apiserver absent or not serving
    /// (see `is_unreachable`): a successful health probe then means it can try
    /// again now.
    unreachable: AtomicBool,
    /// The failures in a row, for logging them once and their repeats rarely.
    streak: Mutex<Streak>,
}

/// A run of failures of one watch, as logged so far.
#[derive(Default)]
struct Streak {
    /// Failures in a row.
    failures: u64,
    /// The error last logged as a warning, and when.
    warned: Option<(Arc<str>, tokio::time::Instant)>,
}

/// How often the same error of a failing watch is logged again as a warning; the
/// repeats in between are logged at debug level.
const WARN_AGAIN_AFTER: Duration = Duration::from_secs(300);

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

/// A transform panicked on the object `namespace/name` (as it was before the
/// transform touched it).
struct TransformPanicked {
    namespace: Option<String>,
    name: Option<String>,
}

impl<K: Resource> Prepare<K> {
    /// Prepares `object` for the store. A panic of the transform is caught: the
    /// object cannot be stored as the user wants it, and the caller must not store it.
    fn apply(&self, object: &mut K) -> Result<(), TransformPanicked> {
        if self.strip_managed_fields {
            object.meta_mut().managed_fields = None;
        }
        let Some(transform) = &self.transform else {
            return Ok(());
        };
        // Taken first: the transform may change the name before it panics.
        let meta = object.meta();
        let (namespace, name) = (meta.namespace.clone(), meta.name.clone());
        // A half-transformed object is dropped unread, so unwind safety holds.
        panic::catch_unwind(AssertUnwindSafe(|| transform(object)))
            .map_err(|_| TransformPanicked { namespace, name })
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
            restarts: AtomicU64::new(0),
            created: SystemTime::now(),
            reconnects: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            unreachable: AtomicBool::new(false),
            streak: Mutex::default(),
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
    /// it holds part of the first list or nothing, and reads do not wait (see
    /// [`Store`'s docs](Store#before-the-first-list) for the reads that do).
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
    pub fn last_error(&self) -> Option<Arc<str>> {
        lock(&self.core.last_error).clone()
    }

    /// How many times the informer dropped its watch because the
    /// [transform](super::Cache::set_transform) panicked on an object, and (unless it
    /// stopped meanwhile) started a new one after a backoff. Zero for an informer
    /// whose callbacks never panicked; a count that keeps growing means an object the
    /// transform cannot handle is still there, and the store is not following the
    /// cluster. Shared by every handle on the informer, scoped or not.
    pub fn restarts(&self) -> u64 {
        self.core.restarts.load(Ordering::Relaxed)
    }

    /// What the informer's watch is doing, for health reports and metrics.
    pub fn status(&self) -> InformerStatus {
        InformerStatus {
            resource: self.core.resource.to_string(),
            synced: self.is_synced(),
            stopped: self.is_stopped(),
            created: self.core.created,
            restarts: self.restarts() + self.reconnects(),
            failures: self.failures(),
        }
    }

    /// How many attempts of the informer's watch (or its lists) failed. Each is
    /// retried after a backoff from 0.8 s doubling up to 30 s, or at once when
    /// [`Cache::reconnect`](super::Cache::reconnect) asks and the failure found the
    /// apiserver absent or not serving (no answer, 5xx, 429); so its growth is
    /// bounded. An expired resource version (410) is no failure. Shared by every
    /// handle on the informer.
    pub fn failures(&self) -> u64 {
        self.core.failures.load(Ordering::Relaxed)
    }

    /// How many times a failing watch of the informer was dropped and started again
    /// at once, instead of after its backoff, because
    /// [`Cache::reconnect`](super::Cache::reconnect) asked for it (the manager does
    /// when a cluster's health probes succeed again). Shared by every handle on the
    /// informer.
    pub fn reconnects(&self) -> u64 {
        self.core.reconnects.load(Ordering::Relaxed)
    }

    /// Waits until the informer is synced, at most `timeout`.
    ///
    /// # Errors
    /// - [`CacheError::SyncTimeout`] after `timeout`, with the last watch error;
    ///   the informer keeps trying.
    /// - [`CacheError::Stopped`] if the informer stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes the informer, which goes on syncing.
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
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes the informer.
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

/// Whether `error` says the apiserver is not there or not serving: no answer
/// (connection refused or reset, a timeout, TLS), or an answer of 5xx or 429 (an
/// apiserver starting or shutting down says so). The apiserver answering its
/// probes again is what such a watch waits for. Any other status (forbidden, not
/// found) is the apiserver's considered answer, and waits out its backoff.
fn is_unreachable(error: &watcher::Error) -> bool {
    match super::retry::status_code(error) {
        Some(code) => code >= 500 || code == 429,
        // The watcher's own finding, not the apiserver's absence.
        None => !matches!(error, watcher::Error::NoResourceVersion),
    }
}

impl<K> Core<K> {
    /// Notes that the watch works again, after a run of failures if there was one.
    fn recovered(&self) {
        self.unreachable.store(false, Ordering::Relaxed);
        let mut streak = lock(&self.streak);
        if streak.failures > 0 {
            tracing::info!(
                cluster = %self.cluster,
                resource = %self.resource,
                failures_in_a_row = streak.failures,
                "watch works again"
            );
            *streak = Streak::default();
        }
    }

    fn mark_stopped(&self) {
        self.phase.send_replace(Phase::Stopped);
        lock(&self.channels).take();
    }

    /// Logs a failure of the watch: as a warning when a run of failures starts,
    /// when the error changes, and every [`WARN_AGAIN_AFTER`] while it repeats; at
    /// debug level otherwise (v01, issue 21).
    fn record_error(&self, error: watcher::Error) {
        if super::retry::is_expired(&error) {
            // How a watch catches up after a gap: the watcher lists again now.
            tracing::debug!(
                cluster = %self.cluster,
                resource = %self.resource,
                "watch expired (410); listing again"
            );
            return;
        }
        let description: Arc<str> = redact::describe(&error).into();
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.unreachable.store(is_unreachable(&error), Ordering::Relaxed);
        let mut streak = lock(&self.streak);
        streak.failures += 1;
        let now = tokio::time::Instant::now();
        let warn = match &streak.warned {
            None => true,
            Some((text, at)) => **text != *description || now.duration_since(*at) >= WARN_AGAIN_AFTER,
        };
        if warn {
            streak.warned = Some((description.clone(), now));
            tracing::warn!(
                cluster = %self.cluster,
                resource = %self.resource,
                error = %description,
                failures_in_a_row = streak.failures,
                "watch failed, retrying with backoff"
            );
        } else {
            tracing::debug!(
                cluster = %self.cluster,
                resource = %self.resource,
                error = %description,
                failures_in_a_row = streak.failures,
                "watch failed again, retrying with backoff"
            );
        }
        drop(streak);
        *lock(&self.last_error) = Some(description);
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
    /// [`run_with`](Self::run_with), never asked to reconnect.
    #[cfg(test)]
    pub(crate) fn run<F, S>(
        self: Arc<Self>,
        watch: F,
        prepare: Prepare<K>,
        token: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: FnMut() -> S + Send + 'static,
        S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    {
        // No sender: nothing ever asks this informer to reconnect.
        let (_, reconnects) = watch::channel(0);
        self.run_with(watch, prepare, token, reconnects)
    }

    /// The informer's task: follows a watch from `watch` until `token` is cancelled.
    ///
    /// `watch` makes a new watch, which starts with a full list. It is called once at
    /// the start, and again each time the transform panics: that watch is dropped
    /// and, after [`RESTART_BACKOFF`], replaced. The backoff starts over once a list
    /// completes. Each change of `reconnects` asks a failing watch (its last item was
    /// an error, so kube's backoff may be sleeping) to be replaced at once, with no
    /// delay; see [`Cache::reconnect`](super::Cache::reconnect).
    ///
    /// Marking the informer stopped is tied to dropping the future, so it also
    /// happens if the task panics or the runtime shuts down before running it.
    pub(crate) fn run_with<F, S>(
        self: Arc<Self>,
        mut watch: F,
        prepare: Prepare<K>,
        token: CancellationToken,
        reconnects: watch::Receiver<u64>,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: FnMut() -> S + Send + 'static,
        S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    {
        let core = StopOnDrop(self.core.clone());
        async move {
            let core = &core.0;
            let mut panics_in_a_row = 0;
            let mut reconnects = Some(reconnects);
            loop {
                let events = watch();
                match core
                    .follow(events, &prepare, &token, &mut panics_in_a_row, &mut reconnects)
                    .await
                {
                    WatchEnd::Cancelled | WatchEnd::Exhausted => return,
                    WatchEnd::Reconnect => {
                        core.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            cluster = %core.cluster,
                            resource = %core.resource,
                            "failing watch dropped on request; watching again now"
                        );
                        continue;
                    }
                    WatchEnd::TransformPanicked => {}
                }
                panics_in_a_row += 1;
                core.restarts.fetch_add(1, Ordering::Relaxed);
                let delay = RESTART_BACKOFF.delay(panics_in_a_row);
                tracing::debug!(
                    cluster = %core.cluster,
                    resource = %core.resource,
                    ?delay,
                    "watch dropped after a transform panicked; watching again after the delay"
                );
                tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// An informer of any type, as the cache's registry keeps it for status reports.
pub(crate) trait AnyInformer: Send + Sync {
    fn status(&self) -> InformerStatus;
    /// Whether its watch's last failure found the apiserver absent or not serving.
    fn unreachable(&self) -> bool;
}

impl<K: Send + Sync + 'static> AnyInformer for Informer<K> {
    fn status(&self) -> InformerStatus {
        Informer::status(self)
    }

    fn unreachable(&self) -> bool {
        self.core.unreachable.load(Ordering::Relaxed)
    }
}

/// What one informer's watch is doing; see [`Informer::status`] and
/// [`Cache::informer_statuses`](super::Cache::informer_statuses).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InformerStatus {
    /// The resource type watched, e.g. `ConfigMap (v1)`.
    pub resource: String,
    /// Whether its first list is complete; see [`Informer::is_synced`].
    pub synced: bool,
    /// Whether it stopped; see [`Informer::is_stopped`].
    pub stopped: bool,
    /// When it was made: it has been syncing since then, until `synced`.
    pub created: SystemTime,
    /// Watches it dropped and started again: after a panic
    /// ([`Informer::restarts`]) or to reconnect at once
    /// ([`Informer::reconnects`]).
    pub restarts: u64,
    /// Watch and list attempts that failed ([`Informer::failures`]).
    pub failures: u64,
}

/// Why the informer stopped following one watch.
enum WatchEnd {
    /// The token was cancelled.
    Cancelled,
    /// The stream ended; kube's watcher never does.
    Exhausted,
    /// The transform panicked on an object: the watch must start over.
    TransformPanicked,
    /// The watch was failing and a reconnect was asked for: start over now.
    Reconnect,
}

/// What handling one watch event came to.
enum Handled {
    Done,
    /// A list completed.
    Listed,
    /// The transform panicked; nothing was stored.
    TransformPanicked,
}

impl<K: Resource> Core<K> {
    /// Applies the events of one watch until it has to end. Resets
    /// `panics_in_a_row` when a list completes. A change of `reconnects` ends a
    /// watch whose last item was an error (kube's backoff is then sleeping, or
    /// about to); a working watch ignores it. `reconnects` becomes `None` once its
    /// sender is gone.
    async fn follow<S>(
        &self,
        events: S,
        prepare: &Prepare<K>,
        token: &CancellationToken,
        panics_in_a_row: &mut u32,
        reconnects: &mut Option<watch::Receiver<u64>>,
    ) -> WatchEnd
    where
        S: Stream<Item = watcher::Result<watcher::Event<K>>>,
    {
        let mut events = pin!(events);
        let mut failing = false;
        loop {
            let next = tokio::select! {
                biased;
                () = token.cancelled() => return WatchEnd::Cancelled,
                asked = async { reconnects.as_mut()?.changed().await.ok() }, if reconnects.is_some() => {
                    match asked {
                        Some(()) if failing && self.unreachable.load(Ordering::Relaxed) => {
                            return WatchEnd::Reconnect;
                        }
                        Some(()) => {}
                        None => *reconnects = None,
                    }
                    continue;
                }
                next = events.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    // `Init` announces a list attempt; only what follows it shows
                    // the watch works.
                    if !matches!(event, watcher::Event::Init) {
                        failing = false;
                        self.recovered();
                    }
                    match self.handle(event, prepare) {
                        Handled::Done => {}
                        Handled::Listed => *panics_in_a_row = 0,
                        Handled::TransformPanicked => return WatchEnd::TransformPanicked,
                    }
                }
                Some(Err(error)) => {
                    failing = true;
                    self.record_error(error);
                }
                None => return WatchEnd::Exhausted,
            }
        }
    }

    /// Prepares `object`; `false` (logged) if the transform panicked on it.
    fn prepare(&self, prepare: &Prepare<K>, object: &mut K) -> bool {
        let Err(panicked) = prepare.apply(object) else {
            return true;
        };
        // The payload is not logged: it may quote the object, and the panic hook has
        // already reported it.
        tracing::error!(
            cluster = %self.cluster,
            resource = %self.resource,
            callback = "transform",
            namespace = panicked.namespace.as_deref().unwrap_or(""),
            name = panicked.name.as_deref().unwrap_or(""),
            "transform panicked; dropping the watch and watching again with backoff (the store keeps its last state meanwhile)"
        );
        false
    }

    fn handle(&self, event: watcher::Event<K>, prepare: &Prepare<K>) -> Handled {
        match event {
            watcher::Event::Init => {
                tracing::debug!(cluster = %self.cluster, resource = %self.resource, "listing");
                self.store.begin_relist();
            }
            watcher::Event::InitApply(mut object) => {
                if !self.prepare(prepare, &mut object) {
                    return Handled::TransformPanicked;
                }
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
                return Handled::Listed;
            }
            watcher::Event::Apply(mut object) => {
                if !self.prepare(prepare, &mut object) {
                    return Handled::TransformPanicked;
                }
                if let Some(event) = self.store.apply(object) {
                    self.publish(event);
                }
            }
            // A deletion is also transformed, so that subscribers only ever see
            // transformed objects; if that panics, the relist finds it gone.
            watcher::Event::Delete(mut object) => {
                if !self.prepare(prepare, &mut object) {
                    return Handled::TransformPanicked;
                }
                self.publish(self.store.delete(object));
            }
        }
        Handled::Done
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
    use futures::stream::BoxStream;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use kube::api::ObjectMeta;
    use tokio::sync::broadcast::error::RecvError;

    use super::*;
    use crate::cache::testing::{Logs, once};

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

    type Events = BoxStream<'static, watcher::Result<watcher::Event<ConfigMap>>>;

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
        let task = tokio::spawn(informer.clone().run(once(stream), prepare, token.clone()));

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
        assert_eq!(
            informer.last_error().as_deref(),
            Some(redact::describe(&watcher::Error::NoResourceVersion).as_str())
        );
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
        tokio::spawn(
            informer
                .clone()
                .run(once(stream), prepare, CancellationToken::new()),
        );
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
        let task = tokio::spawn(host.clone().run(once(stream), prepare, token.clone()));
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

    /// A watch factory that plays `watches` in turn (each followed by silence), then
    /// watches that never yield, and records when each watch started.
    fn scripted(
        watches: Vec<Vec<watcher::Result<watcher::Event<ConfigMap>>>>,
    ) -> (
        impl FnMut() -> Events + Send + 'static,
        Arc<Mutex<Vec<tokio::time::Instant>>>,
    ) {
        let started = Arc::new(Mutex::new(Vec::new()));
        let record = started.clone();
        let mut watches = watches.into_iter();
        let factory = move || {
            record.lock().unwrap().push(tokio::time::Instant::now());
            let events = watches.next().unwrap_or_default();
            futures::stream::iter(events)
                .chain(futures::stream::pending())
                .boxed()
        };
        (factory, started)
    }

    fn poisoned(name: &str, version: &str) -> ConfigMap {
        let mut cm = config_map(name, version);
        cm.metadata.labels = Some([("poison".to_owned(), "true".to_owned())].into());
        cm
    }

    fn is_poisoned(cm: &ConfigMap) -> bool {
        cm.metadata.labels.iter().flatten().any(|(k, _)| k == "poison")
    }

    /// A transform that panics for objects labelled `poison`.
    fn fragile_transform() -> Prepare<ConfigMap> {
        Prepare {
            strip_managed_fields: false,
            transform: Some(Arc::new(|cm: &mut ConfigMap| {
                if is_poisoned(cm) {
                    panic!("poisoned");
                }
            })),
        }
    }

    /// The gaps between consecutive watch starts.
    fn gaps(started: &Mutex<Vec<tokio::time::Instant>>) -> Vec<Duration> {
        let started = started.lock().unwrap();
        started.windows(2).map(|w| w[1] - w[0]).collect()
    }

    async fn until(mut condition: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(300), async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("condition reached");
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_restarts_a_failing_watch_at_once_and_leaves_a_working_one_alone() {
        use watcher::Event::*;
        let informer = informer();
        let (first_tx, first_rx) = futures::channel::mpsc::unbounded();
        let mut first = Some(first_rx);
        let started = Arc::new(Mutex::new(Vec::new()));
        let record = started.clone();
        // The first watch is fed by hand; the next one lists "a" anew.
        let watch = move || -> Events {
            record.lock().unwrap().push(tokio::time::Instant::now());
            match first.take() {
                Some(first) => first.boxed(),
                None => {
                    futures::stream::iter(vec![Ok(Init), Ok(InitApply(config_map("a", "3"))), Ok(InitDone)])
                        .chain(futures::stream::pending())
                        .boxed()
                }
            }
        };
        let (ask, reconnects) = watch::channel(0u64);
        let prepare = Prepare {
            strip_managed_fields: false,
            transform: None,
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(
            informer
                .clone()
                .run_with(watch, prepare, token.clone(), reconnects),
        );
        for event in [Init, InitApply(config_map("a", "1")), InitDone] {
            first_tx.unbounded_send(Ok(event)).unwrap();
        }
        until(|| informer.is_synced()).await;
        let version = || {
            let a = informer.store().get(Some("default"), "a");
            a.and_then(|a| a.metadata.resource_version.clone())
        };

        // A working watch ignores the request. The request is seen before the event
        // sent after it (the informer polls requests first), so once the event is
        // stored the request has been handled.
        ask.send_modify(|n| *n += 1);
        first_tx.unbounded_send(Ok(Apply(config_map("a", "2")))).unwrap();
        until(|| version().as_deref() == Some("2")).await;
        assert_eq!((started.lock().unwrap().len(), informer.reconnects()), (1, 0));

        // A watch that fails with the apiserver's answer waits out its backoff: the
        // apiserver answering is no news to it. The request is handled before the
        // next error is (requests first).
        first_tx
            .unbounded_send(Err(watcher::Error::NoResourceVersion))
            .unwrap();
        until(|| informer.failures() == 1).await;
        ask.send_modify(|n| *n += 1);
        let unreachable = || {
            let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
            Err(watcher::Error::WatchFailed(kube::Error::Service(Box::new(
                refused,
            ))))
        };
        first_tx.unbounded_send(unreachable()).unwrap();
        until(|| informer.failures() == 2).await;
        assert_eq!((started.lock().unwrap().len(), informer.reconnects()), (1, 0));

        // A watch failing for want of an answer (its backoff would now sleep up to
        // 30 s) is replaced at once, without the restart delay of a panicking
        // transform.
        let asked = tokio::time::Instant::now();
        ask.send_modify(|n| *n += 1);
        until(|| version().as_deref() == Some("3")).await;
        let started = started.lock().unwrap().clone();
        assert_eq!(started.len(), 2);
        assert_eq!(started[1], asked, "no delay on the paused clock");
        assert_eq!((informer.reconnects(), informer.restarts()), (1, 0));
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_transform_restarts_the_watch_with_backoff_and_recovers_once_fixed() {
        use watcher::Event::*;
        let informer = informer();
        let mut events = informer.subscribe();
        let (watch, started) = scripted(vec![
            vec![
                Ok(Init),
                Ok(InitApply(config_map("a", "1"))),
                Ok(InitDone),
                Ok(Apply(poisoned("p", "2"))),
            ],
            // Still poisoned at the relist: "a" was listed first and is kept.
            vec![
                Ok(Init),
                Ok(InitApply(config_map("a", "1"))),
                Ok(InitApply(poisoned("p", "2"))),
            ],
            vec![
                Ok(Init),
                Ok(InitApply(config_map("a", "3"))),
                Ok(InitApply(config_map("p", "4"))),
                Ok(InitDone),
            ],
        ]);
        let token = CancellationToken::new();
        let task = tokio::spawn(informer.clone().run(watch, fragile_transform(), token.clone()));

        until(|| informer.store().get(Some("default"), "p").is_some()).await;
        assert_eq!(informer.restarts(), 2);
        assert_eq!(
            gaps(&started),
            [Duration::from_millis(500), Duration::from_secs(1)]
        );
        assert!(informer.is_synced());
        // Nothing was reported deleted: the store was stale, never falsely empty.
        assert_eq!(
            drain(&mut events),
            [
                "applied a@1 (old None)",
                "applied a@3 (old Some(\"1\"))",
                "applied p@4 (old None)"
            ]
        );
        assert_eq!(informer.store().len(), 2);
        // Recovered: no more restarts.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(started.lock().unwrap().len(), 3);
        assert_eq!(informer.restarts(), 2);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_keeps_the_stored_version_and_the_backoff_starts_over_once_a_list_completes() {
        use watcher::Event::*;
        let informer = informer();
        let (watch, started) = scripted(vec![
            vec![
                Ok(Init),
                Ok(InitApply(config_map("p", "1"))),
                Ok(InitDone),
                Ok(Apply(poisoned("p", "2"))),
            ],
            vec![
                Ok(Init),
                Ok(InitApply(config_map("p", "3"))),
                Ok(InitDone),
                Ok(Delete(poisoned("p", "4"))),
            ],
            vec![Ok(Init), Ok(InitApply(poisoned("p", "4")))],
            vec![Ok(Init), Ok(InitDone)],
        ]);
        let token = CancellationToken::new();
        let task = tokio::spawn(informer.clone().run(watch, fragile_transform(), token.clone()));

        until(|| informer.restarts() == 1).await;
        let kept = informer
            .store()
            .get(Some("default"), "p")
            .expect("the stored version is kept");
        assert_eq!(kept.metadata.resource_version.as_deref(), Some("1"));
        until(|| informer.store().is_empty()).await;
        assert_eq!(informer.restarts(), 3);
        assert_eq!(
            gaps(&started),
            [
                Duration::from_millis(500),
                Duration::from_millis(500),
                Duration::from_secs(1)
            ]
        );
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_transform_is_logged_with_where_it_happened_and_no_content() {
        use watcher::Event::*;
        let logs = Logs::capture();
        let informer = informer();
        let mut secret = poisoned("p", "1");
        secret.data = Some([("password".to_owned(), "hunter2".to_owned())].into());
        let (watch, _) = scripted(vec![vec![Ok(Init), Ok(InitApply(secret))]]);
        let token = CancellationToken::new();
        // The test runtime has one thread: the task runs where the subscriber is set.
        let task = tokio::spawn(informer.clone().run(watch, fragile_transform(), token.clone()));
        until(|| informer.restarts() == 1).await;
        token.cancel();
        task.await.unwrap();
        logs.assert_one_error(
            &[
                "ERROR",
                "cluster=eu-1",
                "resource=ConfigMap (v1)",
                "callback=\"transform\"",
                "namespace=\"default\"",
                "name=\"p\"",
            ],
            &["hunter2", "poisoned"],
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_during_the_backoff_stops_the_informer_at_once() {
        use watcher::Event::*;
        let informer = informer();
        let (watch, started) = scripted(vec![vec![Ok(Init), Ok(InitApply(poisoned("p", "1")))]]);
        let token = CancellationToken::new();
        let task = tokio::spawn(informer.clone().run(watch, fragile_transform(), token.clone()));
        while informer.restarts() == 0 {
            tokio::task::yield_now().await;
        }
        let cancelled = tokio::time::Instant::now();
        token.cancel();
        task.await.unwrap();
        assert_eq!(cancelled.elapsed(), Duration::ZERO);
        assert!(informer.is_stopped());
        assert_eq!(started.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_index_extractor_neither_stops_nor_restarts_the_informer() {
        use watcher::Event::*;
        let informer = informer();
        let extractor: super::super::index::Extractor<ConfigMap> = Arc::new(|cm: &ConfigMap| {
            if is_poisoned(cm) {
                panic!("poisoned");
            }
            vec!["all".to_owned()]
        });
        informer.store().add_index("all", extractor).unwrap();
        let (watch, started) = scripted(vec![vec![
            Ok(Init),
            Ok(InitApply(poisoned("p", "1"))),
            Ok(InitApply(config_map("a", "1"))),
            Ok(InitDone),
            Ok(Apply(config_map("p", "2"))),
            Ok(Apply(poisoned("a", "2"))),
        ]]);
        let token = CancellationToken::new();
        let task = tokio::spawn(informer.clone().run(
            watch,
            Prepare {
                strip_managed_fields: false,
                transform: None,
            },
            token.clone(),
        ));
        until(|| {
            informer
                .store()
                .get(Some("default"), "a")
                .is_some_and(|a| is_poisoned(&a))
        })
        .await;
        assert_eq!(informer.store().len(), 2);
        let filed: Vec<_> = informer
            .store()
            .by_index("all", "all")
            .unwrap()
            .iter()
            .filter_map(|cm| cm.metadata.name.clone())
            .collect();
        assert_eq!(filed, ["p"]);
        assert_eq!(informer.restarts(), 0);
        assert!(informer.is_synced());
        assert_eq!(started.lock().unwrap().len(), 1);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn dropping_the_task_unstarted_marks_the_informer_stopped() {
        let informer = informer();
        let prepare = Prepare {
            strip_managed_fields: false,
            transform: None,
        };
        let future = informer.clone().run(
            once(futures::stream::pending()),
            prepare,
            CancellationToken::new(),
        );
        drop(future);
        assert!(informer.is_stopped());
    }
}
