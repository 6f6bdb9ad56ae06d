//! A provider whose clusters are added and removed by code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheError, FieldIndex};
use crate::cluster::{Cluster, ClusterName};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider, ProviderRunnable};

/// A provider driven by code: [`add`](Clusters::add), [`replace`](Clusters::replace)
/// and [`remove`](Clusters::remove) clusters at any time, before or after the manager
/// starts it.
///
/// Field indexes registered through [`Provider::index_field`] are applied to every
/// cluster, including those added later. Cheap to clone: clones share the clusters.
///
/// ```no_run
/// # async fn demo(local: kube::Client, other: kube::Client) -> multicluster_runtime::Result<()> {
/// use std::sync::Arc;
/// use multicluster_runtime::{Cluster, Manager, providers::clusters::Clusters};
///
/// let provider = Arc::new(Clusters::new());
/// let manager = Manager::with_provider(Arc::new(Cluster::new("", local)), provider.clone());
/// provider.add("eu-1", Arc::new(Cluster::new("eu-1", other))).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Clusters {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    clusters: HashMap<ClusterName, Entry>,
    indexes: Vec<FieldIndex>,
    running: Option<Running>,
}

struct Entry {
    cluster: Arc<Cluster>,
    /// What the cluster was built from, for [`Clusters::replace_if_changed`].
    fingerprint: Option<u64>,
    /// Present while engaged; cancelled on removal or replacement.
    token: Option<CancellationToken>,
}

#[derive(Clone)]
struct Running {
    token: CancellationToken,
    aware: Arc<dyn Aware>,
}

impl std::fmt::Debug for Clusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clusters").field("names", &self.names()).finish()
    }
}

impl Clusters {
    /// A provider with no clusters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a cluster under a new name and, if the provider runs, engages it.
    ///
    /// # Errors
    /// [`Error::Provider`] if the name is taken (use [`replace`](Self::replace)), or
    /// as for [`replace`](Self::replace).
    pub async fn add(&self, name: impl Into<ClusterName>, cluster: Arc<Cluster>) -> Result<()> {
        let name = name.into();
        if self.lock().clusters.contains_key(&name) {
            let reason = format!("cluster {name} exists already; use replace to swap it");
            return Err(Error::Provider {
                provider: "clusters".into(),
                source: reason.into(),
            });
        }
        self.replace(name, cluster).await
    }

    /// Adds a cluster or replaces the one of the same name (whose token is cancelled
    /// and cache stopped). The same instance again changes nothing.
    ///
    /// # Errors
    /// A registered index could not be applied, or the engagement failed; the cluster
    /// stays registered either way, so [`Provider::get`] finds it.
    pub async fn replace(&self, name: impl Into<ClusterName>, cluster: Arc<Cluster>) -> Result<()> {
        self.install(name.into(), cluster, None).await
    }

    /// Adds or replaces `name` unless it is registered with the same `fingerprint`
    /// (e.g. [`kubeconfig::fingerprint`](super::kubeconfig::fingerprint) of what it is
    /// built from). `build` runs only when the cluster must be (re)built, so
    /// providers re-engage exactly the clusters whose connection settings changed.
    /// Returns whether the cluster was added or replaced.
    ///
    /// # Errors
    /// `build`'s error (the registered cluster, if any, stays), or as for
    /// [`replace`](Self::replace).
    pub async fn replace_if_changed<F>(
        &self,
        name: impl Into<ClusterName>,
        fingerprint: u64,
        build: F,
    ) -> Result<bool>
    where
        F: AsyncFnOnce() -> Result<Arc<Cluster>>,
    {
        let name = name.into();
        if self
            .lock()
            .clusters
            .get(&name)
            .is_some_and(|e| e.fingerprint == Some(fingerprint))
        {
            return Ok(false);
        }
        let cluster = build().await?;
        self.install(name, cluster, Some(fingerprint))
            .await
            .map(|()| true)
    }

    async fn install(
        &self,
        name: ClusterName,
        cluster: Arc<Cluster>,
        fingerprint: Option<u64>,
    ) -> Result<()> {
        let indexes = {
            let state = self.lock();
            if state
                .clusters
                .get(&name)
                .is_some_and(|e| Arc::ptr_eq(&e.cluster, &cluster))
            {
                return Ok(());
            }
            state.indexes.clone()
        };
        apply_indexes(&indexes, &cluster)?;
        let (previous, engage) = {
            let mut state = self.lock();
            let running = state.running.clone();
            let token = running.as_ref().map(|r| r.token.child_token());
            let previous = state.clusters.insert(
                name.clone(),
                Entry {
                    cluster: cluster.clone(),
                    fingerprint,
                    token: token.clone(),
                },
            );
            (previous, running.zip(token))
        };
        if let Some(previous) = previous {
            retire(previous);
        }
        match engage {
            Some((running, token)) => running.aware.engage(token, name, cluster).await,
            None => Ok(()),
        }
    }

    /// Removes a cluster: its token is cancelled (every component stops its work for
    /// it) and its cache stopped before this returns. Returns whether it existed.
    pub fn remove(&self, name: &ClusterName) -> bool {
        let removed = self.lock().clusters.remove(name);
        removed.map(retire).is_some()
    }

    /// The names of the clusters, in no particular order.
    pub fn names(&self) -> Vec<ClusterName> {
        self.lock().clusters.keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn retire(entry: Entry) {
    if let Some(token) = entry.token {
        token.cancel();
    }
    entry.cluster.stop();
}

/// Applies recorded indexes to a cluster; one it has already (the same instance
/// added again) is fine.
fn apply_indexes(indexes: &[FieldIndex], cluster: &Cluster) -> Result<()> {
    for index in indexes {
        match index.apply(cluster.cache()) {
            Ok(()) | Err(CacheError::IndexExists { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

#[async_trait]
impl Provider for Clusters {
    async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        let state = self.lock();
        state
            .clusters
            .get(name)
            .map(|e| e.cluster.clone())
            .ok_or_else(|| Error::ClusterNotFound(name.clone()))
    }

    async fn index_field(&self, index: FieldIndex) -> Result<()> {
        let clusters: Vec<Arc<Cluster>> = {
            let mut state = self.lock();
            state.indexes.push(index.clone());
            state.clusters.values().map(|e| e.cluster.clone()).collect()
        };
        for cluster in clusters {
            index.apply(cluster.cache())?;
        }
        Ok(())
    }

    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
        Some(self)
    }
}

#[async_trait]
impl ProviderRunnable for Clusters {
    /// Engages every cluster added so far, then those added later, until `token` is
    /// cancelled.
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()> {
        let pending: Vec<(ClusterName, Arc<Cluster>, CancellationToken)> = {
            let mut state = self.lock();
            state.running = Some(Running {
                token: token.clone(),
                aware: aware.clone(),
            });
            state
                .clusters
                .iter_mut()
                .map(|(name, entry)| {
                    let child = token.child_token();
                    entry.token = Some(child.clone());
                    (name.clone(), entry.cluster.clone(), child)
                })
                .collect()
        };
        for (name, cluster, child) in pending {
            if let Err(err) = aware.engage(child, name.clone(), cluster).await {
                tracing::error!(cluster = %name, error = %err, "cannot engage cluster");
            }
        }
        token.cancelled().await;
        // The provider stops with the manager: so do the watches of its clusters.
        let mut state = self.lock();
        state.running = None;
        for entry in state.clusters.values() {
            entry.cluster.stop();
        }
        Ok(())
    }
}
