//! Which components are still waiting for their caches of one engaged cluster.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// What the components working on one engagement of a cluster report of their
/// caches: which are still waiting for the first list, since when. Written by the
/// components (through their [`Engagement`](crate::multicluster::Engagement)), read
/// by readiness; one board per engaged instance, so a replacement starts empty.
///
/// A list, not a map: a cluster has a handful of components at most, and a board is
/// kept per engaged cluster, so what it holds once every component has synced
/// matters (a `BTreeMap` keeps its first node, 456 bytes, after its last entry
/// is removed; the emptied list frees its buffer).
#[derive(Clone, Debug, Default)]
pub(crate) struct SyncBoard(Arc<Mutex<Vec<(String, SystemTime)>>>);

impl SyncBoard {
    /// `component` waits for its caches of the cluster, from now on.
    pub(crate) fn syncing(&self, component: &str) {
        let mut waiting = self.lock();
        let now = SystemTime::now();
        match waiting.iter_mut().find(|(c, _)| c == component) {
            Some((_, since)) => *since = now,
            None => waiting.push((component.to_owned(), now)),
        }
    }

    /// `component`'s caches of the cluster have synced.
    pub(crate) fn synced(&self, component: &str) {
        let mut waiting = self.lock();
        waiting.retain(|(c, _)| c != component);
        if waiting.is_empty() {
            *waiting = Vec::new();
        }
    }

    /// Each component still waiting, with since when, by component.
    pub(crate) fn waiting(&self) -> Vec<(String, SystemTime)> {
        let mut waiting = self.lock().clone();
        waiting.sort_by(|a, b| a.0.cmp(&b.0));
        waiting
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, SystemTime)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v04_a_board_whose_components_have_all_synced_holds_no_buffer() {
        let board = SyncBoard::default();
        board.syncing("controller b");
        board.syncing("controller a");
        board.syncing("controller b");
        let waiting: Vec<String> = board.waiting().into_iter().map(|(c, _)| c).collect();
        assert_eq!(waiting, ["controller a", "controller b"]);
        board.synced("controller a");
        assert_eq!(board.waiting().len(), 1);
        board.synced("controller b");
        assert!(board.waiting().is_empty());
        assert_eq!(
            board.lock().capacity(),
            0,
            "the emptied board keeps no allocation"
        );
    }
}
