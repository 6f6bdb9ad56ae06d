//! Rendezvous (highest random weight) hashing: which peer owns a cluster.
//!
//! Every replica scores each (cluster, peer) pair and the peer with the highest score
//! owns the cluster. When a peer joins, it takes only the clusters it now scores
//! highest on (about 1/N of them); when one leaves, only its clusters move, spread
//! over the others. Replicas agree without talking because the hash is fixed: FNV-1a
//! with a 64-bit finaliser, the same on every platform and in every build (std's
//! hashers promise neither).
//!
//! Weights follow the logarithmic method: a peer of weight `w` scores
//! `w / -ln(u)` with `u` the pair's hash mapped into (0, 1), which gives each peer a
//! share of clusters proportional to its weight.

/// A stable 64-bit hash of `parts`, each followed by a separator byte that cannot
/// occur in UTF-8, so that ("ab", "c") and ("a", "bc") differ.
pub(crate) fn hash(parts: &[&str]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(PRIME);
        }
    }
    // FNV's low bits mix poorly; a splitmix64 finaliser spreads every input bit.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The live peers, hashed once, ready to rank clusters.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Ring {
    /// (hash of the identity, weight, identity), weight above 0 only.
    peers: Vec<(u64, u32, String)>,
}

impl Ring {
    /// A ring of `peers` (identity, weight); peers of weight 0 own nothing.
    pub(crate) fn new<'a>(peers: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        Ring {
            peers: peers
                .into_iter()
                .filter(|(_, weight)| *weight > 0)
                .map(|(peer, weight)| (hash(&[peer]), weight, peer.to_owned()))
                .collect(),
        }
    }

    /// The peer that owns `cluster`: the highest score, ties to the smaller
    /// identity. `None` for an empty ring.
    pub(crate) fn owner(&self, cluster: &str) -> Option<&str> {
        // One hash of the name, then a cheap mix per peer: ranking 10,000 clusters
        // over 10 peers is 10,000 hashes, not 100,000.
        let name = hash(&[cluster]);
        self.peers
            .iter()
            .map(|(peer, weight, identity)| (score(mix(name, *peer), *weight), identity.as_str()))
            .max_by(|(a, pa), (b, pb)| a.total_cmp(b).then_with(|| pb.cmp(pa)))
            .map(|(_, identity)| identity)
    }
}

/// Combines the hashes of a cluster and a peer into the pair's (splitmix64's
/// finaliser over the two, one rotated so that the pair is ordered).
fn mix(cluster: u64, peer: u64) -> u64 {
    let mut h = cluster ^ peer.rotate_left(32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The score of a pair of hash `pair` for a peer of `weight`; higher wins.
fn score(pair: u64, weight: u32) -> f64 {
    // The top 53 bits as a float in (0, 1), never 0 or 1.
    let u = ((pair >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// The peer that owns `cluster` among `peers` (identity, weight); see [`Ring`].
pub(crate) fn owner<'a>(cluster: &str, peers: impl IntoIterator<Item = (&'a str, u32)>) -> Option<String> {
    Ring::new(peers).owner(cluster).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn shares(peers: &[(&str, u32)], clusters: usize) -> HashMap<String, usize> {
        let mut shares = HashMap::new();
        for c in 0..clusters {
            let owner = owner(&format!("cluster-{c}"), peers.iter().copied()).unwrap();
            *shares.entry(owner).or_default() += 1;
        }
        shares
    }

    #[test]
    fn hash_is_fixed() {
        // Replicas built by different compilers must agree: pin a few values
        // (checked against an independent implementation of the same steps).
        assert_eq!(hash(&["a"]), hash(&["a"]));
        assert_ne!(hash(&["ab", "c"]), hash(&["a", "bc"]));
        assert_eq!(hash(&[""]), 0x4f2d_b50f_1240_40cd);
        assert_eq!(hash(&["cluster-1", "replica-a"]), 0x2636_d34b_1c5c_0b07);
    }

    #[test]
    fn equal_weights_share_evenly_and_a_join_moves_about_one_nth() {
        let three = [("a", 1), ("b", 1), ("c", 1)];
        let before = shares(&three, 30_000);
        for share in before.values() {
            assert!((9_500..=10_500).contains(share), "{before:?}");
        }
        let four = [("a", 1), ("b", 1), ("c", 1), ("d", 1)];
        let moved = (0..30_000)
            .filter(|c| {
                let name = format!("cluster-{c}");
                owner(&name, three.iter().copied()) != owner(&name, four.iter().copied())
            })
            .count();
        // Only the new peer's share moves: 1/4 of the clusters.
        assert!((7_000..=8_000).contains(&moved), "moved {moved}");
    }

    #[test]
    fn weights_are_proportional_and_zero_owns_nothing() {
        let peers = [("a", 1), ("b", 3), ("z", 0)];
        let got = shares(&peers, 20_000);
        assert!(!got.contains_key("z"));
        let (a, b) = (got["a"] as f64, got["b"] as f64);
        assert!((2.7..3.3).contains(&(b / a)), "{got:?}");
        assert_eq!(owner("x", [("z", 0)]), None);
        // Replicas built by different compilers must agree on owners too (checked
        // against an independent implementation).
        let ring = Ring::new([("a", 1), ("b", 1), ("c", 1)]);
        let owners: Vec<_> = (0..8).map(|c| ring.owner(&format!("m{c:02}")).unwrap()).collect();
        assert_eq!(owners, ["a", "a", "a", "a", "a", "c", "a", "a"]);
    }
}
