//! Cluster health probes: is each engaged cluster's apiserver answering?
//!
//! The manager probes each [`Endpoint`] (a client and the apiserver behind it) once:
//! one task per endpoint sends `GET /readyz` every [interval](HealthProbes::interval)
//! and gives up on an attempt after the [timeout](HealthProbes::timeout). Clusters
//! that share a client, such as the namespace provider's clusters and their host,
//! share that task, so a thousand namespace-clusters of one apiserver cost one
//! request per interval, not a thousand. The endpoint's task runs while some
//! engagement follows it, and ends with the last one.
//!
//! For every engagement, the endpoint's task keeps a follower that feeds each outcome
//! to a [`Tracker`] of its own, the pure state machine behind [`ClusterHealth`] (a
//! list in the endpoint's task, not a task per engagement: v04, issue 21):
//!
//! - [`failure_threshold`](HealthProbes::failure_threshold) failures in a row make
//!   the cluster [`Unhealthy`](HealthState::Unhealthy);
//! - once unhealthy, [`success_threshold`](HealthProbes::success_threshold)
//!   successes in a row make it [`Healthy`](HealthState::Healthy) again;
//! - before the first success or the failure threshold, its health is
//!   [`Unknown`](HealthState::Unknown), which counts as healthy.
//!
//! Owners: the follower is the only writer of its engagement's health, a
//! `watch` channel kept in the manager's engagement entry, so the health of a
//! cluster disappears with its engagement and a replaced instance starts afresh.
//! A follower writes nothing once its engagement's token is cancelled; the manager
//! asks the endpoint to drop such followers where it ends engagements (the
//! instance's removal, a shard handed over), and the endpoint's task ends with its
//! last follower.
//! Controllers follow that channel to pause the cluster's queue; user code reads
//! snapshots or follows the [`HealthEvent`] stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{broadcast, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lock;
use crate::cluster::{Cluster, ClusterHealth, ClusterName, Endpoint, HealthState};
use crate::redact;

/// The path probed on each cluster's apiserver. Kubernetes grants it to every user,
/// authenticated or not (ClusterRole `system:public-info-viewer`).
pub const PROBE_PATH: &str = "/readyz";

/// The most of a probe's answer read: kube-apiserver's verbose `/readyz` is a few
/// KiB, and the probe reads no more of an answer that would never end.
const PROBE_BODY_LIMIT: usize = 64 << 10;

/// How many [`HealthEvent`]s a subscriber may fall behind before it
/// [lags](broadcast::error::RecvError::Lagged).
const EVENT_CAPACITY: usize = 256;

/// How often, how patiently and how strictly the manager probes each engaged
/// cluster; given to [`Manager::with_health_probes`](super::Manager::with_health_probes).
///
/// The defaults (every 5 s, 3 s timeout, unhealthy after 3 failures, healthy again
/// after 1 success) mark a dead apiserver unhealthy within about 15 s and notice its
/// return within 5 s. See `docs/decisions/cluster-health.md` for how they compare
/// with Cluster API's (10 s, 5 s, 5).
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::manager::HealthProbes;
///
/// // A slow, flaky network: probe less often, wait longer, tolerate more.
/// let probes = HealthProbes::default()
///     .interval(Duration::from_secs(10))
///     .timeout(Duration::from_secs(5))
///     .failure_threshold(5)
///     .success_threshold(2);
/// assert_ne!(probes, HealthProbes::default());
/// // Thresholds of 0 count as 1.
/// assert_eq!(HealthProbes::default().failure_threshold(0), HealthProbes::default().failure_threshold(1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthProbes {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) failure_threshold: u32,
    pub(crate) success_threshold: u32,
}

impl HealthProbes {
    /// The default time between two probes of a cluster.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    /// The default time a probe may take.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
    /// The default number of failures in a row that make a cluster unhealthy.
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
    /// The default number of successes in a row that make an unhealthy cluster
    /// healthy again.
    pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
    /// The shortest interval: shorter ones are raised to it.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

    /// Time between the starts of two probes of a cluster (default 5 s, at least
    /// [`MIN_INTERVAL`](Self::MIN_INTERVAL)). A probe that takes longer delays the
    /// next; probes of one cluster never overlap. It is also the longest a
    /// recovered cluster waits before its reconciles resume and its watches
    /// reconnect.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Self::MIN_INTERVAL);
        self
    }

    /// How long a probe may take before it counts as failed (default 3 s). A hung
    /// apiserver accepts connections but never answers; this is what catches it.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Failures in a row that make a cluster unhealthy (default 3; 0 counts as 1).
    #[must_use]
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// Successes in a row that make an unhealthy cluster healthy again (default 1;
    /// 0 counts as 1). A cluster whose health is still unknown needs one.
    #[must_use]
    pub fn success_threshold(mut self, successes: u32) -> Self {
        self.success_threshold = successes.max(1);
        self
    }
}

impl Default for HealthProbes {
    fn default() -> Self {
        HealthProbes {
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            failure_threshold: Self::DEFAULT_FAILURE_THRESHOLD,
            success_threshold: Self::DEFAULT_SUCCESS_THRESHOLD,
        }
    }
}

/// A cluster's health changed state: sent by
/// [`Manager::health_events`](super::Manager::health_events).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthEvent {
    /// The cluster (empty for the local cluster).
    pub cluster: ClusterName,
    /// Its health right after the change.
    pub health: ClusterHealth,
}

/// What every prober of one manager shares: the event stream, the count of
/// transitions and the probe task of each endpoint.
#[derive(Clone)]
pub(crate) struct Hub {
    events: broadcast::Sender<HealthEvent>,
    transitions: Arc<AtomicU64>,
    endpoints: Arc<Endpoints>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            events: broadcast::Sender::new(EVENT_CAPACITY),
            transitions: Arc::default(),
            endpoints: Arc::default(),
        }
    }
}

/// The probe task of each endpoint that some engagement follows, under one lock
/// that joining and leaving take, so that a task never ends while an engagement
/// joins it.
#[derive(Default)]
struct Endpoints(Mutex<HashMap<Endpoint, Arc<Probed>>>);

/// One endpoint's probing: the engagements that follow it, and the token that ends
/// its task.
struct Probed {
    followers: Mutex<Followers>,
    /// Cancelled when the last follower has left (or the manager stops).
    done: CancellationToken,
}

/// The engagements that follow one endpoint, and its latest outcome (`None` before
/// the first).
#[derive(Default)]
struct Followers {
    list: Vec<Follower>,
    last: Option<Result<(), String>>,
}

/// What the probes of an endpoint write for one engagement of a cluster behind it:
/// the engagement's health, counted by a tracker of its own. Kept in the endpoint's
/// task, not in a task per engagement (v04, issue 21): for a fleet of thousands of
/// namespace-clusters behind one host, that task was ≈ 900 bytes per cluster.
pub(crate) struct Follower {
    name: ClusterName,
    cluster: Arc<Cluster>,
    /// The engagement's health; written by this follower only.
    cell: watch::Sender<ClusterHealth>,
    tracker: Tracker,
    /// The engagement: once cancelled, nothing more is written to `cell`.
    token: CancellationToken,
}

impl Follower {
    /// Follows for `name` (the engagement `token` of `cluster`), writing to `cell`.
    pub(crate) fn new(
        name: ClusterName,
        cluster: Arc<Cluster>,
        probes: &HealthProbes,
        cell: watch::Sender<ClusterHealth>,
        token: CancellationToken,
    ) -> Self {
        Follower {
            name,
            cluster,
            cell,
            tracker: Tracker::new(probes),
            token,
        }
    }

    /// Records one outcome of the endpoint's probe into the engagement's health,
    /// and reports a change of state to `hub` and the log. After a success, the
    /// cluster's watches that failed for want of an answer are asked to
    /// [reconnect](crate::cache::Cache::reconnect) at once (which costs nothing
    /// when none fails): the apiserver answers, so a watch need not wait out a
    /// backoff of up to 30 s, however short the outage was (v01, issue 21). On
    /// recovery from unhealthy this happens before the controllers hear of it and
    /// resume.
    fn record(&mut self, outcome: Result<(), String>, hub: &Hub) {
        if outcome.is_ok() {
            self.cluster.cache().reconnect();
        }
        let Some(previous) = self.tracker.record(outcome, SystemTime::now()) else {
            let tracker = &self.tracker;
            self.cell
                .send_if_modified(|published| update(published, tracker.health()));
            return;
        };
        let (name, health) = (&self.name, self.tracker.health().clone());
        match (&previous, &health.state) {
            (_, HealthState::Unhealthy { last_error, .. }) => tracing::warn!(
                cluster = %name,
                failures = health.consecutive_failures,
                error = last_error.as_str(),
                "cluster unhealthy: its probes fail; its reconciles wait until it recovers"
            ),
            (HealthState::Unhealthy { since, .. }, _) => {
                let down = since.elapsed().unwrap_or_default();
                tracing::info!(
                    cluster = %name,
                    unhealthy_for = ?down,
                    "cluster healthy again: reconnecting its watches, resuming its reconciles"
                );
            }
            _ => tracing::debug!(cluster = %name, state = health.state.name(), "cluster health known"),
        }
        hub.transitions.fetch_add(1, Ordering::Relaxed);
        self.cell.send_replace(health.clone());
        // Nobody listening is fine.
        let _ = hub.events.send(HealthEvent {
            cluster: name.clone(),
            health,
        });
    }
}

impl Followers {
    /// Drops the followers whose engagement has ended.
    fn prune(&mut self) {
        self.list.retain(|f| !f.token.is_cancelled());
    }

    /// Records `outcome` for every follower whose engagement goes on.
    fn record(&mut self, outcome: &Result<(), String>, hub: &Hub) {
        self.last = Some(outcome.clone());
        self.prune();
        for follower in &mut self.list {
            follower.record(outcome.clone(), hub);
        }
    }
}

impl Endpoints {
    /// Adds `follower` to the probes of its cluster's endpoint: joins its task, or
    /// starts one on the manager's tasks. A follower that joins a running task gets
    /// its latest outcome at once, if there is one.
    fn follow(
        self: &Arc<Self>,
        mut follower: Follower,
        probes: &HealthProbes,
        hub: &Hub,
        tasks: &ProbeTasks<'_>,
    ) {
        let endpoint = follower.cluster.endpoint();
        let mut running = lock(&self.0);
        if let Some(probed) = running.get(&endpoint) {
            // No pruning here: joining stays O(1) however many follow the endpoint
            // (thousands of namespace-clusters engaged in a burst); ended followers
            // go when the manager says so (`leave`) or at the next outcome.
            let mut followers = lock(&probed.followers);
            if let Some(outcome) = followers.last.clone() {
                follower.record(outcome, hub);
            }
            followers.list.push(follower);
            return;
        }
        let client = follower.cluster.unnamespaced_client();
        let probed = Arc::new(Probed {
            followers: Mutex::new(Followers {
                list: vec![follower],
                last: None,
            }),
            done: CancellationToken::new(),
        });
        running.insert(endpoint, probed.clone());
        let (endpoints, probes, hub, stopped) =
            (self.clone(), probes.clone(), hub.clone(), tasks.stopped.clone());
        tasks.tasks.spawn(async move {
            tokio::select! {
                () = probe_endpoint(&probed, &client, &probes, &hub) => {}
                () = stopped.cancelled() => endpoints.forget(endpoint, &probed),
            }
        });
    }

    /// Drops the followers of `endpoint` whose engagement has ended, and ends its
    /// task if none is left. Under the lock that [`follow`](Self::follow) takes, so
    /// nobody can join in between.
    fn leave(&self, endpoint: Endpoint) {
        let mut running = lock(&self.0);
        let Some(probed) = running.get(&endpoint) else {
            return;
        };
        let mut followers = lock(&probed.followers);
        followers.prune();
        if followers.list.is_empty() {
            drop(followers);
            if let Some(probed) = running.remove(&endpoint) {
                probed.done.cancel();
            }
        }
    }

    fn forget(&self, endpoint: Endpoint, probed: &Arc<Probed>) {
        let mut running = lock(&self.0);
        if running
            .get(&endpoint)
            .is_some_and(|known| Arc::ptr_eq(known, probed))
        {
            running.remove(&endpoint);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

/// Probes through `client` every interval and records each outcome for the
/// endpoint's followers, until the last has left.
async fn probe_endpoint(probed: &Probed, client: &kube::Client, probes: &HealthProbes, hub: &Hub) {
    let mut ticks = tokio::time::interval(probes.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = probed.done.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let outcome = tokio::select! {
            biased;
            () = probed.done.cancelled() => return,
            outcome = probe_once(client, probes.timeout) => outcome,
        };
        lock(&probed.followers).record(&outcome, hub);
    }
}

impl Hub {
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<HealthEvent> {
        self.events.subscribe()
    }

    pub(crate) fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Follows the probes of the cluster's endpoint for one engagement, until the
    /// engagement's token is cancelled and [`leave`](Self::leave) is called for
    /// the endpoint (the manager calls it where it ends engagements). Starts the
    /// endpoint's task on `tasks` if it has none.
    pub(crate) fn follow(&self, follower: Follower, probes: &HealthProbes, tasks: &ProbeTasks<'_>) {
        self.endpoints.follow(follower, probes, self, tasks);
    }

    /// Forgets the followers of `cluster`'s endpoint whose engagement has ended;
    /// the endpoint's task ends with its last follower.
    pub(crate) fn leave(&self, cluster: &Cluster) {
        self.endpoints.leave(cluster.endpoint());
    }
}

/// Counts probe outcomes into a [`ClusterHealth`]; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Tracker {
    failure_threshold: u32,
    success_threshold: u32,
    successes: u32,
    health: ClusterHealth,
}

impl Tracker {
    pub(crate) fn new(probes: &HealthProbes) -> Self {
        Tracker {
            failure_threshold: probes.failure_threshold.max(1),
            success_threshold: probes.success_threshold.max(1),
            successes: 0,
            health: ClusterHealth::unknown(),
        }
    }

    pub(crate) fn health(&self) -> &ClusterHealth {
        &self.health
    }

    /// Records one probe's outcome at `now`; the previous state if it changed.
    pub(crate) fn record(&mut self, outcome: Result<(), String>, now: SystemTime) -> Option<HealthState> {
        let health = &mut self.health;
        let next = match outcome {
            Ok(()) => {
                health.consecutive_failures = 0;
                health.last_error = None;
                self.successes = self.successes.saturating_add(1);
                match health.state {
                    HealthState::Unknown => Some(HealthState::Healthy { since: now }),
                    HealthState::Unhealthy { .. } if self.successes >= self.success_threshold => {
                        Some(HealthState::Healthy { since: now })
                    }
                    _ => None,
                }
            }
            Err(error) => {
                self.successes = 0;
                health.consecutive_failures = health.consecutive_failures.saturating_add(1);
                health.last_error = Some(error.clone());
                match &mut health.state {
                    HealthState::Unhealthy { last_error, .. } => {
                        *last_error = error;
                        None
                    }
                    _ if health.consecutive_failures >= self.failure_threshold => {
                        Some(HealthState::Unhealthy {
                            since: now,
                            last_error: error,
                        })
                    }
                    _ => None,
                }
            }
        };
        let next = next.filter(|next| !next.same_kind(&health.state))?;
        health.transitions += 1;
        Some(std::mem::replace(&mut health.state, next))
    }
}

/// Where the endpoints' probe tasks run: the manager's tasks, and its token for
/// stopping.
pub(crate) struct ProbeTasks<'a> {
    pub(crate) tasks: &'a TaskTracker,
    pub(crate) stopped: &'a CancellationToken,
}

/// Replaces `published` by `current` if they differ; whether it did.
fn update(published: &mut ClusterHealth, current: &ClusterHealth) -> bool {
    if published == current {
        return false;
    }
    published.clone_from(current);
    true
}

/// One `GET /readyz`, within `timeout`. The apiserver answered and is ready (2xx),
/// or answered and is reachable with these credentials but may not or cannot
/// serve the path (403, 404): success. Anything else is a failure, described
/// without credentials.
pub(crate) async fn probe_once(client: &kube::Client, timeout: Duration) -> Result<(), String> {
    let request = http::Request::get(PROBE_PATH)
        .body(Vec::new().into())
        .map_err(|error| format!("cannot build the probe request: {error}"))?;
    let answer = tokio::time::timeout(timeout, async {
        let response = client.send(request).await.map_err(|e| redact::describe(&e))?;
        let status = response.status();
        // Read to the end, so that the connection can be used again; but no more
        // than a readiness report needs, whatever the server sends (x04).
        let body = http_body_util::Limited::new(response.into_body(), PROBE_BODY_LIMIT)
            .collect()
            .await
            .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => format!("the answer is longer than {PROBE_BODY_LIMIT} bytes"),
                Err(other) => redact::describe(&*other),
            })?;
        Ok::<_, String>((status, body.to_bytes()))
    })
    .await;
    match answer {
        Err(_) => Err(format!("GET {PROBE_PATH}: no answer within {timeout:?}")),
        Ok(Err(error)) => Err(format!("GET {PROBE_PATH}: {error}")),
        Ok(Ok((status, _)))
            if status.is_success() || status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND =>
        {
            Ok(())
        }
        Ok(Ok((status, body))) => Err(redact::bounded(describe_answer(status, &body))),
    }
}

/// An unwelcome answer: its status, and for a failed readiness check the checks
/// that failed (`[-]etcd failed: reason withheld`), which name no secrets.
fn describe_answer(status: StatusCode, body: &[u8]) -> String {
    let mut text = format!("GET {PROBE_PATH} answered {status}");
    if status == StatusCode::UNAUTHORIZED {
        text.push_str(" (the cluster's credentials were rejected)");
        return text;
    }
    let failed: Vec<&str> = std::str::from_utf8(body)
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("[-]"))
        .take(5)
        .collect();
    if !failed.is_empty() {
        text.push_str(": ");
        text.push_str(&failed.join(", "));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn at(second: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(second)
    }

    fn failed(error: &str) -> Result<(), String> {
        Err(error.to_owned())
    }

    #[test]
    fn unhealthy_after_the_failure_threshold_healthy_after_the_success_threshold() {
        let probes = HealthProbes::default().failure_threshold(3).success_threshold(2);
        let mut tracker = Tracker::new(&probes);
        assert_eq!(tracker.record(failed("a"), at(1)), None);
        assert_eq!(tracker.record(failed("b"), at(2)), None);
        assert_eq!(tracker.health().state, HealthState::Unknown);
        assert_eq!(tracker.health().consecutive_failures, 2);
        assert_eq!(tracker.record(failed("c"), at(3)), Some(HealthState::Unknown));
        let unhealthy = HealthState::Unhealthy {
            since: at(3),
            last_error: "c".into(),
        };
        assert_eq!(tracker.health().state, unhealthy);
        // Later failures keep the time it became unhealthy, and update the error.
        assert_eq!(tracker.record(failed("d"), at(4)), None);
        assert!(
            matches!(&tracker.health().state, HealthState::Unhealthy { since, last_error } if *since == at(3) && last_error == "d")
        );
        // One success is not enough; a failure in between starts the count over.
        assert_eq!(tracker.record(Ok(()), at(5)), None);
        assert_eq!(tracker.record(failed("e"), at(6)), None);
        assert_eq!(tracker.record(Ok(()), at(7)), None);
        assert!(tracker.record(Ok(()), at(8)).is_some());
        assert_eq!(tracker.health().state, HealthState::Healthy { since: at(8) });
        assert_eq!(
            (tracker.health().transitions, tracker.health().last_error.clone()),
            (2, None)
        );
    }

    #[test]
    fn the_first_success_makes_an_unknown_cluster_healthy_whatever_the_threshold() {
        let mut tracker = Tracker::new(&HealthProbes::default().success_threshold(5));
        assert_eq!(tracker.record(Ok(()), at(1)), Some(HealthState::Unknown));
        assert_eq!(tracker.health().state, HealthState::Healthy { since: at(1) });
        assert_eq!(tracker.record(Ok(()), at(2)), None);
    }

    /// Serves one connection: reads the request, answers `response` (or never, if
    /// `None`), and hands back what the request said.
    async fn serve_once(response: Option<&'static str>) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed mid-request");
                request.extend_from_slice(&buf[..n]);
            }
            match response {
                Some(response) => stream.write_all(response.as_bytes()).await.unwrap(),
                None => std::future::pending().await,
            }
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, task)
    }

    fn client_with_token(url: &str, token: &str) -> kube::Client {
        let mut config = kube::Config::new(url.parse().unwrap());
        config.auth_info = serde_json::from_value(serde_json::json!({ "token": token })).unwrap();
        kube::Client::try_from(config).unwrap()
    }

    const TOKEN: &str = "s3cret-probe-token";

    /// A server that answers every request with 200 and counts the requests.
    async fn serve_counting() -> (String, Arc<AtomicU64>) {
        let requests = Arc::new(AtomicU64::new(0));
        let ok: crate::manager::fake_apiserver::Answer =
            Arc::new(|| Some("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
        (
            crate::manager::fake_apiserver::serve(ok, requests.clone()).await,
            requests,
        )
    }

    /// Follows the health of `cluster` on `tasks` until `token` is cancelled.
    fn follow(
        cluster: Arc<Cluster>,
        hub: &Hub,
        tasks: &TaskTracker,
        stopped: &CancellationToken,
        token: CancellationToken,
    ) -> watch::Receiver<ClusterHealth> {
        // Only the first tick of an endpoint's task comes during the test.
        let probes = HealthProbes::default().interval(Duration::from_secs(3600));
        let (cell, health) = watch::channel(ClusterHealth::unknown());
        let follower = Follower::new(cluster.name().clone(), cluster, &probes, cell, token);
        hub.follow(follower, &probes, &ProbeTasks { tasks, stopped });
        health
    }

    async fn healthy(mut health: watch::Receiver<ClusterHealth>) {
        let known = health.wait_for(|h| h.state != HealthState::Unknown);
        let state = tokio::time::timeout(Duration::from_secs(10), known)
            .await
            .expect("probed within 10 s")
            .expect("follower running")
            .state
            .clone();
        assert_eq!(state.name(), "healthy");
    }

    #[tokio::test]
    async fn clusters_that_share_an_endpoint_share_one_probe_task_which_ends_with_its_last_follower() {
        let (url, requests) = serve_counting().await;
        let host = Arc::new(Cluster::new("host", client_with_token(&url, TOKEN)));
        let other = Arc::new(Cluster::new("other", client_with_token(&url, TOKEN)));
        let (hub, tasks, stopped) = (Hub::default(), TaskTracker::new(), CancellationToken::new());
        let followers = CancellationToken::new();
        let mut shared = vec![host.clone()];
        shared.extend((0..50).map(|i| Arc::new(Cluster::alias(format!("alias-{i}").into(), &host))));
        for cluster in shared.iter().chain([&other]) {
            healthy(follow(
                cluster.clone(),
                &hub,
                &tasks,
                &stopped,
                followers.child_token(),
            ))
            .await;
        }
        // One probe per endpoint, whatever the number of clusters behind it; the
        // second tick is an hour away.
        assert_eq!(hub.endpoints.len(), 2);
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        // A late follower gets the endpoint's latest outcome without a new probe.
        let late = Arc::new(Cluster::alias("late".into(), &host));
        healthy(follow(late, &hub, &tasks, &stopped, followers.child_token())).await;
        assert_eq!(requests.load(Ordering::SeqCst), 2);

        // When the last follower of an endpoint leaves, its task ends: every task
        // ends without the manager's token. An endpoint whose followers have not all
        // ended keeps its task.
        followers.cancel();
        let (cell, _health) = watch::channel(ClusterHealth::unknown());
        let staying = Follower::new(
            "staying".into(),
            host.clone(),
            &HealthProbes::default(),
            cell,
            CancellationToken::new(),
        );
        hub.follow(
            staying,
            &HealthProbes::default(),
            &ProbeTasks {
                tasks: &tasks,
                stopped: &stopped,
            },
        );
        hub.leave(&host);
        hub.leave(&other);
        assert_eq!(hub.endpoints.len(), 1, "the host's endpoint is still followed");
        let endpoint = host.endpoint();
        lock(&lock(&hub.endpoints.0)[&endpoint].followers).list[0]
            .token
            .cancel();
        hub.leave(&host);
        tasks.close();
        tokio::time::timeout(Duration::from_secs(10), tasks.wait())
            .await
            .expect("the endpoints' tasks end with their last followers");
        assert_eq!(hub.endpoints.len(), 0);
        assert!(!stopped.is_cancelled());
    }

    /// v04 (issue 21): the manager runs no task per engaged cluster for its health.
    /// Clusters behind one endpoint are followed by the endpoint's probe task, which
    /// writes each one's health; it ran a follower task per engagement (≈ 900 bytes
    /// per namespace-cluster). Per engaged cluster the manager keeps one task only,
    /// the wait for the engagement's end; the endpoint's task ends with the last.
    #[tokio::test]
    async fn v04_the_manager_follows_the_health_of_clusters_in_their_endpoints_task() {
        use crate::multicluster::Aware;
        let (url, requests) = serve_counting().await;
        let host = Arc::new(Cluster::new("", client_with_token(&url, TOKEN)));
        let manager = crate::manager::Manager::new(host.clone());
        let names: Vec<ClusterName> = (0..3).map(|i| ClusterName::from(format!("ns-{i}"))).collect();
        let mut tokens = Vec::new();
        for name in &names {
            let token = CancellationToken::new();
            let cluster = Arc::new(Cluster::alias(name.clone(), &host));
            manager
                .engage(token.clone(), name.clone(), cluster)
                .await
                .expect("engaged");
            tokens.push(token);
        }
        for name in &names {
            healthy(manager.watch_cluster_health(name).expect("engaged")).await;
        }
        assert_eq!(requests.load(Ordering::SeqCst), 1, "one probe for the endpoint");
        assert_eq!(
            manager.inner.tasks.len(),
            names.len() + 1,
            "a wait for each engagement's end, and the endpoint's probe task"
        );

        // Removing the clusters ends their waits, and with the last, the probe task.
        for token in &tokens {
            token.cancel();
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while !manager.inner.tasks.is_empty() || !manager.cluster_health().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("every task of the engagements ends");
        assert_eq!(manager.inner.health.endpoints.len(), 0);
    }

    #[tokio::test]
    async fn a_rejected_probe_names_the_status_but_not_the_token() {
        let (url, server) = serve_once(Some(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        ))
        .await;
        let error = probe_once(&client_with_token(&url, TOKEN), Duration::from_secs(5))
            .await
            .unwrap_err();
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /readyz "), "{request}");
        assert!(request.contains(TOKEN), "the token was sent: {request}");
        assert_eq!(
            error,
            "GET /readyz answered 401 Unauthorized (the cluster's credentials were rejected)"
        );
    }

    #[tokio::test]
    async fn a_failing_readiness_check_is_named_and_forbidden_counts_as_reachable() {
        let body = "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n";
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (url, _server) = serve_once(Some(response)).await;
        let error = probe_once(&client_with_token(&url, TOKEN), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            "GET /readyz answered 500 Internal Server Error: [-]etcd failed: reason withheld"
        );
        let (url, _server) = serve_once(Some("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")).await;
        assert_eq!(
            probe_once(&client_with_token(&url, TOKEN), Duration::from_secs(5)).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_hung_or_absent_apiserver_fails_without_quoting_credentials() {
        let (url, _server) = serve_once(None).await;
        let error = probe_once(&client_with_token(&url, TOKEN), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(error, "GET /readyz: no answer within 200ms");
        // Nothing listens on the port any more once the listener is dropped.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://user:{TOKEN}@127.0.0.1:{port}");
        let error = probe_once(&client_with_token(&url, TOKEN), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(error.starts_with("GET /readyz: "), "{error}");
        assert!(!error.contains(TOKEN), "{error}");
    }
}

#[cfg(test)]
mod proptests {
    use std::time::UNIX_EPOCH;

    use proptest::prelude::*;

    use super::*;

    /// The state after `history` (true = probe succeeded), written from the
    /// definition rather than by counting: unhealthy iff some run of `f` failures
    /// ended after the last run of `s` successes; else healthy iff any probe
    /// succeeded, or the cluster was ever unhealthy; else unknown.
    fn model_state(history: &[bool], f: usize, s: usize) -> &'static str {
        let ends_run = |i: usize, ok: bool, len: usize| {
            i + 1 >= len && history[i + 1 - len..=i].iter().all(|h| *h == ok)
        };
        let last_failure_run = (0..history.len()).rev().find(|&i| ends_run(i, false, f));
        let last_success_run = (0..history.len()).rev().find(|&i| ends_run(i, true, s));
        match (last_failure_run, last_success_run) {
            (Some(u), r) if r.is_none_or(|r| r < u) => "unhealthy",
            (Some(_), _) => "healthy",
            (None, _) if history.contains(&true) => "healthy",
            (None, _) => "unknown",
        }
    }

    proptest! {
        #[test]
        fn the_tracker_matches_the_definition(
            f in 1..5usize,
            s in 1..4usize,
            history in proptest::collection::vec(any::<bool>(), 0..60),
        ) {
            let probes = HealthProbes::default().failure_threshold(f as u32).success_threshold(s as u32);
            let mut tracker = Tracker::new(&probes);
            let mut transitions = 0;
            let mut since = None;
            for (i, ok) in history.iter().enumerate() {
                let now = UNIX_EPOCH + Duration::from_secs(i as u64);
                let before = model_state(&history[..i], f, s);
                let after = model_state(&history[..=i], f, s);
                let outcome = if *ok { Ok(()) } else { Err(format!("failure {i}")) };
                let changed = tracker.record(outcome, now);
                let health = tracker.health();
                prop_assert_eq!(health.state.name(), after, "after {:?}", &history[..=i]);
                prop_assert_eq!(changed.as_ref().map(HealthState::name), (before != after).then_some(before));
                if before != after {
                    transitions += 1;
                    since = Some(now);
                }
                prop_assert_eq!(health.transitions, transitions);
                let trailing = history[..=i].iter().rev().take_while(|ok| !**ok).count();
                prop_assert_eq!(health.consecutive_failures as usize, trailing);
                prop_assert_eq!(health.last_error.is_some(), trailing > 0);
                match &health.state {
                    HealthState::Unknown => {}
                    HealthState::Healthy { since: at } => prop_assert_eq!(Some(*at), since),
                    HealthState::Unhealthy { since: at, last_error } => {
                        prop_assert_eq!(Some(*at), since);
                        let latest = history[..=i].iter().rposition(|ok| !*ok).unwrap();
                        prop_assert_eq!(last_error, &format!("failure {latest}"));
                    }
                }
            }
        }
    }
}
