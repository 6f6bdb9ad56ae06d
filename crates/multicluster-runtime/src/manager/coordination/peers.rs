//! Which replicas are alive, judged from their peer Leases.
//!
//! A replica renews its peer Lease every renew period; the others read all peer
//! Leases from one watch. As for any Lease (see `manager::lease`), a record is live
//! for its lease duration after *this* replica first saw it, on this replica's
//! clock: a peer that stops renewing drops out once its last record has been
//! unchanged that long, whatever the clocks of the two machines say.
//!
//! The first replica to see a peer's record expire marks it dead: it writes the
//! record with no holder (only if it is still the version it saw expire). A replica
//! that joins later then does not count the dead peer as alive for a lease duration
//! of its own, and a fence held by the dead peer can be taken at once. A record
//! left without a holder for a lease duration is deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use tokio::time::Instant;

/// The annotation of a peer Lease that holds the replica's weight.
pub(crate) const WEIGHT_ANNOTATION: &str = "multicluster-runtime.io/shard-weight";

/// The largest weight a peer counts with; a peer Lease that advertises more counts
/// as this (see [`Sharding::weight`](crate::manager::Sharding::weight)).
pub(crate) const MAX_WEIGHT: u32 = super::MAX_WEIGHT;

/// A live replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub identity: String,
    pub weight: u32,
}

/// Peer records as this replica has seen them.
#[derive(Default)]
pub(crate) struct Peers {
    /// By Lease name: the record, its weight and when it was first seen unchanged.
    seen: HashMap<String, (LeaseSpec, u32, Instant)>,
    /// The records themselves, for their `resourceVersion`.
    leases: HashMap<String, Arc<Lease>>,
}

/// What to write about records seen expired: dead peers to mark, and long-dead
/// records to delete, each with the `resourceVersion` seen.
#[derive(Default, Debug)]
pub(crate) struct Sweep {
    pub mark: Vec<Arc<Lease>>,
    pub delete: Vec<(String, String)>,
}

impl Peers {
    /// Takes in the current set of peer Leases, seen at `now`.
    pub(crate) fn observe(&mut self, leases: &[Arc<Lease>], now: Instant) {
        let mut seen = HashMap::with_capacity(leases.len());
        for lease in leases {
            let Some(name) = lease.metadata.name.clone() else {
                continue;
            };
            let spec = lease.spec.clone().unwrap_or_default();
            let weight = weight(lease);
            let since = match self.seen.remove(&name) {
                Some((old, _, since)) if old == spec => since,
                _ => now,
            };
            seen.insert(name.clone(), (spec, weight, since));
            self.leases.insert(name, lease.clone());
        }
        self.leases.retain(|name, _| seen.contains_key(name));
        self.seen = seen;
    }

    /// The records expired at `now` that are not `me`'s: to mark if they still name
    /// a holder, to delete if they have named none for a lease duration.
    pub(crate) fn sweep(&self, me: &str, now: Instant, duration: Duration) -> Sweep {
        let mut sweep = Sweep::default();
        for (name, (spec, _, since)) in &self.seen {
            let Some(lease) = self.leases.get(name) else {
                continue;
            };
            let Some(version) = lease.metadata.resource_version.clone() else {
                continue;
            };
            match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
                Some(holder) if holder != me => {
                    let ttl = spec
                        .lease_duration_seconds
                        .map_or(duration, |s| Duration::from_secs(s.max(0) as u64));
                    if now >= *since + ttl {
                        sweep.mark.push(lease.clone());
                    }
                }
                Some(_) => {}
                None if now >= *since + duration => sweep.delete.push((name.clone(), version)),
                None => {}
            }
        }
        sweep
    }

    /// Whether the record `name` is at `version` as last seen.
    pub(crate) fn holds(&self, name: &str, version: &str) -> bool {
        self.leases
            .get(name)
            .is_some_and(|l| l.metadata.resource_version.as_deref() == Some(version))
    }

    /// The replicas live at `now`, sorted by identity.
    pub(crate) fn live(&self, now: Instant) -> Vec<Peer> {
        let mut live: Vec<Peer> = self
            .seen
            .values()
            .filter_map(|(spec, weight, since)| {
                let identity = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
                let duration = Duration::from_secs(spec.lease_duration_seconds?.max(0) as u64);
                (now < *since + duration).then(|| Peer {
                    identity: identity.to_owned(),
                    weight: *weight,
                })
            })
            .collect();
        live.sort_by(|a, b| a.identity.cmp(&b.identity));
        live.dedup_by(|a, b| a.identity == b.identity);
        live
    }

    /// The record of the replica `identity` and since when it has been seen
    /// unchanged, if the watch has it.
    pub(crate) fn record_of(&self, identity: &str) -> Option<(LeaseSpec, Instant)> {
        self.seen
            .values()
            .find(|(spec, _, _)| spec.holder_identity.as_deref() == Some(identity))
            .map(|(spec, _, since)| (spec.clone(), *since))
    }

    /// When the next live record expires, if any: the set of live peers can change
    /// then without any event.
    pub(crate) fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.seen
            .values()
            .filter_map(|(spec, _, since)| {
                spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
                let at = *since + Duration::from_secs(spec.lease_duration_seconds?.max(0) as u64);
                (at > now).then_some(at)
            })
            .min()
    }
}

/// The weight written on a peer Lease, at most [`MAX_WEIGHT`]; 1 if absent or
/// unreadable.
fn weight(lease: &Lease) -> u32 {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WEIGHT_ANNOTATION))
        .and_then(|w| w.trim().parse::<u64>().ok())
        .map_or(1, |w| w.min(u64::from(MAX_WEIGHT)) as u32)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn record(name: &str, holder: Option<&str>, renewed: i32) -> Arc<Lease> {
        Arc::new(Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(20),
                lease_transitions: Some(renewed),
                ..LeaseSpec::default()
            }),
        })
    }

    fn weighted(name: &str, holder: &str, weight: &str) -> Arc<Lease> {
        let mut lease = (*record(name, Some(holder), 0)).clone();
        lease.metadata.annotations = Some([(WEIGHT_ANNOTATION.to_owned(), weight.to_owned())].into());
        Arc::new(lease)
    }

    /// x07: a peer Lease advertising a huge weight counts with [`MAX_WEIGHT`], so it
    /// cannot take every cluster from the honest replicas; weights up to the cap
    /// count as written, and garbage as 1.
    #[tokio::test(start_paused = true)]
    async fn x07_a_peer_advertising_a_huge_weight_is_capped() {
        let mut peers = Peers::default();
        let now = Instant::now();
        peers.observe(
            &[
                weighted("p-greedy", "greedy", "4294967295"),
                weighted("p-huge", "huge", "99999999999999999999"),
                weighted("p-honest", "honest", "1"),
                weighted("p-capped", "capped", &MAX_WEIGHT.to_string()),
                weighted("p-junk", "junk", "-3"),
            ],
            now,
        );
        let weights: Vec<(String, u32)> = peers
            .live(now)
            .into_iter()
            .map(|p| (p.identity, p.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("capped".to_owned(), MAX_WEIGHT),
                ("greedy".to_owned(), MAX_WEIGHT),
                ("honest".to_owned(), 1),
                ("huge".to_owned(), 1),
                ("junk".to_owned(), 1),
            ]
        );
        // Against one honest replica, a greedy one leaves it its share of 1/(1+cap).
        peers.observe(
            &[
                weighted("p-greedy", "greedy", "4294967295"),
                weighted("p-honest", "honest", "1"),
            ],
            now,
        );
        let ring =
            super::super::hrw::Ring::new(peers.live(now).iter().map(|p| (p.identity.as_str(), p.weight)));
        let clusters = 20_000;
        let honest = (0..clusters)
            .filter(|c| ring.owner(&format!("cluster-{c}")) == Some("honest"))
            .count();
        let expected = clusters / (1 + MAX_WEIGHT as usize);
        assert!(
            honest > expected / 2 && honest < expected * 2,
            "the honest replica owns {honest} of {clusters}, expected about {expected}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_lives_while_its_record_changes_on_the_observers_clock() {
        let mut peers = Peers::default();
        let t0 = Instant::now();
        peers.observe(&[record("p-a", Some("a"), 0), record("p-b", Some("b"), 0)], t0);
        assert_eq!(peers.live(t0).len(), 2);
        // b renews, a does not.
        let t1 = t0 + Duration::from_secs(15);
        peers.observe(&[record("p-a", Some("a"), 0), record("p-b", Some("b"), 1)], t1);
        assert_eq!(peers.next_expiry(t1), Some(t0 + Duration::from_secs(20)));
        let t2 = t0 + Duration::from_secs(21);
        let live: Vec<_> = peers.live(t2).into_iter().map(|p| p.identity).collect();
        assert_eq!(live, ["b"]);
        // A released record (no holder) and a deleted one are not live.
        peers.observe(&[record("p-b", None, 1)], t2);
        assert!(peers.live(t2).is_empty());
    }
}
