//! The shared informer cache against real kube-apiservers (envtest): sharing, lists,
//! events, indexes, metadata-only and dynamic informers, transforms, cancellation, and
//! recovery from an apiserver outage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_envtest::Fleet;
use multicluster_runtime::ClusterName;
use multicluster_runtime::cache::{Cache, CacheError, CacheOptions, FieldIndex, InformerEvent, WatchSpec};
use support::objects::create_namespace;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

mod support;

const SYNC: Duration = Duration::from_secs(30);

async fn create_config_map(client: &Client, namespace: &str, name: &str, app: Option<&str>) -> ConfigMap {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.metadata.labels = app.map(|app| BTreeMap::from([("app".to_owned(), app.to_owned())]));
    cm.data = Some(BTreeMap::from([("k".to_owned(), "v1".to_owned())]));
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create configmap")
}

fn app_label(cm: &ConfigMap) -> Vec<String> {
    cm.labels().get("app").cloned().into_iter().collect()
}

/// `namespace/name` of each object, sorted.
fn keys<K: ResourceExt>(objects: &[Arc<K>]) -> Vec<String> {
    let mut keys: Vec<String> = objects
        .iter()
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    keys.sort();
    keys
}

/// The next event about the object `name`, skipping others (e.g. of the first list).
async fn next_event_about<K: ResourceExt + Clone>(
    events: &mut broadcast::Receiver<InformerEvent<K>>,
    name: &str,
) -> InformerEvent<K> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(event) if event.object().name_any() == name => return event,
                Ok(_) => {}
                Err(error) => panic!("event stream failed while waiting for {name}: {error}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no event about {name} within 20s"))
}

#[tokio::test]
async fn informers_are_shared_list_stream_index_and_stop_with_the_token() {
    let fleet = Fleet::start(1).await.expect("start fleet");
    let client = fleet.cluster(0).client().expect("client");
    create_namespace(&client, "shop").await;
    create_namespace(&client, "blog").await;
    create_config_map(&client, "shop", "web-config", Some("web")).await;
    create_config_map(&client, "shop", "db-config", Some("db")).await;
    create_config_map(&client, "blog", "web-config", Some("web")).await;

    let token = CancellationToken::new();
    let cluster = ClusterName::from(fleet.cluster(0).name());
    let cache = Cache::new(
        cluster.clone(),
        client.clone(),
        CacheOptions::default(),
        token.clone(),
    );

    // An index registered before the informer exists is built as it fills.
    cache
        .index_field::<ConfigMap>("app", app_label)
        .expect("register index");

    // One watch, however many ask.
    let informer = cache.informer::<ConfigMap>();
    let mut events = informer.subscribe();
    assert!(Arc::ptr_eq(&informer, &cache.informer::<ConfigMap>()));
    let empty_selectors = WatchSpec::default().labels("").fields("");
    assert!(Arc::ptr_eq(
        &informer,
        &cache.informer_with::<ConfigMap>(&(), empty_selectors)
    ));
    assert_eq!(cache.watch_count(), 1);
    assert_eq!(informer.resource(), "ConfigMap (v1)");

    // Objects that existed before the informer are there after sync.
    informer.wait_synced(SYNC).await.expect("sync");
    assert!(informer.is_synced());
    let ours: Vec<_> = cache
        .list::<ConfigMap>(None)
        .await
        .expect("list")
        .into_iter()
        .filter(|cm| cm.namespace().is_some_and(|ns| ns == "shop" || ns == "blog"))
        .collect();
    assert_eq!(
        keys(&ours),
        ["blog/web-config", "shop/db-config", "shop/web-config"]
    );
    assert_eq!(
        keys(&cache.list::<ConfigMap>(Some("shop")).await.unwrap()),
        ["shop/db-config", "shop/web-config"]
    );
    let shop_web = cache
        .get::<ConfigMap>(Some("shop"), "web-config")
        .await
        .unwrap()
        .expect("shop/web-config");
    assert_eq!(shop_web.data.as_ref().unwrap()["k"], "v1");
    assert!(
        cache
            .get::<ConfigMap>(Some("shop"), "missing")
            .await
            .unwrap()
            .is_none()
    );
    // The first list was announced to the early subscriber.
    match next_event_about(&mut events, "db-config").await {
        InformerEvent::Applied { old: None, new } => assert_eq!(new.namespace().as_deref(), Some("shop")),
        other => panic!("expected the listed db-config, got {other:?}"),
    }
    // managedFields are dropped by default (the apiserver sets them on create).
    assert!(ours.iter().all(|cm| cm.metadata.managed_fields.is_none()));

    // Indexes: registered before, after, type-erased, duplicate, unknown.
    let web = cache.list_by_index::<ConfigMap>("app", "web").await.unwrap();
    assert_eq!(keys(&web), ["blog/web-config", "shop/web-config"]);
    cache
        .index_field::<ConfigMap>("namespace", |cm| cm.namespace().into_iter().collect())
        .expect("index after start");
    assert_eq!(
        keys(&informer.store().by_index("namespace", "blog").unwrap()),
        ["blog/web-config"]
    );
    let data_keys = FieldIndex::new::<ConfigMap>("data-key", |cm| {
        cm.data.iter().flatten().map(|(key, _)| key.clone()).collect()
    });
    data_keys.apply(&cache).expect("type-erased index");
    assert_eq!(
        keys(&informer.store().by_index("data-key", "k").unwrap()),
        ["blog/web-config", "shop/db-config", "shop/web-config"]
    );
    let duplicate = data_keys.apply(&cache).unwrap_err();
    assert!(matches!(duplicate, CacheError::IndexExists { .. }), "{duplicate}");
    assert!(
        duplicate.to_string().contains(cluster.as_str()) && duplicate.to_string().contains("ConfigMap (v1)")
    );
    let unknown = cache.list_by_index::<ConfigMap>("owner", "x").await.unwrap_err();
    assert!(matches!(unknown, CacheError::UnknownIndex { .. }), "{unknown}");

    // Create, update, delete: events with the previous version.
    let created = create_config_map(&client, "blog", "temp", None).await;
    match next_event_about(&mut events, "temp").await {
        InformerEvent::Applied { old: None, new } => {
            assert_eq!(new.resource_version(), created.resource_version())
        }
        other => panic!("expected the creation, got {other:?}"),
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "blog");
    let patch = serde_json::json!({ "data": { "k": "v2" } });
    api.patch("temp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("update");
    match next_event_about(&mut events, "temp").await {
        InformerEvent::Applied { old: Some(old), new } => {
            assert_eq!(old.data.as_ref().unwrap()["k"], "v1");
            assert_eq!(new.data.as_ref().unwrap()["k"], "v2");
        }
        other => panic!("expected the update with the old version, got {other:?}"),
    }
    api.delete("temp", &DeleteParams::default())
        .await
        .expect("delete");
    match next_event_about(&mut events, "temp").await {
        InformerEvent::Deleted(gone) => assert_eq!(gone.namespace().as_deref(), Some("blog")),
        other => panic!("expected the deletion, got {other:?}"),
    }
    assert!(informer.store().get(Some("blog"), "temp").is_none());

    // Metadata only: a separate watch of the same type.
    let metadata = cache.metadata_informer::<ConfigMap>();
    metadata.wait_synced(SYNC).await.expect("metadata sync");
    assert_eq!(cache.watch_count(), 2);
    assert_eq!(metadata.resource(), "ConfigMap (v1, metadata only)");
    let partial = metadata
        .store()
        .get(Some("shop"), "web-config")
        .expect("metadata of shop/web-config");
    assert_eq!(partial.labels().get("app").map(String::as_str), Some("web"));
    assert!(partial.metadata.managed_fields.is_none());

    // Dynamic objects, with an index of their own.
    let resource = ApiResource::erase::<ConfigMap>(&());
    let dynamic = cache.informer_with::<DynamicObject>(&resource, WatchSpec::default());
    assert_eq!(cache.watch_count(), 3);
    cache
        .index_field_with::<DynamicObject>(&resource, "app", |o| {
            o.labels().get("app").cloned().into_iter().collect()
        })
        .expect("dynamic index");
    dynamic.wait_synced(SYNC).await.expect("dynamic sync");
    let object = dynamic
        .store()
        .get(Some("blog"), "web-config")
        .expect("dynamic blog/web-config");
    assert_eq!(object.data["data"]["k"], "v1");
    assert_eq!(
        keys(&dynamic.store().by_index("app", "db").unwrap()),
        ["shop/db-config"]
    );

    // A label selector is a separate watch; the type's indexes apply to it too.
    let web_only = cache.informer_with::<ConfigMap>(&(), WatchSpec::default().labels("app=web"));
    web_only.wait_synced(SYNC).await.expect("selector sync");
    assert_eq!(cache.watch_count(), 4);
    assert_eq!(
        keys(&web_only.store().list()),
        ["blog/web-config", "shop/web-config"]
    );
    assert_eq!(web_only.store().by_index("namespace", "shop").unwrap().len(), 1);

    // A transform, on a cluster-scoped type.
    cache.set_transform::<Namespace>(|namespace| {
        namespace
            .labels_mut()
            .insert("seen-by".to_owned(), "cache".to_owned());
        namespace.status = None;
    });
    let shop = cache
        .get::<Namespace>(None, "shop")
        .await
        .unwrap()
        .expect("namespace shop");
    assert_eq!(shop.labels().get("seen-by").map(String::as_str), Some("cache"));
    assert!(shop.status.is_none());
    assert_eq!(cache.watch_count(), 5);

    // Keeping managedFields is a choice; another cache (own token) is independent.
    let other_token = CancellationToken::new();
    let keeping = Cache::new(
        cluster.clone(),
        client.clone(),
        CacheOptions::default().strip_managed_fields(false),
        other_token.clone(),
    );
    let kept = keeping
        .get::<ConfigMap>(Some("shop"), "web-config")
        .await
        .unwrap()
        .expect("shop/web-config");
    assert!(
        kept.metadata
            .managed_fields
            .as_ref()
            .is_some_and(|fields| !fields.is_empty())
    );
    assert_eq!(keeping.watch_count(), 1);

    // Cancelling the token stops every informer of the cache, and only of that cache.
    token.cancel();
    let all_stopped = async {
        informer.stopped().await;
        metadata.stopped().await;
        dynamic.stopped().await;
        web_only.stopped().await;
    };
    tokio::time::timeout(Duration::from_secs(5), all_stopped)
        .await
        .expect("informers stop");
    assert!(cache.is_stopped());
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("channel closes")
        {
            Err(RecvError::Closed) => break,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
        }
    }
    let error = cache
        .get::<ConfigMap>(Some("shop"), "web-config")
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::Stopped { .. }), "{error}");
    assert!(error.to_string().contains(cluster.as_str()), "{error}");
    // A type first requested after the stop never starts a watch.
    assert!(
        cache
            .informer::<k8s_openapi::api::core::v1::Secret>()
            .is_stopped()
    );
    assert_eq!(cache.watch_count(), 5);
    // The other cache still follows the cluster.
    let mut kept_events = keeping.informer::<ConfigMap>().subscribe();
    create_config_map(&client, "shop", "after-stop", None).await;
    assert!(matches!(
        next_event_about(&mut kept_events, "after-stop").await,
        InformerEvent::Applied { .. }
    ));
    assert!(informer.store().get(Some("shop"), "after-stop").is_none());
    other_token.cancel();
}

#[tokio::test]
async fn sync_timeout_names_cluster_and_type_then_recovers_while_other_clusters_carry_on() {
    let fleet = Fleet::start(2).await.expect("start fleet");
    let (down, up) = (fleet.cluster(0), fleet.cluster(1));
    let down_client = down.client().expect("client");
    let up_client = up.client().expect("client");
    create_config_map(&down_client, "default", "before-outage", None).await;

    // The apiserver goes away before the informer starts.
    down.stop().await;
    let token = CancellationToken::new();
    let options = CacheOptions::default().sync_timeout(Duration::from_secs(1));
    let down_cache = Cache::new(
        ClusterName::from("eu-1"),
        down_client.clone(),
        options.clone(),
        token.child_token(),
    );
    let up_cache = Cache::new(
        ClusterName::from("us-1"),
        up_client.clone(),
        options,
        token.child_token(),
    );

    let informer = down_cache.informer::<ConfigMap>();
    let error = informer.wait_synced(Duration::from_secs(2)).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, CacheError::SyncTimeout { .. }), "{message}");
    assert!(
        message.starts_with("cache of ConfigMap (v1) in cluster eu-1 not synced after 2s"),
        "{message}"
    );
    assert!(message.contains("; last watch error: "), "{message}");
    assert!(informer.last_error().is_some());
    eprintln!("sync timeout error: {message}");
    // The reading shortcuts wait for `sync_timeout` and fail the same way.
    let error = down_cache
        .get::<ConfigMap>(Some("default"), "before-outage")
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::SyncTimeout { .. }), "{error}");

    // Meanwhile, another cluster is unaffected.
    create_config_map(&up_client, "default", "during-outage", None).await;
    let healthy = up_cache.get::<ConfigMap>(Some("default"), "during-outage").await;
    assert!(healthy.expect("healthy cluster syncs").is_some());

    // The apiserver comes back: the same informer syncs without help.
    down.start().await.expect("restart apiserver");
    informer
        .wait_synced(Duration::from_secs(60))
        .await
        .expect("sync after recovery");
    assert!(informer.store().get(Some("default"), "before-outage").is_some());
    let mut events = informer.subscribe();
    create_config_map(&down_client, "default", "after-outage", None).await;
    assert!(matches!(
        next_event_about(&mut events, "after-outage").await,
        InformerEvent::Applied { old: None, .. }
    ));
    assert_eq!(down_cache.watch_count(), 1);
    token.cancel();
}

/// Whether `object` is labelled `poison=true`: what the l08 callbacks panic on.
fn is_poisoned<K: ResourceExt>(object: &K) -> bool {
    object.labels().get("poison").is_some_and(|value| value == "true")
}

async fn create_poisoned_config_map(client: &Client, namespace: &str, name: &str, app: &str) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.metadata.labels = Some(BTreeMap::from([
        ("app".to_owned(), app.to_owned()),
        ("poison".to_owned(), "true".to_owned()),
    ]));
    api.create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
}

async fn merge_patch(client: &Client, namespace: &str, name: &str, patch: serde_json::Value) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch configmap");
}

/// Waits until `condition` holds, polling, at most `timeout`.
async fn until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let wait = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {timeout:?}"));
}

/// One cache per cluster of `fleet`, each with the `app` index given.
fn caches_with_index(
    fleet: &Fleet,
    token: &CancellationToken,
    extractor: impl Fn(&ConfigMap) -> Vec<String> + Clone + Send + Sync + 'static,
) -> Vec<Cache> {
    fleet
        .clusters()
        .iter()
        .map(|cluster| {
            let cache = Cache::new(
                ClusterName::from(cluster.name()),
                cluster.client().expect("client"),
                CacheOptions::default(),
                token.child_token(),
            );
            cache
                .index_field::<ConfigMap>("app", extractor.clone())
                .expect("register index");
            cache
        })
        .collect()
}

#[tokio::test]
async fn l08_a_panicking_index_extractor_files_that_object_nowhere_and_stops_nothing() {
    let fleet = Fleet::start(2).await.expect("start fleet");
    let clients = [0, 1].map(|i| fleet.cluster(i).client().expect("client"));
    let [a, b] = &clients;
    create_config_map(a, "default", "healthy", Some("web")).await;
    create_poisoned_config_map(a, "default", "poisoned", "web").await;
    create_config_map(b, "default", "healthy", Some("web")).await;

    // The same extractor in both clusters; only A has an object it panics on.
    let token = CancellationToken::new();
    let caches = caches_with_index(&fleet, &token, |cm: &ConfigMap| {
        assert!(!is_poisoned(cm), "poisoned object");
        app_label(cm)
    });
    let [in_a, in_b] = [0, 1].map(|i| caches[i].informer::<ConfigMap>());
    for informer in [&in_a, &in_b] {
        informer.wait_synced(SYNC).await.expect("sync");
    }
    let web = |informer: &multicluster_runtime::cache::Informer<ConfigMap>, value: &str| {
        keys(&informer.store().by_index("app", value).expect("index"))
    };
    // Stored all the same, filed under no value of the index.
    assert!(in_a.store().get(Some("default"), "poisoned").is_some());
    assert_eq!(web(&in_a, "web"), ["default/healthy"]);

    // A's informer goes on: a healthy object moves in the index, the poisoned one
    // is updated in the store.
    merge_patch(
        a,
        "default",
        "healthy",
        serde_json::json!({ "metadata": { "labels": { "app": "db" } } }),
    )
    .await;
    merge_patch(
        a,
        "default",
        "poisoned",
        serde_json::json!({ "data": { "k": "v2" } }),
    )
    .await;
    until("A follows the healthy object", Duration::from_secs(20), || {
        web(&in_a, "db") == ["default/healthy"]
    })
    .await;
    until(
        "A stores the poisoned object's update",
        Duration::from_secs(20),
        || {
            in_a.store().get(Some("default"), "poisoned").is_some_and(|cm| {
                cm.data
                    .as_ref()
                    .is_some_and(|d| d.get("k").is_some_and(|v| v == "v2"))
            })
        },
    )
    .await;
    assert!(web(&in_a, "web").is_empty());

    // B is not affected.
    merge_patch(
        b,
        "default",
        "healthy",
        serde_json::json!({ "metadata": { "labels": { "app": "db" } } }),
    )
    .await;
    until("B follows its object", Duration::from_secs(20), || {
        web(&in_b, "db") == ["default/healthy"]
    })
    .await;

    // Fixed through the API: the fixed object is stored and filed.
    merge_patch(
        a,
        "default",
        "poisoned",
        serde_json::json!({ "metadata": { "labels": { "poison": null } } }),
    )
    .await;
    until("A files the fixed object", Duration::from_secs(20), || {
        web(&in_a, "web") == ["default/poisoned"]
    })
    .await;
    assert!(!is_poisoned(
        &*in_a.store().get(Some("default"), "poisoned").expect("stored")
    ));
    // Extractor panics never restart or stop a watch.
    for informer in [&in_a, &in_b] {
        assert_eq!(informer.restarts(), 0);
        assert!(informer.is_synced(), "{informer:?}");
    }
    token.cancel();
}

#[tokio::test]
async fn l08_a_panicking_transform_restarts_that_watch_with_backoff_and_recovers_once_fixed() {
    let fleet = Fleet::start(2).await.expect("start fleet");
    let clients = [0, 1].map(|i| fleet.cluster(i).client().expect("client"));
    let [a, b] = &clients;
    // Lists are in name order: "a-…" comes before "z-…".
    create_config_map(a, "default", "a-healthy", Some("web")).await;
    create_config_map(b, "default", "a-healthy", Some("web")).await;

    let token = CancellationToken::new();
    let caches = caches_with_index(&fleet, &token, app_label);
    for cache in &caches {
        cache.set_transform::<ConfigMap>(|cm| {
            assert!(!is_poisoned(cm), "poisoned object");
            cm.labels_mut().insert("transformed".to_owned(), "yes".to_owned());
        });
    }
    let [in_a, in_b] = [0, 1].map(|i| caches[i].informer::<ConfigMap>());
    for informer in [&in_a, &in_b] {
        informer.wait_synced(SYNC).await.expect("sync");
    }
    let mut events_a = in_a.subscribe();
    let stored_before = keys(&in_a.store().list());

    // The transform panics on a new object: A drops its watch and relists, with
    // backoff, for as long as the object is poisoned.
    create_poisoned_config_map(a, "default", "z-poisoned", "web").await;
    until("A restarts its watch", Duration::from_secs(20), || {
        in_a.restarts() >= 1
    })
    .await;
    assert!(in_a.store().get(Some("default"), "z-poisoned").is_none());
    assert_eq!(keys(&in_a.store().list()), stored_before);
    assert!(in_a.is_synced() && !in_a.is_stopped());

    // A healthy object listed before the poisoned one is updated at each relist.
    merge_patch(
        a,
        "default",
        "a-healthy",
        serde_json::json!({ "data": { "k": "v2" } }),
    )
    .await;
    until("A relists the healthy object", Duration::from_secs(40), || {
        in_a.store().get(Some("default"), "a-healthy").is_some_and(|cm| {
            cm.data
                .as_ref()
                .is_some_and(|d| d.get("k").is_some_and(|v| v == "v2"))
        })
    })
    .await;

    // B is not affected.
    merge_patch(
        b,
        "default",
        "a-healthy",
        serde_json::json!({ "data": { "k": "v2" } }),
    )
    .await;
    until("B follows its object", Duration::from_secs(20), || {
        in_b.store().get(Some("default"), "a-healthy").is_some_and(|cm| {
            cm.data
                .as_ref()
                .is_some_and(|d| d.get("k").is_some_and(|v| v == "v2"))
        })
    })
    .await;
    assert_eq!(in_b.restarts(), 0);

    // Fixed through the API: A stores the fixed object within the backoff (the one
    // under way, or the next if a relist starts before the fix lands).
    let restarts = in_a.restarts();
    let backoff = Duration::from_millis(500)
        .saturating_mul(1 << restarts.min(16))
        .min(Duration::from_secs(30));
    merge_patch(
        a,
        "default",
        "z-poisoned",
        serde_json::json!({ "metadata": { "labels": { "poison": null } } }),
    )
    .await;
    until(
        "A stores the fixed object",
        backoff + Duration::from_secs(15),
        || {
            in_a.store()
                .get(Some("default"), "z-poisoned")
                .is_some_and(|cm| cm.labels().get("transformed").is_some_and(|v| v == "yes"))
        },
    )
    .await;
    assert_eq!(
        keys(&in_a.store().by_index("app", "web").expect("index")),
        ["default/a-healthy", "default/z-poisoned"]
    );

    // Recovered: A follows the watch again, and no restart follows. The store was
    // stale meanwhile, never falsely lacking: nothing was reported deleted.
    let restarts = in_a.restarts();
    create_config_map(a, "default", "after-fix", None).await;
    let events = async {
        let mut seen = Vec::new();
        loop {
            let event = events_a.recv().await.expect("no lag, not closed");
            let name = event.object().name_any();
            seen.push(event);
            if name == "after-fix" {
                return seen;
            }
        }
    };
    let seen = tokio::time::timeout(Duration::from_secs(20), events)
        .await
        .expect("A reports the new object");
    assert!(
        seen.iter()
            .all(|event| matches!(event, InformerEvent::Applied { .. })),
        "{seen:?}"
    );
    assert_eq!(in_a.restarts(), restarts);
    token.cancel();
}

/// r08: registering an index backfills it over the stored objects without holding
/// the cache's registry: while an extractor is stuck on an object, another type's
/// informer can still be started and read (before, it waited for the backfill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r08_index_backfill_runs_outside_the_registry_lock() {
    use std::sync::Mutex;
    use std::sync::mpsc;

    let fleet = Fleet::start(1).await.expect("start fleet");
    let client = fleet.cluster(0).client().expect("client");
    create_config_map(&client, "default", "r08", Some("a")).await;
    let token = CancellationToken::new();
    let cache = Cache::new(
        ClusterName::from("r08"),
        client,
        CacheOptions::default(),
        token.clone(),
    );
    cache
        .informer::<ConfigMap>()
        .wait_synced(SYNC)
        .await
        .expect("synced");

    let (entered, inside) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let (entered, released) = (Mutex::new(entered), Mutex::new(released));
    let indexing = {
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || {
            cache.index_field::<ConfigMap>("stuck", move |cm| {
                let _ = entered.lock().unwrap().send(());
                let _ = released.lock().unwrap().recv_timeout(Duration::from_secs(30));
                app_label(cm)
            })
        })
    };
    inside
        .recv_timeout(Duration::from_secs(30))
        .expect("the extractor runs");
    let other = {
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || cache.informer::<Namespace>().resource().to_owned())
    };
    let started = tokio::time::timeout(Duration::from_secs(10), other).await;
    release.send(()).expect("release the extractor");
    assert!(
        matches!(started, Ok(Ok(_))),
        "another informer started while the index was being backfilled: {started:?}"
    );
    indexing.await.expect("joined").expect("index registered");
    let filed = cache
        .list_by_index::<ConfigMap>("stuck", "a")
        .await
        .expect("index");
    assert_eq!(keys(&filed), ["default/r08"]);
    token.cancel();
}

/// How many LIST requests for ConfigMaps the apiserver behind `client` has served,
/// by its own `apiserver_request_total`.
async fn configmap_lists_served(client: &Client) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = client.request_text(request).await.expect("apiserver metrics");
    text.lines()
        .filter(|line| {
            line.starts_with("apiserver_request_total{")
                && line.contains(r#"resource="configmaps""#)
                && line.contains(r#"verb="LIST""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Syncs a cache of `options` on `client` for the `app=lists` ConfigMaps; returns
/// their names and the LIST requests the apiserver served meanwhile.
async fn sync_and_count_lists(client: &Client, cluster: &str, options: CacheOptions) -> (Vec<String>, u64) {
    let before = configmap_lists_served(client).await;
    let token = CancellationToken::new();
    let cache = Cache::new(ClusterName::from(cluster), client.clone(), options, token.clone());
    let informer = cache.informer_with::<ConfigMap>(&(), WatchSpec::default().labels("app=lists"));
    informer.wait_synced(SYNC).await.expect("sync");
    let names = keys(&informer.store().list());
    token.cancel();
    (names, configmap_lists_served(client).await - before)
}

#[tokio::test]
async fn v03_first_lists_are_streamed_where_the_apiserver_can_and_paged_where_it_cannot() {
    // One apiserver as shipped (it streams lists), one with streaming turned off,
    // as 1.33's and older apiservers are by default.
    let (streaming, paged) = tokio::join!(
        Fleet::start(1),
        Fleet::builder()
            .apiserver_arg("--feature-gates=WatchList=false")
            .start()
    );
    let (streaming, paged) = (streaming.expect("start fleet"), paged.expect("start fleet"));
    let expected = ["lists/a", "lists/b", "lists/c"];
    for fleet in [&streaming, &paged] {
        let client = fleet.cluster(0).client().expect("client");
        create_namespace(&client, "lists").await;
        for name in ["a", "b", "c"] {
            create_config_map(&client, "lists", name, Some("lists")).await;
        }
    }
    let streaming_client = streaming.cluster(0).client().expect("client");
    let paged_client = paged.cluster(0).client().expect("client");

    // By default the first list is streamed: the apiserver serves no LIST.
    let (names, lists) = sync_and_count_lists(&streaming_client, "streaming", CacheOptions::default()).await;
    assert_eq!(names, expected);
    assert_eq!(lists, 0, "a streamed first list is a watch, not a LIST");

    // Turned off, the same apiserver serves the first list in pages: the count sees it.
    let options = CacheOptions::default().streaming_lists(false);
    let (names, lists) = sync_and_count_lists(&streaming_client, "streaming", options).await;
    assert_eq!(names, expected);
    assert!(lists >= 1, "a paged first list is a LIST, counted: {lists}");

    // An apiserver that cannot stream refuses the watch; the informer lists in pages.
    let (names, lists) = sync_and_count_lists(&paged_client, "paged", CacheOptions::default()).await;
    assert_eq!(names, expected);
    assert!(lists >= 1, "fell back to a paged LIST: {lists}");
}
