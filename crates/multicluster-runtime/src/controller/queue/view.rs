//! A read-only view of a queue, for metrics, health checks and tests.

use std::fmt;
use std::hash::Hash;

use super::{PauseReasons, WorkQueue};

/// What a [`WorkQueue`] holds, without the means to change it: no adds, no leases,
/// no pausing, no shutdown. [`Controller::queue`](crate::controller::Controller::queue)
/// hands one out, so code outside a controller can watch its queue but not disturb
/// its rules. Cheap to clone; every clone sees the same queue. To feed a
/// controller, use [`reconcile_on`](crate::controller::ControllerBuilder::reconcile_on).
///
/// ```
/// use multicluster_runtime::controller::queue::WorkQueue;
///
/// let queue = WorkQueue::new();
/// queue.add("eu-1", "default/web");
/// queue.add("eu-1", "default/db");
/// queue.add("us-1", "default/web");
/// let view = queue.view();
/// assert_eq!(view.len(), 3);
/// assert_eq!(view.depth(&"eu-1"), 2);
/// assert_eq!(view.processing_len(), 0);
/// assert!(!view.is_paused(&"eu-1"));
/// assert_eq!(view.num_requeues(&"eu-1", &"default/web"), 0);
/// ```
#[derive(Clone)]
pub struct QueueView<C, K> {
    queue: WorkQueue<C, K>,
}

impl<C, K> fmt::Debug for QueueView<C, K>
where
    C: Clone + Eq + Hash + fmt::Debug,
    K: Clone + Eq + Hash + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueView")
            .field("len", &self.len())
            .field("processing", &self.processing_len())
            .finish()
    }
}

impl<C, K> WorkQueue<C, K>
where
    C: Clone + Eq + Hash + fmt::Debug,
    K: Clone + Eq + Hash + fmt::Debug,
{
    /// A read-only view of this queue.
    pub fn view(&self) -> QueueView<C, K> {
        QueueView { queue: self.clone() }
    }
}

impl<C, K> QueueView<C, K>
where
    C: Clone + Eq + Hash + fmt::Debug,
    K: Clone + Eq + Hash + fmt::Debug,
{
    /// Queued items, ready or delayed; see [`WorkQueue::len`].
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no item is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Items ready now; see [`WorkQueue::ready_len`].
    pub fn ready_len(&self) -> usize {
        self.queue.ready_len()
    }

    /// Queued items of one cluster, ready or delayed.
    pub fn depth(&self, cluster: &C) -> usize {
        self.queue.depth(cluster)
    }

    /// Outstanding leases (reconciles running).
    pub fn processing_len(&self) -> usize {
        self.queue.processing_len()
    }

    /// Outstanding leases of one cluster.
    pub fn processing_len_of(&self, cluster: &C) -> usize {
        self.queue.processing_len_of(cluster)
    }

    /// Whether `cluster` is paused (for a controller: its cache has not synced yet,
    /// or its health probes fail).
    pub fn is_paused(&self, cluster: &C) -> bool {
        self.queue.is_paused(cluster)
    }

    /// Why `cluster` is paused; empty if it is not.
    pub fn pause_reasons(&self, cluster: &C) -> PauseReasons {
        self.queue.pause_reasons(cluster)
    }

    /// How many times in a row the item has been backed off.
    pub fn num_requeues(&self, cluster: &C, key: &K) -> u32 {
        self.queue.num_requeues(cluster, key)
    }

    /// Depth and running leases of each of `clusters`; see `WorkQueue::cluster_stats`.
    pub(crate) fn cluster_stats<'a>(
        &self,
        clusters: impl IntoIterator<Item = &'a C>,
    ) -> Vec<(usize, super::Running)>
    where
        C: 'a,
    {
        self.queue.cluster_stats(clusters)
    }

    /// Whether the queue has been shut down (its controller stopped).
    pub fn is_shut_down(&self) -> bool {
        self.queue.is_shut_down()
    }
}
