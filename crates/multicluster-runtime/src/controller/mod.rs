//! Controllers: the machinery between watch events and a reconciler.
//!
//! A controller keeps one [`queue::WorkQueue`] keyed by `(cluster, object)`. The
//! sources of every engaged cluster add to it; the controller leases items from it,
//! at most `concurrency` at once, and reconciles them. The queue is what keeps one
//! noisy cluster from starving the others, and what guarantees that a key is never
//! reconciled twice at once.
//!
//! When a cluster is disengaged, no reconcile for it starts any more (the check is
//! made when an item is leased, against the cluster's token, which is cancelled
//! before the provider's removal returns), its queued items are dropped and its
//! watches stop. A reconcile already running for it runs to its end; see
//! `docs/decisions/cancellation.md`.

mod builder;
mod engage;
pub mod predicate;
pub mod queue;
mod reconcile;
mod request;
mod source;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use async_trait::async_trait;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::ObjectKey;
use crate::cluster::{Cluster, ClusterName};
use crate::error::Result;
use crate::manager::{Manager, Runnable};
use crate::multicluster::Aware;

pub use builder::ControllerBuilder;
pub use engage::{ClusterFilter, EngageOptions};
pub use predicate::Predicate;
pub use reconcile::ReconcileRequest;
pub use request::{Action, Request};
pub use source::{MapContext, Mapper};

use queue::{Lease, QueueConfig, WorkQueue};
use reconcile::{Outcome, Reconciler};
use request::Next;
use source::{Sink, Source};

/// A controller: reconciles objects of one type across every cluster it is engaged
/// with. Built with [`Controller::builder`]; runs as part of a [`Manager`].
pub struct Controller {
    name: String,
    manager: Manager,
    engage: EngageOptions,
    sources: Vec<Arc<dyn Source>>,
    local_sources: Vec<Arc<dyn Source>>,
    reconciler: Arc<dyn Reconciler>,
    sink: Sink,
    clusters: Mutex<HashMap<ClusterName, Engaged>>,
    next_id: AtomicU64,
    /// The controller's own handle, for the tasks it spawns.
    me: Weak<Controller>,
}

/// Everything the builder decided.
pub(crate) struct Settings {
    pub name: String,
    pub engage: EngageOptions,
    pub queue: QueueConfig,
    pub sources: Vec<Arc<dyn Source>>,
    pub local_sources: Vec<Arc<dyn Source>>,
    pub reconciler: Arc<dyn Reconciler>,
}

/// One cluster the controller works on.
struct Engaged {
    cluster: Arc<Cluster>,
    token: CancellationToken,
    id: u64,
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
    fn new(manager: Manager, settings: Settings) -> Arc<Self> {
        let sink = Sink {
            queue: WorkQueue::with_config(settings.queue),
            clusters: Arc::new(RwLock::new(Arc::from(Vec::new()))),
        };
        Arc::new_cyclic(|me| Controller {
            name: settings.name,
            manager,
            engage: settings.engage,
            sources: settings.sources,
            local_sources: settings.local_sources,
            reconciler: settings.reconciler,
            sink,
            clusters: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            me: me.clone(),
        })
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The clusters this controller works on right now.
    pub fn cluster_names(&self) -> Vec<ClusterName> {
        self.lock()
            .iter()
            .filter(|(_, e)| !e.token.is_cancelled())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The controller's queue, for metrics and tests.
    pub fn queue(&self) -> &WorkQueue<ClusterName, ObjectKey> {
        &self.sink.queue
    }

    /// The engaged instance of `name`, if its engagement is live.
    fn engaged(&self, name: &ClusterName) -> Option<Arc<Cluster>> {
        self.lock()
            .get(name)
            .filter(|e| !e.token.is_cancelled())
            .map(|e| e.cluster.clone())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClusterName, Engaged>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the current cluster list to mappers.
    fn publish_clusters(&self, clusters: &HashMap<ClusterName, Engaged>) {
        let names: Arc<[ClusterName]> = clusters.keys().cloned().collect();
        *self.sink.clusters.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// Removes `name` once its engagement `id` has ended, unless a new instance has
    /// replaced it meanwhile (whose requests are still wanted).
    fn disengage(&self, name: &ClusterName, id: u64) {
        let mut clusters = self.lock();
        if clusters.get(name).is_some_and(|e| e.id == id) {
            clusters.remove(name);
            self.publish_clusters(&clusters);
            drop(clusters);
            self.sink.queue.remove_cluster(name);
            tracing::info!(controller = self.name, cluster = %name, "cluster disengaged");
        }
    }

    async fn process(self: Arc<Self>, lease: Lease<ClusterName, ObjectKey>) {
        let request = Request::for_key(lease.cluster().clone(), lease.key().clone());
        let Some(cluster) = self.engaged(&request.cluster) else {
            // Removed, unknown, or not for this controller: end quietly, no retry.
            tracing::debug!(controller = self.name, %request, "cluster not engaged; request dropped");
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
            async move { reconciler.reconcile(request, cluster).await }
        };
        let outcome = AssertUnwindSafe(attempt)
            .catch_unwind()
            .instrument(span.clone())
            .await;
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
                    panic = panic_message(panic.as_ref()),
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
        drop(lease);
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

#[async_trait]
impl Aware for Controller {
    async fn engage(&self, token: CancellationToken, name: ClusterName, cluster: Arc<Cluster>) -> Result<()> {
        if !self.engage.accepts(&name, self.manager.provider().is_some()) {
            return Ok(());
        }
        let own = token.child_token();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut clusters = self.lock();
            if let Some(current) = clusters.get(&name) {
                if Arc::ptr_eq(&current.cluster, &cluster) && !current.token.is_cancelled() {
                    return Ok(());
                }
                current.token.cancel(); // a new instance replaces the old one
            }
            clusters.insert(
                name.clone(),
                Engaged {
                    cluster: cluster.clone(),
                    token: own.clone(),
                    id,
                },
            );
            self.publish_clusters(&clusters);
        }
        tracing::info!(controller = self.name, cluster = %name, "cluster engaged");
        for source in &self.sources {
            source.start(cluster.clone(), own.child_token(), self.sink.clone());
        }
        // Local objects that fan out to clusters: the new cluster gets its share now.
        let local = self.manager.local_cluster();
        for source in &self.local_sources {
            let requests = source
                .snapshot(local, &self.sink)
                .into_iter()
                .filter(|r| r.cluster == name)
                .collect();
            self.sink.push(requests);
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            own.cancelled().await;
            if let Some(controller) = me.upgrade() {
                controller.disengage(&name, id);
            }
        });
        Ok(())
    }
}

#[async_trait]
impl Runnable for Controller {
    fn name(&self) -> String {
        format!("controller {}", self.name)
    }

    async fn run(&self, token: CancellationToken) -> Result<()> {
        let Some(this) = self.me.upgrade() else {
            return Ok(());
        };
        let local = self.manager.local_cluster();
        for source in &self.local_sources {
            source.start(local.clone(), token.child_token(), self.sink.clone());
        }
        loop {
            let lease = tokio::select! {
                () = token.cancelled() => break,
                lease = self.sink.queue.next() => lease,
            };
            match lease {
                Some(lease) => drop(tokio::spawn(this.clone().process(lease))),
                None => break,
            }
        }
        self.sink.queue.shutdown();
        Ok(())
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
