//! The manager: the local cluster, the provider, and everything that runs.
//!
//! Providers engage clusters into the manager; the manager engages each into every
//! cluster-aware component (controllers above all), including components added after
//! the cluster appeared. Leader election, health probes and metrics will hang off the
//! manager as further runnables.
//!
//! # Engagement order
//!
//! Engagements of one cluster name pass through the manager one at a time (see
//! `cluster::engagement`). A new instance under a known name is engaged into every
//! component *before* the old instance's token is cancelled: each component swaps
//! the instances in one step, so work queued under the name carries over instead of
//! being dropped while the name is briefly unknown.

mod runnable;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{FieldIndex, error_chain};
use crate::cluster::engagement::{Engage, Engagements, Gates};
use crate::cluster::{Cluster, ClusterName};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider};

pub use runnable::Runnable;

/// Runs controllers and other runnables across the local cluster and the clusters of
/// a provider.
///
/// Cheap to clone: clones share one manager.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    local: Arc<Cluster>,
    provider: Option<Arc<dyn Provider>>,
    engaged: Mutex<Engaged>,
    /// One engagement of a name at a time.
    gates: Gates,
    runnables: Mutex<Runnables>,
    /// Every task the manager spawns; `start` returns once they have all ended.
    tasks: TaskTracker,
    /// Cancelled when `start` returns: ends whatever the manager still runs.
    stopped: CancellationToken,
}

/// The engaged clusters and the components they are engaged into, under one lock so
/// that a cluster engaged while a component is being added reaches that component:
/// whichever of the two takes the lock second sees the other.
#[derive(Default)]
struct Engaged {
    clusters: Engagements<()>,
    components: Vec<Arc<dyn Aware>>,
}

/// Runnables waiting for start, or the means to run them once started.
enum Runnables {
    Pending(Vec<Arc<dyn Runnable>>),
    Running {
        token: CancellationToken,
        failures: mpsc::UnboundedSender<Error>,
    },
    Stopped,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("provider", &self.inner.provider.is_some())
            .field("engaged", &self.engaged_clusters())
            .finish()
    }
}

impl Manager {
    /// A manager for the local cluster only.
    pub fn new(local: Arc<Cluster>) -> Self {
        Self::build(local, None)
    }

    /// A manager for the local cluster and the clusters of `provider`. If the
    /// provider runs ([`Provider::into_runnable`]), the manager starts it.
    pub fn with_provider<P: Provider + 'static>(local: Arc<Cluster>, provider: Arc<P>) -> Self {
        Self::build(local, Some(provider))
    }

    fn build(local: Arc<Cluster>, provider: Option<Arc<dyn Provider>>) -> Self {
        let inner = Inner {
            local,
            provider,
            engaged: Mutex::default(),
            gates: Gates::default(),
            runnables: Mutex::new(Runnables::Pending(Vec::new())),
            tasks: TaskTracker::new(),
            stopped: CancellationToken::new(),
        };
        Manager {
            inner: Arc::new(inner),
        }
    }

    /// The manager's own cluster.
    pub fn local_cluster(&self) -> &Arc<Cluster> {
        &self.inner.local
    }

    /// The provider, if any.
    pub fn provider(&self) -> Option<&Arc<dyn Provider>> {
        self.inner.provider.as_ref()
    }

    /// The cluster called `name`; the empty name is the local cluster.
    ///
    /// # Errors
    /// [`Error::ClusterNotFound`] if neither the manager nor its provider knows it.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads (the provider's [`Provider::get`] should only read,
    /// too).
    pub async fn get_cluster(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        if name.is_local() {
            return Ok(self.inner.local.clone());
        }
        if let Some(engaged) = self.engaged().clusters.get(name) {
            return Ok(engaged.cluster.clone());
        }
        match &self.inner.provider {
            Some(provider) => provider.get(name).await,
            None => Err(Error::ClusterNotFound(name.clone())),
        }
    }

    /// Names of the clusters engaged right now (the local cluster once started).
    pub fn engaged_clusters(&self) -> Vec<ClusterName> {
        self.engaged().clusters.names()
    }

    /// Adds a field index to the local cluster and to every cluster of the provider,
    /// now and later.
    ///
    /// # Errors
    /// [`Error::Cache`] with [`CacheError::IndexExists`](crate::cache::CacheError::IndexExists)
    /// if an index of that name for that type exists already.
    ///
    /// # Cancel safety
    /// Not cancel safe: the local cluster gets the index first, then the provider's
    /// clusters; dropping the future in between leaves it on the local cluster only
    /// (registering it again then fails with `IndexExists`).
    pub async fn index_field(&self, index: FieldIndex) -> Result<()> {
        index.apply(self.inner.local.cache())?;
        if let Some(provider) = &self.inner.provider {
            provider.index_field(index).await?;
        }
        Ok(())
    }

    /// Adds a runnable; it starts with the manager, or at once if the manager runs.
    ///
    /// # Panics
    /// If the manager runs and this is called outside a Tokio runtime.
    pub fn add(&self, runnable: Arc<dyn Runnable>) {
        let mut runnables = self.runnables();
        match &mut *runnables {
            Runnables::Pending(pending) => pending.push(runnable),
            Runnables::Running { token, failures } => {
                self.spawn_runnable(runnable, token.child_token(), failures.clone());
            }
            Runnables::Stopped => tracing::warn!(
                runnable = runnable.name(),
                "manager stopped; runnable not started"
            ),
        }
    }

    /// Adds a cluster-aware component and engages it with every cluster engaged so
    /// far; later clusters reach it as they are engaged.
    ///
    /// # Errors
    /// The first engagement that failed (the others are still made).
    ///
    /// # Cancel safety
    /// Not cancel safe: the component is added first and engaged with the clusters
    /// one by one. If the future is dropped, the component stays added (clusters
    /// engaged later reach it) but some clusters engaged earlier may never have.
    pub async fn add_aware(&self, component: Arc<dyn Aware>) -> Result<()> {
        let names = {
            let mut engaged = self.engaged();
            engaged.components.push(component.clone());
            engaged.clusters.names()
        };
        let mut first_error = None;
        for name in names {
            // Through the name's gate, and with the instance engaged *now*: one that
            // replaced or removed the listed instance meanwhile has already passed
            // through and reached this component, which is in the list.
            let _gate = self.inner.gates.enter(&name).await;
            let current = self
                .engaged()
                .clusters
                .get(&name)
                .map(|e| (e.cluster.clone(), e.token.child_token()));
            let Some((cluster, token)) = current else {
                continue;
            };
            if let Err(err) = component.engage(token, name, cluster).await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Adds something that is both a [`Runnable`] and [`Aware`], such as a
    /// controller: it runs with the manager and is engaged with every cluster.
    ///
    /// # Errors
    /// As for [`add_aware`](Self::add_aware).
    ///
    /// # Cancel safety
    /// As for [`add_aware`](Self::add_aware); the runnable is added before the future
    /// first waits.
    pub async fn add_cluster_runnable<C: Runnable + Aware + 'static>(&self, component: Arc<C>) -> Result<()> {
        self.add(component.clone());
        self.add_aware(component).await
    }

    /// Runs everything until `token` is cancelled or something fails: engages the
    /// local cluster, starts the runnables, and starts the provider if it runs.
    ///
    /// Returns only once every task the manager spawned has ended, on success and on
    /// every error path alike: every engagement is cancelled, every runnable and the
    /// provider have returned, and the local cluster's cache is stopped. A runnable
    /// that ignores its token keeps `start` from returning.
    ///
    /// # Errors
    /// [`Error::AlreadyStarted`] if started before; otherwise the failure of the local
    /// cluster's engagement, or the first runnable or provider failure.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future cancels everything it started but does
    /// not wait for it. Cancel `token` and await the future instead.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns its tasks there).
    pub async fn start(&self, token: CancellationToken) -> Result<()> {
        let run = token.child_token();
        let _stop_on_drop = run.clone().drop_guard();
        let (failures, failed) = mpsc::unbounded_channel();
        let pending = {
            let mut runnables = self.runnables();
            let running = Runnables::Running {
                token: run.clone(),
                failures: failures.clone(),
            };
            match std::mem::replace(&mut *runnables, running) {
                Runnables::Pending(pending) => pending,
                other => {
                    *runnables = other;
                    return Err(Error::AlreadyStarted);
                }
            }
        };
        let outcome = self.run(&run, pending, failures, failed).await;
        run.cancel();
        *self.runnables() = Runnables::Stopped;
        // Whatever a provider left engaged ends with the manager.
        let ended: Vec<_> = self.engaged().clusters.drain().collect();
        for (_, engaged) in ended {
            engaged.token.cancel();
        }
        self.inner.stopped.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // Nothing runs for the local cluster any more; its watches end with the manager.
        self.inner.local.stop();
        outcome
    }

    /// Engages the local cluster, starts the runnables and the provider, and waits
    /// for the end or the first failure.
    async fn run(
        &self,
        run: &CancellationToken,
        pending: Vec<Arc<dyn Runnable>>,
        failures: mpsc::UnboundedSender<Error>,
        mut failed: mpsc::UnboundedReceiver<Error>,
    ) -> Result<()> {
        self.engage(run.child_token(), ClusterName::local(), self.inner.local.clone())
            .await?;
        for runnable in pending {
            self.spawn_runnable(runnable, run.child_token(), failures.clone());
        }
        if let Some(provider) = self.inner.provider.clone().and_then(Provider::into_runnable) {
            let aware: Arc<dyn Aware> = Arc::new(self.clone());
            let (provider_token, failures) = (run.child_token(), failures.clone());
            self.inner.tasks.spawn(async move {
                if let Err(err) = provider.start(provider_token, aware).await {
                    tracing::error!(error = %error_chain(&err), "provider failed");
                    let _ = failures.send(err);
                }
            });
        }
        drop(failures);
        tokio::select! {
            () = run.cancelled() => Ok(()),
            Some(err) = failed.recv() => Err(err),
        }
    }

    fn spawn_runnable(
        &self,
        runnable: Arc<dyn Runnable>,
        token: CancellationToken,
        failures: mpsc::UnboundedSender<Error>,
    ) {
        self.inner.tasks.spawn(async move {
            if let Err(err) = runnable.run(token).await {
                tracing::error!(runnable = runnable.name(), error = %error_chain(&err), "runnable failed");
                let _ = failures.send(err);
            }
        });
    }

    /// Removes the engagement `generation` of `name` once its token is cancelled.
    fn watch_disengage(&self, name: ClusterName, token: CancellationToken, generation: u64) {
        let (inner, stopped) = (Arc::downgrade(&self.inner), self.inner.stopped.clone());
        self.inner.tasks.spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = stopped.cancelled() => return,
            }
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let removed = lock(&inner.engaged).clusters.disengage(&name, generation);
            if removed.is_some() {
                tracing::info!(cluster = %name, "cluster disengaged");
            }
        });
    }

    fn engaged(&self) -> MutexGuard<'_, Engaged> {
        lock(&self.inner.engaged)
    }

    fn runnables(&self) -> MutexGuard<'_, Runnables> {
        lock(&self.inner.runnables)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Aware for Manager {
    /// Engages `cluster` into every cluster-aware component.
    ///
    /// The same instance again is a no-op, and so is an engagement whose token is
    /// cancelled already (it was replaced or removed on its way here). A new instance
    /// under a known name is engaged into every component first; then the old
    /// instance's token is cancelled (see [Engagement order](self#engagement-order)).
    /// After [`start`](Manager::start) has returned, nothing is engaged any more.
    async fn engage(&self, token: CancellationToken, name: ClusterName, cluster: Arc<Cluster>) -> Result<()> {
        let _gate = self.inner.gates.enter(&name).await;
        if self.inner.stopped.is_cancelled() {
            tracing::debug!(cluster = %name, "manager stopped; cluster not engaged");
            return Ok(());
        }
        let own = token.child_token();
        let (generation, replaced, components) = {
            let mut engaged = self.engaged();
            match engaged.clusters.engage(&name, cluster.clone(), own.clone(), ()) {
                Engage::Stale => {
                    tracing::debug!(cluster = %name, "engagement ended before it arrived; ignored");
                    return Ok(());
                }
                Engage::Unchanged => return Ok(()),
                Engage::New { generation, replaced } => (generation, replaced, engaged.components.clone()),
            }
        };
        let replacing = replaced.is_some();
        tracing::info!(cluster = %name, replacing, "cluster engaged");
        self.watch_disengage(name.clone(), own.clone(), generation);
        let mut first_error = None;
        for component in components {
            let result = component
                .engage(own.child_token(), name.clone(), cluster.clone())
                .await;
            if let Err(err) = result {
                tracing::error!(cluster = %name, error = %error_chain(&err), "engage failed");
                first_error.get_or_insert(err);
            }
        }
        if let Some(old) = replaced {
            old.token.cancel();
        }
        first_error.map_or(Ok(()), Err)
    }
}
