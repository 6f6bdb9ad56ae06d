//! Which components are still waiting for their caches of one engaged cluster.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// What the components working on one engagement of a cluster report of their
/// caches: which are still waiting for the first list, since when. Written by the
/// components (through their [`Engagement`](crate::multicluster::Engagement)), read
/// by readiness; one board per engaged instance, so a replacement starts empty.
#[derive(Clone, Debug, Default)]
pub(crate) struct SyncBoard(Arc<Mutex<BTreeMap<String, SystemTime>>>);

impl SyncBoard {
    /// `component` waits for its caches of the cluster, from now on.
    pub(crate) fn syncing(&self, component: &str) {
        self.lock().insert(component.to_owned(), SystemTime::now());
    }

    /// `component`'s caches of the cluster have synced.
    pub(crate) fn synced(&self, component: &str) {
        self.lock().remove(component);
    }

    /// Each component still waiting, with since when.
    pub(crate) fn waiting(&self) -> Vec<(String, SystemTime)> {
        self.lock().iter().map(|(c, s)| (c.clone(), *s)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SystemTime>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
