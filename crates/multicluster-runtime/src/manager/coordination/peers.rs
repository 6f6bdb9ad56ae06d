//! Which replicas are alive, judged from their peer Leases.
//!
//! A replica renews its peer Lease every renew period; the others read all peer
//! Leases from one watch. As for any Lease (see `manager::lease`), a record is live
//! for its lease duration after *this* replica first saw it, on this replica's
//! clock: a peer that stops renewing drops out once its last record has been
//! unchanged that long, whatever the clocks of the two machines say.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use tokio::time::Instant;

/// The annotation of a peer Lease that holds the replica's weight.
pub(crate) const WEIGHT_ANNOTATION: &str = "multicluster-runtime.io/shard-weight";

/// A live replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub identity: String,
    pub weight: u32,
}

/// Peer records as this replica has seen them.
#[derive(Default)]
pub(crate) struct Peers {
    /// By Lease name: the record and when it was first seen unchanged.
    seen: HashMap<String, (LeaseSpec, u32, Instant)>,
}

impl Peers {
    /// Takes in the current set of peer Leases, seen at `now`.
    pub(crate) fn observe(&mut self, leases: &[Arc<Lease>], now: Instant) {
        let mut seen = HashMap::with_capacity(leases.len());
        for lease in leases {
            let Some(name) = lease.metadata.name.clone() else { continue };
            let spec = lease.spec.clone().unwrap_or_default();
            let weight = weight(lease);
            let since = match self.seen.remove(&name) {
                Some((old, _, since)) if old == spec => since,
                _ => now,
            };
            seen.insert(name, (spec, weight, since));
        }
        self.seen = seen;
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

/// The weight written on a peer Lease; 1 if absent or unreadable.
fn weight(lease: &Lease) -> u32 {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WEIGHT_ANNOTATION))
        .and_then(|w| w.parse().ok())
        .unwrap_or(1)
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
