//! Where a member's apiserver sends a webhook's requests, and how the server knows
//! which cluster it is: `/clusters/<cluster>/<tag>/<webhook>`, with the cluster's
//! name percent-encoded and `tag` an HMAC-SHA256 of the name under the server's key.
//!
//! The tag makes the path a credential per cluster: an admin of one member, who
//! can read that member's webhook configuration, learns its tag only, and cannot
//! make requests count as another cluster's (see `docs/decisions/webhooks.md`).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::cluster::ClusterName;
use crate::serving::crypto::{hmac, rand};

/// Bytes left as they are in a path segment; every other byte is encoded, `/` and
/// `%` among them.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const PREFIX: &str = "/clusters/";

/// The server's key for tags: given (so that replicas agree), or random per server.
pub(crate) struct Key(hmac::Key);

impl Key {
    pub fn new(secret: &[u8]) -> Self {
        Key(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// A key of 32 random bytes.
    pub fn random() -> Result<Self, String> {
        let rng = rand::SystemRandom::new();
        let secret: [u8; 32] = rand::generate(&rng)
            .map_err(|_| "no random bytes for the attribution key".to_owned())?
            .expose();
        Ok(Self::new(&secret))
    }

    fn tag(&self, cluster: &ClusterName) -> String {
        let tag = hmac::sign(&self.0, cluster.as_str().as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The path of `webhook` for `cluster`.
    pub fn path(&self, cluster: &ClusterName, webhook: &str) -> String {
        format!(
            "{PREFIX}{}/{}/{}",
            utf8_percent_encode(cluster.as_str(), SEGMENT),
            self.tag(cluster),
            utf8_percent_encode(webhook, SEGMENT)
        )
    }

    /// The cluster and webhook a request's path names, if its tag is this key's for
    /// that cluster (compared in constant time).
    pub fn route(&self, path: &str) -> Result<(ClusterName, String), Refusal> {
        let rest = path.strip_prefix(PREFIX).ok_or(Refusal::NotFound)?;
        let mut parts = rest.split('/');
        let (Some(cluster), Some(tag), Some(webhook), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::NotFound);
        };
        let decode = |s: &str| percent_decode_str(s).decode_utf8().map(|s| s.into_owned());
        let (Ok(cluster), Ok(webhook)) = (decode(cluster), decode(webhook)) else {
            return Err(Refusal::NotFound);
        };
        let cluster = ClusterName::from(cluster);
        let tag = decode_hex(tag).ok_or(Refusal::Unattributed(cluster.clone()))?;
        hmac::verify(&self.0, cluster.as_str().as_bytes(), &tag)
            .map_err(|_| Refusal::Unattributed(cluster.clone()))?;
        Ok((cluster, webhook))
    }
}

/// Why a path is not served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a webhook path of this server.
    NotFound,
    /// The path names this cluster with a tag that is not this server's for it: a
    /// configuration written by another server (or key), or forged.
    Unattributed(ClusterName),
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// w02: a path routes to its cluster only with that cluster's tag.
    #[test]
    fn w02_a_path_is_attributed_only_with_its_clusters_tag() {
        let key = Key::new(b"replicas share this");
        for name in ["eu-1", "capi/ns/name", "multi#a b%", ""] {
            let cluster = ClusterName::from(name);
            let path = key.path(&cluster, "deny.example.com");
            assert_eq!(
                key.route(&path),
                Ok((cluster.clone(), "deny.example.com".to_owned())),
                "{path}"
            );
        }
        let (eu, us) = (ClusterName::from("eu-1"), ClusterName::from("us-1"));
        // eu-1's admin knows eu-1's path, and swaps in another cluster's name.
        let forged = key.path(&eu, "w").replacen("eu-1", "us-1", 1);
        assert_eq!(key.route(&forged), Err(Refusal::Unattributed(us)));
        // Another server's (or a restarted one's) key does not attribute it either.
        let other = Key::new(b"another key");
        assert_eq!(other.route(&key.path(&eu, "w")), Err(Refusal::Unattributed(eu)));
        for bad in [
            "/",
            "/metrics",
            "/clusters/eu-1",
            "/clusters/eu-1/zz/w",
            "/clusters/a/b/c/d",
        ] {
            assert!(key.route(bad).is_err(), "{bad}");
        }
    }
}
