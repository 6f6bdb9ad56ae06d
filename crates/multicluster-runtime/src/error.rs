//! The error type of the multicluster contract and the manager.

use crate::cluster::ClusterName;

/// A boxed error from user code or a provider.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of providers, the manager and engagement.
///
/// [`Error::ClusterNotFound`] is what every provider returns for a name it does not
/// know; match it with [`Error::is_cluster_not_found`] rather than by message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No cluster of that name is known (Go: `multicluster.ErrClusterNotFound`).
    #[error("cluster {0} not found")]
    ClusterNotFound(ClusterName),

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
        /// [`describe_kube_error`](crate::providers::kubeconfig::describe_kube_error).
        reason: String,
    },

    /// A kubeconfig could not be used.
    #[error(transparent)]
    Kubeconfig(#[from] crate::providers::kubeconfig::KubeconfigError),

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

    /// The manager was started twice.
    #[error("manager: {0}")]
    Manager(String),

    /// The leader election options cannot work (e.g. a renew deadline not shorter
    /// than the lease duration).
    #[error("leader election on lease {lease}: {reason}")]
    LeaderElection {
        /// `namespace/name` of the Lease.
        lease: String,
        /// Why.
        reason: String,
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
        crate::manager::describe_cut_short(cut_short)
    )]
    ShutdownTimedOut {
        /// The graceful shutdown timeout.
        timeout: std::time::Duration,
        /// Every reconcile that was still running when it ran out.
        cut_short: Vec<crate::manager::CutShort>,
    },
}

impl Error {
    /// Whether this is [`Error::ClusterNotFound`].
    pub fn is_cluster_not_found(&self) -> bool {
        matches!(self, Error::ClusterNotFound(_))
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
