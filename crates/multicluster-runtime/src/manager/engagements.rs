//! Which clusters are engaged, and which components they are engaged into.
//!
//! Both lists sit behind one lock so that a cluster engaged while a component is
//! being added reaches that component: whichever of the two takes the lock second
//! sees the other and engages the pair.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterName};
use crate::multicluster::Aware;

/// One engaged cluster instance.
#[derive(Clone)]
pub(crate) struct Engagement {
    pub cluster: Arc<Cluster>,
    /// Cancelled when the cluster is removed or replaced; components get children.
    pub token: CancellationToken,
    /// Tells this engagement from a later one of the same name.
    pub id: u64,
}

#[derive(Default)]
struct State {
    clusters: HashMap<ClusterName, Engagement>,
    components: Vec<Arc<dyn Aware>>,
}

/// What the manager has engaged, and into what.
#[derive(Default)]
pub(crate) struct Engagements {
    state: Mutex<State>,
}

/// The outcome of recording an engagement.
pub(crate) enum Recorded {
    /// The same instance is engaged already: nothing to do.
    Unchanged,
    /// Engage these components with the new engagement.
    New(Vec<Arc<dyn Aware>>),
}

impl Engagements {
    /// Records `engagement` under `name`, replacing (and cancelling) another instance.
    pub fn record(&self, name: &ClusterName, engagement: Engagement) -> Recorded {
        let mut state = self.lock();
        if let Some(current) = state.clusters.get(name) {
            if Arc::ptr_eq(&current.cluster, &engagement.cluster) && !current.token.is_cancelled() {
                return Recorded::Unchanged;
            }
            current.token.cancel();
        }
        state.clusters.insert(name.clone(), engagement);
        Recorded::New(state.components.clone())
    }

    /// Forgets `name` if its engagement is still the one numbered `id` (a
    /// replacement may have taken its place meanwhile).
    pub fn forget(&self, name: &ClusterName, id: u64) {
        let mut state = self.lock();
        if state.clusters.get(name).is_some_and(|e| e.id == id) {
            state.clusters.remove(name);
        }
    }

    /// Adds a component and returns the engagements it must catch up on.
    pub fn add_component(&self, component: Arc<dyn Aware>) -> Vec<(ClusterName, Engagement)> {
        let mut state = self.lock();
        state.components.push(component);
        state
            .clusters
            .iter()
            .filter(|(_, e)| !e.token.is_cancelled())
            .map(|(name, e)| (name.clone(), e.clone()))
            .collect()
    }

    /// The engaged instance of `name`, if its engagement is live.
    pub fn get(&self, name: &ClusterName) -> Option<Arc<Cluster>> {
        let state = self.lock();
        state
            .clusters
            .get(name)
            .filter(|e| !e.token.is_cancelled())
            .map(|e| e.cluster.clone())
    }

    /// Names of the engaged clusters.
    pub fn names(&self) -> Vec<ClusterName> {
        let state = self.lock();
        state
            .clusters
            .iter()
            .filter(|(_, e)| !e.token.is_cancelled())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
