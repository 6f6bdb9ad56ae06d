//! Leader election options; the protocol is [`super::lease`]'s (see
//! `docs/decisions/leader-election.md`).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use super::lease::Claim;

/// Leader election settings for a [`Manager`](super::Manager): which Lease, who we
/// are, and the timings (controller-runtime's defaults: 15 s / 10 s / 2 s).
///
/// Given to [`Manager::with_leader_election`](super::Manager::with_leader_election).
/// The Lease lives in the manager's own (local) cluster; the manager needs `get`
/// and `update` on that Lease (pin them with `resourceNames`) and `create` on
/// `leases` in its namespace (which Kubernetes cannot pin by name), as
/// `deploy/operator/overlays/leader-election/leader-election-rbac.yaml` grants.
/// Whoever can write the Lease decides who leads: see
/// `docs/decisions/coordination.md#trust`.
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::manager::{LeaderElection, OnLeadershipLoss};
///
/// let election = LeaderElection::new("my-operator")
///     .namespace("operators")
///     .lease_duration(Duration::from_secs(15))
///     .renew_deadline(Duration::from_secs(10))
///     .retry_period(Duration::from_secs(2))
///     .on_loss(OnLeadershipLoss::Campaign);
/// assert_eq!(election.name(), "my-operator");
/// assert!(election.holder_identity().contains('_'));
/// ```
#[derive(Clone, Debug)]
pub struct LeaderElection {
    name: String,
    namespace: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    on_loss: OnLeadershipLoss,
}

/// What the manager does once it lost the lease (its leader-only work has stopped
/// by then either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLeadershipLoss {
    /// [`Manager::start`](super::Manager::start) returns
    /// [`Error::LeadershipLost`](crate::Error::LeadershipLost), as controller-runtime
    /// does; the process is expected to exit and be restarted.
    #[default]
    Fail,
    /// The manager keeps running as a follower and campaigns again; leader-only
    /// runnables start anew when it is elected again.
    Campaign,
}

impl LeaderElection {
    /// Elect on the Lease `name` in the namespace `default`, with an identity of the
    /// host name and a random suffix, and controller-runtime's timings.
    pub fn new(name: impl Into<String>) -> Self {
        LeaderElection {
            name: name.into(),
            namespace: "default".into(),
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            on_loss: OnLeadershipLoss::Fail,
        }
    }

    /// The namespace of the Lease (default `default`).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// This replica's identity, unique among the replicas (default: host name, `_`
    /// and a random suffix).
    #[must_use]
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    /// How long followers wait, after they last saw the record change, before they
    /// take the lease (default 15 s). Written to the Lease in whole seconds,
    /// rounded up.
    #[must_use]
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration;
        self
    }

    /// How long the leader keeps retrying a failed renewal before it gives up and
    /// stops its leader-only work (default 10 s). Must be shorter than the lease
    /// duration: the difference is the margin between the leader stopping and a
    /// follower taking over.
    #[must_use]
    pub fn renew_deadline(mut self, deadline: Duration) -> Self {
        self.renew_deadline = deadline;
        self
    }

    /// How often the leader renews and followers try to acquire (default 2 s).
    #[must_use]
    pub fn retry_period(mut self, period: Duration) -> Self {
        self.retry_period = period;
        self
    }

    /// What to do once the lease is lost (default [`OnLeadershipLoss::Fail`]).
    #[must_use]
    pub fn on_loss(mut self, on_loss: OnLeadershipLoss) -> Self {
        self.on_loss = on_loss;
        self
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This replica's identity, as written to the Lease's `holderIdentity`.
    pub fn holder_identity(&self) -> &str {
        &self.identity
    }

    /// `namespace/name` of the Lease, for logs and errors.
    pub(crate) fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// How long a release on shutdown may take before the lease is left to expire.
    pub(crate) fn release_within(&self) -> Duration {
        self.renew_deadline
    }

    pub(crate) fn loss_policy(&self) -> OnLeadershipLoss {
        self.on_loss
    }

    /// Why these timings cannot work, if they cannot.
    pub(crate) fn invalid(&self) -> Option<String> {
        self.claim().invalid()
    }

    /// The Lease to hold: renewed and retried every retry period.
    pub(crate) fn claim(&self) -> Claim {
        Claim {
            name: self.name.clone(),
            identity: self.identity.clone(),
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            renew_period: self.retry_period,
            retry_period: self.retry_period,
            // Renew a whole period after acquiring, as client-go does.
            phase: 1.0,
            labels: Default::default(),
            annotations: Default::default(),
        }
    }

    pub(crate) fn namespace_name(&self) -> &str {
        &self.namespace
    }
}

/// Host name (from `HOSTNAME` or the kernel), `_`, and 16 random hex digits.
pub(crate) fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
    format!("{host}_{:016x}", hasher.finish())
}
