//! Ready items, served round-robin across clusters.

use std::collections::VecDeque;

use crate::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Ready items in one FIFO lane per cluster; [`pop`](Self::pop) takes one item from
/// each cluster in turn.
///
/// The ring holds one *turn* per cluster that has ready items. A turn is tagged with a
/// ticket that its lane also stores: dropping a cluster removes only its lane, and the
/// orphaned turn is recognised by the ticket mismatch and skipped. This keeps
/// [`remove_cluster`](Self::remove_cluster) from scanning the ring, and a re-created
/// cluster (new ticket) from inheriting a second turn. Lanes and turns disappear as soon
/// as a cluster has no ready item, so short-lived clusters leave nothing behind.
///
/// A *parked* cluster keeps its ready items but gets no turn: [`pop`](Self::pop) drops
/// its turn when it comes round, and [`unpark`](Self::unpark) gives it a new one at the
/// back of the ring. The queue parks clusters that must not be served right now
/// (paused, or at their concurrency cap). A cluster at its cap may still borrow an
/// idle slot; the queue then takes its item out of turn with
/// [`pop_from`](Self::pop_from), and it stays parked.
#[derive(Debug)]
pub(crate) struct FairQueue<C, K> {
    lanes: HashMap<C, Lane<K>>,
    ring: VecDeque<(C, u64)>,
    parked: HashSet<C>,
    /// Ready items of parked clusters.
    parked_len: usize,
    next_ticket: u64,
    len: usize,
}

#[derive(Debug)]
struct Lane<K> {
    /// Never empty while the lane is in the map.
    items: VecDeque<K>,
    ticket: u64,
    /// Whether a turn with this lane's ticket is in the ring (a parked lane loses it).
    in_ring: bool,
}

impl<C, K> FairQueue<C, K>
where
    C: Clone + Eq + Hash,
{
    pub(crate) fn new() -> Self {
        Self {
            lanes: HashMap::default(),
            ring: VecDeque::new(),
            parked: HashSet::default(),
            parked_len: 0,
            next_ticket: 0,
            len: 0,
        }
    }

    /// Appends `key` to the lane of `cluster`. A cluster that had no ready item joins
    /// the ring at the back, behind every cluster already waiting (unless parked).
    pub(crate) fn push(&mut self, cluster: C, key: K) {
        let parked = self.parked.contains(&cluster);
        let lane = self.lanes.entry(cluster).or_insert_with_key(|cluster| {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            if !parked {
                self.ring.push_back((cluster.clone(), ticket));
            }
            Lane {
                items: VecDeque::new(),
                ticket,
                in_ring: !parked,
            }
        });
        lane.items.push_back(key);
        self.len += 1;
        if parked {
            self.parked_len += 1;
        }
    }

    /// Takes the oldest item of the cluster whose turn it is, and sends that cluster to
    /// the back of the ring if it has more.
    pub(crate) fn pop(&mut self) -> Option<(C, K)> {
        while let Some((cluster, ticket)) = self.ring.pop_front() {
            let Some(lane) = self.lanes.get_mut(&cluster) else {
                continue; // the cluster was removed
            };
            if lane.ticket != ticket {
                continue; // the cluster was removed and came back with a new turn
            }
            if self.parked.contains(&cluster) {
                lane.in_ring = false; // `unpark` gives it a new turn
                continue;
            }
            let Some(key) = lane.items.pop_front() else {
                // Unreachable while lanes are never empty; recover rather than panic.
                self.lanes.remove(&cluster);
                continue;
            };
            if lane.items.is_empty() {
                self.lanes.remove(&cluster);
                if self.lanes.is_empty() {
                    self.ring.clear(); // whatever is left is orphaned
                }
            } else {
                self.ring.push_back((cluster.clone(), ticket));
            }
            self.len -= 1;
            return Some((cluster, key));
        }
        None
    }

    /// Takes the oldest item of `cluster`, whether or not it is parked and whoever's
    /// turn it is.
    pub(crate) fn pop_from(&mut self, cluster: &C) -> Option<K> {
        let lane = self.lanes.get_mut(cluster)?;
        let key = lane.items.pop_front()?;
        let emptied = lane.items.is_empty();
        self.len -= 1;
        if self.parked.contains(cluster) {
            self.parked_len -= 1;
        }
        if emptied {
            // A turn it may still hold in the ring is orphaned, as after a removal.
            self.lanes.remove(cluster);
            self.compact_ring();
        }
        Some(key)
    }

    /// Drops every ready item of `cluster`, returning them.
    pub(crate) fn remove_cluster(&mut self, cluster: &C) -> VecDeque<K> {
        let Some(lane) = self.lanes.remove(cluster) else {
            return VecDeque::new();
        };
        self.len -= lane.items.len();
        if self.parked.contains(cluster) {
            self.parked_len -= lane.items.len();
        }
        self.compact_ring();
        lane.items
    }

    /// Stops serving `cluster` until [`unpark`](Self::unpark); its items stay.
    pub(crate) fn park(&mut self, cluster: &C) {
        if self.parked.insert(cluster.clone()) {
            self.parked_len += self.cluster_len(cluster);
        }
    }

    /// Serves `cluster` again, at the back of the ring. Returns whether it has ready
    /// items that just became leasable.
    pub(crate) fn unpark(&mut self, cluster: &C) -> bool {
        if !self.parked.remove(cluster) {
            return false;
        }
        let Some(lane) = self.lanes.get_mut(cluster) else {
            return false;
        };
        self.parked_len -= lane.items.len();
        if !lane.in_ring {
            lane.in_ring = true;
            self.ring.push_back((cluster.clone(), lane.ticket));
        }
        true
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.lanes.clear();
        self.ring.clear();
        self.parked.clear();
        self.parked_len = 0;
        self.len = 0;
    }

    /// Every live lane owns exactly one turn, so anything beyond `lanes.len()` is an
    /// orphan. Sweeping only once orphans outnumber live turns keeps the cost amortised
    /// O(1) per removal.
    fn compact_ring(&mut self) {
        if self.lanes.is_empty() {
            self.ring.clear();
        } else if self.ring.len() > 2 * self.lanes.len() + 16 {
            let lanes = &self.lanes;
            self.ring
                .retain(|(cluster, ticket)| lanes.get(cluster).is_some_and(|lane| lane.ticket == *ticket));
        }
    }

    /// Ready items across all clusters.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Ready items of clusters that are not parked: what [`pop`](Self::pop) can serve.
    pub(crate) fn leasable_len(&self) -> usize {
        self.len - self.parked_len
    }

    /// Parked clusters (for leak tests).
    #[cfg(test)]
    pub(crate) fn parked_count(&self) -> usize {
        self.parked.len()
    }

    /// Ready items of one cluster.
    pub(crate) fn cluster_len(&self, cluster: &C) -> usize {
        self.lanes.get(cluster).map_or(0, |lane| lane.items.len())
    }

    /// Turns held in the ring, live or orphaned (for leak tests).
    #[cfg(test)]
    pub(crate) fn ring_len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut FairQueue<&'static str, u32>) -> Vec<(&'static str, u32)> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn fifo_within_a_cluster_round_robin_across() {
        let mut queue = FairQueue::new();
        for key in 0..3 {
            queue.push("a", key);
        }
        queue.push("b", 10);
        queue.push("c", 20);
        queue.push("c", 21);
        assert_eq!(queue.len(), 6);
        assert_eq!(queue.cluster_len(&"c"), 2);
        assert_eq!(
            drain(&mut queue),
            [("a", 0), ("b", 10), ("c", 20), ("a", 1), ("c", 21), ("a", 2)]
        );
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.ring_len(), 0);
    }

    #[test]
    fn newcomer_waits_at_most_one_turn() {
        let mut queue = FairQueue::new();
        for key in 0..1000 {
            queue.push("a", key);
        }
        assert_eq!(queue.pop(), Some(("a", 0)));
        queue.push("b", 0);
        assert_eq!(queue.pop(), Some(("a", 1)));
        assert_eq!(queue.pop(), Some(("b", 0)));
    }

    #[test]
    fn removed_cluster_loses_its_turn_and_items() {
        let mut queue = FairQueue::new();
        queue.push("a", 0);
        queue.push("b", 0);
        queue.push("b", 1);
        assert_eq!(queue.remove_cluster(&"b"), [0, 1]);
        assert_eq!(queue.cluster_len(&"b"), 0);
        // Re-created behind "a": one turn, not two.
        queue.push("b", 2);
        queue.push("a", 1);
        assert_eq!(drain(&mut queue), [("a", 0), ("b", 2), ("a", 1)]);
        assert!(queue.remove_cluster(&"zzz").is_empty());
    }

    #[test]
    fn parked_cluster_keeps_its_items_and_rejoins_at_the_back() {
        let mut queue = FairQueue::new();
        queue.push("a", 0);
        queue.push("a", 1);
        queue.push("b", 0);
        queue.park(&"a");
        assert_eq!(queue.leasable_len(), 1);
        queue.push("a", 2); // no new turn while parked
        queue.push("c", 0);
        assert_eq!(queue.pop(), Some(("b", 0)));
        assert_eq!(queue.pop(), Some(("c", 0)));
        assert_eq!(queue.pop(), None);
        assert_eq!(queue.len(), 3);
        queue.push("d", 0);
        assert!(queue.unpark(&"a"));
        assert!(!queue.unpark(&"a"));
        assert_eq!(queue.leasable_len(), 4);
        assert_eq!(drain(&mut queue), [("d", 0), ("a", 0), ("a", 1), ("a", 2)]);
        assert_eq!(queue.ring_len(), 0);
    }

    #[test]
    fn park_and_unpark_before_the_turn_comes_keeps_one_turn() {
        let mut queue = FairQueue::new();
        queue.push("a", 0);
        queue.push("a", 1);
        queue.push("b", 0);
        queue.park(&"a");
        assert!(queue.unpark(&"a"));
        assert_eq!(drain(&mut queue), [("a", 0), ("b", 0), ("a", 1)]);
        queue.park(&"x"); // a cluster with nothing queued
        queue.push("x", 0);
        assert_eq!(queue.pop(), None);
        queue.remove_cluster(&"x");
        assert_eq!(queue.leasable_len(), 0);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn pop_from_takes_a_parked_clusters_item_out_of_turn() {
        let mut queue = FairQueue::new();
        queue.push("a", 0);
        queue.push("a", 1);
        queue.push("b", 0);
        queue.park(&"a");
        assert_eq!(queue.pop_from(&"a"), Some(0));
        assert_eq!((queue.len(), queue.leasable_len()), (2, 1));
        assert_eq!(queue.pop_from(&"a"), Some(1));
        assert_eq!(queue.pop_from(&"a"), None);
        assert_eq!(queue.cluster_len(&"a"), 0);
        // Its old turn is orphaned: a new item of "a" gets one turn, behind "b".
        queue.push("a", 2);
        assert!(queue.unpark(&"a"));
        assert_eq!(drain(&mut queue), [("b", 0), ("a", 2)]);
        assert_eq!(queue.ring_len(), 0);
        assert_eq!(queue.pop_from(&"zzz"), None);
    }

    #[test]
    fn short_lived_clusters_leave_no_turns_behind() {
        let mut queue: FairQueue<String, u32> = FairQueue::new();
        queue.push("long-lived".to_owned(), 0);
        for n in 0..10_000 {
            let name = format!("ephemeral-{n}");
            queue.push(name.clone(), 0);
            queue.remove_cluster(&name);
        }
        // One live lane; orphans are swept once they exceed `2 * live + 16`.
        let live_lanes = 1;
        assert!(
            queue.ring_len() <= 2 * live_lanes + 16 + 1,
            "ring grew to {}",
            queue.ring_len()
        );
        assert_eq!(queue.pop(), Some(("long-lived".to_owned(), 0)));
        assert_eq!(queue.ring_len(), 0);
    }
}
