//! Health and readiness: user checks, the state of each engaged cluster, and the
//! report `/healthz` and `/readyz` serve.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use super::{HealthState, Manager};
use crate::cluster::{Cluster, ClusterName};

/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A named health or readiness check; add it with
/// [`Manager::add_healthz_check`] or [`Manager::add_readyz_check`].
///
/// A check passes with `Ok(())` and fails with an error, whose message the verbose
/// report shows: keep secrets out of it. A check that takes longer than
/// [`CHECK_TIMEOUT`] fails.
///
/// ```
/// use multicluster_runtime::manager::HealthCheck;
///
/// let always = HealthCheck::from_fn("always", || Ok::<(), String>(()));
/// let remote = HealthCheck::new("remote", || async {
///     // e.g. ask a dependency whether it answers
///     Err::<(), _>("not reachable")
/// });
/// assert_eq!((always.name(), remote.name()), ("always", "remote"));
/// ```
#[derive(Clone)]
pub struct HealthCheck {
    name: String,
    run: Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl HealthCheck {
    /// A check that runs the async function `check`.
    pub fn new<F, Fut, E>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        HealthCheck {
            name: name.into(),
            run: Arc::new(move || {
                let check = check();
                Box::pin(async move { check.await.map_err(|err| err.to_string()) })
            }),
        }
    }

    /// A check that calls the plain function `check` (it must not block).
    pub fn from_fn<F, E>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Result<(), E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        HealthCheck {
            name: name.into(),
            run: Arc::new(move || {
                let result = check().map_err(|err| err.to_string());
                Box::pin(std::future::ready(result))
            }),
        }
    }

    /// The check's name, as the verbose report shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the check, at most [`CHECK_TIMEOUT`].
    async fn run(&self) -> Result<(), String> {
        // A panicking check fails instead of taking the endpoint's task down, in its
        // synchronous part (which makes the future) as in the future itself.
        let Ok(check) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.run)())) else {
            return Err("check panicked".into());
        };
        let check = std::panic::AssertUnwindSafe(check);
        match tokio::time::timeout(CHECK_TIMEOUT, futures::FutureExt::catch_unwind(check)).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("check panicked".into()),
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }
}

/// The state of one engaged cluster, as readiness reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterState {
    /// Every controller engaged with it and every informer of its cache has synced.
    Synced,
    /// Something is still listing it for the first time.
    Syncing {
        /// Since when: the earliest start among what is still syncing.
        since: SystemTime,
        /// What is still syncing: controllers (`controller <name>`) and resources.
        waiting_for: Vec<String>,
    },
    /// Its health probes fail (see [`HealthState::Unhealthy`]); whatever else it is
    /// doing, it cannot do it now.
    Unhealthy {
        /// When it was marked unhealthy.
        since: SystemTime,
        /// What the latest probe ran into.
        last_error: String,
    },
    /// With [sharding](super::Sharding), another replica owns it: nothing of it runs
    /// here. Does not hold readiness back.
    NotOwned {
        /// The replica that should own it, as this replica sees the peers.
        owner: Option<String>,
    },
}

impl ClusterState {
    /// Whether the cluster is ready for work.
    pub fn is_ready(&self) -> bool {
        matches!(self, ClusterState::Synced | ClusterState::NotOwned { .. })
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterState::Synced => f.write_str("synced"),
            ClusterState::Syncing { since, waiting_for } => {
                write!(
                    f,
                    "syncing since {} ({})",
                    timestamp(*since),
                    waiting_for.join(", ")
                )
            }
            ClusterState::Unhealthy { since, last_error } => {
                write!(f, "unhealthy since {}: {last_error}", timestamp(*since))
            }
            ClusterState::NotOwned { owner: Some(owner) } => write!(f, "not owned here (owner {owner})"),
            ClusterState::NotOwned { owner: None } => f.write_str("not owned here (no live owner)"),
        }
    }
}

/// RFC 3339 in UTC, to the second.
fn timestamp(at: SystemTime) -> String {
    match k8s_openapi::jiff::Timestamp::try_from(at) {
        Ok(at) => at
            .round(k8s_openapi::jiff::Unit::Second)
            .map_or_else(|_| at.to_string(), |t| t.to_string()),
        Err(_) => "an unknown time".into(),
    }
}

/// The state of `cluster`, engaged as `name`. The single place where a cluster's
/// state is decided: cluster health probes merge what they found here.
pub(crate) fn cluster_state(manager: &Manager, name: &ClusterName, cluster: &Arc<Cluster>) -> ClusterState {
    if let Some(coordinator) = manager.coordinator()
        && !name.is_local()
        && !manager.owns(name)
    {
        return ClusterState::NotOwned {
            owner: coordinator.owner_of(name),
        };
    }
    if let Some(health) = manager.watch_instance_health(name, cluster)
        && let HealthState::Unhealthy { since, last_error } = &health.borrow().state
    {
        return ClusterState::Unhealthy {
            since: *since,
            last_error: last_error.clone(),
        };
    }
    let mut since: Option<SystemTime> = None;
    let mut waiting_for = Vec::new();
    let mut waiting = |what: String, from: SystemTime| {
        since = Some(since.map_or(from, |s| s.min(from)));
        waiting_for.push(what);
    };
    for (component, from) in manager.sync_waiting(name, cluster) {
        waiting(component, from);
    }
    for informer in cluster.cache().informer_statuses() {
        if !informer.synced {
            waiting(informer.resource, informer.created);
        }
    }
    match since {
        None => ClusterState::Synced,
        Some(since) => ClusterState::Syncing { since, waiting_for },
    }
}

/// The outcome of one line of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportLine {
    /// What was checked: a check's name, `cluster <name>`, or `manager`.
    pub name: String,
    /// Whether this line lets the whole report pass.
    pub ok: bool,
    /// What was found, e.g. `synced` or the check's error.
    pub detail: String,
}

/// The result of `/healthz` or `/readyz`: every check and, for readiness, every
/// engaged cluster. Displays as kube-apiserver's verbose output: one `[+]` or `[-]`
/// line per item, then the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// `healthz` or `readyz`.
    pub kind: &'static str,
    /// One line per item, in a stable order.
    pub lines: Vec<ReportLine>,
}

impl Report {
    /// Whether every line passes.
    pub fn passed(&self) -> bool {
        self.lines.iter().all(|line| line.ok)
    }

    /// The same report with every detail replaced: `ok`, or `failed: reason
    /// withheld`, as kube-apiserver answers callers it has not authenticated.
    pub fn withheld(mut self) -> Report {
        for line in &mut self.lines {
            line.detail = if line.ok { "ok" } else { "failed: reason withheld" }.into();
        }
        self
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            let mark = if line.ok { '+' } else { '-' };
            writeln!(f, "[{mark}]{} {}", line.name, line.detail)?;
        }
        let verdict = if self.passed() { "passed" } else { "failed" };
        writeln!(f, "{} check {verdict}", self.kind)
    }
}

/// Runs `checks` at once; one line each, in the order given.
async fn run_checks(checks: Vec<HealthCheck>) -> Vec<ReportLine> {
    let results = futures::future::join_all(checks.iter().map(HealthCheck::run)).await;
    checks
        .iter()
        .zip(results)
        .map(|(check, result)| ReportLine {
            name: check.name.clone(),
            ok: result.is_ok(),
            detail: result.map_or_else(|err| format!("failed: {err}"), |()| "ok".into()),
        })
        .collect()
}

impl Manager {
    /// Liveness: every [healthz check](Self::add_healthz_check) passes. What
    /// `/healthz` serves.
    pub async fn healthz(&self) -> Report {
        self.liveness(true).await
    }

    /// Liveness, with each failure's reason, or with every reason withheld (what
    /// the probe endpoint serves by default).
    pub(crate) async fn liveness(&self, reasons: bool) -> Report {
        let mut lines = vec![ReportLine {
            name: "ping".into(),
            ok: true,
            detail: "ok".into(),
        }];
        let checks = super::lock(&self.inner.checks).healthz.clone();
        lines.extend(run_checks(checks).await);
        let report = Report {
            kind: "healthz",
            lines,
        };
        if reasons { report } else { report.withheld() }
    }

    /// Readiness, what `/readyz` serves. It passes once the manager runs and its own
    /// cluster has synced (the caches every controller reads it through have listed
    /// it), and every [readyz check](Self::add_readyz_check) passes.
    ///
    /// Every engaged cluster is listed with its [`ClusterState`]. A cluster of the
    /// provider that has not synced does not fail readiness: one slow or unreachable
    /// cluster must not take the whole process out of its Service, where it serves
    /// the other clusters. [`with_readiness_requiring_all_clusters`](Self::with_readiness_requiring_all_clusters)
    /// makes every cluster count.
    pub async fn readyz(&self) -> Report {
        self.readiness(true).await
    }

    /// Readiness, as [`readyz`](Self::readyz) with `reasons`; without, what the
    /// probe endpoint serves by default: every failure's reason withheld, the
    /// provider's clusters folded into one line `clusters` (failed if a cluster
    /// that counts is not ready), and the shard's line without its identity and
    /// peers.
    pub(crate) async fn readiness(&self, reasons: bool) -> Report {
        let running = self.is_running();
        let mut lines = vec![ReportLine {
            name: "manager".into(),
            ok: running,
            detail: if running { "running" } else { "not running" }.into(),
        }];
        let require_all = super::lock(&self.inner.options).require_all_clusters;
        let mut engaged = self.engaged_instances();
        engaged.sort_by(|a, b| a.0.cmp(&b.0));
        if running && !engaged.iter().any(|(name, _)| name.is_local()) {
            lines.push(ReportLine {
                name: "cluster \"\"".into(),
                ok: false,
                detail: "not engaged yet".into(),
            });
        }
        let mut fleet: Option<bool> = None;
        for (name, cluster) in engaged {
            let state = cluster_state(self, &name, &cluster);
            let required = require_all || name.is_local();
            let ok = state.is_ready() || !required;
            if !reasons && !name.is_local() {
                fleet = Some(fleet.unwrap_or(true) && ok);
                continue;
            }
            lines.push(ReportLine {
                name: format!("cluster {:?}", name.as_str()),
                ok,
                detail: state.to_string(),
            });
        }
        if let Some(ok) = fleet {
            lines.push(ReportLine {
                name: "clusters".into(),
                ok,
                detail: String::new(),
            });
        }
        if self.coordinator().is_some() && !reasons {
            lines.push(ReportLine {
                name: "shard".into(),
                ok: true,
                detail: String::new(),
            });
        } else if let Some(coordinator) = self.coordinator() {
            let view = coordinator.view();
            let options = coordinator.options();
            lines.push(ReportLine {
                name: format!("shard {:?}", options.holder_identity()),
                ok: true,
                detail: format!(
                    "owns {} cluster(s); peers: {}",
                    view.owned.len(),
                    view.peers
                        .iter()
                        .map(|p| p.identity.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let checks = super::lock(&self.inner.checks).readyz.clone();
        lines.extend(run_checks(checks).await);
        let report = Report {
            kind: "readyz",
            lines,
        };
        if reasons { report } else { report.withheld() }
    }

    /// The state of every engaged cluster, by name.
    pub fn cluster_states(&self) -> Vec<(ClusterName, ClusterState)> {
        let mut states: Vec<_> = self
            .engaged_instances()
            .into_iter()
            .map(|(name, cluster)| {
                let state = cluster_state(self, &name, &cluster);
                (name, state)
            })
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }
}

/// The checks users added.
#[derive(Default)]
pub(crate) struct Checks {
    pub healthz: Vec<HealthCheck>,
    pub readyz: Vec<HealthCheck>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// r04: a check that panics while it makes its future, or a plain function
    /// check that panics, fails like one that panics in its future.
    #[tokio::test]
    async fn r04_a_check_panicking_in_its_synchronous_part_fails_instead_of_unwinding() {
        let making = HealthCheck::new("making", || -> std::future::Ready<Result<(), String>> {
            panic!("r04: before the future")
        });
        assert_eq!(making.run().await, Err("check panicked".to_owned()));
        let plain = HealthCheck::from_fn("plain", || -> Result<(), String> { panic!("r04: plain") });
        assert_eq!(plain.run().await, Err("check panicked".to_owned()));
        let awaited = HealthCheck::new("awaited", || async {
            panic!("r04: in the future") as Result<(), String>
        });
        assert_eq!(awaited.run().await, Err("check panicked".to_owned()));
        let fine = HealthCheck::from_fn("fine", || Ok::<(), String>(()));
        assert_eq!(fine.run().await, Ok(()));
    }
}
