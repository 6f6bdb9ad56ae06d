//! Running in production: leader election, graceful shutdown and cluster health
//! probes, against real apiservers (issue "Run it in production", tests o01, o03b,
//! o04 and o05).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, PostParams};
use kube_envtest::Fleet;
use multicluster_runtime::controller::queue::PauseReason;
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::manager::{HealthEvent, HealthProbes, HealthState, LeaderElection};
use multicluster_runtime::{Cluster, ClusterName, Error, Manager};
use tokio_util::sync::CancellationToken;

mod support;

use support::WAIT;
use support::fleet::Env;

/// The test's lease timings: short, so that a takeover is seconds, not 15.
const LEASE: Duration = Duration::from_secs(4);
const RENEW: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_secs(1);
/// What API round trips may add to a bound made of lease timings.
const SLACK: Duration = Duration::from_millis(500);

async fn create_configmaps(client: &Client, prefix: &str, count: usize) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for n in 0..count {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(format!("{prefix}-{n}"));
        cm.data = Some(BTreeMap::from([("n".to_owned(), n.to_string())]));
        api.create(&PostParams::default(), &cm)
            .await
            .expect("create configmap");
    }
}

/// Every reconcile of every replica: who, the request, when it started and ended.
#[derive(Default)]
struct Spans {
    spans: Mutex<Vec<Span>>,
}

#[derive(Clone, Debug)]
struct Span {
    replica: String,
    request: Request,
    start: Instant,
    end: Option<Instant>,
}

/// Ends its span when dropped: when the reconcile returns or is cancelled, and
/// when a killed replica's runtime drops it.
struct Running {
    spans: Arc<Spans>,
    index: usize,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.spans.spans.lock().unwrap()[self.index].end = Some(Instant::now());
    }
}

impl Spans {
    fn begin(self: &Arc<Self>, replica: &str, request: &Request) -> Running {
        let mut spans = self.spans.lock().unwrap();
        spans.push(Span {
            replica: replica.to_owned(),
            request: request.clone(),
            start: Instant::now(),
            end: None,
        });
        Running {
            spans: self.clone(),
            index: spans.len() - 1,
        }
    }

    fn all(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    fn count(&self, replica: &str) -> usize {
        self.all().iter().filter(|s| s.replica == replica).count()
    }

    fn replicas(&self) -> Vec<String> {
        let mut replicas: Vec<_> = self.all().into_iter().map(|s| s.replica).collect();
        replicas.dedup();
        replicas.sort();
        replicas.dedup();
        replicas
    }
}

/// What each replica's reconciler gets.
struct Ctx {
    replica: String,
    spans: Arc<Spans>,
    /// How long a reconcile takes.
    work: Duration,
    /// What it asks for afterwards.
    then: Action,
}

async fn reconcile(req: ReconcileRequest<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, Infallible> {
    let _running = ctx.spans.begin(&ctx.replica, &req.request);
    tokio::time::sleep(ctx.work).await;
    Ok(ctx.then)
}

fn election(identity: &str) -> LeaderElection {
    LeaderElection::new("o01")
        .identity(identity)
        .lease_duration(LEASE)
        .renew_deadline(RENEW)
        .retry_period(RETRY)
}

/// A manager of the local cluster whose controller records its reconciles; each
/// reconcile takes 100 ms and asks to come back after 200 ms, so a leader always has
/// work in flight.
async fn replica(client: Client, identity: &str, spans: &Arc<Spans>) -> Manager {
    replica_with(client, election(identity), spans, Duration::from_millis(100)).await
}

async fn replica_with(
    client: Client,
    election: LeaderElection,
    spans: &Arc<Spans>,
    work: Duration,
) -> Manager {
    let identity = election.holder_identity().to_owned();
    let manager = Manager::new(Arc::new(Cluster::new("", client))).with_leader_election(election);
    let ctx = Arc::new(Ctx {
        replica: identity,
        spans: spans.clone(),
        work,
        then: Action::requeue(Duration::from_millis(200)),
    });
    Controller::builder::<ConfigMap>(&manager)
        .named("o01")
        .register(reconcile, |_: &Request, _: &Infallible, _| Action::backoff(), ctx)
        .await
        .expect("controller");
    manager
}

/// A replica on a runtime of its own, so that it can be killed: the runtime is
/// dropped with every task in it, and nothing runs afterwards, no lease release either.
struct Killable {
    manager: Manager,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Killable {
    fn start(config: kube::Config, identity: &str, spans: &Arc<Spans>) -> Self {
        let (identity, spans) = (identity.to_owned(), spans.clone());
        let (kill, killed) = tokio::sync::oneshot::channel();
        let (started, manager) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let client = Client::try_from(config).expect("client");
                let manager = replica(client, &identity, &spans).await;
                started.send(manager.clone()).expect("send manager");
                tokio::select! {
                    _ = killed => {}
                    result = manager.start(CancellationToken::new()) => panic!("killable replica returned {result:?}"),
                }
            });
            // Every task of the replica is dropped here, unpolled.
            drop(runtime);
        });
        Killable {
            manager: manager.recv().expect("replica started"),
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        let _ = self.kill.take().expect("killed once").send(());
        self.thread
            .take()
            .expect("thread")
            .join()
            .expect("replica thread");
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        if self.kill.is_some() {
            self.kill();
        }
    }
}

/// Waits until `manager` leads; returns when it did.
async fn wait_leader(manager: &Manager, who: &str) -> Instant {
    let mut leadership = manager.leadership();
    tokio::time::timeout(WAIT, leadership.wait_for(|leads| *leads))
        .await
        .unwrap_or_else(|_| panic!("{who} never became leader"))
        .expect("leadership channel");
    Instant::now()
}

fn start(
    manager: &Manager,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<multicluster_runtime::Result<()>>,
) {
    let (manager, token) = (manager.clone(), CancellationToken::new());
    let handle = tokio::spawn({
        let token = token.clone();
        async move { manager.start(token).await }
    });
    (token, handle)
}

/// Two replicas elect one leader: only it reconciles. Killed, it is replaced within
/// lease duration + retry period; shut down cleanly, it releases the lease and is
/// replaced within 3 s. Across all of it, no two replicas ever reconcile at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o01_one_leader_reconciles_and_a_successor_takes_over() {
    let fleet = Fleet::start(1).await.expect("start fleet");
    let client = fleet.cluster(0).client().expect("client");
    create_configmaps(&client, "o01", 3).await;
    let spans = Arc::new(Spans::default());

    // a leads; b follows and does nothing.
    let mut a = Killable::start(fleet.cluster(0).config(), "a", &spans);
    wait_leader(&a.manager, "a").await;
    let b = replica(client.clone(), "b", &spans).await;
    let (b_token, b_run) = start(&b);
    tokio::time::sleep(3 * RETRY).await;
    assert!(a.manager.is_leader() && !b.is_leader());
    assert!(spans.count("a") > 0, "the leader reconciles");
    assert_eq!(spans.replicas(), ["a"], "only the leader reconciles");

    // a is killed without releasing: b takes over once the lease has expired.
    let killed = Instant::now();
    a.kill();
    let takeover = wait_leader(&b, "b").await - killed;
    eprintln!("o01: takeover after kill: {takeover:?}");
    assert!(
        takeover <= LEASE + RETRY + SLACK,
        "takeover after kill took {takeover:?}"
    );
    // a renewed at most a retry period before it was killed: b waited out the lease.
    assert!(
        takeover + RETRY + SLACK >= LEASE,
        "b took the lease early, after {takeover:?}"
    );
    let waited = Instant::now();
    while spans.count("b") == 0 {
        assert!(waited.elapsed() < WAIT, "new leader b never reconciled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // c joins as a follower; b shuts down cleanly and releases: c takes over at once.
    let c = replica(client.clone(), "c", &spans).await;
    let (c_token, c_run) = start(&c);
    tokio::time::sleep(3 * RETRY).await;
    assert!(b.is_leader() && !c.is_leader());
    assert_eq!(spans.replicas(), ["a", "b"], "the follower c does not reconcile");
    let stopped = Instant::now();
    b_token.cancel();
    b_run.await.expect("b joins").expect("b stops cleanly");
    let handover = wait_leader(&c, "c").await - stopped;
    eprintln!("o01: handover after clean shutdown: {handover:?}");
    assert!(
        handover <= Duration::from_secs(3),
        "handover after release took {handover:?}"
    );
    let waited = Instant::now();
    while spans.count("c") == 0 {
        assert!(waited.elapsed() < WAIT, "new leader c never reconciled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c_token.cancel();
    c_run.await.expect("c joins").expect("c stops cleanly");

    // Never two replicas at once.
    let all = spans.all();
    for first in &all {
        for second in all.iter().filter(|s| s.replica != first.replica) {
            let (end1, end2) = (first.end.expect("ended"), second.end.expect("ended"));
            assert!(
                end1 <= second.start || end2 <= first.start,
                "{} and {} reconciled at once: {first:?} / {second:?}",
                first.replica,
                second.replica
            );
        }
    }
    eprintln!(
        "o01: reconciles a={} b={} c={}",
        spans.count("a"),
        spans.count("b"),
        spans.count("c")
    );
}

/// Another writer takes the lease: at its next renewal the leader sees it, cancels
/// its reconciles in flight at once (no graceful drain), and `start` returns
/// `LeadershipLost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o01_a_lost_lease_stops_leader_work_at_once() {
    let fleet = Fleet::start(1).await.expect("start fleet");
    let client = fleet.cluster(0).client().expect("client");
    create_configmaps(&client, "o01", 3).await;
    let spans = Arc::new(Spans::default());
    let a = replica_with(client.clone(), election("a"), &spans, Duration::from_secs(30)).await;
    let (_token, run) = start(&a);
    wait_leader(&a, "a").await;
    wait_running(&spans, 1).await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let mut lease = leases.get("o01").await.expect("lease");
    let spec = lease.spec.as_mut().expect("spec");
    spec.holder_identity = Some("intruder".into());
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    leases
        .replace("o01", &PostParams::default(), &lease)
        .await
        .expect("take lease");
    let taken = Instant::now();

    let result = tokio::time::timeout(WAIT, run)
        .await
        .expect("start returns")
        .expect("joins");
    let took = taken.elapsed();
    eprintln!("o01: leader stopped {took:?} after its lease was taken");
    match result {
        Err(Error::LeadershipLost { identity, reason, .. }) => {
            assert_eq!(identity, "a");
            assert!(reason.contains("intruder"), "{reason}");
        }
        other => panic!("expected LeadershipLost, got {other:?}"),
    }
    assert!(
        took <= RETRY + SLACK,
        "stopped {took:?} after the lease was taken"
    );
    assert!(!a.is_leader());
    for span in spans.all() {
        let end = span.end.expect("every reconcile ended");
        assert!(end <= taken + RETRY + SLACK, "{span:?} ran on after the loss");
    }
}

/// A manager of the local cluster with 40 ConfigMaps, 20 reconciled at once, 2 s each.
async fn slow_manager(fleet: &Fleet, timeout: Option<Duration>) -> (Manager, Arc<Spans>) {
    let client = fleet.cluster(0).client().expect("client");
    let mut manager = Manager::new(Arc::new(Cluster::new("", client)));
    if let Some(timeout) = timeout {
        manager = manager.with_graceful_shutdown_timeout(timeout);
    }
    let spans = Arc::new(Spans::default());
    let ctx = Arc::new(Ctx {
        replica: "m".into(),
        spans: spans.clone(),
        work: Duration::from_secs(2),
        then: Action::await_change(),
    });
    Controller::builder::<ConfigMap>(&manager)
        .named("o05")
        .concurrency(20)
        .cluster_concurrency(20)
        .register(reconcile, |_: &Request, _: &Infallible, _| Action::backoff(), ctx)
        .await
        .expect("controller");
    (manager, spans)
}

async fn wait_running(spans: &Spans, count: usize) {
    let waited = Instant::now();
    while spans.all().iter().filter(|s| s.end.is_none()).count() < count {
        assert!(waited.elapsed() < WAIT, "{count} reconciles never ran at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cancelled during 20 slow reconciles (2 s each, 20 more queued): all 20 finish
/// within the default timeout, none starts after the cancel, and the manager returns
/// once they are done. With a 1 s timeout it returns after about 1 s and names the 20
/// it cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o05_shutdown_drains_in_flight_reconciles_within_the_timeout() {
    let fleet = Fleet::start(1).await.expect("start fleet");
    create_configmaps(&fleet.cluster(0).client().expect("client"), "o05", 40).await;

    // Default timeout (30 s): everything in flight finishes.
    let (manager, spans) = slow_manager(&fleet, None).await;
    let (token, run) = start(&manager);
    wait_running(&spans, 20).await;
    let cancelled = Instant::now();
    token.cancel();
    run.await.expect("joins").expect("clean shutdown");
    let took = cancelled.elapsed();
    eprintln!("o05: drained 20 reconciles in {took:?}");
    let all = spans.all();
    assert_eq!(all.len(), 20, "nothing started after the cancel: {all:?}");
    assert!(
        all.iter().all(|s| s.start < cancelled),
        "a reconcile started after the cancel"
    );
    assert!(
        all.iter()
            .all(|s| s.end.is_some_and(|end| end - s.start >= Duration::from_secs(2))),
        "every reconcile in flight ran to its end"
    );
    assert!(
        took < Duration::from_secs(2) + SLACK,
        "returned {took:?} after cancel"
    );

    // 1 s timeout: the manager returns after ~1 s and reports the 20 it cut short.
    let (manager, spans) = slow_manager(&fleet, Some(Duration::from_secs(1))).await;
    let (token, run) = start(&manager);
    wait_running(&spans, 20).await;
    let cancelled = Instant::now();
    token.cancel();
    let result = run.await.expect("joins");
    let took = cancelled.elapsed();
    eprintln!("o05: 1 s timeout returned after {took:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(1) + SLACK,
        "returned {took:?} after cancel"
    );
    let all = spans.all();
    assert_eq!(all.len(), 20, "nothing started after the cancel");
    match result {
        Err(Error::ShutdownTimedOut { timeout, cut_short }) => {
            assert_eq!(timeout, Duration::from_secs(1));
            let mut cut: Vec<Request> = cut_short.iter().map(|c| c.request.clone()).collect();
            let mut running: Vec<Request> = all.iter().map(|s| s.request.clone()).collect();
            cut.sort();
            running.sort();
            assert_eq!(cut, running, "the report names exactly the reconciles in flight");
            assert!(cut_short.iter().all(|c| c.controller == "o05"));
        }
        other => panic!("expected ShutdownTimedOut, got {other:?}"),
    }
    assert!(
        all.iter()
            .all(|s| s.end.is_some_and(|end| end - s.start < Duration::from_secs(2))),
        "the reconciles were cut short"
    );
}

/// What the o04 reconciler saw: each reconcile's cluster, object and start.
#[derive(Default)]
struct Starts {
    starts: Mutex<Vec<(String, String, Instant)>>,
}

impl Starts {
    fn of(&self, cluster: &str, name: &str) -> Vec<Instant> {
        let starts = self.starts.lock().unwrap();
        starts
            .iter()
            .filter(|(c, n, _)| c == cluster && n == name)
            .map(|(_, _, at)| *at)
            .collect()
    }

    fn in_cluster_after(&self, cluster: &str, after: Instant) -> usize {
        let starts = self.starts.lock().unwrap();
        starts
            .iter()
            .filter(|(c, _, at)| c == cluster && *at > after)
            .count()
    }

    /// Waits until `name` in `cluster` is reconciled after `after`; returns when.
    async fn wait(&self, cluster: &str, name: &str, after: Instant) -> Instant {
        loop {
            if let Some(at) = self.of(cluster, name).into_iter().find(|at| *at >= after) {
                return at;
            }
            assert!(after.elapsed() < WAIT, "{name} in {cluster:?} never reconciled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Records the start; `o04-tick` comes back every 200 ms, so that a cluster always
/// has work (reconciled from the cache, which works while the apiserver is away).
async fn record_start(req: ReconcileRequest<ConfigMap>, starts: Arc<Starts>) -> Result<Action, Infallible> {
    let (cluster, name) = (
        req.request.cluster.as_str().to_owned(),
        req.request.name().to_owned(),
    );
    let tick = name == "o04-tick";
    starts
        .starts
        .lock()
        .unwrap()
        .push((cluster, name, Instant::now()));
    Ok(if tick {
        Action::requeue(Duration::from_millis(200))
    } else {
        Action::await_change()
    })
}

/// The o04 probe timings: short, so that the test takes seconds, not minutes.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const FAILURES: u32 = 3;

/// Waits for the next health event of `cluster` into `state`; returns it and when.
async fn next_health(
    events: &mut tokio::sync::broadcast::Receiver<HealthEvent>,
    cluster: &str,
    state: &str,
) -> (HealthEvent, Instant) {
    let wanted = async {
        loop {
            let event = events.recv().await.expect("health events");
            if event.cluster == cluster && event.health.state.name() == state {
                return (event, Instant::now());
            }
        }
    };
    tokio::time::timeout(WAIT, wanted)
        .await
        .unwrap_or_else(|_| panic!("{cluster} never became {state}"))
}

/// o04 (and o03b, the health half of o03): a fleet of two apiservers, the local
/// cluster and `c1`. `c1`'s apiserver stops: after exactly the failure threshold it
/// is unhealthy, with its error in the snapshot, and its reconciles wait while the
/// local cluster's go on as fast as before. After a 15 s outage it restarts: an
/// object written right after is reconciled within one probe interval + 3 s (its
/// watch reconnects on the probe's success instead of waiting out its backoff),
/// and the snapshot says healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o03b_o04_an_unhealthy_cluster_waits_alone_and_recovers_within_a_probe_interval() {
    let env = Env::new(1).await;
    let probes = HealthProbes::default()
        .interval(PROBE_INTERVAL)
        .timeout(PROBE_TIMEOUT)
        .failure_threshold(FAILURES);
    let manager = env.manager.clone().with_health_probes(probes);
    let starts = Arc::new(Starts::default());
    // Two workers, so one cluster may hold at most one (the default cluster cap).
    let controller = Controller::builder::<ConfigMap>(&manager)
        .named("o04")
        .engage_local(true)
        .concurrency(2)
        .register(
            record_start,
            |_: &Request, _: &Infallible, _| Action::backoff(),
            starts.clone(),
        )
        .await
        .expect("controller");
    let (local, remote) = (env.client(0), env.client(1));
    for client in [&local, &remote] {
        create_named(client, "o04-tick").await;
    }
    let mut events = manager.health_events();
    env.start();
    let begun = Instant::now();
    starts.wait("", "o04-tick", begun).await;
    starts.wait("c1", "o04-tick", begun).await;
    next_health(&mut events, "c1", "healthy").await;
    let c1 = manager.get_cluster(&"c1".into()).await.expect("c1 engaged");

    // The local cluster's latency before the outage.
    let written = Instant::now();
    create_named(&local, "o04-before").await;
    let before = starts.wait("", "o04-before", written).await - written;

    let stopping = Instant::now();
    env.fleet.cluster(1).stop().await;
    let stopped = Instant::now();
    let (event, unhealthy_at) = next_health(&mut events, "c1", "unhealthy").await;
    eprintln!(
        "o04: c1 unhealthy {:?} after the stop began ({:?} after it ended): {:?}",
        unhealthy_at - stopping,
        unhealthy_at.saturating_duration_since(stopped),
        event.health
    );
    assert_eq!(
        event.health.consecutive_failures, FAILURES,
        "marked at the threshold"
    );
    assert!(
        unhealthy_at - stopped <= PROBE_INTERVAL * FAILURES + PROBE_TIMEOUT + SLACK,
        "unhealthy {:?} after the apiserver stopped",
        unhealthy_at - stopped
    );
    let queue = controller.queue();
    let waited = Instant::now();
    while !queue.pause_reasons(&"c1".into()).contains(PauseReason::Unhealthy) {
        assert!(waited.elapsed() < WAIT, "c1 never paused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let paused = Instant::now();

    // o03b: the snapshot lists c1 unhealthy with its error, the local cluster healthy.
    let snapshot = manager.cluster_health();
    let health = &snapshot["c1"];
    eprintln!("o03b: c1 while stopped: {health:?}");
    match &health.state {
        HealthState::Unhealthy { last_error, .. } => {
            assert!(last_error.starts_with("GET /readyz"), "{last_error}");
        }
        other => panic!("c1 is {other:?}"),
    }
    assert!(snapshot[""].is_healthy());

    // During the outage the local cluster reconciles as fast as before.
    let mut during = Vec::new();
    for n in 0..5 {
        let written = Instant::now();
        create_named(&local, &format!("o04-during-{n}")).await;
        during.push(starts.wait("", &format!("o04-during-{n}"), written).await - written);
    }
    eprintln!("o04: local latency before the outage {before:?}, during {during:?}");
    let worst = during.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_secs(3),
        "local reconciles slowed down: {during:?} vs {before:?}"
    );
    assert!(queue.pause_reasons(&ClusterName::local()).is_empty());
    assert!(starts.in_cluster_after("", paused) > 0, "the local tick goes on");

    // The outage lasts 15 s: this sleep is the outage itself.
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(stopped.elapsed())).await;
    // c1's tick would have run ~5 times a second from its cache; paused, it starts
    // at most the one reconcile leased before the pause.
    let c1_during = starts.in_cluster_after("c1", paused);
    assert!(
        c1_during <= 1,
        "{c1_during} reconciles of c1 started while it was unhealthy"
    );
    assert!(manager.cluster_health()["c1"].consecutive_failures >= FAILURES + 2);

    env.fleet.cluster(1).start().await.expect("restart c1");
    let (written, written_at) = (Instant::now(), SystemTime::now());
    create_named(&remote, "o04-after").await;
    let reconciled = starts.wait("c1", "o04-after", written).await;
    let (event, _) = next_health(&mut events, "c1", "healthy").await;
    let HealthState::Healthy { since } = event.health.state else {
        unreachable!("a healthy event")
    };
    // The apiserver is ready before `start` returns, so the probe may have seen it
    // back before the write.
    let healthy = match since.duration_since(written_at) {
        Ok(after) => format!("{after:?} after the write"),
        Err(before) => format!("{:?} before the write", before.duration()),
    };
    eprintln!(
        "o04: c1 back: healthy {healthy}; o04-after reconciled {:?} after it was written",
        reconciled - written
    );
    assert!(
        reconciled - written <= PROBE_INTERVAL + Duration::from_secs(3),
        "reconciled {:?} after the write",
        reconciled - written
    );
    assert!(
        c1.cache().informer::<ConfigMap>().reconnects() >= 1,
        "the watch was reconnected"
    );

    // o03b: healthy again in the snapshot; unknown → healthy → unhealthy → healthy.
    let health = manager.cluster_health()["c1"].clone();
    assert!(matches!(health.state, HealthState::Healthy { .. }), "{health:?}");
    assert_eq!(health.transitions, 3);
    assert_eq!(manager.cluster_health()[""].transitions, 1);
    assert!(queue.pause_reasons(&"c1".into()).is_empty());
    starts.wait("c1", "o04-tick", reconciled).await;
}

async fn create_named(client: &Client, name: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
}

/// o04, replacement: `c1` is unhealthy and paused; the provider replaces it by an
/// instance on another, working apiserver. The new instance inherits the queued
/// items but not the old instance's health: once its cache has synced it is
/// reconciled, while the old instance's prober, ended with its engagement, can no
/// longer pause it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o04_a_replaced_unhealthy_cluster_does_not_pass_its_health_on() {
    let env = Env::with_spare(1, 1).await;
    let probes = HealthProbes::default()
        .interval(Duration::from_millis(500))
        .timeout(PROBE_TIMEOUT)
        .failure_threshold(2);
    let manager = env.manager.clone().with_health_probes(probes);
    let starts = Arc::new(Starts::default());
    let controller = Controller::builder::<ConfigMap>(&manager)
        .named("o04b")
        .register(
            record_start,
            |_: &Request, _: &Infallible, _| Action::backoff(),
            starts.clone(),
        )
        .await
        .expect("controller");
    for index in [1, 2] {
        create_named(&env.client(index), "o04-tick").await;
    }
    let mut events = manager.health_events();
    env.start();
    starts.wait("c1", "o04-tick", Instant::now()).await;

    env.fleet.cluster(1).stop().await;
    next_health(&mut events, "c1", "unhealthy").await;
    let queue = controller.queue();
    let waited = Instant::now();
    while !queue.pause_reasons(&"c1".into()).contains(PauseReason::Unhealthy) {
        assert!(waited.elapsed() < WAIT, "c1 never paused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The old instance's health, to see its prober end.
    let mut old = manager.watch_cluster_health(&"c1".into()).expect("engaged");
    // The same name, now served by fleet cluster 2.
    let replacement = Arc::new(Cluster::new("c1", env.client(2)));
    let replaced = Instant::now();
    env.provider.replace(replacement.clone()).await.expect("replace");
    let health = manager.cluster_health()["c1"].clone();
    assert_eq!(
        health.transitions, 0,
        "a fresh health for the new instance: {health:?}"
    );
    starts.wait("c1", "o04-tick", replaced).await;
    assert!(
        !queue.pause_reasons(&"c1".into()).contains(PauseReason::Unhealthy),
        "the old instance's health was passed on"
    );
    let (event, _) = next_health(&mut events, "c1", "healthy").await;
    assert_eq!(event.health.transitions, 1, "the new instance's first transition");
    // The old instance's prober has ended with its engagement (its health channel
    // closes once the prober's sender is gone), so nothing can pause c1 for it.
    tokio::time::timeout(WAIT, async { while old.changed().await.is_ok() {} })
        .await
        .expect("the old prober ended");
    assert!(manager.cluster_health()["c1"].is_healthy());
    assert!(queue.pause_reasons(&"c1".into()).is_empty(), "c1 paused again");
    starts.wait("c1", "o04-tick", Instant::now()).await;
}
