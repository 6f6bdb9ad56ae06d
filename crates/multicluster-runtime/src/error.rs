//! The error type of the multicluster contract and the manager.

use crate::cache::ObjectKey;
use crate::cluster::ClusterName;

/// A boxed error from user code or a provider.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of providers, the manager and engagement.
///
/// [`Error::ClusterNotFound`] is what every provider returns for a name it does not
/// know; match it with [`Error::is_cluster_not_found`] rather than by message.
/// Match the other variants a caller may handle the same way, never by message:
///
/// ```
/// use std::sync::Arc;
/// use multicluster_runtime::providers::clusters::Clusters;
/// use multicluster_runtime::{Cluster, Error, Manager};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let client = || kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
/// let provider = Clusters::new();
/// provider.add(Arc::new(Cluster::new("eu-1", client()))).await.unwrap();
/// match provider.add(Arc::new(Cluster::new("eu-1", client()))).await {
///     Err(Error::ClusterExists { cluster }) => assert_eq!(cluster, "eu-1"),
///     other => panic!("{other:?}"),
/// }
///
/// let built = provider.replace_if_changed("us-1", 1, async || Ok(Arc::new(Cluster::new("eu-2", client())))).await;
/// assert!(matches!(built, Err(Error::ClusterNameMismatch { .. })));
///
/// let manager = Manager::new(Arc::new(Cluster::new("", client())));
/// let stopped = CancellationToken::new();
/// stopped.cancel();
/// manager.start(stopped.clone()).await.unwrap(); // runs, and returns at once
/// assert!(matches!(manager.start(stopped).await, Err(Error::AlreadyStarted)));
/// assert!(manager.get_cluster(&"nowhere".into()).await.unwrap_err().is_cluster_not_found());
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No cluster of that name is known (Go: `multicluster.ErrClusterNotFound`).
    #[error("cluster {0} not found")]
    ClusterNotFound(ClusterName),

    /// The cluster exists, but with [sharding](crate::Manager::with_sharding)
    /// another replica owns it: this replica must neither read nor write it, or two
    /// replicas would work on one cluster at once.
    #[error("cluster {cluster} is owned by another replica; this one does not work on it")]
    NotOwned {
        /// The cluster.
        cluster: ClusterName,
    },

    /// A component could not start work for a cluster.
    #[error("cannot engage cluster {cluster} in {component}: {source}")]
    Engage {
        /// The cluster.
        cluster: ClusterName,
        /// The component that refused, e.g. a controller's name.
        component: String,
        /// Why.
        source: BoxError,
    },

    /// A client could not be built for a cluster.
    #[error("cannot build a client for cluster {cluster}: {reason}")]
    Client {
        /// The cluster.
        cluster: ClusterName,
        /// kube's error, described without what may hold credentials (an exec
        /// plugin's command line or output): see
        /// [`redact::describe`](crate::redact::describe).
        reason: String,
    },

    /// A kubeconfig could not be used.
    #[error(transparent)]
    Kubeconfig(#[from] crate::cluster::kubeconfig::KubeconfigError),

    /// A cache operation failed.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),

    /// A provider failed as a whole, or refused an operation.
    #[error("provider {provider}: {source}")]
    Provider {
        /// The provider's name.
        provider: String,
        /// Why.
        source: BoxError,
    },

    /// A runnable added to the manager failed.
    #[error("runnable {name} failed: {source}")]
    Runnable {
        /// The runnable's name.
        name: String,
        /// Why.
        source: BoxError,
    },

    /// [`Manager::start`](crate::Manager::start) was called on a manager that has
    /// started before (a manager runs once; build a new one to run again).
    #[error("the manager has been started already; a manager runs once")]
    AlreadyStarted,

    /// A cluster of that name is registered already
    /// ([`Clusters::add`](crate::providers::clusters::Clusters::add); use
    /// [`replace`](crate::providers::clusters::Clusters::replace) to swap it).
    #[error("cluster {cluster} exists already; use replace to swap it")]
    ClusterExists {
        /// The name that is taken.
        cluster: ClusterName,
    },

    /// A provider built a cluster whose [`name`](crate::Cluster::name) differs from
    /// the name it was registered under
    /// ([`Clusters::replace_if_changed`](crate::providers::clusters::Clusters::replace_if_changed)).
    #[error("cluster {expected}: the built cluster is named {actual:?}")]
    ClusterNameMismatch {
        /// The name the cluster was to be registered under.
        expected: ClusterName,
        /// The name the built cluster carries.
        actual: ClusterName,
    },

    /// The leader election options cannot work (e.g. a renew deadline not shorter
    /// than the lease duration).
    #[error("leader election on lease {lease}: {reason}")]
    LeaderElection {
        /// `namespace/name` of the Lease.
        lease: String,
        /// Why.
        reason: String,
    },

    /// The sharding options cannot work (e.g. a prefix that is not a valid name, or
    /// a renew deadline not shorter than the lease duration).
    #[error("sharding on leases {leases}: {reason}")]
    Sharding {
        /// `namespace/prefix` of the Leases.
        leases: String,
        /// Why.
        reason: String,
    },

    /// Leader election and sharding were both set on one manager
    /// ([`Manager::with_leader_election`](crate::Manager::with_leader_election),
    /// [`Manager::with_sharding`](crate::Manager::with_sharding)). They are two ways
    /// for replicas to divide the work, and do not combine: controllers would run on
    /// the leader alone, which engages only its share of the clusters, so the rest
    /// of the fleet would never be reconciled. Set one of them.
    #[error(
        "leader election on lease {lease} and sharding on leases {leases} cannot both be on: \
         controllers would run on the leader alone, which works on its share of the clusters only; \
         set one of them"
    )]
    LeaderElectionWithSharding {
        /// `namespace/name` of the leader election Lease.
        lease: String,
        /// `namespace/prefix` of the sharding Leases.
        leases: String,
    },

    /// The manager lost its lease; its leader-only runnables had stopped before it
    /// returned this (see [`OnLeadershipLoss`](crate::manager::OnLeadershipLoss)).
    #[error("leadership of lease {lease} lost by {identity}: {reason}")]
    LeadershipLost {
        /// `namespace/name` of the Lease.
        lease: String,
        /// This replica's identity.
        identity: String,
        /// Why: taken by another, or not renewed within the renew deadline.
        reason: String,
    },

    /// Graceful shutdown ran out of time: these reconciles were cut short.
    #[error(
        "graceful shutdown timed out after {timeout:?}; {} reconcile(s) cut short: {}",
        cut_short.len(),
        describe_cut_short(cut_short)
    )]
    ShutdownTimedOut {
        /// The graceful shutdown timeout.
        timeout: std::time::Duration,
        /// Every reconcile that was still running when it ran out.
        cut_short: Vec<CutShort>,
    },

    /// A second shutdown signal arrived while the manager was draining
    /// ([`Manager::start_until_signal`](crate::Manager::start_until_signal)): it
    /// stopped without waiting for the running reconciles, which were cancelled.
    #[error(
        "a second shutdown signal arrived while draining: stopped without waiting for running reconciles"
    )]
    ShutdownInterrupted,

    /// A webhook server's settings cannot be used: what is wrong, e.g. a webhook
    /// name Kubernetes would refuse.
    #[error("webhook server: {0}")]
    Webhook(String),

    /// The manager's HTTP endpoint cannot listen on its address.
    #[error("cannot serve metrics and health checks on {address}: {source}")]
    Endpoint {
        /// The address asked for.
        address: std::net::SocketAddr,
        /// Why binding failed (e.g. the address is in use).
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether this is [`Error::ClusterNotFound`].
    pub fn is_cluster_not_found(&self) -> bool {
        matches!(self, Error::ClusterNotFound(_))
    }
}

/// A reconcile that was still running when graceful shutdown ran out of time, and
/// was cancelled; listed by [`Error::ShutdownTimedOut`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CutShort {
    /// The controller's name.
    pub controller: String,
    /// The cluster of the object it was reconciling.
    pub cluster: ClusterName,
    /// The object it was reconciling.
    pub object: ObjectKey,
}

impl CutShort {
    /// The reconcile of `object` in `cluster` by `controller`.
    pub fn new(controller: impl Into<String>, cluster: ClusterName, object: ObjectKey) -> Self {
        CutShort {
            controller: controller.into(),
            cluster,
            object,
        }
    }
}

impl std::fmt::Display for CutShort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} in controller {}",
            self.cluster, self.object, self.controller
        )
    }
}

/// `a, b, c`; the first ten, then how many more.
fn describe_cut_short(cut: &[CutShort]) -> String {
    const SHOWN: usize = 10;
    let mut text = cut
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if cut.len() > SHOWN {
        text.push_str(&format!(" and {} more", cut.len() - SHOWN));
    }
    text
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
