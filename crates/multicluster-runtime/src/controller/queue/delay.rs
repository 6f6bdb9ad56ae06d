//! Items waiting for a point in time.

use std::collections::BTreeMap;

use tokio::time::Instant;

/// Identifies one entry in [`Timers`], so it can be cancelled exactly.
///
/// Ordered by deadline first; the sequence number keeps entries with equal deadlines
/// distinct and in insertion order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    at: Instant,
    seq: u64,
}

impl TimerKey {
    /// When the entry is due.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }
}

/// Values ordered by the instant at which they become due.
///
/// A `BTreeMap` rather than a binary heap because items are moved earlier and dropped
/// with their cluster: exact removal keeps memory bounded by what is really waiting,
/// where a heap with lazy deletion would hold stale entries until their deadline.
#[derive(Debug)]
pub(crate) struct Timers<T> {
    entries: BTreeMap<TimerKey, T>,
    next_seq: u64,
}

impl<T> Timers<T> {
    pub(crate) fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Schedules `value` at `at`.
    pub(crate) fn insert(&mut self, at: Instant, value: T) -> TimerKey {
        let key = TimerKey {
            at,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.entries.insert(key, value);
        key
    }

    /// Cancels the entry, returning its value if it was still waiting.
    pub(crate) fn remove(&mut self, key: &TimerKey) -> Option<T> {
        self.entries.remove(key)
    }

    /// Takes the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
        let entry = self.entries.first_entry()?;
        (entry.key().at <= now).then(|| entry.remove())
    }

    /// The earliest deadline, if any entry is waiting.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.entries.first_key_value().map(|(key, _)| key.at)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pops_due_entries_in_deadline_then_insertion_order() {
        let start = Instant::now();
        let mut timers = Timers::new();
        timers.insert(start + Duration::from_millis(20), "late");
        timers.insert(start + Duration::from_millis(10), "first");
        timers.insert(start + Duration::from_millis(10), "second");

        assert_eq!(timers.next_deadline(), Some(start + Duration::from_millis(10)));
        assert_eq!(timers.pop_due(start), None);
        let now = start + Duration::from_millis(10);
        assert_eq!(timers.pop_due(now), Some("first"));
        assert_eq!(timers.pop_due(now), Some("second"));
        assert_eq!(timers.pop_due(now), None);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn removes_exactly() {
        let start = Instant::now();
        let mut timers = Timers::new();
        let a = timers.insert(start, 'a');
        let b = timers.insert(start, 'b');
        assert_eq!(timers.remove(&a), Some('a'));
        assert_eq!(timers.remove(&a), None);
        assert_eq!(b.at(), start);
        assert_eq!(timers.pop_due(start), Some('b'));
        assert_eq!(timers.next_deadline(), None);
    }
}
