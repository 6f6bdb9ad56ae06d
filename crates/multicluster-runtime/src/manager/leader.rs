//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` package does it (see `docs/decisions/leader-election.md`).
//!
//! Invariants, in the order they keep two replicas from leading at once:
//!
//! 1. Expiry is judged on the *observer's* monotonic clock: a follower takes a lease
//!    held by another only once it has seen the same record unchanged for the record's
//!    lease duration. The holder's `renewTime` is never compared with a local clock,
//!    so clock skew between machines does not matter, only clock rate.
//! 2. The leader counts its renew deadline from the *start* of its last successful
//!    renewal, which is before the write landed and so before any follower saw it.
//!    Once the deadline passes without a renewal the leader gives up, while a
//!    follower still has at least `lease_duration - renew_deadline` to wait.
//! 3. Every write carries the `resourceVersion` it read: of two replicas racing for
//!    one record, one gets a conflict and stays (or becomes) a follower.
//! 4. A lease released on a clean shutdown has no holder, so the next replica takes it
//!    at its next try instead of waiting out the duration.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Leader election settings for a [`Manager`](super::Manager): which Lease, who we
/// are, and the timings (controller-runtime's defaults: 15 s / 10 s / 2 s).
///
/// Given to [`Manager::with_leader_election`](super::Manager::with_leader_election).
/// The Lease lives in the manager's own (local) cluster; the manager needs `get`,
/// `create` and `update` on `leases` in its namespace.
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

    /// Why these timings cannot work, if they cannot (client-go's checks).
    pub(crate) fn invalid(&self) -> Option<String> {
        if self.identity.is_empty() {
            return Some("identity is empty".into());
        }
        if self.retry_period.is_zero() {
            return Some("retry period is zero".into());
        }
        if self.renew_deadline <= self.retry_period {
            return Some(format!(
                "renew deadline {:?} must be longer than retry period {:?}",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Some(format!(
                "lease duration {:?} must be longer than renew deadline {:?}",
                self.lease_duration, self.renew_deadline
            ));
        }
        None
    }
}

/// Host name (from `HOSTNAME` or the kernel), `_`, and 16 random hex digits.
fn default_identity() -> String {
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

/// Why the leader stopped leading.
pub(crate) type Lost = String;

/// One replica's side of the protocol.
pub(crate) struct Elector {
    api: Api<Lease>,
    options: LeaderElection,
    /// The last record seen and when it was first seen (local monotonic clock).
    observed: Option<(LeaseSpec, Instant)>,
}

impl Elector {
    pub(crate) fn new(client: Client, options: LeaderElection) -> Self {
        Elector {
            api: Api::namespaced(client, &options.namespace),
            options,
            observed: None,
        }
    }

    /// Tries until the lease is ours; returns when the successful attempt started, or
    /// `None` once `stop` is cancelled.
    pub(crate) async fn campaign(&mut self, stop: &CancellationToken) -> Option<Instant> {
        let retry = self.options.retry_period;
        loop {
            let started = Instant::now();
            let wait = match tokio::time::timeout(retry, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => return Some(started),
                // Held by another: try again once it would expire, at most `retry` from now.
                Ok(Ok(false)) => self
                    .expires_in()
                    .filter(|left| !left.is_zero())
                    .map_or(retry, |left| left.min(retry) + Duration::from_millis(10)),
                Ok(Err(err)) => {
                    tracing::warn!(lease = self.options.lease(), error = %err, "cannot acquire lease");
                    retry
                }
                Err(_) => retry,
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renews every retry period until `stop` is cancelled (`Ok`) or the lease is
    /// lost (`Err`): taken by another, or not renewed within the renew deadline
    /// counted from the start of the last successful renewal (`renewed`).
    pub(crate) async fn hold(&mut self, stop: &CancellationToken, mut renewed: Instant) -> Result<(), Lost> {
        let (retry, deadline) = (self.options.retry_period, self.options.renew_deadline);
        let mut wait = retry;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep_until((Instant::now() + wait).min(renewed + deadline)) => {}
            }
            let started = Instant::now();
            if started >= renewed + deadline {
                return Err(format!("not renewed within the renew deadline of {deadline:?}"));
            }
            match tokio::time::timeout_at(renewed + deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    renewed = started;
                    wait = retry;
                }
                Ok(Ok(false)) => {
                    let holder = self.holder().unwrap_or_else(|| "another replica".into());
                    return Err(format!("lease taken by {holder}"));
                }
                Ok(Err(err)) => {
                    tracing::warn!(lease = self.options.lease(), error = %err, "cannot renew lease; retrying");
                    // Retry sooner than a full period: the deadline is running.
                    wait = retry / 2;
                }
                Err(_) => return Err(format!("not renewed within the renew deadline of {deadline:?}")),
            }
        }
    }

    /// Gives the lease up if it is still ours: no holder, so the next replica takes
    /// it at its next try.
    pub(crate) async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.options.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.options.identity.as_str()) {
            return Ok(());
        }
        let now = Some(MicroTime(Timestamp::now()));
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.acquire_time = now.clone();
        spec.renew_time = now;
        self.api
            .replace(&self.options.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }

    /// One attempt; whether the lease is ours afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.options.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.options.name.clone()),
                    namespace: Some(self.options.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.ours(now, Some(MicroTime(now)), Some(0))),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default());
                    Ok(true)
                }
                Err(err) if is_conflict(&err) => Ok(false),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(spec.clone());
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.options.identity.as_str());
        if holder.is_some() && !ours && !self.expires_in().is_some_and(|left| left.is_zero()) {
            return Ok(false);
        }
        lease.spec = Some(if ours {
            self.ours(now, spec.acquire_time, spec.lease_transitions)
        } else {
            let transitions = spec.lease_transitions.unwrap_or(0) + 1;
            self.ours(now, Some(MicroTime(now)), Some(transitions))
        });
        match self
            .api
            .replace(&self.options.name, &PostParams::default(), &lease)
            .await
        {
            Ok(replaced) => {
                self.observe(replaced.spec.unwrap_or_default());
                Ok(true)
            }
            Err(err) if is_conflict(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn ours(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: Option<i32>) -> LeaseSpec {
        let seconds = self.options.lease_duration.as_secs_f64().ceil().max(1.0) as i32;
        LeaseSpec {
            holder_identity: Some(self.options.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: acquired,
            renew_time: Some(MicroTime(now)),
            lease_transitions: transitions,
            ..LeaseSpec::default()
        }
    }

    /// Records `spec`, restarting the expiry clock if it differs from the last seen.
    fn observe(&mut self, spec: LeaseSpec) {
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != spec) {
            self.observed = Some((spec, Instant::now()));
        }
    }

    /// How long until the observed record expires for this observer; `None` if it
    /// has no holder (free now).
    fn expires_in(&self) -> Option<Duration> {
        let (spec, seen) = self.observed.as_ref()?;
        spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
        let duration = spec
            .lease_duration_seconds
            .map_or(self.options.lease_duration, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        Some((*seen + duration).saturating_duration_since(Instant::now()))
    }

    fn holder(&self) -> Option<String> {
        self.observed.as_ref()?.0.holder_identity.clone()
    }
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}
