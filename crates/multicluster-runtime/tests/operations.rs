//! Running in production: leader election, graceful shutdown, metrics and
//! readiness, cluster health, Events and client options, against real apiservers
//! (issue "Run it in production", tests o01 to o07).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource};
use kube_envtest::Fleet;
use multicluster_runtime::cluster::{ClientOptions, RateLimit};
use multicluster_runtime::controller::queue::PauseReason;
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::manager::{HealthEvent, HealthProbes, HealthState, LeaderElection};
use multicluster_runtime::providers::file::Files;
use multicluster_runtime::{Cluster, ClusterName, ClusterOptions, Error, Manager, Provider};
use tokio_util::sync::CancellationToken;

mod support;

use support::WAIT;
use support::fleet::{Env, create_cm};
use support::openmetrics::{self, Exposition};
use support::replicas::{Killable, Spans};

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
    let mut a = {
        let (config, spans) = (fleet.cluster(0).config(), spans.clone());
        Killable::start(move || async move {
            let client = Client::try_from(config).expect("client");
            replica(client, "a", &spans).await
        })
    };
    wait_leader(&a.manager, "a").await;
    let b = replica(client.clone(), "b", &spans).await;
    let (b_token, b_run) = start(&b);
    // A follower's failed attempt only reads the Lease: nothing marks it, so b is
    // given three retry periods (three attempts) to wrongly take over or reconcile.
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
    support::wait_until("new leader b to reconcile", || spans.count("b") > 0).await;

    // c joins as a follower; b shuts down cleanly and releases: c takes over at once.
    let c = replica(client.clone(), "c", &spans).await;
    let (c_token, c_run) = start(&c);
    // As for b above: three attempts of c, which nothing marks.
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
    support::wait_until("new leader c to reconcile", || spans.count("c") > 0).await;
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
            let mut cut: Vec<String> = cut_short
                .iter()
                .map(|c| format!("{}/{}", c.cluster, c.object))
                .collect();
            let mut running: Vec<String> = all.iter().map(|s| s.request.to_string()).collect();
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

/// What the o02 reconciler did, per cluster: every reconcile with its result.
#[derive(Default)]
struct Results {
    seen: Mutex<Vec<(String, String, &'static str)>>,
    failed_once: Mutex<std::collections::BTreeSet<(String, String)>>,
}

impl Results {
    fn count(&self, cluster: &str, result: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(c, _, r)| c == cluster && *r == result)
            .count()
    }

    fn reached(&self, cluster: &str, name: &str, result: &str) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .any(|(c, n, r)| c == cluster && n == name && *r == result)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("failing once on purpose")]
struct OnPurpose;

/// By object name: `o02-fail` fails once, `o02-again` asks for backoff once,
/// `o02-later` asks to come back in an hour; everything else succeeds.
async fn o02_reconcile(req: ReconcileRequest<ConfigMap>, results: Arc<Results>) -> Result<Action, OnPurpose> {
    let (cluster, name) = (req.cluster_name().as_str().to_owned(), req.name().to_owned());
    let first = results
        .failed_once
        .lock()
        .unwrap()
        .insert((cluster.clone(), name.clone()));
    let (result, outcome) = match name.as_str() {
        "o02-fail" if first => ("error", Err(OnPurpose)),
        "o02-again" if first => ("requeue", Ok(Action::backoff())),
        "o02-later" => ("requeue_after", Ok(Action::requeue(Duration::from_secs(3600)))),
        _ => ("success", Ok(Action::await_change())),
    };
    results.seen.lock().unwrap().push((cluster, name, result));
    outcome
}

async fn scrape(manager: &Manager) -> (String, Exposition) {
    let address = manager.http_address().expect("endpoint listens");
    let response = support::http::get(address, "/metrics").await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .content_type
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{}",
        response.content_type
    );
    let parsed = openmetrics::parse(&response.body)
        .unwrap_or_else(|err| panic!("/metrics is not OpenMetrics: {err}\n{}", response.body));
    (response.body, parsed)
}

async fn wait_http_address(manager: &Manager) {
    support::wait_until("the endpoint listens", || manager.http_address().is_some()).await;
}

/// The strict parser used by o02 rejects what it must: otherwise o02's "parses as
/// OpenMetrics" would prove nothing.
#[test]
fn o02_the_test_parser_rejects_malformed_expositions() {
    let good = "# HELP a A.\n# TYPE a counter\na_total{x=\"1\"} 2\n# EOF\n";
    let family = &openmetrics::parse(good).expect("valid").families[0];
    assert_eq!((family.name.as_str(), family.samples[0].value), ("a", 2.0));
    let bad = [
        ("no EOF", "# TYPE a counter\na_total 1\n"),
        (
            "interleaved",
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\na{x=\"1\"} 1\n# EOF\n",
        ),
        (
            "duplicate series",
            "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n# EOF\n",
        ),
        ("wrong suffix", "# TYPE a counter\na 1\n# EOF\n"),
        ("unquoted", "# TYPE a gauge\na{x=1} 1\n# EOF\n"),
        ("bad escape", "# TYPE a gauge\na{x=\"\\t\"} 1\n# EOF\n"),
        ("trailing comma", "# TYPE a gauge\na{x=\"1\",} 1\n# EOF\n"),
        ("negative counter", "# TYPE a counter\na_total -1\n# EOF\n"),
        ("unit mismatch", "# TYPE a gauge\n# UNIT a seconds\na 1\n# EOF\n"),
        ("text after EOF", "# TYPE a gauge\na 1\n# EOF\nb 1\n"),
        (
            "histogram not cumulative",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n# EOF\n",
        ),
        (
            "histogram count",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_count 2\nh_sum 0\n# EOF\n",
        ),
    ];
    for (what, text) in bad {
        assert!(openmetrics::parse(text).is_err(), "accepted {what}");
    }
}

/// After reconciles in 3 clusters, `/metrics` parses as OpenMetrics and shows, per
/// cluster, `reconcile_total` by result with the counts the reconciler saw, the
/// workqueue's depth, and the fleet's own metrics. Once a cluster is removed, none
/// of its series is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o02_metrics_per_cluster_and_removed_clusters_vanish() {
    let env = Env::new(3).await;
    let manager = env
        .manager
        .clone()
        .with_http_endpoint("127.0.0.1:0".parse().unwrap());
    let results = Arc::new(Results::default());
    Controller::builder::<ConfigMap>(&manager)
        .named("o02")
        .register(
            o02_reconcile,
            |_: &Request, _: &OnPurpose, _| Action::backoff(),
            results.clone(),
        )
        .await
        .expect("controller");
    create_cm(env.client(1), "o02-a", &[]).await;
    create_cm(env.client(2), "o02-a", &[]).await;
    create_cm(env.client(2), "o02-fail", &[]).await;
    create_cm(env.client(3), "o02-a", &[]).await;
    create_cm(env.client(3), "o02-later", &[]).await;
    create_cm(env.client(3), "o02-again", &[]).await;
    env.start();
    wait_http_address(&manager).await;
    support::wait_until("the o02 objects reconciled to their end", || {
        results.reached("c1", "o02-a", "success")
            && results.reached("c2", "o02-fail", "success")
            && results.reached("c3", "o02-again", "success")
            && results.reached("c3", "o02-later", "requeue_after")
    })
    .await;

    // The metric catches up with the reconciler once each reconcile has returned.
    let counts_match = |metrics: &Exposition| {
        ["c1", "c2", "c3"].iter().all(|cluster| {
            ["success", "error", "requeue", "requeue_after"]
                .iter()
                .all(|result| {
                    let labels = [("controller", "o02"), ("cluster", *cluster), ("result", *result)];
                    let value = metrics.value("controller_runtime_reconcile_total", &labels);
                    value.unwrap_or(0.0) as usize == results.count(cluster, result)
                })
        })
    };
    let started = Instant::now();
    let (text, metrics) = loop {
        let (text, metrics) = scrape(&manager).await;
        if counts_match(&metrics) {
            break (text, metrics);
        }
        assert!(
            started.elapsed() < WAIT,
            "reconcile_total never matched the reconciles:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for cluster in ["c1", "c2", "c3"] {
        eprintln!(
            "o02: {cluster}: success={} error={} requeue={} requeue_after={}",
            results.count(cluster, "success"),
            results.count(cluster, "error"),
            results.count(cluster, "requeue"),
            results.count(cluster, "requeue_after")
        );
    }
    let of = |name: &str, labels: &[(&str, &str)]| metrics.value(name, labels).unwrap_or(0.0);
    assert_eq!(results.count("c2", "error"), 1);
    assert_eq!(results.count("c3", "requeue"), 1);
    assert_eq!(results.count("c3", "requeue_after"), 1);
    assert_eq!(
        of("controller_runtime_reconcile_errors_total", &[("cluster", "c2")]),
        1.0
    );
    assert_eq!(
        of("controller_runtime_reconcile_errors_total", &[("cluster", "c1")]),
        0.0
    );
    assert!(
        metrics
            .samples("controller_runtime_reconcile_panics_total")
            .is_empty()
    );
    // The reconcile histogram is the controller's, summed over its clusters (v04).
    let total: usize = ["c1", "c2", "c3"]
        .iter()
        .flat_map(|cluster| {
            ["success", "error", "requeue", "requeue_after"].map(|result| results.count(cluster, result))
        })
        .sum();
    assert_eq!(
        of(
            "controller_runtime_reconcile_time_seconds_count",
            &[("controller", "o02")]
        ),
        total as f64,
        "every reconcile is timed"
    );
    assert_eq!(
        metrics
            .samples("controller_runtime_reconcile_time_seconds_count")
            .len(),
        1,
        "one series per controller"
    );
    // Backoff was asked for once in c2 (the failure) and once in c3 (`o02-again`).
    assert_eq!(
        of("workqueue_retries_total", &[("name", "o02"), ("cluster", "c2")]),
        1.0
    );
    assert_eq!(
        of("workqueue_retries_total", &[("name", "o02"), ("cluster", "c3")]),
        1.0
    );
    assert_eq!(
        of("workqueue_retries_total", &[("name", "o02"), ("cluster", "c1")]),
        0.0
    );
    // c3 holds `o02-later`, delayed for an hour; the others are empty.
    assert_eq!(
        metrics.value("workqueue_depth", &[("name", "o02"), ("cluster", "c3")]),
        Some(1.0)
    );
    assert_eq!(
        metrics.value("workqueue_depth", &[("name", "o02"), ("cluster", "c1")]),
        Some(0.0)
    );
    assert_eq!(
        metrics.value("workqueue_depth", &[("name", "o02"), ("cluster", "c2")]),
        Some(0.0)
    );
    assert_eq!(
        metrics.value(
            "controller_runtime_max_concurrent_reconciles",
            &[("controller", "o02")]
        ),
        Some(1.0)
    );
    let fleet = |name: &str, labels: &[(&str, &str)]| metrics.value(name, labels);
    assert_eq!(
        fleet(
            "multicluster_runtime_engaged_clusters",
            &[("provider", "Clusters")]
        ),
        Some(3.0)
    );
    assert_eq!(
        fleet("multicluster_runtime_engaged_clusters", &[("provider", "local")]),
        Some(1.0)
    );
    assert_eq!(
        fleet(
            "multicluster_runtime_cluster_engagements_total",
            &[("provider", "Clusters"), ("result", "success")]
        ),
        Some(3.0)
    );
    assert_eq!(
        fleet(
            "multicluster_runtime_cache_synced",
            &[("cluster", "c1"), ("resource", "ConfigMap (v1)")]
        ),
        Some(1.0)
    );
    assert_eq!(fleet("leader_election_master_status", &[("name", "")]), Some(1.0));
    let lines = text
        .lines()
        .filter(|line| line.contains("cluster=\"c1\""))
        .collect::<Vec<_>>();
    let bytes: usize = lines.iter().map(|line| line.len() + 1).sum();
    eprintln!(
        "o02: series of cluster c1 (1 controller, 1 resource): {} samples, {bytes} bytes of exposition",
        lines.len()
    );

    // Remove c2: every series of it goes; the others stay.
    assert!(env.provider.remove(&"c2".into()));
    let started = Instant::now();
    let metrics = loop {
        let (text, metrics) = scrape(&manager).await;
        if metrics.with_label("cluster", "c2").is_empty() {
            break metrics;
        }
        assert!(started.elapsed() < WAIT, "c2's series outlived it:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(manager.engaged_clusters().iter().all(|name| name != "c2"));
    for cluster in ["c1", "c3"] {
        let labels = [("controller", "o02"), ("cluster", cluster), ("result", "success")];
        assert!(
            metrics
                .value("controller_runtime_reconcile_total", &labels)
                .is_some_and(|v| v > 0.0),
            "{cluster} keeps its series"
        );
    }
    assert_eq!(
        metrics.value(
            "multicluster_runtime_engaged_clusters",
            &[("provider", "Clusters")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metrics.value(
            "multicluster_runtime_cluster_disengagements_total",
            &[("provider", "Clusters"), ("reason", "removed")]
        ),
        Some(1.0)
    );
}

/// `/readyz?verbose` lists every check and every engaged cluster with its state.
/// Readiness waits for the manager to run; a provider's cluster that cannot sync
/// is listed as syncing without failing it (unless every cluster is required); a
/// failing user check fails it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o03a_readyz_verbose_lists_clusters() {
    let env = Env::new(2).await;
    let manager = env
        .manager
        .clone()
        .with_http_endpoint("127.0.0.1:0".parse().unwrap());
    let switched_on = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = switched_on.clone();
    manager.add_readyz_check(multicluster_runtime::manager::HealthCheck::from_fn(
        "flag",
        move || {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err("switched off")
            }
        },
    ));
    manager.add_healthz_check(multicluster_runtime::manager::HealthCheck::new(
        "alive",
        || async { Ok::<(), String>(()) },
    ));
    Controller::builder::<ConfigMap>(&manager)
        .named("o03a")
        .register(
            |_: ReconcileRequest<ConfigMap>, _: Arc<()>| async {
                Ok::<_, Infallible>(Action::await_change())
            },
            |_: &Request, _: &Infallible, _| Action::backoff(),
            Arc::new(()),
        )
        .await
        .expect("controller");
    let before = manager.readyz().await;
    assert!(!before.passed(), "ready before start:\n{before}");
    assert!(before.to_string().contains("[-]manager not running"), "{before}");

    env.start();
    wait_http_address(&manager).await;
    let address = manager.http_address().expect("address");
    let all_synced = "[+]manager running\n\
                      [+]cluster \"\" synced\n\
                      [+]cluster \"c1\" synced\n\
                      [+]cluster \"c2\" synced\n\
                      [+]flag ok\n\
                      readyz check passed\n";
    let started = Instant::now();
    loop {
        let response = support::http::get(address, "/readyz?verbose").await;
        if response.body == all_synced {
            assert_eq!(response.status, 200);
            break;
        }
        assert!(started.elapsed() < WAIT, "never all synced: {response:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let terse = support::http::get(address, "/readyz").await;
    assert_eq!((terse.status, terse.body.as_str()), (200, "ok\n"));
    let health = support::http::get(address, "/healthz?verbose").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "[+]ping ok\n[+]alive ok\nhealthz check passed\n")
    );
    assert_eq!(support::http::get(address, "/nothing").await.status, 404);

    // A cluster whose apiserver does not answer: listed as syncing, still ready.
    let nowhere = kube::Config::new("https://127.0.0.1:9".parse().unwrap());
    let dead = Arc::new(Cluster::new("dead", Client::try_from(nowhere).expect("client")));
    env.provider.add(dead).await.expect("add dead cluster");
    support::wait_until("the dead cluster engaged", || {
        manager.engaged_clusters().iter().any(|name| name == "dead")
    })
    .await;
    let response = support::http::get(address, "/readyz?verbose").await;
    assert_eq!(response.status, 200, "{}", response.body);
    let dead_line = response
        .body
        .lines()
        .find(|line| line.starts_with("[+]cluster \"dead\" syncing since "))
        .unwrap_or_else(|| panic!("dead cluster not listed as syncing:\n{}", response.body));
    assert!(
        dead_line.ends_with("(controller o03a, ConfigMap (v1))"),
        "{dead_line}"
    );
    assert!(
        response.body.ends_with("readyz check passed\n"),
        "{}",
        response.body
    );

    // Requiring every cluster, the dead one fails readiness.
    let strict = manager.clone().with_readiness_requiring_all_clusters(true);
    let response = support::http::get(address, "/readyz?verbose").await;
    assert_eq!(response.status, 503, "{}", response.body);
    assert!(
        response.body.contains("[-]cluster \"dead\" syncing since "),
        "{}",
        response.body
    );
    let _ = strict.with_readiness_requiring_all_clusters(false);
    assert!(env.provider.remove(&"dead".into()));

    // A failing user check fails readiness, and says why even without `?verbose`.
    switched_on.store(false, std::sync::atomic::Ordering::SeqCst);
    let response = support::http::get(address, "/readyz").await;
    assert_eq!(response.status, 503);
    assert!(
        response.body.contains("[-]flag failed: switched off\n"),
        "{}",
        response.body
    );
    assert!(
        response.body.ends_with("readyz check failed\n"),
        "{}",
        response.body
    );
    assert_eq!(support::http::get(address, "/healthz").await.status, 200);
}

/// Publishes an Event on the reconciled ConfigMap, then asks for one more reconcile
/// of it, so that the second Event is the same as the first.
async fn publish_event(
    req: ReconcileRequest<ConfigMap>,
    seen: Arc<support::fleet::Recorder>,
) -> Result<Action, Infallible> {
    let Some(object) = &req.object else {
        return Ok(Action::await_change());
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "Seen".into(),
        note: Some(format!("reconciled in {}", req.cluster_name())),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = object.object_ref(&());
    req.recorder()
        .publish(&event, &reference)
        .await
        .expect("publish the Event");
    let again = seen.count(req.cluster_name().as_str(), req.name()) == 0;
    seen.record(&req.request, true);
    Ok(if again {
        Action::requeue(Duration::from_millis(100))
    } else {
        Action::await_change()
    })
}

/// The Events about ConfigMap `name` in the namespace `default` of a cluster.
async fn events_about(client: &Client, name: &str) -> Vec<events::v1::Event> {
    let api: Api<events::v1::Event> = Api::namespaced(client.clone(), "default");
    let all = api.list(&Default::default()).await.expect("list Events");
    all.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// An Event recorded from a reconcile lands in the cluster of the reconciled object,
/// about that object (its uid), and in no other cluster: not the manager's own, not
/// the other fleet cluster that has an object of the same name. Both reconciles of an
/// object share the cluster's recorder: the second Event counts up on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o06_an_event_lands_in_the_objects_own_cluster() {
    let env = support::fleet::Env::new(2).await;
    let builder = Controller::builder::<ConfigMap>(&env.manager).named("o06-events");
    let (controller, seen) = support::fleet::with_reconciler(builder, publish_event).await;
    env.start();
    support::fleet::wait_engaged(&controller, &["c1", "c2"]).await;
    let mut uids = BTreeMap::new();
    for index in [1, 2] {
        let object = support::fleet::create_cm(env.client(index), "o06", &[]).await;
        uids.insert(index, object.metadata.uid.expect("a uid"));
    }
    // Each publish returned before its reconcile was recorded: the Events are written.
    seen.wait_for("c1", "o06", 2).await;
    seen.wait_for("c2", "o06", 2).await;

    for (index, uid) in &uids {
        let events = events_about(&env.client(*index), "o06").await;
        assert_eq!(events.len(), 1, "one Event, counted up, in c{index}: {events:?}");
        let event = &events[0];
        let regarding = event.regarding.as_ref().expect("regarding");
        assert_eq!(regarding.uid.as_ref(), Some(uid), "about c{index}'s own object");
        assert_eq!(
            event.note.as_deref(),
            Some(format!("reconciled in c{index}").as_str())
        );
        assert_eq!(
            event.series.as_ref().map(|s| s.count),
            Some(2),
            "one shared recorder"
        );
        assert_eq!(event.reporting_controller.as_deref(), Some("o06-events"));
        assert!(event.reporting_instance.as_deref().is_some_and(|i| !i.is_empty()));
    }
    let local = events_about(&env.client(0), "o06").await;
    assert!(
        local.is_empty(),
        "no Event in the manager's own cluster: {local:?}"
    );
}

/// Writes `count` ConfigMaps named `<prefix>-<n>` into `default`, one after the
/// other; how long that took.
async fn timed_writes(client: Client, prefix: &str, count: usize) -> Duration {
    let started = Instant::now();
    create_configmaps(&client, prefix, count).await;
    started.elapsed()
}

/// A file provider with `options` for the kubeconfig `kubeconfig` written to `path`,
/// loaded; its one cluster.
async fn file_cluster(files: &Files, path: &std::path::Path, kubeconfig: &Kubeconfig) -> Arc<Cluster> {
    support::files::write_bytes(path, &serde_json::to_vec(kubeconfig).expect("JSON"));
    let report = files.reload().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let name = files.names().pop().expect("one cluster");
    files.get(&name).await.expect("the cluster")
}

/// A cluster whose provider limits it to 5 requests a second: 100 writes take at
/// least 19 s (20 windows of 5), while 100 writes to another cluster, at the same
/// time, are not held back. The limit, and the user agent, hold for the cluster that
/// replaces it when its kubeconfig changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o07_a_rate_limited_cluster_is_throttled_and_its_neighbour_is_not() {
    const WRITES: usize = 100;
    let fleet = Fleet::start(2).await.expect("start fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    let limited = ClientOptions::default()
        .rate_limit(RateLimit::new(5.0, 5).expect("valid"))
        .user_agent(HeaderValue::from_static("o07-throttled/1.0"));
    let slow_path = dir.path().join("slow.kubeconfig");
    let slow_files = Files::builder()
        .path(&slow_path)
        .cluster_options(ClusterOptions::default().client(limited))
        .build();
    let fast_files = Files::builder().path(dir.path().join("fast.kubeconfig")).build();
    let mut kubeconfig = fleet.cluster(0).kubeconfig().clone();
    let slow = file_cluster(&slow_files, &slow_path, &kubeconfig).await;
    let fast_kubeconfig = fleet.cluster(1).kubeconfig();
    let fast = file_cluster(&fast_files, &dir.path().join("fast.kubeconfig"), fast_kubeconfig).await;

    let (slow_took, fast_took) = tokio::join!(
        timed_writes(slow.client(), "o07", WRITES),
        timed_writes(fast.client(), "o07", WRITES)
    );
    eprintln!("o07: {WRITES} writes took {slow_took:?} at 5 qps, {fast_took:?} unlimited");
    assert!(slow_took >= Duration::from_secs(19), "limited: {slow_took:?}");
    assert!(fast_took < Duration::from_secs(9), "not limited: {fast_took:?}");

    // A changed kubeconfig (here its namespace) replaces the cluster; the
    // provider's options apply to the new one too.
    for context in &mut kubeconfig.contexts {
        if let Some(context) = context.context.as_mut() {
            context.namespace = Some("o07".into());
        }
    }
    let replaced = file_cluster(&slow_files, &slow_path, &kubeconfig).await;
    assert!(!Arc::ptr_eq(&slow, &replaced), "a new cluster instance");
    let again_took = timed_writes(replaced.client(), "o07-again", 10).await;
    eprintln!("o07: 10 writes took {again_took:?} after the replacement");
    assert!(
        again_took >= Duration::from_secs(1),
        "limited after replacement: {again_took:?}"
    );

    // The user agent reached the apiserver: it names the field manager of writes.
    let manager = |client: Client, name: &'static str| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let object = api.get(name).await.expect("get");
        let fields = object.metadata.managed_fields.unwrap_or_default();
        fields.first().and_then(|f| f.manager.clone())
    };
    assert_eq!(
        manager(replaced.client(), "o07-again-0").await.as_deref(),
        Some("o07-throttled")
    );
    assert_ne!(
        manager(fast.client(), "o07-0").await.as_deref(),
        Some("o07-throttled")
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
    let manager = env
        .manager
        .clone()
        .with_health_probes(probes)
        .with_http_endpoint("127.0.0.1:0".parse().unwrap());
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
    // o03: the endpoint says the same, and the process stays ready.
    let address = manager.http_address().expect("endpoint listens");
    let verbose = support::http::get(address, "/readyz?verbose").await;
    eprintln!("o03: /readyz?verbose while c1 is stopped:\n{}", verbose.body);
    assert_eq!(
        verbose.status, 200,
        "one unhealthy cluster keeps the process ready"
    );
    assert!(
        verbose
            .body
            .lines()
            .any(|l| l.contains("cluster \"c1\" unhealthy since") && l.contains("GET /readyz")),
        "{}",
        verbose.body
    );
    let metrics = support::http::get(address, "/metrics").await.body;
    assert!(
        metrics.contains("multicluster_runtime_cluster_healthy{cluster=\"c1\"} 0"),
        "{metrics}"
    );

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
    // o03: listed synced again.
    let synced = Instant::now();
    loop {
        let verbose = support::http::get(address, "/readyz?verbose").await;
        if verbose.body.lines().any(|l| l.contains("cluster \"c1\" synced")) {
            break;
        }
        assert!(
            synced.elapsed() < WAIT,
            "c1 never listed synced:\n{}",
            verbose.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
