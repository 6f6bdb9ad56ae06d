//! The health of a cluster as probes of its apiserver find it: the record the
//! manager's probes write, and that the components working on the cluster (through
//! their engagement) and readiness read.

use std::time::SystemTime;

/// Whether a cluster's apiserver answers its probes; see [`ClusterHealth`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthState {
    /// Not probed successfully yet, and not failed often enough to be unhealthy (or
    /// probes are off). Counts as healthy: nothing is paused.
    Unknown,
    /// Answering, since `since`.
    Healthy {
        /// When the cluster became healthy.
        since: SystemTime,
    },
    /// Failed [`failure_threshold`](crate::manager::HealthProbes::failure_threshold) probes in a row
    /// and has not recovered since. Its reconciles wait.
    Unhealthy {
        /// When the cluster was marked unhealthy (at the last failure of the
        /// threshold, not the first).
        since: SystemTime,
        /// What the latest probe ran into; it never quotes credentials.
        last_error: String,
    },
}

impl HealthState {
    /// Whether the cluster counts as healthy: anything but
    /// [`Unhealthy`](Self::Unhealthy).
    pub fn is_healthy(&self) -> bool {
        !matches!(self, HealthState::Unhealthy { .. })
    }

    /// `unknown`, `healthy` or `unhealthy`, e.g. for a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy { .. } => "healthy",
            HealthState::Unhealthy { .. } => "unhealthy",
        }
    }

    pub(crate) fn same_kind(&self, other: &HealthState) -> bool {
        self.name() == other.name()
    }
}

/// The health of one engaged cluster, as its latest probe left it.
///
/// Read a snapshot of the fleet with
/// [`Manager::cluster_health`](crate::Manager::cluster_health), follow one cluster
/// with [`Manager::watch_cluster_health`](crate::Manager::watch_cluster_health), or
/// every change of state with [`Manager::health_events`](crate::Manager::health_events).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterHealth {
    /// The state.
    pub state: HealthState,
    /// Probes failed in a row up to now: below the threshold, a cluster that is
    /// degraded but not yet unhealthy.
    pub consecutive_failures: u32,
    /// The error of the latest probe if it failed; `None` once one succeeds.
    pub last_error: Option<String>,
    /// How many times [`state`](Self::state) changed kind (unknown, healthy,
    /// unhealthy) for this engagement of the cluster.
    pub transitions: u64,
}

impl ClusterHealth {
    /// The health of a cluster that has not been probed.
    pub fn unknown() -> Self {
        ClusterHealth {
            state: HealthState::Unknown,
            consecutive_failures: 0,
            last_error: None,
            transitions: 0,
        }
    }

    /// Whether the cluster counts as healthy (see [`HealthState::is_healthy`]).
    pub fn is_healthy(&self) -> bool {
        self.state.is_healthy()
    }
}
