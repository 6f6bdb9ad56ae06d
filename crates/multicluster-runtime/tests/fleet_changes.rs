//! Nothing is lost while the fleet changes: replacements, lag, unsynced caches,
//! failing engagements, panicking callbacks and hanging clusters, against real
//! apiservers (issue "Nothing lost while the fleet changes", tests l01–l09).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_envtest::Fleet;
use multicluster_runtime::async_trait;
use multicluster_runtime::cache::{CacheOptions, FieldIndex};
use multicluster_runtime::controller::{Action, Controller, MapContext, ReconcileRequest, Request};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Aware, Cluster, ClusterName, ClusterOptions, Manager, Provider};
use tokio_util::sync::CancellationToken;

mod support;

use support::fleet::*;
use support::logs::Logs;
use support::objects::{controlled_by, create_namespace};
use support::{WAIT, wait_until};

/// Creates `count` ConfigMaps `<prefix>-<n>` labelled `test=<prefix>` in `default`.
async fn create_many(client: &Client, prefix: &str, count: usize) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for chunk in (0..count).collect::<Vec<_>>().chunks(25) {
        join_all(chunk.iter().map(|n| {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(format!("{prefix}-{n}"));
            cm.metadata.labels = Some(BTreeMap::from([("test".to_owned(), prefix.to_owned())]));
            let api = api.clone();
            async move { api.create(&PostParams::default(), &cm).await.expect("create") }
        }))
        .await;
    }
}

async fn delete_many(client: &Client, prefix: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let selector = ListParams::default().labels(&format!("test={prefix}"));
    api.delete_collection(&DeleteParams::default(), &selector)
        .await
        .expect("delete collection");
}

/// Two tasks replace one cluster 100 times each while a second controller joins: the
/// instance the provider holds is the one every component works on, and both
/// controllers reconcile in it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l01_concurrent_replacements_never_evict_the_live_instance() {
    let logs = Logs::capture();
    let env = Env::new(1).await;
    let (first, first_seen) = recording(Controller::builder(&env.manager).named("first")).await;
    env.start();
    wait_engaged(&first, &["c1"]).await;

    let replacers: Vec<_> = (0..2)
        .map(|_| {
            let (provider, client) = (env.provider.clone(), env.client(1));
            tokio::spawn(async move {
                for _ in 0..100 {
                    let cluster = Arc::new(Cluster::new("c1", client.clone()));
                    provider.replace(cluster).await.expect("replace");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // The second controller's catch-up races the replacements.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (second, second_seen) = recording(Controller::builder(&env.manager).named("second")).await;
    for replacer in replacers {
        replacer.await.expect("replacer");
    }

    let registered = env.provider.get(&"c1".into()).await.expect("registered");
    let engaged = env.manager.get_cluster(&"c1".into()).await.expect("engaged");
    assert!(
        Arc::ptr_eq(&registered, &engaged),
        "the manager holds the provider's instance"
    );
    assert!(!registered.is_stopped());
    wait_engaged(&first, &["c1"]).await;
    wait_engaged(&second, &["c1"]).await;
    assert!(env.manager.engaged_clusters().iter().any(|n| n == "c1"));

    let created = Instant::now();
    create_cm(env.client(1), "after-replacements", &[]).await;
    first_seen.wait_for("c1", "after-replacements", 1).await;
    second_seen.wait_for("c1", "after-replacements", 1).await;
    assert!(
        created.elapsed() < Duration::from_secs(10),
        "took {:?}",
        created.elapsed()
    );
    // A cache stopped because its instance was replaced is no error.
    assert!(
        !logs.has_line(&["still waiting"]),
        "a replaced cache was reported as not synced"
    );
}

/// What one reconcile saw: the object's name, whether it existed, and the address of
/// the `Cluster` instance it ran with.
type Seen = Arc<Mutex<Vec<(String, bool, usize)>>>;

/// 500 items of a cluster are queued (their objects deleted, some of them in error
/// backoff) when the cluster is replaced: the new instance lists nothing, so only the
/// carried-over queue can bring each deletion to the reconciler.
#[tokio::test]
async fn l02_replacement_keeps_queued_items_and_backoff() {
    const ITEMS: usize = 500;
    let env = Env::new(1).await;
    create_many(&env.client(1), "l02", ITEMS).await;
    let seen: Seen = Arc::default();
    let replaced = Arc::new(AtomicBool::new(false));
    let context = (seen.clone(), replaced.clone());
    let _controller = Controller::builder::<ConfigMap>(&env.manager)
        .backoff(Duration::from_millis(500), Duration::from_secs(1))
        .register(
            |req: ReconcileRequest<ConfigMap>, ctx: Arc<(Seen, Arc<AtomicBool>)>| async move {
                let (seen, replaced) = &*ctx;
                let name = req.request.name().to_owned();
                let at = Arc::as_ptr(&req.cluster) as usize;
                seen.lock()
                    .unwrap()
                    .push((name.clone(), req.object.is_some(), at));
                if !replaced.load(Ordering::SeqCst) {
                    // Slow, and every tenth item fails into backoff.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if name.ends_with('7') {
                        return Err(std::io::Error::other("not yet"));
                    }
                }
                Ok(Action::await_change())
            },
            |_, _, _| Action::backoff(),
            Arc::new(context),
        )
        .await
        .expect("controller");
    env.start();
    wait_until("some reconciles", || seen.lock().unwrap().len() >= 20).await;
    let new = env.cluster(1);
    delete_many(&env.client(1), "l02").await;
    env.provider.replace(new.clone()).await.expect("replace");
    replaced.store(true, Ordering::SeqCst);
    let seen_before = seen.lock().unwrap().len();
    let absent_before: BTreeSet<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, exists, _)| !exists)
        .map(|(n, _, _)| n.clone())
        .collect();

    let new_at = Arc::as_ptr(&new) as usize;
    let all: BTreeSet<String> = (0..ITEMS).map(|n| format!("l02-{n}")).collect();
    wait_until("every deleted item reconciled as absent", || {
        let seen = seen.lock().unwrap();
        let absent: BTreeSet<String> = seen
            .iter()
            .filter(|(_, exists, _)| !exists)
            .map(|(n, _, _)| n.clone())
            .collect();
        absent == all
    })
    .await;
    let seen = seen.lock().unwrap();
    // At most the one reconcile in flight at the replacement ran with the old
    // instance after it; everything else after it ran with the new one.
    let late_old = seen[seen_before..]
        .iter()
        .filter(|(_, _, at)| *at != new_at)
        .count();
    assert!(
        late_old <= 1,
        "{late_old} reconciles with the old instance after the replacement"
    );
    let by_new: BTreeSet<&String> = seen
        .iter()
        .filter(|(_, exists, at)| *at == new_at && !exists)
        .map(|(n, _, _)| n)
        .collect();
    let pending: Vec<&String> = all.difference(&absent_before).collect();
    assert!(
        pending.len() > ITEMS / 2,
        "most items were still queued: {}",
        pending.len()
    );
    let missed = pending.iter().filter(|n| !by_new.contains(*n)).count();
    assert!(
        missed <= 1,
        "{missed} queued items did not reach the new instance"
    );
}

/// `index_field` while 50 clusters are engaged concurrently: every cluster gets the
/// index, and no registration reports it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l03_index_field_reaches_every_cluster_exactly_once() {
    let env = Env::with_spare(0, 1).await;
    env.start();
    create_cm(env.client(1), "indexed", &[("app", "web")]).await;
    let index = FieldIndex::new::<ConfigMap>("app", |cm| {
        cm.data
            .iter()
            .flatten()
            .filter(|(k, _)| *k == "app")
            .map(|(_, v)| v.clone())
            .collect()
    });
    let adds = (0..50).map(|n| {
        let (provider, client) = (env.provider.clone(), env.client(1));
        tokio::spawn(async move {
            let name = format!("n{n}");
            provider.add(Arc::new(Cluster::new(name.as_str(), client))).await
        })
    });
    let adds: Vec<_> = adds.collect();
    tokio::task::yield_now().await;
    env.manager
        .index_field(index.clone())
        .await
        .expect("registered once everywhere");
    for add in join_all(adds).await {
        add.expect("task").expect("add");
    }
    for n in 0..50 {
        let cluster = env.provider.get(&format!("n{n}").into()).await.expect("cluster");
        let found = cluster.cache().list_by_index::<ConfigMap>("app", "web").await;
        let names: Vec<String> = found
            .expect("the index exists")
            .iter()
            .map(|cm| cm.name_any())
            .collect();
        assert_eq!(names, ["indexed"], "cluster n{n}");
        assert!(
            index.apply(cluster.cache()).is_err(),
            "n{n} already has the index"
        );
    }
}

/// A request mapped into a cluster whose apiserver is paused during the initial list
/// waits, queued, until that cluster's cache has synced; it then sees the object.
#[tokio::test]
async fn l04_mapped_request_waits_for_the_target_cache_to_sync() {
    let env = Env::new(2).await;
    create_cm(env.client(2), "target", &[]).await;
    env.fleet.cluster(2).pause();
    let mapped = Arc::new(AtomicUsize::new(0));
    let counter = mapped.clone();
    let (controller, recorder) = recording(Controller::builder::<ConfigMap>(&env.manager).watches::<Secret>(
        move |context: &MapContext, secret: &Secret| {
            if context.source != "c1" || secret.name_any() != "trigger" {
                return Vec::new();
            }
            counter.fetch_add(1, Ordering::SeqCst);
            vec![Request::new("c2", Some("default"), "target")]
        },
    ))
    .await;
    env.start();
    let api: Api<Secret> = Api::namespaced(env.client(1), "default");
    let mut secret = Secret::default();
    secret.metadata.name = Some("trigger".into());
    api.create(&PostParams::default(), &secret).await.expect("secret");
    wait_until("the trigger mapped", || mapped.load(Ordering::SeqCst) > 0).await;
    // The barrier: the request is in the queue, held while c2 has not synced.
    let queue = controller.queue();
    assert!(queue.is_paused(&"c2".into()), "c2 is held until its cache syncs");
    assert_eq!(queue.depth(&"c2".into()), 1);
    assert_eq!(recorder.count("c2", "target"), 0);

    env.fleet.cluster(2).resume();
    recorder.wait_for("c2", "target", 1).await;
    let first = recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|(r, _)| r.cluster == "c2")
        .cloned();
    assert_eq!(
        first.map(|(_, exists)| exists),
        Some(true),
        "the first reconcile saw the object"
    );
}

/// A Namespace (cluster-scoped) owning ConfigMaps: a change of a child reconciles the
/// Namespace, under no namespace, with the cached object.
#[tokio::test]
async fn l05_cluster_scoped_owner_gets_its_owned_children() {
    let env = Env::new(1).await;
    let client = env.client(1);
    let ns = create_namespace(&client, "l05").await;
    let seen: Arc<Mutex<Vec<(Request, bool)>>> = Arc::default();
    let _controller = Controller::builder::<Namespace>(&env.manager)
        .owns::<ConfigMap>()
        .register(
            |req: ReconcileRequest<Namespace>, seen: Arc<Mutex<Vec<(Request, bool)>>>| async move {
                seen.lock()
                    .unwrap()
                    .push((req.request.clone(), req.object.is_some()));
                Ok::<_, Infallible>(Action::await_change())
            },
            |_, _, _| Action::backoff(),
            seen.clone(),
        )
        .await
        .expect("controller");
    env.start();
    let count = |seen: &Mutex<Vec<(Request, bool)>>| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r.name() == "l05")
            .count()
    };
    wait_until("the namespace reconciled", || count(&seen) >= 1).await;
    let before = count(&seen);

    let children: Api<ConfigMap> = Api::namespaced(client, "l05");
    let mut child = ConfigMap::default();
    child.metadata.name = Some("child".into());
    child.metadata.owner_references = Some(vec![controlled_by(&ns)]);
    children
        .create(&PostParams::default(), &child)
        .await
        .expect("child");
    wait_until("the owner reconciled for its child", || count(&seen) > before).await;
    let seen = seen.lock().unwrap();
    for (request, exists) in seen.iter().filter(|(r, _)| r.name() == "l05") {
        assert_eq!(request.namespace(), None, "{request}");
        assert!(exists, "the cached Namespace is delivered");
    }
}

/// A source whose event channel holds one event misses a burst of deletions; every
/// deleted object is still reconciled as absent.
///
/// The lag is made certain, not hoped for: a predicate holds the source task while
/// the deletions reach the cache, then lets it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l06_deletions_are_not_lost_when_the_source_lags() {
    const ITEMS: usize = 200;
    let logs = Logs::capture();
    let env = Env::new(0).await;
    let options = ClusterOptions::default().cache(CacheOptions::default().event_capacity(1));
    let lagging = Arc::new(Cluster::with_options("lagging", env.client(0), options));
    env.provider.add(lagging.clone()).await.expect("add");
    create_many(&env.client(0), "l06", ITEMS).await;
    create_cm(env.client(0), "gate-l06", &[]).await;

    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new((held_tx, release_rx));
    let hold = move |_: Option<&ConfigMap>, new: &ConfigMap| {
        let closed = new.data.as_ref().is_some_and(|data| data.contains_key("hold"));
        if new.name_any() == "gate-l06" && closed {
            let gate = gate.lock().unwrap();
            let _ = gate.0.send(());
            // Blocks this source task; `block_in_place` hands the worker's other tasks
            // (the informer among them) to another thread meanwhile.
            let _ = tokio::task::block_in_place(|| gate.1.recv_timeout(WAIT));
        }
        true
    };
    let builder = Controller::builder(&env.manager).with_predicate(Arc::new(hold));
    let (_controller, recorder) = recording(builder).await;
    env.start();
    recorder
        .wait("every object reconciled once", |seen| {
            seen.iter()
                .filter(|(r, exists)| r.name().starts_with("l06-") && *exists)
                .count()
                >= ITEMS
        })
        .await;

    let api: Api<ConfigMap> = Api::namespaced(env.client(0), "default");
    let close = serde_json::json!({ "data": { "hold": "yes" } });
    api.patch("gate-l06", &PatchParams::default(), &Patch::Merge(&close))
        .await
        .expect("close the gate");
    tokio::task::spawn_blocking(move || held_rx.recv_timeout(WAIT))
        .await
        .unwrap()
        .expect("the source reaches the gate");
    delete_many(&env.client(0), "l06").await;
    wait_until("the cache has seen every deletion", || {
        let cached = lagging.cache().informer::<ConfigMap>().store().list();
        !cached.iter().any(|cm| cm.name_any().starts_with("l06-"))
    })
    .await;
    release_tx.send(()).expect("release the source");

    recorder
        .wait("every object reconciled as absent", |seen| {
            let absent: BTreeSet<&str> = seen
                .iter()
                .filter(|(r, exists)| r.name().starts_with("l06-") && !exists)
                .map(|(r, _)| r.name())
                .collect();
            absent.len() == ITEMS
        })
        .await;
    assert!(
        logs.has_line(&["fell behind", "lagging"]),
        "the source lagged, so the lag path was exercised"
    );
}

/// A component that refuses the local cluster.
struct RefusesLocal;

#[async_trait]
impl Aware for RefusesLocal {
    async fn engage(
        &self,
        _: CancellationToken,
        name: ClusterName,
        _: Arc<Cluster>,
    ) -> multicluster_runtime::Result<()> {
        if name.is_local() {
            return Err(multicluster_runtime::Error::Engage {
                cluster: name,
                component: "refuses-local".into(),
                source: "refused".into(),
            });
        }
        Ok(())
    }
}

/// `start` returns the local engagement's error, and every task it spawned has ended
/// by then: the runtime counts as many live tasks as before.
#[test]
fn l07_failing_local_engage_returns_the_error_and_leaves_no_task() {
    let fleet_runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fleet = fleet_runtime.block_on(Fleet::start(1)).expect("fleet");
    // A runtime of its own, so that every task counted is the manager's (or the
    // client's, which lives before and after).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
        let manager = Manager::with_provider(local, Arc::new(Clusters::new()));
        manager.add_aware(Arc::new(RefusesLocal)).await.expect("added");
        let (_controller, _recorder) = recording(Controller::builder(&manager)).await;
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let error = manager
            .start(CancellationToken::new())
            .await
            .expect_err("the local engagement fails");
        assert!(error.to_string().contains("refuses-local"), "{error}");
        assert_eq!(
            metrics.num_alive_tasks(),
            before,
            "a task of the manager outlived start"
        );
    });
}

/// A mapper that panics for one object of one cluster costs that object's event only:
/// the cluster's other events and the other cluster go on, and the object is mapped
/// once it no longer makes the mapper panic.
#[tokio::test]
async fn l08_panicking_mapper_is_contained_and_recovers() {
    let logs = Logs::capture();
    let env = Env::new(2).await;
    let (_controller, recorder) =
        recording(Controller::builder::<ConfigMap>(&env.manager).watches::<Secret>(
            |context: &MapContext, secret: &Secret| {
                if secret.labels().contains_key("poison") {
                    panic!("poisoned secret");
                }
                vec![Request::new(
                    context.source.clone(),
                    Some("default"),
                    secret.name_any(),
                )]
            },
        ))
        .await;
    env.start();
    let secret = |name: &str, poison: bool| {
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.into());
        if poison {
            secret.metadata.labels = Some(BTreeMap::from([("poison".to_owned(), "yes".to_owned())]));
        }
        secret
    };
    let c1: Api<Secret> = Api::namespaced(env.client(1), "default");
    let c2: Api<Secret> = Api::namespaced(env.client(2), "default");
    c1.create(&PostParams::default(), &secret("bad", true))
        .await
        .expect("bad");
    logs.wait_line(&["user callback panicked", "mapper", "bad"]).await;
    c1.create(&PostParams::default(), &secret("good-1", false))
        .await
        .expect("good-1");
    c2.create(&PostParams::default(), &secret("good-2", false))
        .await
        .expect("good-2");
    recorder.wait_for("c1", "good-1", 1).await;
    recorder.wait_for("c2", "good-2", 1).await;
    assert_eq!(recorder.count("c1", "bad"), 0);

    let unpoison = serde_json::json!({ "metadata": { "labels": { "poison": null } } });
    c1.patch("bad", &PatchParams::default(), &Patch::Merge(&unpoison))
        .await
        .expect("fix");
    recorder.wait_for("c1", "bad", 1).await;
}

/// Reconciles of one cluster hang for 30 s at concurrency 4: with the other cluster
/// idle they borrow every slot but one, never the last, and another cluster's item is
/// reconciled within a second.
#[tokio::test]
async fn l09_hanging_cluster_cannot_take_every_slot() {
    let env = Env::new(2).await;
    create_many(&env.client(1), "l09", 8).await;
    let (controller, recorder) = with_reconciler(
        Controller::builder(&env.manager).concurrency(4),
        |req: ReconcileRequest<ConfigMap>, recorder: Arc<Recorder>| async move {
            recorder.record(&req.request, req.object.is_some());
            if req.request.cluster == "c1" {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok(Action::await_change())
        },
    )
    .await;
    env.start();
    wait_until("c1 holds every slot but the reserved one", || {
        controller.queue().processing_len_of(&"c1".into()) == 3
    })
    .await;
    // The apiserver keeps ConfigMaps of its own in kube-system: at least 5 wait.
    assert!(
        controller.queue().depth(&"c1".into()) >= 5,
        "the rest of c1 waits"
    );
    let created = Instant::now();
    create_cm(env.client(2), "quick", &[]).await;
    recorder.wait_for("c2", "quick", 1).await;
    let took = created.elapsed();
    assert!(took < Duration::from_secs(1), "c2's item waited {took:?}");
    assert!(took < WAIT);
    // c2 is idle again: the slot it used is the reserve, which c1 does not borrow.
    // Were it lent to c1 when c2's reconcile ended, c2's next item would wait 30 s
    // for one of c1's to end.
    let created = Instant::now();
    create_cm(env.client(2), "quick-again", &[]).await;
    recorder.wait_for("c2", "quick-again", 1).await;
    let took = created.elapsed();
    assert!(took < Duration::from_secs(1), "c2's next item waited {took:?}");
    assert_eq!(controller.queue().processing_len_of(&"c1".into()), 3);
}

/// An error whose message does not repeat its cause.
#[derive(Debug)]
struct RenderError(std::io::Error);

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot render the template")
    }
}

impl std::error::Error for RenderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A reconcile error reaches the error policy as its own type, and the log line
/// carries its whole chain of causes, not just the outer message.
#[tokio::test]
async fn a05_reconcile_errors_reach_the_policy_typed_and_the_log_with_their_causes() {
    let logs = Logs::capture();
    let env = Env::new(1).await;
    create_cm(env.client(1), "a05-chain", &[]).await;
    let policy_saw: Arc<Mutex<Vec<std::io::ErrorKind>>> = Arc::default();
    let _controller = Controller::builder::<ConfigMap>(&env.manager)
        .named("a05-chain")
        .register(
            |req: ReconcileRequest<ConfigMap>, _: Arc<Mutex<Vec<std::io::ErrorKind>>>| async move {
                if req.name() != "a05-chain" {
                    return Ok(Action::await_change());
                }
                let cause =
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, "the disk is read-only");
                Err(RenderError(cause))
            },
            |_: &Request, error: &RenderError, seen: Arc<Mutex<Vec<std::io::ErrorKind>>>| {
                seen.lock().unwrap().push(error.0.kind());
                Action::requeue(Duration::from_secs(3600))
            },
            policy_saw.clone(),
        )
        .await
        .expect("controller");
    env.start();
    logs.wait_line(&[
        "reconcile failed",
        "a05-chain",
        "cannot render the template: the disk is read-only",
    ])
    .await;
    assert_eq!(
        *policy_saw.lock().unwrap(),
        vec![std::io::ErrorKind::PermissionDenied]
    );
}

/// r07: a cluster removed and added back before the controller's disengage task
/// has run starts fresh. On one current-thread runtime nothing else runs between
/// the removal and the add, so the controller meets the removed instance's entry:
/// its failure count and queued items must not carry over to the new instance,
/// and the manager counts a removal, not a replacement.
#[tokio::test(flavor = "current_thread")]
async fn r07_a_removal_then_an_add_is_a_fresh_start() {
    let env = Env::new(1).await;
    create_cm(env.client(1), "r07", &[]).await;
    let recorder = Arc::new(Recorder::default());
    let controller = Controller::builder::<ConfigMap>(&env.manager)
        .named("r07")
        .backoff(Duration::from_millis(20), Duration::from_millis(40))
        .register(
            |req: ReconcileRequest<ConfigMap>, recorder: Arc<Recorder>| async move {
                recorder.record(&req.request, req.object.is_some());
                Err::<Action, _>(std::io::Error::other("r07: always fails"))
            },
            |_: &Request, _: &std::io::Error, _| Action::backoff(),
            recorder.clone(),
        )
        .await
        .expect("controller");
    env.start();
    recorder.wait_for("c1", "r07", 3).await;
    let (c1, key) = (
        ClusterName::from("c1"),
        multicluster_runtime::cache::ObjectKey::new(Some("default"), "r07"),
    );
    let queue = controller.queue();
    assert!(queue.num_requeues(&c1, &key) >= 2, "the key has failed before");

    assert!(env.provider.remove(&c1));
    env.add(1).await;
    assert_eq!(
        queue.num_requeues(&c1, &key),
        0,
        "the removed instance's failures are gone"
    );
    assert_eq!(queue.depth(&c1), 0, "and so are its queued items");
    let metrics = env.manager.metrics().encode();
    let counted = |reason: &str| {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("multicluster_runtime_cluster_disengagements_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!((counted("removed"), counted("replaced")), (1.0, 0.0), "{metrics}");
    // The new instance is reconciled, from a fresh count.
    let before = recorder.count("c1", "r07");
    recorder.wait_for("c1", "r07", before + 1).await;
}

/// r08: `cluster_scoped(true)` works after `owns()` as well as before. A dynamic
/// primary type (Namespace as a `DynamicObject`) declared cluster-scoped only after
/// its `owns::<ConfigMap>()`: a child's change reconciles the owner under no
/// namespace, with the cached object.
#[tokio::test]
async fn r08_cluster_scoped_after_owns_still_applies() {
    use kube::api::{ApiResource, DynamicObject};
    let env = Env::new(1).await;
    let client = env.client(1);
    let ns = create_namespace(&client, "r08").await;
    let resource = ApiResource::erase::<Namespace>(&());
    let seen: Arc<Mutex<Vec<(Request, bool)>>> = Arc::default();
    let _controller = multicluster_runtime::controller::ControllerBuilder::<DynamicObject>::new_with(
        &env.manager,
        resource,
    )
    .owns::<ConfigMap>()
    .cluster_scoped(true)
    .register(
        |req: ReconcileRequest<DynamicObject>, seen: Arc<Mutex<Vec<(Request, bool)>>>| async move {
            seen.lock()
                .unwrap()
                .push((req.request.clone(), req.object.is_some()));
            Ok::<_, Infallible>(Action::await_change())
        },
        |_, _, _| Action::backoff(),
        seen.clone(),
    )
    .await
    .expect("controller");
    env.start();
    let of_r08 = |seen: &Mutex<Vec<(Request, bool)>>| -> Vec<(Request, bool)> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r.name() == "r08")
            .cloned()
            .collect()
    };
    wait_until("the namespace reconciled", || !of_r08(&seen).is_empty()).await;
    let before = of_r08(&seen).len();
    let mut child = ConfigMap::default();
    child.metadata.name = Some("child".into());
    child.metadata.owner_references = Some(vec![controlled_by(&ns)]);
    Api::<ConfigMap>::namespaced(client, "r08")
        .create(&PostParams::default(), &child)
        .await
        .expect("child");
    wait_until("the owner reconciled for its child", || {
        of_r08(&seen).len() > before
    })
    .await;
    for (request, exists) in of_r08(&seen) {
        assert_eq!(request.namespace(), None, "{request}");
        assert!(exists, "the cached Namespace is delivered: {request}");
    }
}

/// Engaging a controller again with the instance it already works on is a no-op
/// (rule 2 of the engagement registry), for readiness too: the controller reported
/// the cluster's caches synced once, and the repeated engagement must not report
/// them syncing again (readiness would then wait for a sync that never comes).
#[tokio::test]
async fn engaging_the_same_instance_again_keeps_the_cluster_synced_for_readiness() {
    let env = Env::new(1).await;
    let (controller, _recorder) = recording(Controller::builder(&env.manager).named("again")).await;
    env.start();
    let synced = "[+]cluster \"c1\" synced";
    let started = Instant::now();
    while !env.manager.readyz().await.to_string().contains(synced) {
        assert!(started.elapsed() < WAIT, "c1 never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.manager.add_aware(controller).await.expect("engaged again");
    let report = env.manager.readyz().await.to_string();
    assert!(
        report.contains(synced),
        "still synced after the repeated engagement:\n{report}"
    );
}
