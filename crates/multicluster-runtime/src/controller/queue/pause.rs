//! Why a cluster is paused: a set of independent reasons.
//!
//! A controller holds a cluster back for more than one reason at once (its cache is
//! still syncing, its apiserver does not answer). Each reason is set and cleared by
//! its own owner, and the cluster is leased again only once every reason is
//! cleared, so that one owner's resume can never undo another's pause.

use std::fmt;

/// One reason to hold back the items of a cluster; see
/// [`WorkQueue::pause_cluster`](super::WorkQueue::pause_cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PauseReason {
    /// The controller's cache of the cluster has not synced yet.
    Syncing,
    /// The cluster's health probes fail (see `manager::health`).
    Unhealthy,
}

impl PauseReason {
    /// Every reason, in order.
    pub const ALL: [PauseReason; 2] = [PauseReason::Syncing, PauseReason::Unhealthy];

    fn bit(self) -> u8 {
        match self {
            PauseReason::Syncing => 1,
            PauseReason::Unhealthy => 2,
        }
    }
}

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PauseReason::Syncing => "syncing",
            PauseReason::Unhealthy => "unhealthy",
        })
    }
}

/// The reasons a cluster is paused for; empty when it is not paused.
///
/// ```
/// use multicluster_runtime::controller::queue::{PauseReason, WorkQueue};
///
/// let queue: WorkQueue<&str, &str> = WorkQueue::new();
/// queue.pause_cluster(&"eu-1", PauseReason::Syncing);
/// queue.pause_cluster(&"eu-1", PauseReason::Unhealthy);
/// queue.resume_cluster(&"eu-1", PauseReason::Syncing);
/// let reasons = queue.pause_reasons(&"eu-1");
/// assert!(reasons.contains(PauseReason::Unhealthy) && !reasons.contains(PauseReason::Syncing));
/// assert!(queue.is_paused(&"eu-1"));
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PauseReasons(u8);

impl PauseReasons {
    /// Whether `reason` is among them.
    pub fn contains(self, reason: PauseReason) -> bool {
        self.0 & reason.bit() != 0
    }

    /// Whether there is none: the cluster is not paused.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The reasons, in the order of [`PauseReason::ALL`].
    pub fn iter(self) -> impl Iterator<Item = PauseReason> {
        PauseReason::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    pub(super) fn insert(&mut self, reason: PauseReason) {
        self.0 |= reason.bit();
    }

    pub(super) fn remove(&mut self, reason: PauseReason) {
        self.0 &= !reason.bit();
    }
}

impl fmt::Debug for PauseReasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}
