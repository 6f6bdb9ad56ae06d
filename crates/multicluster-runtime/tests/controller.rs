//! Acceptance tests of the core runtime against real apiservers: a local cluster and
//! provider clusters from one kube-envtest fleet per test.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_envtest::Fleet;
use multicluster_runtime::cache::FieldIndex;
use multicluster_runtime::controller::queue::PauseReason;
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, ClusterName, Manager, Provider};
use tokio_util::sync::CancellationToken;

mod support;

use support::fleet::*;
use support::objects::controlled_by;
use support::{WAIT, wait_until};

#[tokio::test]
async fn s01_existing_objects_reconciled_in_every_cluster_with_its_name() {
    let env = Env::new(2).await;
    for index in 1..=2 {
        create_cm(env.client(index), &format!("pre-c{index}"), &[]).await;
    }
    let (_controller, recorder) = recording(Controller::builder(&env.manager)).await;
    env.start();
    recorder.wait_for("c1", "pre-c1", 1).await;
    recorder.wait_for("c2", "pre-c2", 1).await;
    // The apiserver keeps a ConfigMap of its own in kube-system; look at ours.
    let ours: Vec<Request> = recorder
        .requests()
        .into_iter()
        .filter(|r| r.namespace() == Some("default"))
        .collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    for request in ours {
        assert_eq!(
            request.name(),
            format!("pre-{}", request.cluster),
            "each request names its own cluster"
        );
    }
}

#[tokio::test]
async fn s02_s03_created_and_updated_objects_reconciled_in_the_right_cluster() {
    let env = Env::new(2).await;
    let (controller, recorder) = recording(Controller::builder(&env.manager)).await;
    env.start();
    wait_engaged(&controller, &["c1", "c2"]).await;

    create_cm(env.client(2), "created", &[("v", "1")]).await;
    recorder.wait_for("c2", "created", 1).await;
    assert_eq!(recorder.count("c1", "created"), 0, "c1 has no such object");

    patch_cm(env.client(2), "created", "v", "2").await;
    recorder.wait_for("c2", "created", 2).await;
    create_cm(env.client(1), "created", &[]).await;
    recorder.wait_for("c1", "created", 1).await;
    assert!(
        recorder.seen.lock().unwrap().iter().all(|(_, exists)| *exists),
        "the cached object is passed"
    );

    // Deletions reach the reconciler too, without the object.
    let api: Api<ConfigMap> = Api::namespaced(env.client(2), "default");
    api.delete("created", &Default::default()).await.expect("delete");
    recorder
        .wait("the deletion in c2", |seen| {
            seen.iter()
                .any(|(r, exists)| r.cluster == "c2" && r.name() == "created" && !exists)
        })
        .await;
    assert!(
        !recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|(r, exists)| r.cluster == "c1" && !exists)
    );
}

#[tokio::test]
async fn s04_cluster_added_after_start_is_engaged_and_reconciled() {
    let env = Env::with_spare(1, 1).await;
    create_cm(env.client(2), "in-late-cluster", &[]).await;
    let (controller, recorder) = recording(Controller::builder(&env.manager)).await;
    env.start();
    wait_engaged(&controller, &["c1"]).await;
    env.add(2).await;
    recorder.wait_for("c2", "in-late-cluster", 1).await;
    create_cm(env.client(2), "created-later", &[]).await;
    recorder.wait_for("c2", "created-later", 1).await;
}

#[tokio::test]
async fn s05_removed_cluster_stops_and_is_not_found() {
    let env = Env::new(2).await;
    for i in 0..20 {
        create_cm(env.client(2), &format!("queued-{i}"), &[]).await;
    }
    let removed = Arc::new(AtomicBool::new(false));
    let started_after_removal = Arc::new(AtomicUsize::new(0));
    let (flag, late) = (removed.clone(), started_after_removal.clone());
    let (controller, recorder) = with_reconciler(
        Controller::builder::<ConfigMap>(&env.manager).concurrency(1),
        move |req: ReconcileRequest<ConfigMap>, recorder: Arc<Recorder>| {
            if req.request.cluster == "c2" && flag.load(Ordering::SeqCst) {
                late.fetch_add(1, Ordering::SeqCst);
            }
            recorder.record(&req.request, req.object.is_some());
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await; // keep items queued
                Ok::<_, Infallible>(Action::await_change())
            }
        },
    )
    .await;
    let c2 = env.provider.get(&"c2".into()).await.expect("c2 is known");
    env.start();
    recorder
        .wait("the first reconcile in c2", |seen| {
            seen.iter().any(|(r, _)| r.cluster == "c2")
        })
        .await;
    assert!(
        controller.queue().depth(&"c2".into()) > 0,
        "items of c2 are still queued"
    );

    assert!(env.provider.remove(&"c2".into()));
    removed.store(true, Ordering::SeqCst);

    let err = env.manager.get_cluster(&"c2".into()).await.expect_err("removed");
    assert!(err.is_cluster_not_found(), "{err}");
    assert!(
        c2.is_stopped(),
        "the removed cluster's cache (its watches) is stopped"
    );
    wait_until("queued items of c2 dropped", || {
        controller.queue().depth(&"c2".into()) == 0
    })
    .await;
    create_cm(env.client(2), "after-removal", &[]).await;
    // Barrier: a watch of c2 of our own has seen the new object, so one of the
    // controller's that still ran would have queued it by then, ahead of
    // `still-served`. With one worker, the queue empty after `still-served`'s
    // reconcile means whatever was queued has started.
    let witness = Cluster::new("witness", env.client(2));
    let seen = witness.cache().informer::<ConfigMap>();
    wait_until("after-removal seen by another watch of c2", || {
        seen.store().get(Some("default"), "after-removal").is_some()
    })
    .await;
    witness.stop();
    create_cm(env.client(1), "still-served", &[]).await;
    recorder.wait_for("c1", "still-served", 1).await;
    let queue = controller.queue();
    wait_until("the queue empty", || {
        queue.is_empty() && queue.processing_len() == 0
    })
    .await;
    assert_eq!(
        started_after_removal.load(Ordering::SeqCst),
        0,
        "no reconcile of c2 started after removal"
    );
    assert_eq!(recorder.count("c2", "after-removal"), 0);
    assert!(!controller.cluster_names().iter().any(|n| n == "c2"));
}

#[tokio::test]
async fn s06_same_name_with_new_cluster_switches_watches_same_instance_is_a_no_op() {
    let env = Env::with_spare(1, 1).await;
    create_cm(env.client(1), "on-old-server", &[]).await;
    create_cm(env.client(2), "on-new-server", &[]).await;
    let (controller, recorder) = recording(Controller::builder(&env.manager)).await;
    let engagements = support::EngagementLog::new();
    env.manager.add_aware(engagements.clone()).await.expect("add log");
    env.start();
    recorder.wait_for("c1", "on-old-server", 1).await;

    // Rotated credentials pointing at another server, under the same name.
    let replacement = Arc::new(Cluster::new("c1", env.client(2)));
    env.provider.replace(replacement.clone()).await.expect("replace");
    recorder.wait_for("c1", "on-new-server", 1).await;
    create_cm(env.client(1), "old-after-switch", &[]).await;
    create_cm(env.client(2), "new-after-switch", &[]).await;
    recorder.wait_for("c1", "new-after-switch", 1).await;
    assert_eq!(
        recorder.count("c1", "old-after-switch"),
        0,
        "the old server is no longer watched"
    );

    wait_idle(&controller, &["c1"]).await;
    let (before, engaged) = (recorder.requests().len(), engagements.count("c1"));
    env.provider.replace(replacement).await.expect("same instance");
    // `replace` returns once the cluster has reached every component: an engagement
    // would be counted by now.
    assert_eq!(
        engagements.count("c1"),
        engaged,
        "the same instance again is not engaged again"
    );
    // Barrier: one more object; its reconcile is the only new one.
    create_cm(env.client(2), "after-no-op", &[]).await;
    recorder.wait_for("c1", "after-no-op", 1).await;
    wait_idle(&controller, &["c1"]).await;
    assert_eq!(
        recorder.requests().len(),
        before + 1,
        "the same instance again changes nothing"
    );
    assert_eq!(controller.cluster_names(), vec![ClusterName::from("c1")]);
}

#[tokio::test]
async fn s07_controller_added_after_clusters_engaged_gets_them_all() {
    let env = Env::new(2).await;
    create_cm(env.client(1), "one", &[]).await;
    create_cm(env.client(2), "two", &[]).await;
    env.start();
    wait_until("local, c1 and c2 engaged", || {
        env.manager.engaged_clusters().len() >= 3
    })
    .await;
    let (controller, recorder) = recording(Controller::builder(&env.manager)).await;
    recorder.wait_for("c1", "one", 1).await;
    recorder.wait_for("c2", "two", 1).await;
    let mut names = controller.cluster_names();
    names.sort();
    assert_eq!(names, vec![ClusterName::from("c1"), ClusterName::from("c2")]);
}

fn data_index(name: &str, key: &'static str) -> FieldIndex {
    FieldIndex::new::<ConfigMap>(name, move |cm: &ConfigMap| {
        cm.data
            .as_ref()
            .and_then(|d| d.get(key))
            .cloned()
            .into_iter()
            .collect()
    })
}

fn names(objects: &[Arc<ConfigMap>]) -> Vec<String> {
    let mut names: Vec<String> = objects.iter().map(|o| o.name_any()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn s08_indexes_apply_to_clusters_engaged_before_and_after() {
    let fleet = Fleet::start(3).await.expect("start fleet");
    let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
    let provider = Arc::new(Clusters::new());
    let manager = Manager::with_provider(local, provider.clone());
    manager
        .index_field(data_index("owner", "owner"))
        .await
        .expect("index before any cluster");
    for (index, names) in [(1, ["a1", "a2"]), (2, ["b1", "b2"])] {
        let client = fleet.cluster(index).client().expect("client");
        create_cm(client.clone(), names[0], &[("owner", "alice"), ("team", "red")]).await;
        create_cm(client, names[1], &[("owner", "bob"), ("team", "blue")]).await;
    }
    let c1 = Arc::new(Cluster::new("c1", fleet.cluster(1).client().expect("client")));
    provider.add(c1.clone()).await.expect("add");
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });
    let c2 = Arc::new(Cluster::new("c2", fleet.cluster(2).client().expect("client")));
    provider.add(c2.clone()).await.expect("add later");

    let alice_c1 = c1
        .cache()
        .list_by_index::<ConfigMap>("owner", "alice")
        .await
        .expect("index in c1");
    assert_eq!(names(&alice_c1), vec!["a1"], "only c1's objects");
    let alice_c2 = c2
        .cache()
        .list_by_index::<ConfigMap>("owner", "alice")
        .await
        .expect("index in c2");
    assert_eq!(names(&alice_c2), vec!["b1"], "only c2's objects");

    manager
        .index_field(data_index("team", "team"))
        .await
        .expect("index after clusters exist");
    let blue = c1
        .cache()
        .list_by_index::<ConfigMap>("team", "blue")
        .await
        .expect("late index in c1");
    assert_eq!(names(&blue), vec!["a2"]);
    let red = c2
        .cache()
        .list_by_index::<ConfigMap>("team", "red")
        .await
        .expect("late index in c2");
    assert_eq!(names(&red), vec!["b1"]);
    assert!(
        manager.index_field(data_index("team", "team")).await.is_err(),
        "the same index twice is refused"
    );
    token.cancel();
    run.await.expect("join").expect("manager stops cleanly");
}

#[tokio::test]
async fn s09_engage_options_local_only_provider_only_and_filter() {
    let env = Env::new(2).await;
    create_cm(env.client(0), "local-object", &[]).await;
    create_cm(env.client(1), "object-1", &[]).await;
    create_cm(env.client(2), "object-2", &[]).await;
    let (local_controller, local_only) = recording(
        Controller::builder(&env.manager)
            .named("local")
            .engage_local(true)
            .engage_providers(false),
    )
    .await;
    let (providers_controller, providers) =
        recording(Controller::builder(&env.manager).named("providers")).await;
    let (filtered_controller, filtered) = recording(
        Controller::builder(&env.manager)
            .named("filtered")
            .cluster_filter(|name| name == "c2"),
    )
    .await;
    // Added last: the manager offers a cluster to its components one after the
    // other, in the order they were added, so once the log has a cluster, every
    // controller has taken or declined it.
    let engagements = support::EngagementLog::new();
    env.manager.add_aware(engagements.clone()).await.expect("add log");
    env.start();
    local_only.wait_for("", "local-object", 1).await;
    providers.wait_for("c1", "object-1", 1).await;
    providers.wait_for("c2", "object-2", 1).await;
    filtered.wait_for("c2", "object-2", 1).await;
    for name in ["", "c1", "c2"] {
        engagements.wait_count(name, 1).await;
    }
    let sorted = |controller: &Controller| {
        let mut names: Vec<String> = controller
            .cluster_names()
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(sorted(&local_controller), [""]);
    assert_eq!(sorted(&providers_controller), ["c1", "c2"]);
    assert_eq!(sorted(&filtered_controller), ["c2"]);
    assert!(
        local_only.requests().iter().all(|r| r.cluster.is_local()),
        "{:?}",
        local_only.requests()
    );
    assert_eq!(providers.count_cluster(""), 0);
    assert!(
        filtered.requests().iter().all(|r| r.cluster == "c2"),
        "{:?}",
        filtered.requests()
    );
}

async fn owned_secret(client: Client, name: &str, owner: &ConfigMap) {
    let api: Api<Secret> = Api::namespaced(client, "default");
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.owner_references = Some(vec![controlled_by(owner)]);
    api.create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
}

#[tokio::test]
async fn s10_owned_child_enqueues_its_owner_in_its_own_cluster() {
    let env = Env::new(2).await;
    create_cm(env.client(1), "parent", &[]).await;
    let parent_b = create_cm(env.client(2), "parent", &[]).await;
    owned_secret(env.client(2), "child", &parent_b).await;
    let (controller, recorder) = recording(Controller::builder(&env.manager).owns::<Secret>()).await;
    env.start();
    recorder.wait_for("c1", "parent", 1).await;
    recorder.wait_for("c2", "parent", 1).await;
    // The initial lists of both watches reconciled to their end.
    wait_idle(&controller, &["c1", "c2"]).await;
    let (before_a, before_b) = (recorder.count("c1", "parent"), recorder.count("c2", "parent"));

    let secrets: Api<Secret> = Api::namespaced(env.client(2), "default");
    let patch = serde_json::json!({ "metadata": { "labels": { "touched": "yes" } } });
    secrets
        .patch("child", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch child");
    recorder.wait_for("c2", "parent", before_b + 1).await;
    // Barrier: the one event of the child queues whatever it maps to at once, so
    // with both queues idle, each request it made has been reconciled.
    wait_idle(&controller, &["c1", "c2"]).await;
    assert_eq!(
        recorder.count("c1", "parent"),
        before_a,
        "the owner in the other cluster is not enqueued"
    );
    assert_eq!(
        recorder.count("c2", "child"),
        0,
        "the child itself is not a request"
    );
}

#[tokio::test]
async fn s11_local_object_fans_out_to_provider_clusters() {
    let env = Env::with_spare(2, 1).await;
    let builder = Controller::builder::<ConfigMap>(&env.manager).watches_local(|context, cm: &ConfigMap| {
        if cm.name_any() != "template" {
            return Vec::new();
        }
        context
            .clusters
            .iter()
            .map(|cluster| Request::new(cluster.clone(), Some("default"), "copy"))
            .collect()
    });
    let (_, recorder) = recording(builder).await;
    create_cm(env.client(0), "template", &[]).await;
    env.start();
    recorder.wait_for("c1", "copy", 1).await;
    recorder.wait_for("c2", "copy", 1).await;
    env.add(3).await;
    recorder.wait_for("c3", "copy", 1).await;
    assert_eq!(
        recorder.count_cluster(""),
        0,
        "the local cluster itself is not reconciled"
    );
}

#[tokio::test]
async fn s12_one_item_of_a_quiet_cluster_is_not_starved_by_a_busy_one() {
    const BUSY: usize = 20_000;
    let env = Env::new(2).await;
    let concurrency = 4;
    let (requests, incoming) = futures::channel::mpsc::unbounded::<Request>();
    let (controller, recorder) = with_reconciler(
        Controller::builder::<ConfigMap>(&env.manager)
            .concurrency(concurrency)
            .reconcile_on(incoming),
        |req: ReconcileRequest<ConfigMap>, recorder: Arc<Recorder>| {
            recorder.record(&req.request, false);
            async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, Infallible>(Action::await_change())
            }
        },
    )
    .await;
    env.start();
    wait_engaged(&controller, &["c1", "c2"]).await;
    for i in 0..BUSY {
        let request = Request::new("c1", Some("default"), format!("a-{i}"));
        requests.unbounded_send(request).expect("controller runs");
    }
    // Every busy item is queued, running or done before the quiet one is sent.
    let queue = controller.queue();
    let busy = |name: &str| name.starts_with("a-");
    let accounted = || {
        let done = recorder.requests().iter().filter(|r| busy(r.name())).count();
        queue.depth(&"c1".into()) + queue.processing_len_of(&"c1".into()) + done >= BUSY
    };
    let started = Instant::now();
    while !accounted() {
        assert!(started.elapsed() < WAIT, "busy items not queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started_before = recorder.count_cluster("c1");
    requests
        .unbounded_send(Request::new("c2", Some("default"), "b"))
        .expect("controller runs");
    recorder.wait_for("c2", "b", 1).await;
    let requests = recorder.requests();
    let position = requests
        .iter()
        .position(|r| r.cluster == "c2" && r.name() == "b")
        .expect("b was reconciled");
    let busy_before_quiet =
        requests[..position].iter().filter(|r| r.cluster == "c1").count() - started_before;
    assert!(
        busy_before_quiet <= 2 * concurrency,
        "{busy_before_quiet} items of the busy cluster started before the quiet cluster's one"
    );
}

#[tokio::test]
async fn s14_errors_back_off_exponentially_and_requested_requeues_are_honoured() {
    let env = Env::new(1).await;
    create_cm(env.client(1), "flaky", &[]).await;
    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let _controller = Controller::builder::<ConfigMap>(&env.manager)
        .backoff(Duration::from_millis(100), Duration::from_secs(10))
        .register(
            |req: ReconcileRequest<ConfigMap>, attempts: Arc<Mutex<Vec<Instant>>>| {
                // The apiserver's own ConfigMaps are reconciled too; only ours counts.
                let ours = req.request.name() == "flaky";
                let attempt = if !ours {
                    0
                } else {
                    let mut attempts = attempts.lock().unwrap();
                    attempts.push(Instant::now());
                    attempts.len()
                };
                async move {
                    match attempt {
                        0 => Ok(Action::await_change()),
                        1..=4 => Err(std::io::Error::other(format!("attempt {attempt} fails"))),
                        5 => Ok(Action::requeue(Duration::from_millis(600))),
                        _ => Ok(Action::await_change()),
                    }
                }
            },
            |_req: &Request, _err: &std::io::Error, _ctx| Action::backoff(),
            attempts.clone(),
        )
        .await
        .expect("controller");
    env.start();
    wait_until("six attempts", || attempts.lock().unwrap().len() >= 6).await;
    let times = attempts.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, expected) in gaps.iter().zip([100, 200, 400, 800]) {
        assert!(
            *gap >= Duration::from_millis(expected),
            "backoff gaps grow: {gaps:?}"
        );
    }
    assert!(
        gaps[4] >= Duration::from_millis(600),
        "the requested requeue is honoured: {gaps:?}"
    );
    assert!(
        gaps[4] < Duration::from_millis(1600),
        "success reset the backoff: {gaps:?}"
    );
}

#[tokio::test]
async fn s15_unreachable_cluster_does_not_delay_others_and_recovers() {
    let env = Env::with_spare(1, 1).await;
    create_cm(env.client(1), "healthy", &[]).await;
    create_cm(env.client(2), "unreachable", &[]).await;
    env.fleet.cluster(2).stop().await;
    let (_controller, recorder) =
        recording(Controller::builder(&env.manager).sync_timeout(Duration::from_secs(2))).await;
    env.start();
    let c2 = env.add(2).await;
    recorder.wait_for("c1", "healthy", 1).await;
    assert_eq!(recorder.count_cluster("c2"), 0, "c1 was served while c2 is down");

    let err = c2
        .cache()
        .informer::<ConfigMap>()
        .wait_synced(Duration::from_secs(1))
        .await
        .expect_err("c2 is down");
    let message = err.to_string();
    assert!(
        message.contains("c2") && message.contains("ConfigMap"),
        "a clear error: {message}"
    );

    env.fleet.cluster(2).start().await.expect("restart c2");
    recorder.wait_for("c2", "unreachable", 1).await;
}

#[tokio::test]
async fn s16_panicking_reconciler_is_retried_with_backoff_while_others_go_on() {
    let env = Env::new(1).await;
    for name in ["boom", "fine-1", "fine-2"] {
        create_cm(env.client(1), name, &[]).await;
    }
    let (controller, recorder) = with_reconciler(
        Controller::builder::<ConfigMap>(&env.manager)
            .backoff(Duration::from_millis(50), Duration::from_secs(5)),
        |req: ReconcileRequest<ConfigMap>, recorder: Arc<Recorder>| {
            recorder.record(&req.request, true);
            let attempts = recorder.count("c1", "boom");
            let panics = req.request.name() == "boom" && attempts <= 2;
            async move {
                if panics {
                    panic!("reconciler bug, attempt {attempts}");
                }
                Ok::<_, Infallible>(Action::await_change())
            }
        },
    )
    .await;
    env.start();
    recorder.wait_for("c1", "fine-1", 1).await;
    recorder.wait_for("c1", "fine-2", 1).await;
    recorder.wait_for("c1", "boom", 3).await;
    // A retry is queued (delayed) before the attempt's lease is released, so the
    // queue is idle only once no retry is due.
    wait_idle(&controller, &["c1"]).await;
    assert_eq!(
        recorder.count("c1", "boom"),
        3,
        "retried after each panic, then done"
    );
}

#[tokio::test]
async fn a02_reconcile_on_requests_reach_the_reconciler_and_unknown_clusters_end_quietly() {
    let env = Env::new(2).await;
    create_cm(env.client(2), "a02-existing", &[]).await;
    let (requests, incoming) = futures::channel::mpsc::unbounded::<Request>();
    let (controller, recorder) = recording(
        Controller::builder::<ConfigMap>(&env.manager)
            .named("a02-on")
            .reconcile_on(incoming),
    )
    .await;
    env.start();
    wait_engaged(&controller, &["c1", "c2"]).await;
    let unknown = Request::new("nowhere", Some("default"), "a02-ghost");
    let local = Request::new("", Some("default"), "a02-local");
    for request in [
        unknown.clone(),
        local.clone(),
        Request::new("c1", Some("default"), "a02-absent"),
        Request::new("c2", Some("default"), "a02-existing"),
    ] {
        requests.unbounded_send(request).expect("controller runs");
    }
    // The stream is read in order: once the last two are reconciled, the first two
    // have been queued.
    recorder.wait_for("c1", "a02-absent", 1).await;
    recorder.wait_for("c2", "a02-existing", 1).await;
    let seen = recorder.seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(Request::new("c1", Some("default"), "a02-absent"), false)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(Request::new("c2", Some("default"), "a02-existing"), true)),
        "{seen:?}"
    );
    // The requests of clusters the controller does not work on leave the queue
    // without a reconcile and without a retry.
    let queue = controller.queue();
    wait_until("the requests of nowhere and the local cluster gone", || {
        [&unknown.cluster, &local.cluster]
            .into_iter()
            .all(|cluster| queue.depth(cluster) + queue.processing_len_of(cluster) == 0)
    })
    .await;
    assert_eq!(recorder.count_cluster("nowhere"), 0);
    assert_eq!(recorder.count_cluster(""), 0, "the local cluster is not engaged");
    assert_eq!(queue.num_requeues(&unknown.cluster, &unknown.key), 0);
    // The controller still serves its clusters afterwards.
    requests
        .unbounded_send(Request::new("c1", Some("default"), "a02-after"))
        .expect("controller runs");
    recorder.wait_for("c1", "a02-after", 1).await;
}

#[tokio::test]
async fn a02_reconcile_all_on_reconciles_every_cached_object_of_every_engaged_cluster() {
    let env = Env::with_spare(2, 1).await;
    for index in 1..=3 {
        create_cm(env.client(index), "a02-all", &[]).await;
    }
    let (reload, reloads) = futures::channel::mpsc::unbounded::<()>();
    let (controller, recorder) = recording(
        Controller::builder::<ConfigMap>(&env.manager)
            .named("a02-all")
            .reconcile_all_on(reloads),
    )
    .await;
    env.start();
    recorder.wait_for("c1", "a02-all", 1).await;
    recorder.wait_for("c2", "a02-all", 1).await;
    let before = recorder.requests().len();
    reload.unbounded_send(()).expect("controller runs");
    recorder.wait_for("c1", "a02-all", 2).await;
    recorder.wait_for("c2", "a02-all", 2).await;
    // Everything cached, including the apiserver's own ConfigMaps, came round again.
    let mut cached = 0;
    for name in ["c1", "c2"] {
        let cluster = env
            .manager
            .get_cluster(&ClusterName::from(name))
            .await
            .expect("engaged");
        cached += cluster.cache().informer::<ConfigMap>().store().list().len();
    }
    recorder
        .wait("every cached object once more", |seen| {
            seen.len() >= before + cached
        })
        .await;
    // A cluster added later is engaged and reconciles its objects; the trigger
    // reaches it too.
    env.add(3).await;
    recorder.wait_for("c3", "a02-all", 1).await;
    wait_engaged(&controller, &["c1", "c2", "c3"]).await;
    reload.unbounded_send(()).expect("controller runs");
    recorder.wait_for("c3", "a02-all", 2).await;
    recorder.wait_for("c1", "a02-all", 3).await;
}

/// What a fan-out reconciler found when it read the hub's copy of a Secret.
struct HubReads {
    hub: Arc<Cluster>,
    /// Reconciles that found the hub's Secret.
    found: Mutex<Vec<Request>>,
    /// Reconciles that did not: a copier would have deleted the copy.
    missing: AtomicUsize,
}

const R09_SECRETS: [&str; 3] = ["r09-tls", "r09-token", "r09-registry"];

/// A copier of hub Secrets: the copy `req` stays only if the hub still has its
/// Secret, which it reads from the hub's cache as it would any cached object.
async fn copy_from_hub(req: ReconcileRequest<Secret>, reads: Arc<HubReads>) -> Result<Action, Infallible> {
    if req.namespace() == Some("default") && R09_SECRETS.contains(&req.name()) {
        let hub = reads.hub.cache().informer::<Secret>();
        match hub.store().get(req.namespace(), req.name()) {
            Some(_) => reads.found.lock().unwrap().push(req.request.clone()),
            None => {
                reads.missing.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    Ok(Action::await_change())
}

async fn plain_secret(client: Client, name: &str) {
    let api: Api<Secret> = Api::namespaced(client, "default");
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.to_owned());
    api.create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
}

#[tokio::test]
async fn r09_fan_out_reconciles_wait_for_the_hub_cache_they_read() {
    let env = Env::new(2).await;
    // As after a restart: the hub's Secrets and every member's copies exist.
    for name in R09_SECRETS {
        for index in 0..=2 {
            plain_secret(env.client(index), name).await;
        }
    }
    // The hub's Secret informer cannot finish a list until the gate opens: its
    // transform panics, and the informer retries with backoff.
    let gate = Arc::new(AtomicBool::new(false));
    let hub = env.manager.local_cluster().clone();
    let open = gate.clone();
    hub.cache()
        .set_transform::<Secret>(move |_| assert!(open.load(Ordering::SeqCst), "r09: hub cache held back"));
    let reads = Arc::new(HubReads {
        hub: hub.clone(),
        found: Mutex::default(),
        missing: AtomicUsize::new(0),
    });
    let controller = Controller::builder::<Secret>(&env.manager)
        .named("r09-copier")
        .watches_local(|context, secret: &Secret| {
            let (namespace, name) = (secret.namespace(), secret.name_any());
            let clusters = context.clusters.iter();
            clusters
                .map(|cluster| Request::new(cluster.clone(), namespace.as_deref(), name.clone()))
                .collect()
        })
        .register(copy_from_hub, |_, _, _| Action::backoff(), reads.clone())
        .await
        .expect("controller");
    env.start();
    let mut members = Vec::new();
    for name in ["c1", "c2"] {
        members.push(env.provider.get(&name.into()).await.expect("member"));
    }
    // Barrier: a copy was reconciled already, or each member has listed its copies,
    // queued them, and is still held.
    let queue = controller.queue();
    let reconciled = || reads.missing.load(Ordering::SeqCst) + reads.found.lock().unwrap().len();
    wait_until("a reconcile, or every member's copies held", || {
        reconciled() > 0
            || members.iter().all(|member| {
                member.cache().informer::<Secret>().is_synced()
                    && queue.depth(member.name()) >= R09_SECRETS.len()
                    && queue.pause_reasons(member.name()).contains(PauseReason::Syncing)
            })
    })
    .await;
    gate.store(true, Ordering::SeqCst);
    wait_until("every copy reconciled with its hub Secret", || {
        let found = reads.found.lock().unwrap();
        members.iter().all(|member| {
            R09_SECRETS.iter().all(|name| {
                found
                    .iter()
                    .any(|r| r.cluster == *member.name() && r.name() == *name)
            })
        })
    })
    .await;
    assert_eq!(
        reads.missing.load(Ordering::SeqCst),
        0,
        "a copy was reconciled before the hub's cache had listed: a copier would have deleted it"
    );
}

/// v02: the first list of a cluster is a backlog all ready at once; it is served by
/// a few workers, each going from one item to the next in its slot, not by a task
/// spawned (and a consumer woken) per reconcile, which cost ≈ 6 µs per object on
/// the first list of a large fleet.
#[tokio::test]
async fn v02_a_listed_backlog_is_served_by_a_few_workers_not_a_task_per_item() {
    const OBJECTS: usize = 300;
    let concurrency = 4;
    let env = Env::new(1).await;
    let client = env.client(1);
    for chunk in (0..OBJECTS).collect::<Vec<_>>().chunks(25) {
        let names: Vec<String> = chunk.iter().map(|i| format!("v02-{i}")).collect();
        let creates = names.iter().map(|name| create_cm(client.clone(), name, &[]));
        futures::future::join_all(creates).await;
    }
    let workers = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let seen_by = workers.clone();
    let (controller, recorder) = with_reconciler(
        Controller::builder::<ConfigMap>(&env.manager).concurrency(concurrency),
        move |req: ReconcileRequest<ConfigMap>, recorder: Arc<Recorder>| {
            recorder.record(&req.request, req.object.is_some());
            let seen_by = seen_by.clone();
            async move {
                seen_by.lock().unwrap().insert(tokio::task::id());
                Ok::<_, Infallible>(Action::await_change())
            }
        },
    )
    .await;
    env.start();
    recorder
        .wait(&format!("{OBJECTS} objects reconciled"), |seen| {
            seen.iter().filter(|(r, _)| r.name().starts_with("v02-")).count() >= OBJECTS
        })
        .await;
    wait_idle(&controller, &["c1"]).await;
    let reconciles = recorder.count_cluster("c1");
    let tasks = workers.lock().unwrap().len();
    assert!(
        tasks <= 4 * concurrency,
        "{reconciles} reconciles ran in {tasks} tasks; a backlog should take a few workers"
    );
}

/// v02: a worker that goes from item to item yields to the rest of the runtime as a
/// task per item did: on this single-threaded runtime, a task that counts while the
/// backlog drains gets turns in between, however quick the reconciles are.
#[tokio::test]
async fn v02_a_worker_draining_a_backlog_lets_other_tasks_run() {
    const OBJECTS: usize = 400;
    let env = Env::new(1).await;
    let client = env.client(1);
    for chunk in (0..OBJECTS).collect::<Vec<_>>().chunks(25) {
        let names: Vec<String> = chunk.iter().map(|i| format!("v02-yield-{i}")).collect();
        let creates = names.iter().map(|name| create_cm(client.clone(), name, &[]));
        futures::future::join_all(creates).await;
    }
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticking = ticks.clone();
    // Counts each time it is polled and wakes itself at once (not deferred, as
    // `yield_now` is until the runtime parks): it runs whenever the thread is free.
    let ticker = tokio::spawn(std::future::poll_fn(move |cx| {
        ticking.fetch_add(1, Ordering::Relaxed);
        cx.waker().wake_by_ref();
        std::task::Poll::<()>::Pending
    }));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by = seen.clone();
    let (controller, recorder) = with_reconciler(
        // One slot, so one worker: its runs are not interleaved with another's.
        Controller::builder::<ConfigMap>(&env.manager).concurrency(1),
        move |req: ReconcileRequest<ConfigMap>, recorder: Arc<Recorder>| {
            recorder.record(&req.request, req.object.is_some());
            seen_by.lock().unwrap().push(ticks.load(Ordering::Relaxed));
            async { Ok::<_, Infallible>(Action::await_change()) }
        },
    )
    .await;
    env.start();
    recorder
        .wait(&format!("{OBJECTS} objects reconciled"), |seen| {
            seen.iter()
                .filter(|(r, _)| r.name().starts_with("v02-yield-"))
                .count()
                >= OBJECTS
        })
        .await;
    wait_idle(&controller, &["c1"]).await;
    ticker.abort();
    // The longest run of reconciles during which the ticking task never ran.
    let seen = seen.lock().unwrap().clone();
    let longest = seen
        .chunk_by(|a, b| a == b)
        .map(<[usize]>::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest <= 200,
        "{longest} of {} reconciles ran without a turn for another task",
        seen.len()
    );
}
