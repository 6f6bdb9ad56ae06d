//! Replicas that split the fleet between them on Leases, against real apiservers
//! (issue "Beyond one replica", tests sh01 to sh03; sh04 is the simulation in the
//! library's unit tests).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, PostParams};
use kube_envtest::Fleet;
use multicluster_runtime::cache::CacheOptions;
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::manager::Sharding;
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, ClusterName, ClusterOptions, Manager, Provider};

mod support;

use support::WAIT;
use support::objects::create_namespace;
use support::replicas::{Killable, Spans};

/// Member clusters, each a namespace of one of two apiservers seen through a
/// client and cache of its own (its watches cover its namespace only), so that
/// every cluster costs its owner one watch, as a real cluster would.
const CLUSTERS: usize = 30;
/// Short timings, so that a takeover takes seconds.
const LEASE: Duration = Duration::from_secs(4);
const RENEW: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(3);
const PROBE: Duration = Duration::from_secs(1);
/// What engaging, listing and one reconcile may add to a bound made of timings.
const SLACK: Duration = Duration::from_millis(1500);

fn member(index: usize) -> String {
    format!("m{index:02}")
}

/// Each member namespace on its apiserver (1 or 2), with two ConfigMaps.
async fn seed(fleet: &Fleet) {
    for index in 0..CLUSTERS {
        let client = fleet.cluster(1 + index % 2).client().expect("client");
        let name = member(index);
        create_namespace(&client, &name).await;
        let api: Api<ConfigMap> = Api::namespaced(client, &name);
        for n in 0..2 {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(format!("cm-{n}"));
            api.create(&PostParams::default(), &cm)
                .await
                .expect("create configmap");
        }
    }
}

struct Ctx {
    replica: String,
    spans: Arc<Spans>,
}

/// Takes 50 ms and comes back after 300 ms: every owned cluster is reconciled all
/// the time, so that two owners at once could not go unseen.
async fn reconcile(req: ReconcileRequest<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, Infallible> {
    let _running = ctx.spans.begin(&ctx.replica, &req.request);
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Action::requeue(Duration::from_millis(300)))
}

/// A replica, its identity, and its provider: the members' instances, owned or not
/// (the manager's `get_cluster` refuses the ones another replica owns).
struct Replica {
    identity: String,
    provider: Arc<Clusters>,
    process: Killable,
}

impl Replica {
    fn manager(&self) -> &Manager {
        &self.process.manager
    }
}

/// A replica on a runtime of its own: the 30 members from a `Clusters` provider,
/// sharded, one controller.
fn replica(fleet: &Fleet, identity: &str, spans: &Arc<Spans>) -> Replica {
    let configs: Vec<kube::Config> = (0..3).map(|i| fleet.cluster(i).config()).collect();
    let (name, spans) = (identity.to_owned(), spans.clone());
    let (send_provider, provider) = std::sync::mpsc::channel();
    let process = Killable::start(move || async move {
        let identity = name;
        let client = |i: usize| Client::try_from(configs[i].clone()).expect("client");
        let provider = Arc::new(Clusters::new());
        send_provider.send(provider.clone()).expect("send provider");
        for index in 0..CLUSTERS {
            let name = member(index);
            let options =
                ClusterOptions::default().cache(CacheOptions::default().default_namespaces([name.clone()]));
            let cluster = Cluster::with_options(name, client(1 + index % 2), options);
            provider.add(Arc::new(cluster)).await.expect("add member");
        }
        let sharding = Sharding::new("sh")
            .identity(identity.clone())
            .lease_duration(LEASE)
            .renew_period(RENEW)
            .renew_deadline(DEADLINE)
            .probe_interval(PROBE);
        let manager = Manager::with_provider(Arc::new(Cluster::new("", client(0))), provider)
            .with_sharding(sharding)
            .without_health_probes();
        let ctx = Arc::new(Ctx {
            replica: identity,
            spans,
        });
        Controller::builder::<ConfigMap>(&manager)
            .named("sh")
            .register(reconcile, |_: &Request, _: &Infallible, _| Action::backoff(), ctx)
            .await
            .expect("controller");
        manager
    });
    Replica {
        identity: identity.to_owned(),
        provider: provider.recv().expect("the replica's provider"),
        process,
    }
}

/// The provider clusters `manager` owns now.
fn owned(manager: &Manager) -> BTreeSet<String> {
    manager
        .owned_clusters()
        .into_iter()
        .filter(|name| !name.is_local())
        .map(|name| name.as_str().to_owned())
        .collect()
}

/// The provider clusters of `replica` whose caches run informers.
async fn with_informers(replica: &Replica) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for index in 0..CLUSTERS {
        let name = ClusterName::from(member(index));
        let cluster = replica.provider.get(&name).await.expect("member known");
        if !cluster.cache().informer_statuses().is_empty() {
            names.insert(member(index));
        }
    }
    names
}

/// Waits until the replicas' owned sets split the members between them, each
/// owner with its informers on exactly the clusters it owns, stable for a second.
/// Returns the owner of each member.
async fn wait_split(replicas: &[&Replica]) -> BTreeMap<String, String> {
    let started = Instant::now();
    let mut stable_since: Option<(BTreeMap<String, String>, Instant)> = None;
    loop {
        assert!(
            started.elapsed() < WAIT,
            "the members were never split: {stable_since:?}"
        );
        let mut owners = BTreeMap::new();
        let mut disjoint = true;
        for replica in replicas {
            for name in owned(replica.manager()) {
                disjoint &= owners.insert(name, replica.identity.clone()).is_none();
            }
        }
        let mut informers_match = true;
        for replica in replicas {
            informers_match &= with_informers(replica).await == owned(replica.manager());
        }
        let split = disjoint && owners.len() == CLUSTERS && informers_match;
        match &stable_since {
            Some((seen, since)) if split && *seen == owners => {
                if since.elapsed() >= Duration::from_secs(1) {
                    return owners;
                }
            }
            _ => stable_since = split.then(|| (owners, Instant::now())),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The replicas that reconciled `cluster` after `since`.
fn reconcilers_since(spans: &Spans, cluster: &str, since: Instant) -> BTreeSet<String> {
    spans
        .all()
        .into_iter()
        .filter(|s| s.request.cluster == cluster && s.start >= since)
        .map(|s| s.replica)
        .collect()
}

/// sh01: three managers split 30 clusters; each is reconciled by its owner only, and
/// each manager runs informers for exactly the clusters it owns.
/// sh03: a fourth joins; only the clusters that now hash to it move (about 1/4),
/// and the old owners' informers of those are stopped.
/// sh02: one is killed without releasing anything; its clusters are reconciled
/// elsewhere within the lease duration and the probe interval.
/// Throughout, no cluster is reconciled by two replicas at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sh01_sh02_sh03_replicas_split_the_fleet_and_hand_it_over() {
    let fleet = Fleet::start(3).await.expect("start fleet");
    seed(&fleet).await;
    let spans = Arc::new(Spans::default());

    // sh01
    let a = replica(&fleet, "a", &spans);
    let b = replica(&fleet, "b", &spans);
    let mut c = replica(&fleet, "c", &spans);
    let before = wait_split(&[&a, &b, &c]).await;
    let counts: BTreeMap<&String, usize> = before.values().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o).or_default() += 1;
        m
    });
    eprintln!("sh01: owners per replica: {counts:?}");
    assert_eq!(counts.len(), 3, "every replica owns some clusters: {counts:?}");
    let window = Instant::now();
    // Every engaged replica reconciles a cluster every 350 ms: by the time its owner
    // has started three reconciles of each cluster after `window` (two periods), any
    // other replica working on it would have started one too.
    support::wait_until("three reconciles of each cluster by its owner", || {
        let all = spans.all();
        before.iter().all(|(cluster, owner)| {
            let by_owner = all.iter().filter(|s| {
                s.request.cluster == cluster.as_str() && s.replica == *owner && s.start >= window
            });
            by_owner.count() >= 3
        })
    })
    .await;
    for (cluster, owner) in &before {
        let seen = reconcilers_since(&spans, cluster, window);
        assert_eq!(
            seen,
            BTreeSet::from([owner.clone()]),
            "cluster {cluster} reconciled by {seen:?}"
        );
    }

    // sh03
    let d = replica(&fleet, "d", &spans);
    let after = wait_split(&[&a, &b, &c, &d]).await;
    let moved: Vec<&String> = after
        .keys()
        .filter(|name| before[*name] != after[*name])
        .collect();
    eprintln!(
        "sh03: {} of {CLUSTERS} clusters moved to the new replica: {moved:?}",
        moved.len()
    );
    assert!(
        moved.iter().all(|name| after[*name] == "d"),
        "only clusters of the new replica move"
    );
    assert!(
        moved.len() as f64 <= CLUSTERS as f64 / 4.0 * 1.3,
        "{} clusters moved",
        moved.len()
    );
    for name in &moved {
        let old = [&a, &b, &c]
            .into_iter()
            .find(|r| r.identity == before[*name])
            .expect("old owner");
        let cluster = old
            .provider
            .get(&ClusterName::from(name.as_str()))
            .await
            .expect("known");
        assert!(
            cluster.cache().informer_statuses().is_empty(),
            "{name}'s old owner still runs informers"
        );
    }

    // sh02
    let lost: BTreeSet<String> = owned(c.manager());
    let killed = Instant::now();
    c.process.kill();
    let after_kill = wait_split(&[&a, &b, &d]).await;
    let mut slowest = Duration::ZERO;
    for name in &lost {
        let taken = spans
            .all()
            .into_iter()
            .filter(|s| s.request.cluster == name.as_str() && s.replica != "c" && s.start >= killed)
            .map(|s| s.start)
            .min()
            .expect("reconciled elsewhere");
        slowest = slowest.max(taken - killed);
        assert_ne!(after_kill[name], "c");
    }
    eprintln!(
        "sh02: {} clusters of the killed replica reconciled elsewhere after at most {slowest:?}",
        lost.len()
    );
    assert!(slowest <= LEASE + PROBE + SLACK, "takeover took {slowest:?}");

    let overlaps = spans.overlaps_across_replicas();
    assert!(
        overlaps.is_empty(),
        "two replicas reconciled one cluster at once: {:?}",
        overlaps.first()
    );
    eprintln!("sh: {} reconciles, no overlap across replicas", spans.all().len());
}

/// r05: ownership gates `Manager::get_cluster` too. Two sharded replicas split eight
/// clusters; each hands out the clusters it owns and refuses the others with
/// `Error::NotOwned`, so a reconciler cannot write to a cluster another replica
/// works on; a name nobody knows is still `ClusterNotFound`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r05_a_replica_refuses_the_clusters_another_owns() {
    let fleet = Fleet::start(2).await.expect("start fleet");
    let names: BTreeSet<String> = (0..8).map(|i| format!("r05-{i}")).collect();
    let token = tokio_util::sync::CancellationToken::new();
    let mut managers = Vec::new();
    for identity in ["a", "b"] {
        let provider = Arc::new(Clusters::new());
        for name in &names {
            let member = Cluster::new(name.clone(), fleet.cluster(1).client().expect("client"));
            provider.add(Arc::new(member)).await.expect("add");
        }
        let sharding = Sharding::new("r05")
            .identity(identity)
            .lease_duration(LEASE)
            .renew_period(RENEW)
            .renew_deadline(DEADLINE)
            .probe_interval(PROBE);
        let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
        let manager = Manager::with_provider(local, provider)
            .with_sharding(sharding)
            .without_health_probes();
        let (runs, stop) = (manager.clone(), token.clone());
        tokio::spawn(async move { runs.start(stop).await });
        managers.push(manager);
    }
    let owned = |m: &Manager| -> BTreeSet<String> {
        m.owned_clusters()
            .into_iter()
            .filter(|n| !n.is_local())
            .map(|n| n.as_str().to_owned())
            .collect()
    };
    let started = Instant::now();
    loop {
        let (a, b) = (owned(&managers[0]), owned(&managers[1]));
        if !a.is_empty()
            && !b.is_empty()
            && a.is_disjoint(&b)
            && a.union(&b).cloned().collect::<BTreeSet<_>>() == names
        {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the replicas did not split the clusters: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (index, manager) in managers.iter().enumerate() {
        let mine = owned(manager);
        for name in &names {
            let got = manager.get_cluster(&ClusterName::from(name.as_str())).await;
            if mine.contains(name) {
                assert_eq!(got.expect("owned here").name().as_str(), name);
            } else {
                match got {
                    Err(multicluster_runtime::Error::NotOwned { cluster }) => {
                        assert_eq!(cluster.as_str(), name)
                    }
                    other => panic!(
                        "replica {index}: {name} is owned elsewhere, got {:?}",
                        other.map(|c| c.name().clone())
                    ),
                }
            }
        }
        let unknown = manager.get_cluster(&ClusterName::from("nowhere")).await;
        assert!(unknown.expect_err("unknown").is_cluster_not_found());
    }
    token.cancel();
}

/// Waits until `done`, polling; returns how long it took.
async fn wait_for(what: &str, done: &dyn Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// The `change="lost"` count of `manager`'s ownership changes.
fn lost(manager: &Manager) -> u64 {
    manager
        .metrics()
        .encode()
        .lines()
        .find(|l| l.starts_with("multicluster_runtime_shard_ownership_changes_total{change=\"lost\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// x07: a replica works on a cluster under its fence; someone else rewrites the
/// fence to name another holder. Within a probe interval (here equal to the renew
/// period) the replica cuts its work there: the cluster is no longer owned, its
/// informers are stopped, and the loss is counted. The named holder has no peer
/// Lease, so the replica takes the fence back a lease duration later and works
/// again. Then someone clears the fence (no holder): the work is cut again, and the
/// fence taken again at once. The replica runs with `deploy/rbac/sharding.yaml`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x07_a_held_fence_changed_by_someone_else_stops_the_work_on_its_cluster() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Patch, PatchParams};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let fleet = Fleet::start(2).await.expect("start fleet");
    let admin = fleet.cluster(0).client().expect("client");
    // The replica holds exactly deploy/rbac/sharding.yaml for its Leases (here in
    // `default`), and reads ConfigMaps for its controller.
    let configmaps = k8s_openapi::api::rbac::v1::PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".into()]),
        verbs: vec!["list".into(), "watch".into()],
        ..Default::default()
    };
    let spec = support::rbac::user("x07-replica", "sharding.yaml", "default").allow(vec![configmaps]);
    let replica = fleet.cluster(0).create_user(spec).await.expect("user");
    let member = Arc::new(Cluster::new("x07", fleet.cluster(1).client().expect("client")));
    let provider = Arc::new(Clusters::new());
    provider.add(member.clone()).await.expect("add");
    let sharding = Sharding::new("x07")
        .identity("a")
        .lease_duration(LEASE)
        .renew_period(RENEW)
        .renew_deadline(DEADLINE)
        .probe_interval(PROBE);
    let fence = sharding.fence_lease(&ClusterName::from("x07"));
    let local = Arc::new(Cluster::new("", replica.client().expect("client")));
    let manager = Manager::with_provider(local, provider)
        .with_sharding(sharding)
        .without_health_probes();
    let reconciles = Arc::new(AtomicUsize::new(0));
    Controller::builder::<ConfigMap>(&manager)
        .named("x07")
        .register(
            |_: ReconcileRequest<ConfigMap>, n: Arc<AtomicUsize>| async move {
                n.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(Action::await_change())
            },
            |_: &Request, _: &Infallible, _| Action::backoff(),
            reconciles.clone(),
        )
        .await
        .expect("controller");
    let token = tokio_util::sync::CancellationToken::new();
    let (runs, stop) = (manager.clone(), token.clone());
    tokio::spawn(async move { runs.start(stop).await });

    let working = || owned(&manager).contains("x07") && !member.cache().informer_statuses().is_empty();
    let stopped = || !owned(&manager).contains("x07") && member.cache().informer_statuses().is_empty();
    wait_for("x07 worked on", &working).await;
    wait_for("x07 reconciled", &|| reconciles.load(Ordering::Relaxed) > 0).await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "default");
    let holder = |lease: Lease| lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder(leases.get(&fence).await.expect("fence")).as_deref(),
        Some("a")
    );

    // Rewritten to name another holder: the work stops within a probe interval.
    let rewrite = |holder: serde_json::Value| {
        let (leases, fence) = (leases.clone(), fence.clone());
        async move {
            let patch = serde_json::json!({ "spec": { "holderIdentity": holder } });
            leases
                .patch(&fence, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("patch the fence");
        }
    };
    rewrite(serde_json::json!("intruder")).await;
    let cut = wait_for("x07's work cut", &stopped).await;
    eprintln!("x07: work cut {cut:?} after the fence was rewritten");
    assert!(cut <= PROBE + SLACK, "cut after {cut:?}");
    assert_eq!(lost(&manager), 1);
    // "intruder" has no peer Lease: once it has been absent a lease duration, the
    // fence is taken back.
    wait_for("x07 worked on again", &working).await;
    assert_eq!(
        holder(leases.get(&fence).await.expect("fence")).as_deref(),
        Some("a")
    );

    // Cleared: cut again, and taken again at once.
    rewrite(serde_json::Value::Null).await;
    wait_for("a second loss", &|| lost(&manager) == 2).await;
    wait_for("x07 worked on again", &working).await;
    assert_eq!(
        holder(leases.get(&fence).await.expect("fence")).as_deref(),
        Some("a")
    );
    token.cancel();
}
