//! A provider whose clusters are added and removed by code.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheError, FieldIndex};
use crate::cluster::engagement::{Engage, Engaged, Engagements, Gates};
use crate::cluster::{Cluster, ClusterName};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider, ProviderRunnable};

/// A provider driven by code: [`add`](Clusters::add), [`replace`](Clusters::replace)
/// and [`remove`](Clusters::remove) clusters at any time, before or after the manager
/// starts it.
///
/// Field indexes registered through [`Provider::index_field`] are applied to every
/// cluster exactly once, including those added later, whatever the interleaving.
/// Changes of one name are applied one at a time: of two concurrent
/// [`replace`](Clusters::replace) calls, the one that registers last is the one
/// engaged, and the manager never sees the other evict it. A replacement is engaged
/// before the old instance is retired, so the work queued for the name carries over.
/// Cheap to clone: clones share the clusters.
///
/// ```no_run
/// # async fn demo(local: kube::Client, other: kube::Client) -> multicluster_runtime::Result<()> {
/// use std::sync::Arc;
/// use multicluster_runtime::{Cluster, Manager, providers::clusters::Clusters};
///
/// let provider = Arc::new(Clusters::new());
/// let manager = Manager::with_provider(Arc::new(Cluster::new("", local)), provider.clone());
/// provider.add(Arc::new(Cluster::new("eu-1", other))).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Clusters {
    inner: Arc<Mutex<State>>,
    /// One change of a name at a time.
    gates: Arc<Gates>,
}

#[derive(Default)]
struct State {
    /// Each cluster with the token given to the manager for it (cancelled on removal
    /// or replacement, and when the provider stops) and what it was built from.
    clusters: Engagements<Fingerprint>,
    indexes: Vec<FieldIndex>,
    running: Option<Running>,
}

/// What a cluster was built from, for [`Clusters::replace_if_changed`].
type Fingerprint = Option<u64>;

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

    /// Adds `cluster` under its [name](Cluster::name) and, if the provider runs,
    /// engages it.
    ///
    /// # Errors
    /// [`Error::ClusterExists`] if the name is taken (use [`replace`](Self::replace)),
    /// or as for [`replace`](Self::replace).
    ///
    /// # Cancel safety
    /// As for [`replace`](Self::replace).
    pub async fn add(&self, cluster: Arc<Cluster>) -> Result<()> {
        let name = cluster.name().clone();
        // Checked and installed under the name's gate: of two concurrent adds of one
        // name, the second fails.
        let _gate = self.gates.enter(&name).await;
        if self.lock().clusters.get_any(&name).is_some() {
            return Err(Error::ClusterExists { cluster: name });
        }
        self.install_gated(name, cluster, None).await
    }

    /// Adds `cluster` under its [name](Cluster::name), or replaces the one of that
    /// name (whose token is cancelled and cache stopped). The same instance again
    /// changes nothing.
    ///
    /// # Errors
    /// A registered index could not be applied, or the engagement failed; the cluster
    /// stays registered either way, so [`Provider::get`] finds it.
    ///
    /// # Cancel safety
    /// Not cancel safe. The cluster is registered before the manager is told; if the
    /// future is dropped after that, it stays registered (and [`Provider::get`] finds
    /// it) but may have reached only some components, and the instance it replaced
    /// may not have been retired. Registering the same instance again is a no-op, so
    /// to recover, [`remove`](Self::remove) the name and add the cluster again.
    pub async fn replace(&self, cluster: Arc<Cluster>) -> Result<()> {
        let name = cluster.name().clone();
        let _gate = self.gates.enter(&name).await;
        self.install_gated(name, cluster, None).await
    }

    /// Adds or replaces `name` unless it is registered with the same `fingerprint`
    /// (e.g. [`kubeconfig::fingerprint`](super::kubeconfig::fingerprint) of what it is
    /// built from). `build` runs only when the cluster must be (re)built, so
    /// providers re-engage exactly the clusters whose connection settings changed.
    /// Returns whether the cluster was added or replaced.
    ///
    /// `name` is needed before the cluster exists, to look the fingerprint up; the
    /// cluster `build` returns must carry the same name.
    ///
    /// # Errors
    /// `build`'s error (the registered cluster, if any, stays);
    /// [`Error::ClusterNameMismatch`] if the built cluster has another name (it is
    /// stopped and not registered); or as for [`replace`](Self::replace).
    ///
    /// # Cancel safety
    /// Dropping the future while `build` runs registers nothing. Once `build` has
    /// returned, as for [`replace`](Self::replace).
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
        let _gate = self.gates.enter(&name).await;
        if self.fingerprint(&name) == Some(fingerprint) {
            return Ok(false);
        }
        let cluster = build().await?;
        if *cluster.name() != name {
            cluster.stop();
            return Err(Error::ClusterNameMismatch {
                expected: name,
                actual: cluster.name().clone(),
            });
        }
        self.install_gated(name, cluster, Some(fingerprint))
            .await
            .map(|()| true)
    }

    /// Registers, indexes and engages `cluster`, then retires the instance it
    /// replaces; the caller holds the name's gate.
    async fn install_gated(
        &self,
        name: ClusterName,
        cluster: Arc<Cluster>,
        fingerprint: Fingerprint,
    ) -> Result<()> {
        // Registered and the indexes read in one step: an index registered after
        // this is applied by `index_field`, one registered before it here, so each
        // exactly once.
        let (replaced, indexes, running, token) = {
            let mut state = self.lock();
            let running = state.running.clone();
            // Tied to the run, so that stopping the provider ends the engagement.
            let token = running
                .as_ref()
                .map_or_else(CancellationToken::new, |r| r.token.child_token());
            match state
                .clusters
                .engage(&name, cluster.clone(), token.clone(), fingerprint)
            {
                Engage::Stale | Engage::Unchanged => return Ok(()),
                Engage::New { replaced, .. } => (replaced, state.indexes.clone(), running, token),
            }
        };
        let indexed = apply_indexes(&indexes, std::slice::from_ref(&cluster));
        // The new instance goes everywhere before the old one is retired, so that
        // components hand the name's queued work over instead of dropping it.
        let engaged = match running {
            Some(running) if indexed.is_ok() => running.aware.engage(token, name, cluster).await,
            _ => Ok(()),
        };
        if let Some(replaced) = replaced {
            retire(replaced);
        }
        indexed.and(engaged)
    }

    /// Removes a cluster: its token is cancelled (every component stops its work for
    /// it) and its cache stopped before this returns. Returns whether it existed.
    pub fn remove(&self, name: &ClusterName) -> bool {
        let removed = self.lock().clusters.remove(name);
        removed.map(retire).is_some()
    }

    /// The names of the clusters, in no particular order.
    pub fn names(&self) -> Vec<ClusterName> {
        self.lock().clusters.all().map(|(name, _)| name.clone()).collect()
    }

    fn fingerprint(&self, name: &ClusterName) -> Option<u64> {
        self.lock().clusters.get_any(name).and_then(|e| e.value)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn retire(entry: Engaged<Fingerprint>) {
    entry.token.cancel();
    entry.cluster.stop();
}

/// Applies recorded indexes to clusters; an index a cluster's cache has already
/// (a cache shared by several clusters, such as namespace views of one host) is fine.
fn apply_indexes<C: std::borrow::Borrow<Cluster>>(indexes: &[FieldIndex], clusters: &[C]) -> Result<()> {
    for cluster in clusters {
        for index in indexes {
            match index.apply(cluster.borrow().cache()) {
                Ok(()) | Err(CacheError::IndexExists { .. }) => {}
                Err(err) => return Err(err.into()),
            }
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
            state.clusters.all().map(|(_, e)| e.cluster.clone()).collect()
        };
        // Clusters sharing a cache (namespace views of one host) get it once.
        apply_indexes(std::slice::from_ref(&index), &clusters)
    }

    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
        Some(self)
    }
}

#[async_trait]
impl ProviderRunnable for Clusters {
    /// Engages every cluster added so far, then those added later, until `token` is
    /// cancelled. Then every cluster is retired (its token cancelled, its cache
    /// stopped) and forgotten: a provider that discovers its clusters finds them again
    /// when started anew; clusters added by code must be added again.
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()> {
        let names = {
            let mut state = self.lock();
            state.running = Some(Running {
                token: token.clone(),
                aware: aware.clone(),
            });
            state.clusters.names()
        };
        // Clusters added from now on engage themselves; those added before are
        // engaged here, each through its gate and as registered at that moment.
        for name in names {
            let _gate = self.gates.enter(&name).await;
            let current = self
                .lock()
                .clusters
                .get(&name)
                .map(|e| (e.cluster.clone(), e.token.clone()));
            if let Some((cluster, cluster_token)) = current
                && let Err(err) = aware.engage(cluster_token, name.clone(), cluster).await
            {
                tracing::error!(cluster = %name, error = %crate::redact::describe(&err), "cannot engage cluster");
            }
        }
        token.cancelled().await;
        // The provider stops with the manager: every engagement ends, the clusters'
        // watches stop, and the registry forgets them. A retired instance cannot
        // serve again (its cache is stopped), so keeping it would only make a
        // restarted provider take it for current and never engage the cluster.
        let retired: Vec<_> = {
            let mut state = self.lock();
            state.running = None;
            state.clusters.drain().map(|(_, entry)| entry).collect()
        };
        retired.into_iter().for_each(retire);
        Ok(())
    }
}
