//! The manager: the local cluster, the provider, and everything that runs.
//!
//! Providers engage clusters into the manager; the manager engages each into every
//! cluster-aware component (controllers above all), including components added after
//! the cluster appeared. Leader election, health probes and metrics will hang off the
//! manager as further runnables.

mod engagements;
mod runnable;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cache::FieldIndex;
use crate::cluster::{Cluster, ClusterName};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider};

use engagements::{Engagement, Engagements, Recorded};
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
    engagements: Engagements,
    runnables: Mutex<Runnables>,
    next_id: AtomicU64,
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
            .field("engaged", &self.inner.engagements.names())
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
            engagements: Engagements::default(),
            runnables: Mutex::new(Runnables::Pending(Vec::new())),
            next_id: AtomicU64::new(0),
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
    pub async fn get_cluster(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        if name.is_local() {
            return Ok(self.inner.local.clone());
        }
        if let Some(cluster) = self.inner.engagements.get(name) {
            return Ok(cluster);
        }
        match &self.inner.provider {
            Some(provider) => provider.get(name).await,
            None => Err(Error::ClusterNotFound(name.clone())),
        }
    }

    /// Names of the clusters engaged right now (the local cluster once started).
    pub fn engaged_clusters(&self) -> Vec<ClusterName> {
        self.inner.engagements.names()
    }

    /// Adds a field index to the local cluster and to every cluster of the provider,
    /// now and later.
    ///
    /// # Errors
    /// An index of that name for that type exists already.
    pub async fn index_field(&self, index: FieldIndex) -> Result<()> {
        index.apply(self.inner.local.cache())?;
        if let Some(provider) = &self.inner.provider {
            provider.index_field(index).await?;
        }
        Ok(())
    }

    /// Adds a runnable; it starts with the manager, or at once if the manager runs.
    pub fn add(&self, runnable: Arc<dyn Runnable>) {
        let mut runnables = self.runnables();
        match &mut *runnables {
            Runnables::Pending(pending) => pending.push(runnable),
            Runnables::Running { token, failures } => {
                spawn_runnable(runnable, token.child_token(), failures.clone());
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
    pub async fn add_aware(&self, component: Arc<dyn Aware>) -> Result<()> {
        let catch_up = self.inner.engagements.add_component(component.clone());
        let mut first_error = None;
        for (name, engagement) in catch_up {
            let token = engagement.token.child_token();
            if let Err(err) = component.engage(token, name, engagement.cluster).await {
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
    pub async fn add_cluster_runnable<C: Runnable + Aware + 'static>(&self, component: Arc<C>) -> Result<()> {
        self.add(component.clone());
        self.add_aware(component).await
    }

    /// Runs everything until `token` is cancelled or something fails: engages the
    /// local cluster, starts the runnables, and starts the provider if it runs. On
    /// return every engagement has ended and the local cluster's cache is stopped.
    ///
    /// # Errors
    /// [`Error::Manager`] if started twice; otherwise the first runnable or provider
    /// failure.
    pub async fn start(&self, token: CancellationToken) -> Result<()> {
        let run = token.child_token();
        let (failures, mut failed) = mpsc::unbounded_channel();
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
                    return Err(Error::Manager("start called twice".into()));
                }
            }
        };
        self.engage(run.child_token(), ClusterName::local(), self.inner.local.clone())
            .await?;
        for runnable in pending {
            spawn_runnable(runnable, run.child_token(), failures.clone());
        }
        if let Some(provider) = self.inner.provider.clone().and_then(Provider::into_runnable) {
            let aware: Arc<dyn Aware> = Arc::new(self.clone());
            let (provider_token, failures) = (run.child_token(), failures.clone());
            tokio::spawn(async move {
                if let Err(err) = provider.start(provider_token, aware).await {
                    tracing::error!(error = %err, "provider failed");
                    let _ = failures.send(err);
                }
            });
        }
        drop(failures);
        let outcome = tokio::select! {
            () = run.cancelled() => Ok(()),
            Some(err) = failed.recv() => Err(err),
        };
        run.cancel();
        *self.runnables() = Runnables::Stopped;
        // Nothing runs for the local cluster any more; its watches end with the manager.
        self.inner.local.stop();
        outcome
    }

    fn runnables(&self) -> MutexGuard<'_, Runnables> {
        self.inner.runnables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Aware for Manager {
    /// Engages `cluster` into every cluster-aware component. The same instance again
    /// is a no-op; a new instance replaces the old one, whose components' tokens are
    /// cancelled first.
    async fn engage(&self, token: CancellationToken, name: ClusterName, cluster: Arc<Cluster>) -> Result<()> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let engagement = Engagement {
            cluster: cluster.clone(),
            token: token.child_token(),
            id,
        };
        let components = match self.inner.engagements.record(&name, engagement.clone()) {
            Recorded::Unchanged => return Ok(()),
            Recorded::New(components) => components,
        };
        tracing::info!(cluster = %name, "cluster engaged");
        let manager = Arc::downgrade(&self.inner);
        let (ended_name, ended) = (name.clone(), engagement.token.clone());
        tokio::spawn(async move {
            ended.cancelled().await;
            if let Some(inner) = manager.upgrade() {
                inner.engagements.forget(&ended_name, id);
            }
            tracing::info!(cluster = %ended_name, "cluster disengaged");
        });
        let mut first_error = None;
        for component in components {
            let result = component
                .engage(engagement.token.child_token(), name.clone(), cluster.clone())
                .await;
            if let Err(err) = result {
                tracing::error!(cluster = %name, error = %err, "engage failed");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn spawn_runnable(
    runnable: Arc<dyn Runnable>,
    token: CancellationToken,
    failures: mpsc::UnboundedSender<Error>,
) {
    tokio::spawn(async move {
        if let Err(err) = runnable.run(token).await {
            tracing::error!(runnable = runnable.name(), error = %err, "runnable failed");
            let _ = failures.send(err);
        }
    });
}
