//! Which instance of each cluster is engaged: the one registry behind the manager,
//! the controllers and the provider registries.
//!
//! A cluster name can be engaged, replaced by a new instance, and removed at any
//! moment, from several tasks at once. The rules every holder of a name → instance map
//! needs are written once here:
//!
//! 1. **Engaging with a cancelled token changes nothing.** A cancelled token means the
//!    engagement is already over (the instance was replaced or removed before it
//!    arrived); installing it would evict the live instance.
//! 2. **The same instance again is a no-op**, as the contract says.
//! 3. **A new instance replaces the old one**, and the caller gets the old entry back
//!    to cancel *after* it has put the new one in place everywhere it must go, so that
//!    work queued under the name carries over instead of being dropped in between.
//! 4. **A disengage removes only its own entry**: each entry has a generation, and a
//!    disengage for an older generation (a replaced instance whose token fired late)
//!    leaves the newer one alone.
//!
//! Rules 1–4 make every interleaving of engage and disengage on one map safe. A holder
//! that calls out between deciding and acting (the manager engaging its components,
//! a provider engaging the manager) additionally serialises its engagements per name
//! with [`Gates`], so that two engagements of one name can never cross on their way
//! through it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterName};

/// One engaged instance of a cluster.
pub(crate) struct Engaged<V> {
    pub cluster: Arc<Cluster>,
    /// Lives as long as this engagement.
    pub token: CancellationToken,
    /// Tells this engagement from earlier and later ones of the same name.
    pub generation: u64,
    /// What the holder keeps beside it.
    pub value: V,
}

/// What [`Engagements::engage`] did.
pub(crate) enum Engage<V> {
    /// The token was cancelled already: a stale engagement, ignored.
    Stale,
    /// The same instance is engaged already.
    Unchanged,
    /// Recorded under `generation`; `replaced` is the previous instance, whose token
    /// the caller cancels once the new one is in place.
    New {
        generation: u64,
        replaced: Option<Engaged<V>>,
    },
}

/// Engaged clusters by name; see the [module docs](self) for the rules.
///
/// Not synchronised: each holder keeps it under its own lock, beside whatever else
/// must change atomically with it (the manager's component list, a provider's
/// indexes).
pub(crate) struct Engagements<V> {
    entries: HashMap<ClusterName, Engaged<V>>,
    next_generation: u64,
}

impl<V> Default for Engagements<V> {
    fn default() -> Self {
        Engagements {
            entries: HashMap::new(),
            next_generation: 0,
        }
    }
}

impl<V> Engagements<V> {
    /// Records `cluster` under `name` (rules 1–3).
    pub fn engage(
        &mut self,
        name: &ClusterName,
        cluster: Arc<Cluster>,
        token: CancellationToken,
        value: V,
    ) -> Engage<V> {
        if token.is_cancelled() {
            return Engage::Stale;
        }
        if let Some(current) = self.entries.get(name)
            && Arc::ptr_eq(&current.cluster, &cluster)
            && !current.token.is_cancelled()
        {
            return Engage::Unchanged;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let entry = Engaged {
            cluster,
            token,
            generation,
            value,
        };
        let replaced = self.entries.insert(name.clone(), entry);
        Engage::New { generation, replaced }
    }

    /// Removes `name` if its entry is still the one of `generation` (rule 4).
    pub fn disengage(&mut self, name: &ClusterName, generation: u64) -> Option<Engaged<V>> {
        if self.entries.get(name)?.generation != generation {
            return None;
        }
        self.entries.remove(name)
    }

    /// Removes `name` whatever its generation.
    pub fn remove(&mut self, name: &ClusterName) -> Option<Engaged<V>> {
        self.entries.remove(name)
    }

    /// The entry of `name`, if its engagement is live.
    pub fn get(&self, name: &ClusterName) -> Option<&Engaged<V>> {
        self.entries.get(name).filter(|e| !e.token.is_cancelled())
    }

    /// The entry of `name`, live or not.
    pub fn get_any(&self, name: &ClusterName) -> Option<&Engaged<V>> {
        self.entries.get(name)
    }

    /// The entry of `name`, live or not.
    pub fn get_any_mut(&mut self, name: &ClusterName) -> Option<&mut Engaged<V>> {
        self.entries.get_mut(name)
    }

    /// Every live entry.
    pub fn live(&self) -> impl Iterator<Item = (&ClusterName, &Engaged<V>)> {
        self.entries.iter().filter(|(_, e)| !e.token.is_cancelled())
    }

    /// Every entry, live or not.
    pub fn all(&self) -> impl Iterator<Item = (&ClusterName, &Engaged<V>)> {
        self.entries.iter()
    }

    /// Names of the live entries.
    pub fn names(&self) -> Vec<ClusterName> {
        self.live().map(|(name, _)| name.clone()).collect()
    }

    /// Removes every entry.
    pub fn drain(&mut self) -> impl Iterator<Item = (ClusterName, Engaged<V>)> + '_ {
        self.entries.drain()
    }
}

/// Serialises engagements per cluster name: while one task holds a name's [`Gate`],
/// others entering the same name wait; other names are not affected.
///
/// Entries exist only while someone holds or waits for a gate, so names that come
/// and go leave nothing behind.
#[derive(Default)]
pub(crate) struct Gates {
    gates: Mutex<HashMap<ClusterName, Slot>>,
}

struct Slot {
    mutex: Arc<tokio::sync::Mutex<()>>,
    /// Gates of this name that exist: held or waiting.
    users: usize,
}

/// Exclusive passage for one cluster name, until dropped.
pub(crate) struct Gate<'a> {
    gates: &'a Gates,
    name: ClusterName,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Gates {
    /// Waits for the gate of `name`.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped wait leaves no entry behind.
    pub async fn enter(&self, name: &ClusterName) -> Gate<'_> {
        let mutex = {
            let mut gates = self.lock();
            let slot = gates.entry(name.clone()).or_insert_with(|| Slot {
                mutex: Arc::default(),
                users: 0,
            });
            slot.users += 1;
            slot.mutex.clone()
        };
        // Counted from here: dropping the gate, waiting or not, uncounts it.
        let mut gate = Gate {
            gates: self,
            name: name.clone(),
            guard: None,
        };
        gate.guard = Some(mutex.lock_owned().await);
        gate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterName, Slot>> {
        self.gates.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut gates = self.gates.lock();
        if let Some(slot) = gates.get_mut(&self.name) {
            slot.users -= 1;
            if slot.users == 0 {
                gates.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    pub(super) fn cluster(name: &str) -> Arc<Cluster> {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        Arc::new(Cluster::new(name, client))
    }

    #[tokio::test]
    async fn stale_same_new_and_own_disengage() {
        let mut map = Engagements::default();
        let name = ClusterName::from("a");
        let (first, second) = (cluster("a"), cluster("a"));
        let Engage::New {
            generation: g1,
            replaced: None,
        } = map.engage(&name, first.clone(), CancellationToken::new(), ())
        else {
            panic!("first engagement is new");
        };
        assert!(matches!(
            map.engage(&name, first.clone(), CancellationToken::new(), ()),
            Engage::Unchanged
        ));
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            map.engage(&name, second.clone(), cancelled, ()),
            Engage::Stale
        ));
        let Engage::New {
            generation: g2,
            replaced: Some(old),
        } = map.engage(&name, second.clone(), CancellationToken::new(), ())
        else {
            panic!("a new instance replaces");
        };
        assert!(Arc::ptr_eq(&old.cluster, &first) && old.generation == g1 && g2 > g1);
        assert!(
            map.disengage(&name, g1).is_none(),
            "an old generation leaves the new one"
        );
        assert!(Arc::ptr_eq(&map.get(&name).unwrap().cluster, &second));
        assert!(map.disengage(&name, g2).is_some());
        assert!(map.get(&name).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn gates_serialise_one_name_and_leave_nothing_behind() {
        let gates = Arc::new(Gates::default());
        let (a, b) = (ClusterName::from("a"), ClusterName::from("b"));
        let held = gates.enter(&a).await;
        // Another name passes at once.
        drop(gates.enter(&b).await);
        let waiter = {
            let (gates, a) = (gates.clone(), a.clone());
            tokio::spawn(async move { drop(gates.enter(&a).await) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.unwrap();
        assert_eq!(gates.len(), 0);
        // A wait that is dropped leaves no entry either.
        let held = gates.enter(&a).await;
        let abandoned = tokio::time::timeout(Duration::from_millis(5), gates.enter(&a)).await;
        assert!(abandoned.is_err());
        drop(held);
        assert_eq!(gates.len(), 0);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Engage instance `n`, with a token cancelled beforehand or not.
        Engage(usize, bool),
        /// Cancel the token of the `n`-th engagement handed out so far.
        Cancel(usize),
        /// Disengage the generation of the `n`-th engagement handed out so far.
        Disengage(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, any::<bool>()).prop_map(|(n, cancelled)| Op::Engage(n, cancelled)),
            2 => any::<usize>().prop_map(Op::Cancel),
            2 => any::<usize>().prop_map(Op::Disengage),
        ]
    }

    /// What the map must hold: the instance, generation and token of the entry.
    type Entry = (usize, u64, CancellationToken);

    fn check(ops: Vec<Op>, clusters: &[Arc<Cluster>]) -> Result<(), TestCaseError> {
        let name = ClusterName::from("a");
        let mut map: Engagements<usize> = Engagements::default();
        let mut model: Option<Entry> = None;
        let mut handed: Vec<Entry> = Vec::new();
        for op in ops {
            match op {
                Op::Engage(n, cancelled) => {
                    let token = CancellationToken::new();
                    if cancelled {
                        token.cancel();
                    }
                    let same_live = model
                        .as_ref()
                        .is_some_and(|(m, _, t)| *m == n && !t.is_cancelled());
                    match map.engage(&name, clusters[n].clone(), token.clone(), n) {
                        Engage::Stale => prop_assert!(cancelled, "a live token was called stale"),
                        Engage::Unchanged => prop_assert!(!cancelled && same_live),
                        Engage::New { generation, replaced } => {
                            prop_assert!(!cancelled && !same_live);
                            prop_assert!(handed.iter().all(|(_, g, _)| *g < generation), "generations grow");
                            prop_assert_eq!(
                                replaced.map(|e| e.generation),
                                model.as_ref().map(|(_, g, _)| *g)
                            );
                            model = Some((n, generation, token.clone()));
                            handed.push((n, generation, token));
                        }
                    }
                }
                Op::Cancel(pick) if !handed.is_empty() => handed[pick % handed.len()].2.cancel(),
                Op::Disengage(pick) if !handed.is_empty() => {
                    let generation = handed[pick % handed.len()].1;
                    let removed = map.disengage(&name, generation);
                    let own = model.as_ref().is_some_and(|(_, g, _)| *g == generation);
                    prop_assert_eq!(removed.is_some(), own, "a disengage removes its own entry only");
                    if own {
                        model = None;
                    }
                }
                Op::Cancel(_) | Op::Disengage(_) => {}
            }
            let live = model
                .as_ref()
                .filter(|(_, _, t)| !t.is_cancelled())
                .map(|(n, g, _)| (*n, *g));
            let held = map.get(&name).map(|e| (e.value, e.generation));
            prop_assert_eq!(held, live);
            if let Some((n, _)) = live {
                prop_assert!(Arc::ptr_eq(&map.get(&name).unwrap().cluster, &clusters[n]));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn engagements_match_the_model(ops in proptest::collection::vec(op(), 0..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let _entered = runtime.enter();
            let clusters: Vec<_> = (0..3).map(|_| super::tests::cluster("a")).collect();
            check(ops, &clusters)?;
        }
    }
}
