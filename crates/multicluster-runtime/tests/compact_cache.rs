//! A controller over caches that keep the compact stored form
//! (`CacheOptions::compact`), against real kube-apiservers (envtest).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_envtest::Fleet;
use multicluster_runtime::cache::{CacheOptions, InformerEvent, WatchSpec};
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, ClusterOptions, Manager};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// A labelled ConfigMap of `default` with one data entry.
async fn create_source(client: &Client, name: &str, app: &str, value: &str) {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.metadata.labels = Some(BTreeMap::from([("app".to_owned(), app.to_owned())]));
    cm.data = Some(BTreeMap::from([("value".to_owned(), value.to_owned())]));
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .expect("create source");
}

/// The reconciler: for each labelled ConfigMap `x` it reads from the cache, writes
/// `copy-x` with the same `value` and, as `web`, how many `app=web` ConfigMaps the
/// cache's index holds; deletes the copy once `x` is gone.
async fn copy(req: ReconcileRequest<ConfigMap>, _: Arc<()>) -> Result<Action, Infallible> {
    let api: Api<ConfigMap> = req.namespaced_api();
    let copy_name = format!("copy-{}", req.name());
    let Some(source) = &req.object else {
        let _ = api.delete(&copy_name, &DeleteParams::default()).await;
        return Ok(Action::await_change());
    };
    // A second read of the same object, and one through the index: both decode.
    let again = req
        .cluster
        .cache()
        .get::<ConfigMap>(req.namespace(), req.name())
        .await
        .ok()
        .flatten();
    let web = req
        .cluster
        .cache()
        .list_by_index::<ConfigMap>("app", "web")
        .await
        .map(|found| found.len())
        .unwrap_or(usize::MAX);
    let value = source
        .data
        .as_ref()
        .and_then(|d| d.get("value"))
        .cloned()
        .unwrap_or_default();
    let same = again.is_some_and(|again| *again == **source);
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": copy_name },
        "data": { "value": value, "web": web.to_string(), "same": same.to_string() },
    });
    match api
        .patch(
            &copy_name,
            &PatchParams::apply("v03-test").force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(_) => Ok(Action::requeue(Duration::from_millis(200))),
    }
}

fn backoff(_: &Request, _: &Infallible, _: Arc<()>) -> Action {
    Action::backoff()
}

/// The `data` of `copy-<name>`, once it equals `expected` (`None`: once it is gone).
async fn wait_copy(client: &Client, name: &str, expected: Option<&[(&str, &str)]>) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let expected: Option<BTreeMap<String, String>> = expected.map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    });
    let started = tokio::time::Instant::now();
    loop {
        let found = api
            .get_opt(&format!("copy-{name}"))
            .await
            .expect("read copy")
            .map(|cm| cm.data.unwrap_or_default());
        if found == expected {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "copy-{name}: expected {expected:?}, found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn v03_a_controller_reading_compact_caches_reconciles_what_it_should() {
    let fleet = Fleet::start(2).await.expect("start fleet");
    let client = |index: usize| fleet.cluster(index).client().expect("client");
    let options = ClusterOptions::default().cache(CacheOptions::default().compact::<ConfigMap>());
    let local = Arc::new(Cluster::with_options("", client(0), options.clone()));
    let provider = Arc::new(Clusters::new());
    let member = Arc::new(Cluster::with_options("c1", client(1), options));
    member
        .cache()
        .index_field::<ConfigMap>("app", |cm| cm.labels().get("app").cloned().into_iter().collect())
        .expect("index");
    provider.add(member.clone()).await.expect("add cluster");
    let manager = Manager::with_provider(local, provider);
    create_source(&client(1), "one", "web", "1").await;
    create_source(&client(1), "two", "db", "2").await;

    Controller::builder::<ConfigMap>(&manager)
        .named("v03-copies")
        .watch_spec(WatchSpec::default().labels("app"))
        .register(copy, backoff, Arc::new(()))
        .await
        .expect("controller");
    // A subscriber of the same informer, to see the events of a compact store.
    let informer = member
        .cache()
        .informer_with::<ConfigMap>(&(), WatchSpec::default().labels("app"));
    let mut events = informer.subscribe();
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });

    // Objects listed at the start, read from the compact form.
    informer.wait_synced(WAIT).await.expect("sync");
    assert!(informer.store().is_compact(), "the store keeps the compact form");
    wait_copy(
        &client(1),
        "one",
        Some(&[("value", "1"), ("web", "1"), ("same", "true")]),
    )
    .await;
    wait_copy(
        &client(1),
        "two",
        Some(&[("value", "2"), ("web", "1"), ("same", "true")]),
    )
    .await;

    // A creation, an update that moves an object between index values, a deletion.
    create_source(&client(1), "three", "web", "3").await;
    wait_copy(
        &client(1),
        "three",
        Some(&[("value", "3"), ("web", "2"), ("same", "true")]),
    )
    .await;
    let patch = serde_json::json!({ "metadata": { "labels": { "app": "web" } }, "data": { "value": "22" } });
    Api::<ConfigMap>::namespaced(client(1), "default")
        .patch("two", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    wait_copy(
        &client(1),
        "two",
        Some(&[("value", "22"), ("web", "3"), ("same", "true")]),
    )
    .await;

    // The update's event carries both versions, decoded.
    let updated = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("events") {
                InformerEvent::Applied { old: Some(old), new } if new.name_any() == "two" => {
                    return (old, new);
                }
                _ => {}
            }
        }
    })
    .await
    .expect("update event");
    assert_eq!(
        updated
            .0
            .data
            .as_ref()
            .and_then(|d| d.get("value"))
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(updated.0.labels().get("app").map(String::as_str), Some("db"));
    assert_eq!(
        updated
            .1
            .data
            .as_ref()
            .and_then(|d| d.get("value"))
            .map(String::as_str),
        Some("22")
    );

    Api::<ConfigMap>::namespaced(client(1), "default")
        .delete("one", &DeleteParams::default())
        .await
        .expect("delete");
    wait_copy(&client(1), "one", None).await;
    assert_eq!(
        member
            .cache()
            .list_by_index::<ConfigMap>("app", "web")
            .await
            .expect("index")
            .iter()
            .map(|cm| cm.name_any())
            .collect::<std::collections::BTreeSet<_>>(),
        ["three".to_owned(), "two".to_owned()].into()
    );
    token.cancel();
    let _ = tokio::time::timeout(WAIT, running).await;
}
