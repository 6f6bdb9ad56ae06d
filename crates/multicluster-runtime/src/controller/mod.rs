//! Controllers: the machinery between watch events and a reconciler.
//!
//! A controller keeps one [`queue::WorkQueue`] keyed by `(cluster, object)`. The
//! sources of every engaged cluster add to it; the controller leases items from it,
//! at most `concurrency` at once, and reconciles them. The queue is what keeps one
//! noisy cluster from starving the others, and what guarantees that a key is never
//! reconciled twice at once.
//!
//! When a cluster is engaged, its items are held in the queue until every informer
//! the controller follows for it has synced: the primary type's and those of its
//! [`owns`](ControllerBuilder::owns) and [`watches`](ControllerBuilder::watches) in
//! the cluster, and those of its [`watches_local`](ControllerBuilder::watches_local)
//! in the local cluster. A reconciler reading any of them, even through the raw
//! [`Store`](crate::cache::Store), never mistakes "not listed yet" for "absent";
//! see [`ReconcileRequest`] for the reads this does not cover.
//!
//! When a cluster is replaced by a new instance, its queued items, delays and
//! backoff carry over to the new instance (held until the new caches have synced).
//! When it is disengaged, no reconcile for it starts any more (the check is
//! made when an item is leased, against the cluster's token, which is cancelled
//! before the provider's removal returns), its queued items are dropped and its
//! watches stop. A reconcile already running for it runs to its end; see
//! `docs/decisions/cancellation.md`.
//!
//! While the manager's [health probes](crate::manager#cluster-health) find a cluster
//! unhealthy, its items are held in the queue the same way, for a reason of their
//! own ([`PauseReason::Unhealthy`]): they keep their delays and backoff, and no
//! reconcile of the cluster starts (one already running runs to its end). Once the cluster is healthy again, they are let through and
//! every cached object of the cluster is enqueued once, since watch events may have
//! been missed meanwhile.

mod builder;
mod engage;
pub(crate) mod metrics;
pub mod predicate;
pub mod queue;
mod reconcile;
mod request;
mod source;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cache::ObjectKey;
use crate::cluster::engagement::{Engage, Engagements};
use crate::cluster::{Cluster, ClusterHealth, ClusterName};
use crate::error::CutShort;
use crate::error::Result;
use crate::multicluster::Aware;
use crate::multicluster::Engagement;
use crate::runnable::Runnable;
use metrics::{ControllerFamilies, ControllerMetrics, Reconciled};

pub use builder::ControllerBuilder;
pub use engage::{ClusterFilter, EngageOptions};
pub use predicate::Predicate;
pub use reconcile::ReconcileRequest;
pub use request::{Action, Request};
pub use source::{MapContext, Mapper};

use queue::{PauseReason, QueueConfig, QueueView, WorkQueue};
use reconcile::{Outcome, Reader, Reconciler};
use request::Next;
use source::{Sink, Source};

/// A controller: reconciles objects of one type across every cluster it is engaged
/// with. Built with [`Controller::builder`]; runs as part of a [`Manager`](crate::Manager).
pub struct Controller {
    name: String,
    /// Whether the manager has a provider (decides the default for the local cluster).
    has_provider: bool,
    /// The manager's own cluster, where the local watches run.
    local: Arc<Cluster>,
    /// The shutdown and leadership signals of whoever runs the controller.
    run_control: Arc<dyn RunControl>,
    engage: EngageOptions,
    /// The watches run in each engaged cluster, the primary type's first.
    sources: Vec<Arc<dyn Source>>,
    /// The watches run in the local cluster only (`watches_local`).
    local_sources: Vec<Arc<dyn Source>>,
    reconciler: Arc<dyn Reconciler>,
    sink: Sink,
    /// Outside triggers (`reconcile_on`, `reconcile_all_on`), started by `run`.
    triggers: Mutex<Vec<Trigger>>,
    /// The engaged clusters, each with whether the caches it waits for have synced.
    clusters: Mutex<Engagements<PerCluster>>,
    /// Every task the controller spawns; `run` returns once they have all ended.
    tasks: TaskTracker,
    /// Cancelled when `run` ends: stops every task the controller spawned.
    stopping: CancellationToken,
    /// The controller's own handle, for the tasks it spawns.
    me: Weak<Controller>,
    metrics: Arc<ControllerMetrics>,
}

/// What the controller keeps beside each engaged cluster.
struct PerCluster {
    /// Whether every informer its reconciles wait for has synced: the sources' in
    /// the cluster and the local sources'.
    synced: bool,
    /// What the manager handed over with the cluster: its ownership term (work
    /// enters it) and where readiness learns whether the caches have synced.
    engagement: Engagement,
    /// Where the reconciler reads the cluster's primary objects, looked up once.
    reader: Reader,
}

/// What a controller needs from whoever runs it, beyond each engagement: handed
/// over by the builder, so that the controller knows nothing of the manager.
pub(crate) struct Host {
    /// Whether the manager has a provider.
    pub has_provider: bool,
    /// The manager's own cluster.
    pub local: Arc<Cluster>,
    /// The registry's controller families (one per registry).
    pub families: Arc<ControllerFamilies>,
    /// The shutdown and leadership signals.
    pub run_control: Arc<dyn RunControl>,
}

/// How the run that a controller is part of ends: the graceful shutdown's time
/// limit, and whether (and when) leadership was lost.
pub(crate) trait RunControl: Send + Sync {
    /// How long reconciles in flight may take once the run stops.
    fn graceful_shutdown_timeout(&self) -> std::time::Duration;
    /// Resolves when leadership is lost; never without leader election.
    fn leadership_lost(&self) -> futures::future::BoxFuture<'static, ()>;
    /// Whether leader-only work that stops now will be started again (the lease
    /// was lost and the manager campaigns again).
    fn campaigns_again(&self) -> bool;
}

/// The component name under which a controller reports its caches' sync.
fn sync_component(controller: &str) -> String {
    format!("controller {controller}")
}

/// Everything the builder decided.
pub(crate) struct Settings {
    pub name: String,
    pub engage: EngageOptions,
    pub queue: QueueConfig,
    pub sources: Vec<Arc<dyn Source>>,
    pub local_sources: Vec<Arc<dyn Source>>,
    pub reconciler: Arc<dyn Reconciler>,
    pub triggers: Vec<Trigger>,
}

/// A stream from outside that asks for reconciles.
pub(crate) enum Trigger {
    /// Each item is one request (`reconcile_on`).
    Requests(BoxStream<'static, Request>),
    /// Each item asks for every cached primary object of every engaged cluster
    /// (`reconcile_all_on`).
    All(BoxStream<'static, ()>),
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name)
            .field("clusters", &self.cluster_names())
            .finish()
    }
}

impl Controller {
    pub(crate) fn new(host: Host, settings: Settings) -> Arc<Self> {
        let max_concurrent = settings.queue.max_concurrency();
        let sink = Sink {
            queue: WorkQueue::with_config(settings.queue),
            clusters: Arc::new(RwLock::new(Arc::from(Vec::new()))),
        };
        let metrics = host
            .families
            .controller(&settings.name, max_concurrent, sink.queue.view());
        sink.queue.observe(metrics.queue_observer());
        Arc::new_cyclic(|me| Controller {
            name: settings.name,
            has_provider: host.has_provider,
            local: host.local,
            run_control: host.run_control,
            engage: settings.engage,
            sources: settings.sources,
            local_sources: settings.local_sources,
            reconciler: settings.reconciler,
            sink,
            triggers: Mutex::new(settings.triggers),
            clusters: Mutex::default(),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            me: me.clone(),
            metrics,
        })
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The clusters this controller works on right now.
    pub fn cluster_names(&self) -> Vec<ClusterName> {
        self.lock().names()
    }

    /// A read-only view of the controller's queue, for metrics, health checks and
    /// tests. Requests come in through the controller's watches and triggers
    /// ([`reconcile_on`](ControllerBuilder::reconcile_on)), never by hand.
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
    /// let controller = Controller::builder::<ConfigMap>(&manager)
    ///     .register(reconcile, |_, _, _| Action::backoff(), Arc::new(()))
    ///     .await?;
    /// let queue = controller.queue();
    /// assert_eq!((queue.len(), queue.processing_len()), (0, 0));
    /// assert!(!queue.is_paused(&"eu-1".into()));
    /// # Ok(()) }
    /// ```
    pub fn queue(&self) -> QueueView<ClusterName, ObjectKey> {
        self.sink.queue.view()
    }

    /// Enqueues every cached primary object of every engaged cluster whose caches
    /// have synced; a cluster still syncing enqueues all of its objects when they have.
    fn enqueue_all(&self) {
        let synced: Vec<(ClusterName, Arc<Cluster>)> = self
            .lock()
            .live()
            .filter(|(_, engaged)| engaged.value.synced)
            .map(|(name, engaged)| (name.clone(), engaged.cluster.clone()))
            .collect();
        for (name, cluster) in synced {
            for key in self.reconciler.cached_keys(&cluster) {
                self.sink.queue.add(name.clone(), key);
            }
        }
    }

    /// Feeds the queue from `trigger` until it ends or the controller stops.
    async fn follow(me: Weak<Controller>, trigger: Trigger) {
        match trigger {
            Trigger::Requests(mut requests) => {
                while let Some(request) = requests.next().await {
                    let Some(controller) = me.upgrade() else { return };
                    // A cluster this controller does not work on is dropped when the
                    // item is leased, quietly, like the requests of a removed cluster.
                    controller.sink.queue.add(request.cluster, request.key);
                }
            }
            Trigger::All(mut ticks) => {
                while ticks.next().await.is_some() {
                    let Some(controller) = me.upgrade() else { return };
                    controller.enqueue_all();
                }
            }
        }
    }

    /// Whether `name` is engaged, and its instance if the caches it waits for have
    /// synced.
    fn engaged(&self, name: &ClusterName) -> Option<Option<(Arc<Cluster>, Engagement, Reader)>> {
        self.lock().get(name).map(|e| {
            e.value.synced.then(|| {
                (
                    e.cluster.clone(),
                    e.value.engagement.clone(),
                    e.value.reader.clone(),
                )
            })
        })
    }

    fn lock(&self) -> MutexGuard<'_, Engagements<PerCluster>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the current cluster list to mappers.
    fn publish_clusters(&self, clusters: &Engagements<PerCluster>) {
        let names: Arc<[ClusterName]> = clusters.all().map(|(name, _)| name.clone()).collect();
        *self.sink.clusters.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// Spawns `work` as one of the controller's tasks, ended by `token` or by the
    /// controller stopping, whichever comes first.
    fn spawn(&self, token: CancellationToken, work: impl Future<Output = ()> + Send + 'static) {
        let stopping = self.stopping.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = token.cancelled() => {}
                () = stopping.cancelled() => {}
                () = work => {}
            }
        });
    }

    /// Lets the items of `name` through once the cache of engagement `generation`
    /// has synced, unless another instance replaced it meanwhile.
    fn cluster_synced(&self, name: &ClusterName, generation: u64) {
        let mut clusters = self.lock();
        if let Some(engaged) = clusters.get_any_mut(name)
            && engaged.generation == generation
        {
            engaged.value.synced = true;
            // Under the lock, so that a replacement's pause cannot come in between.
            self.sink.queue.resume_cluster(name, PauseReason::Syncing);
            engaged
                .value
                .engagement
                .sync_board()
                .synced(&sync_component(&self.name));
            tracing::debug!(controller = self.name, cluster = %name, "cache synced; reconciling");
        }
    }

    /// Pauses or resumes `name` for being unhealthy. Called under the clusters lock,
    /// so that an engagement of another instance cannot come in between.
    fn hold_unhealthy(&self, name: &ClusterName, healthy: bool) {
        if healthy {
            self.sink.queue.resume_cluster(name, PauseReason::Unhealthy);
        } else {
            self.sink.queue.pause_cluster(name, PauseReason::Unhealthy);
        }
    }

    /// Follows the health of engagement `generation` of `name` (its probes run in
    /// the manager) until the engagement ends; `healthy` is what was applied at
    /// engagement.
    async fn follow_health(
        me: &Weak<Controller>,
        name: &ClusterName,
        generation: u64,
        mut health: watch::Receiver<ClusterHealth>,
        mut healthy: bool,
    ) {
        while health.changed().await.is_ok() {
            let now = health.borrow_and_update().is_healthy();
            if now == healthy {
                continue;
            }
            healthy = now;
            let Some(controller) = me.upgrade() else { return };
            controller.health_changed(name, generation, healthy);
        }
    }

    /// Holds `name`'s items while engagement `generation` is unhealthy; on recovery
    /// lets them through and enqueues every cached object of the cluster (a resync:
    /// events may have been missed meanwhile). Ignored if another instance replaced
    /// that engagement.
    fn health_changed(&self, name: &ClusterName, generation: u64, healthy: bool) {
        let resync = {
            let clusters = self.lock();
            let Some(engaged) = clusters.get(name).filter(|e| e.generation == generation) else {
                return;
            };
            self.hold_unhealthy(name, healthy);
            // A cache still syncing enqueues everything once it has synced.
            (healthy && engaged.value.synced).then(|| engaged.cluster.clone())
        };
        // The manager logs the change once; this is the controller's share of it.
        if healthy {
            tracing::debug!(controller = self.name, cluster = %name, "cluster healthy; reconciling again");
        } else {
            tracing::debug!(controller = self.name, cluster = %name, "cluster unhealthy; its reconciles wait");
        }
        if let Some(cluster) = resync {
            for key in self.reconciler.cached_keys(&cluster) {
                self.sink.queue.add(name.clone(), key);
            }
        }
    }

    /// Removes `name` once its engagement `generation` has ended, unless a new
    /// instance has replaced it meanwhile (whose requests are still wanted).
    fn disengage(&self, name: &ClusterName, generation: u64) {
        let mut clusters = self.lock();
        if clusters.disengage(name, generation).is_some() {
            self.publish_clusters(&clusters);
            // Under the lock, so that a re-engagement's pause cannot come in between.
            self.sink.queue.remove_cluster(name);
            self.metrics.cluster_disengaged(name);
            drop(clusters);
            tracing::debug!(controller = self.name, cluster = %name, "cluster disengaged");
        }
    }

    /// Reconciles `request`, whose item the caller has leased; the caller ends the
    /// lease afterwards (a requeue asked for here is applied then).
    async fn process(&self, request: Request) {
        let (cluster, engagement, reader) = match self.engaged(&request.cluster) {
            Some(Some(engaged)) => engaged,
            Some(None) => {
                // Replaced after the item was leased: the new instance's cache has not
                // synced yet. Back into the (paused) queue, without a failure.
                self.sink.queue.add(request.cluster.clone(), request.key.clone());
                return;
            }
            None => {
                // Removed, unknown, or not for this controller: end quietly, no retry.
                tracing::debug!(controller = self.name, %request, "cluster not engaged; request dropped");
                self.sink.queue.forget(&request.cluster, &request.key);
                return;
            }
        };
        // With sharding: leave to work on the cluster, which a hand-over waits for.
        let Some(work) = engagement.enter_work() else {
            tracing::debug!(controller = self.name, %request, "cluster not owned here; request dropped");
            self.sink.queue.forget(&request.cluster, &request.key);
            return;
        };
        let span = tracing::info_span!(
            "reconcile",
            controller = self.name,
            cluster = %request.cluster,
            namespace = request.namespace().unwrap_or(""),
            name = request.name(),
            reconcile_id = %format!("{:016x}", next_reconcile_id()),
        );
        let reconciler = self.reconciler.clone();
        let attempt = {
            let request = request.clone();
            // Called inside the future, so a panic before its first await is caught too.
            async move { reconciler.reconcile(request, cluster, &reader).await }
        };
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            biased;
            outcome = AssertUnwindSafe(attempt).catch_unwind().instrument(span.clone()) => outcome,
            () = work.cut() => {
                // The fence was lost: another replica may own the cluster soon.
                span.in_scope(|| tracing::warn!("cluster's shard lost; reconcile cancelled"));
                return;
            }
        };
        drop(work);
        self.metrics
            .reconciled(&request.cluster, reconciled(&outcome), started.elapsed());
        let next = span.in_scope(|| match outcome {
            Ok(Outcome::Done(action)) => {
                self.sink.queue.forget(&request.cluster, &request.key);
                action.0
            }
            Ok(Outcome::Failed { action, error }) => {
                tracing::warn!(%error, "reconcile failed");
                action.0
            }
            Err(panic) => {
                tracing::error!(
                    panic = %panic_message(panic.as_ref()),
                    "reconciler panicked; retrying with backoff"
                );
                Next::Backoff
            }
        });
        // A cluster removed meanwhile gets no retry. Otherwise schedule while the
        // lease is held: the queue re-adds the key when the lease ends.
        if self.engaged(&request.cluster).is_some() {
            self.schedule(&request, next);
        }
    }

    fn schedule(&self, request: &Request, next: Next) {
        let queue = &self.sink.queue;
        match next {
            Next::AwaitChange => {}
            Next::RequeueAfter(delay) => queue.add_after(request.cluster.clone(), request.key.clone(), delay),
            Next::Backoff => queue.add_rate_limited(request.cluster.clone(), request.key.clone()),
        }
    }
}

/// What a controller does for one engagement of a cluster, run as **one task** per
/// engaged cluster (the controller's `TaskTracker` owns it): feeding the queue
/// from each of its sources, letting the cluster's items through once every
/// informer they wait for has synced, following its health, and removing the
/// cluster when the engagement ends.
///
/// One task that selects over these, rather than a task for each: a controller
/// engaged with thousands of clusters (e.g. one per namespace) paid a task header,
/// a cancellation wait and a handle on the controller for each of four tasks per
/// cluster (v04, issue 21; `docs/decisions/memory.md`).
struct EngagedWork {
    name: ClusterName,
    generation: u64,
    /// The controller's token for this engagement: cancelled when the cluster is
    /// removed or replaced.
    own: CancellationToken,
    /// Each source's feed from the cluster.
    feeds: Vec<BoxFuture<'static, ()>>,
    /// Each informer the cluster's reconciles wait for.
    waits: Vec<BoxFuture<'static, bool>>,
    /// The cluster's health as the manager probes it, and whether it was healthy
    /// at engagement.
    health: Option<(watch::Receiver<ClusterHealth>, bool)>,
}

impl EngagedWork {
    /// Runs until the engagement ends, then disengages the cluster; returns at once,
    /// without disengaging, when the controller stops.
    ///
    /// The feeds and the health follower end with the engagement (dropped, as the
    /// token is cancelled), before the cluster is disengaged. A feed that ends by
    /// itself (its cache stopped) leaves the others running.
    async fn run(self, me: Weak<Controller>, stopping: CancellationToken) {
        let EngagedWork {
            name,
            generation,
            own,
            feeds,
            waits,
            health,
        } = self;
        // Each future is made where it is stored (in the select, in the join), not
        // bound first and moved: a moved future keeps its first place in the task
        // too, and this task is kept for every engaged cluster.
        let ended = tokio::select! {
            biased;
            () = stopping.cancelled() => false,
            () = own.cancelled() => true,
            () = Self::work(&me, &name, generation, feeds, waits, health) => true,
        };
        if ended && let Some(controller) = me.upgrade() {
            controller.disengage(&name, generation);
        }
    }

    /// Feeds the queue, lets the cluster's items through once its informers have
    /// synced and follows its health; never returns (the engagement's end stops it).
    async fn work(
        me: &Weak<Controller>,
        name: &ClusterName,
        generation: u64,
        feeds: Vec<BoxFuture<'static, ()>>,
        waits: Vec<BoxFuture<'static, bool>>,
        health: Option<(watch::Receiver<ClusterHealth>, bool)>,
    ) {
        futures::join!(
            Self::feed(feeds),
            // Boxed: it ends once the caches have synced, and its space goes with
            // it instead of staying in the task for the engagement's life.
            Box::pin(Self::wait_synced(me, name, generation, waits)),
            async {
                if let Some((health, healthy)) = health {
                    Controller::follow_health(me, name, generation, health, healthy).await;
                }
            },
        );
        // Nothing left to do but wait for the end of the engagement.
        std::future::pending::<()>().await;
    }

    /// Runs the sources' feeds until each has ended (its cache stopped).
    async fn feed(mut feeds: Vec<BoxFuture<'static, ()>>) {
        std::future::poll_fn(|cx| {
            feeds.retain_mut(|feed| feed.as_mut().poll(cx).is_pending());
            if feeds.is_empty() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }

    /// Lets the items of `name` through once every informer they wait for has
    /// synced; nothing if a cache stopped first.
    async fn wait_synced(
        me: &Weak<Controller>,
        name: &ClusterName,
        generation: u64,
        waits: Vec<BoxFuture<'static, bool>>,
    ) {
        for synced in waits {
            if !synced.await {
                return;
            }
        }
        if let Some(controller) = me.upgrade() {
            controller.cluster_synced(name, generation);
        }
    }
}

#[async_trait]
impl Aware for Controller {
    /// Starts the controller's watches in `cluster` and reconciles its objects once
    /// every informer the controller follows for it has synced (its watches there
    /// and the local watches that fan out to it).
    ///
    /// A new instance under an engaged name takes over the name's queued items,
    /// delays and backoff; the old instance's watches stop. An engagement whose
    /// token is already cancelled is ignored.
    async fn engage(&self, token: CancellationToken, name: ClusterName, cluster: Arc<Cluster>) -> Result<()> {
        self.engage_with(Engagement::new(name, cluster, token)).await
    }

    /// As [`engage`](Self::engage), following the cluster's health (its reconciles
    /// wait while it is unhealthy), working under the replica's ownership term
    /// (with sharding) and reporting the caches' sync for readiness.
    async fn engage_with(&self, engagement: Engagement) -> Result<()> {
        let (name, cluster) = (engagement.name.clone(), engagement.cluster.clone());
        if !self.engage.accepts(&name, self.has_provider) {
            return Ok(());
        }
        let own = engagement.token.child_token();
        let mut health = engagement.health.clone();
        let board = engagement.sync_board().clone();
        let per_cluster = PerCluster {
            synced: false,
            engagement,
            reader: self.reconciler.reader(&cluster),
        };
        let (generation, healthy) = {
            let mut clusters = self.lock();
            match clusters.engage(&name, cluster.clone(), own.clone(), per_cluster) {
                Engage::Stale | Engage::Unchanged => return Ok(()),
                Engage::New { generation, replaced } => {
                    match replaced {
                        // A removed instance whose disengage has not run yet: this is a
                        // fresh start, so nothing of the removed one carries over.
                        Some(old) if old.token.is_cancelled() => {
                            self.sink.queue.remove_cluster(&name);
                            self.metrics.cluster_disengaged(&name);
                        }
                        // A live instance replaced: its disengage finds a newer
                        // generation and keeps the queue for the new one.
                        Some(old) => old.token.cancel(),
                        None => {}
                    }
                    self.publish_clusters(&clusters);
                    // Before the first add, so that the queue's metrics count it.
                    self.metrics.cluster_engaged(&name);
                    // Nothing of the name is reconciled until the new cache has synced;
                    // readiness hears of it only for a new engagement (the same one
                    // again is a no-op, and must not undo its "synced").
                    self.sink.queue.pause_cluster(&name, PauseReason::Syncing);
                    board.syncing(&sync_component(&self.name));
                    // Nor while this instance is unhealthy; a replaced instance's
                    // health does not carry over.
                    let healthy = health.as_mut().is_none_or(|h| h.borrow_and_update().is_healthy());
                    self.hold_unhealthy(&name, healthy);
                    (generation, healthy)
                }
            }
        };
        tracing::debug!(controller = self.name, cluster = %name, "cluster engaged");
        // The cluster's reconciles may read any informer the controller follows for
        // it: its own watches there (the primary's first) and the local watches
        // that fan out to it. Hold them until all of these have listed, so that no
        // read takes "not listed yet" for "absent".
        let local = &self.local;
        let waits: Vec<_> = self
            .sources
            .iter()
            .map(|source| source.synced(&cluster))
            .chain(self.local_sources.iter().map(|source| source.synced(local)))
            .collect();
        let feeds: Vec<_> = self
            .sources
            .iter()
            .map(|source| source.run(cluster.clone(), self.sink.clone()))
            .collect();
        let work = EngagedWork {
            name: name.clone(),
            generation,
            own,
            feeds,
            waits,
            health: health.map(|health| (health, healthy)),
        };
        self.tasks.spawn(work.run(self.me.clone(), self.stopping.clone()));
        // Local objects that fan out to clusters: the new cluster gets its share now.
        for source in &self.local_sources {
            let requests = source
                .snapshot(local, &self.sink)
                .into_iter()
                .filter(|r| r.cluster == name)
                .collect();
            self.sink.push(requests);
        }
        Ok(())
    }
}

#[async_trait]
impl Runnable for Controller {
    fn name(&self) -> String {
        format!("controller {}", self.name)
    }

    /// Reconciles until `token` is cancelled, then stops leasing, gives the
    /// reconciles in flight up to the manager's
    /// [graceful shutdown timeout](crate::Manager::with_graceful_shutdown_timeout) (none
    /// once the manager lost its lease), cancels those still running, and stops
    /// every task the controller started.
    ///
    /// # Errors
    /// [`Error::ShutdownTimedOut`](crate::Error::ShutdownTimedOut) naming the
    /// reconciles cut short by the timeout.
    async fn run(&self, token: CancellationToken) -> Result<()> {
        let Some(this) = self.me.upgrade() else {
            return Ok(());
        };
        let local = &self.local;
        for source in &self.local_sources {
            self.spawn(token.clone(), source.run(local.clone(), self.sink.clone()));
        }
        // Trigger streams can be followed once: they run until the controller stops,
        // not only for this term of leadership.
        let triggers = std::mem::take(&mut *self.triggers.lock().unwrap_or_else(|p| p.into_inner()));
        for trigger in triggers {
            self.spawn(
                self.stopping.child_token(),
                Controller::follow(self.me.clone(), trigger),
            );
        }
        let (reconciles, cut) = (TaskTracker::new(), CancellationToken::new());
        let in_flight: Arc<Mutex<HashMap<u64, Request>>> = Arc::default();
        loop {
            let lease = tokio::select! {
                () = token.cancelled() => break,
                lease = self.sink.queue.next() => lease,
            };
            let Some(lease) = lease else { break };
            let (this, cut, in_flight, token) = (this.clone(), cut.clone(), in_flight.clone(), token.clone());
            // A worker: reconciles its item, then goes on with the next ready one
            // in the same slot (no spawn and no wake-up per item under a backlog),
            // until none is ready or the controller stops leasing.
            let worker = reconciles.track_future(async move {
                let mut lease = lease;
                loop {
                    let id = next_reconcile_id();
                    let request = Request::for_key(lease.cluster().clone(), lease.key().clone());
                    lock(&in_flight).insert(id, request.clone());
                    tokio::select! {
                        biased;
                        () = cut.cancelled() => return,
                        () = this.process(request) => drop(lock(&in_flight).remove(&id)),
                    }
                    // Reconciles that never wait would otherwise run a whole backlog
                    // in one poll and hold the thread from every other task (the
                    // cache's watches among them): yield when the task's budget is
                    // spent, as a task per item did at each item.
                    tokio::task::coop::consume_budget().await;
                    if token.is_cancelled() {
                        return;
                    }
                    match lease.next_ready() {
                        Some(next) => lease = next,
                        None => return,
                    }
                }
            });
            drop(self.tasks.spawn(worker));
        }
        // Leadership lost and the manager campaigns again: keep the queue and the
        // watches for the next term.
        let again = self.run_control.campaigns_again();
        if !again {
            self.sink.queue.shutdown();
            self.stopping.cancel();
        }
        reconciles.close();
        let timeout = self.run_control.graceful_shutdown_timeout();
        let lost = tokio::select! {
            () = reconciles.wait() => None,
            () = tokio::time::sleep(timeout) => Some(false),
            () = self.run_control.leadership_lost() => Some(true),
        };
        let mut result = Ok(());
        if let Some(lost) = lost {
            cut.cancel();
            reconciles.wait().await;
            let mut cut_short: Vec<Request> = lock(&in_flight).drain().map(|(_, r)| r).collect();
            cut_short.sort();
            if !cut_short.is_empty() {
                let names = cut_short
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                if lost {
                    tracing::warn!(
                        controller = self.name,
                        cut_short = names,
                        "leadership lost; reconciles cancelled"
                    );
                } else {
                    tracing::error!(
                        controller = self.name,
                        ?timeout,
                        cut_short = names,
                        "graceful shutdown timed out; reconciles cancelled"
                    );
                }
            }
            if again {
                for request in &cut_short {
                    self.sink.queue.add(request.cluster.clone(), request.key.clone());
                }
            } else if !lost && !cut_short.is_empty() {
                result = Err(crate::Error::ShutdownTimedOut {
                    timeout,
                    cut_short: cut_short
                        .into_iter()
                        .map(|request| CutShort::new(self.name.clone(), request.cluster, request.key))
                        .collect(),
                });
            }
        }
        if !again {
            self.tasks.close();
            self.tasks.wait().await;
        }
        result
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a reconcile ended, for the metrics.
fn reconciled(outcome: &std::thread::Result<Outcome>) -> Reconciled {
    match outcome {
        Ok(Outcome::Done(action)) => match action.0 {
            Next::AwaitChange => Reconciled::Success,
            Next::RequeueAfter(_) => Reconciled::RequeueAfter,
            Next::Backoff => Reconciled::Requeue,
        },
        Ok(Outcome::Failed { .. }) => Reconciled::Error,
        Err(_) => Reconciled::Panic,
    }
}

fn next_reconcile_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}
