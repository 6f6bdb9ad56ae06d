//! The namespace provider against a real kube-apiserver (envtest): each namespace of
//! the host is a cluster sharing the host's cache.
//!
//! envtest runs no kube-controller-manager, so a deleted namespace stays terminating
//! until its `kubernetes` finalizer is removed; the tests do that (`finalize`) where
//! they need the namespace gone.
#![cfg(feature = "namespace")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_envtest::Fleet;
use multicluster_runtime::cache::{CacheError, FieldIndex};
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::providers::namespace::Namespaces;
use multicluster_runtime::{Cluster, ClusterName, Manager, Provider, ProviderRunnable};
use support::objects::create_labelled_namespace;
use support::{EngagementLog, WAIT, eventually, wait_until};
use tokio_util::sync::CancellationToken;

/// One apiserver; its cluster is the provider's host.
struct Env {
    fleet: Fleet,
    host: Arc<Cluster>,
    token: CancellationToken,
}

impl Env {
    async fn new() -> Self {
        let fleet = Fleet::start(1).await.expect("start apiserver");
        let host = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
        Env {
            fleet,
            host,
            token: CancellationToken::new(),
        }
    }

    fn client(&self) -> Client {
        self.host.client()
    }

    fn provider(&self) -> Namespaces {
        Namespaces::new(self.host.clone())
    }

    /// Runs `provider` into an engagement log until the test ends.
    fn start(&self, provider: &Arc<Namespaces>) -> Arc<EngagementLog> {
        let log = EngagementLog::new();
        let (provider, token, aware) = (provider.clone(), self.token.clone(), log.clone());
        tokio::spawn(async move { provider.start(token, aware).await.expect("provider runs") });
        log
    }

    async fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Namespace {
        create_labelled_namespace(&self.client(), name, labels).await
    }

    async fn label_namespace(&self, name: &str, key: &str, value: &str) {
        let patch = serde_json::json!({ "metadata": { "labels": { key: value } } });
        Api::<Namespace>::all(self.client())
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("label namespace");
    }

    /// Deletes a namespace; without a namespace controller it stays terminating.
    async fn delete_namespace(&self, name: &str) {
        Api::<Namespace>::all(self.client())
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete namespace");
    }

    /// Deletes a namespace and removes its finalizer, as the namespace controller
    /// would once the namespace is empty, so that it is gone.
    async fn delete_namespace_for_good(&self, name: &str) {
        self.delete_namespace(name).await;
        let api = Api::<Namespace>::all(self.client());
        let mut namespace = api.get(name).await.expect("terminating namespace");
        namespace.spec.get_or_insert_default().finalizers = Some(Vec::new());
        api.replace_subresource("finalize", name, &PostParams::default(), &namespace)
            .await
            .expect("finalize namespace");
        eventually(&format!("namespace {name} gone"), || async {
            let found = api.get_opt(name).await.expect("get namespace");
            found.is_none().then_some(())
        })
        .await;
    }

    async fn create_config_map(&self, namespace: &str, name: &str, value: &str) {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.to_owned());
        cm.data = Some(BTreeMap::from([("k".to_owned(), value.to_owned())]));
        Api::<ConfigMap>::namespaced(self.client(), namespace)
            .create(&PostParams::default(), &cm)
            .await
            .expect("create configmap");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn names<K: ResourceExt>(objects: &[Arc<K>]) -> Vec<String> {
    let mut keys: Vec<String> = objects
        .iter()
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn pnamespace_existing_added_and_removed() {
    let env = Env::new().await;
    env.create_namespace("ns-a", &[]).await;
    // Default options: every namespace but the system ones.
    let provider = Arc::new(env.provider());
    let log = env.start(&provider);
    log.wait_live(&["default", "ns-a"]).await;

    // Added at runtime.
    env.create_namespace("ns-b", &[]).await;
    log.wait_live(&["default", "ns-a", "ns-b"]).await;
    let b = provider.get(&"ns-b".into()).await.expect("ns-b is known");
    assert_eq!(b.name(), "ns-b");
    assert_eq!(b.cache().namespace_scope(), Some("ns-b"));
    assert_eq!(b.client().default_namespace(), "ns-b");

    // Terminating: still engaged (by default), so controllers could drop finalizers.
    env.delete_namespace("ns-b").await;
    let namespaces = env.host.cache().metadata_informer::<Namespace>();
    wait_until("ns-b seen terminating", || {
        namespaces
            .store()
            .get(None, "ns-b")
            .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some())
    })
    .await;
    // Barrier: the provider handles the Namespace events in order, so once ns-c,
    // created after, is engaged, it has seen ns-b terminating.
    env.create_namespace("ns-c", &[]).await;
    log.wait_live(&["default", "ns-a", "ns-b", "ns-c"]).await;
    assert!(
        log.live().contains("ns-b"),
        "a terminating namespace stays engaged"
    );

    // Gone: disengaged and unknown; the host cache and the others carry on.
    let engaged_b = log.current("ns-b").expect("ns-b engaged");
    env.delete_namespace_for_good("ns-b").await;
    log.wait_live(&["default", "ns-a", "ns-c"]).await;
    assert!(engaged_b.token.is_cancelled());
    assert!(engaged_b.cluster.is_stopped());
    let error = provider.get(&"ns-b".into()).await.expect_err("ns-b removed");
    assert!(error.is_cluster_not_found(), "{error}");
    assert!(!env.host.cache().is_stopped(), "the shared cache runs on");
    assert!(!namespaces.is_stopped());
    assert_eq!(log.count("ns-a"), 1);
    assert_eq!(log.count("default"), 1);
    let mut known: Vec<String> = provider.names().iter().map(|n| n.as_str().to_owned()).collect();
    known.sort();
    assert_eq!(known, ["default", "ns-a", "ns-c"]);
}

#[tokio::test]
async fn pnamespace_change_reengages_only_that_cluster() {
    let env = Env::new().await;
    let selected = [("mcr-test", "yes")];
    env.create_namespace("a", &selected).await;
    env.create_namespace("b", &selected).await;
    env.create_namespace("c", &[]).await;
    let provider = Arc::new(env.provider().selector("mcr-test=yes"));
    let log = env.start(&provider);
    log.wait_live(&["a", "b"]).await;
    let a = log.current("a").expect("a engaged");

    // Leaving the selection removes; coming back engages a new instance.
    env.label_namespace("b", "mcr-test", "no").await;
    log.wait_live(&["a"]).await;
    env.label_namespace("b", "mcr-test", "yes").await;
    log.wait_live(&["a", "b"]).await;
    assert_eq!(log.count("b"), 2);
    // A label change that keeps the namespace selected changes nothing.
    env.label_namespace("b", "other", "x").await;
    env.label_namespace("c", "mcr-test", "yes").await;
    log.wait_live(&["a", "b", "c"]).await;
    assert_eq!(log.count("b"), 2);

    // Deleted and re-created under the same name: a new namespace, a new cluster.
    let before = provider.get(&"b".into()).await.expect("b");
    env.delete_namespace_for_good("b").await;
    env.create_namespace("b", &selected).await;
    log.wait_count("b", 3).await;
    log.wait_live(&["a", "b", "c"]).await;
    let after = provider.get(&"b".into()).await.expect("b");
    assert!(!Arc::ptr_eq(&before, &after));
    assert!(before.is_stopped());

    // Only b was re-engaged: a is the same engagement throughout.
    assert_eq!(log.count("a"), 1);
    assert_eq!(log.count("c"), 1);
    assert!(!a.token.is_cancelled());
    assert!(Arc::ptr_eq(
        &a.cluster,
        &provider.get(&"a".into()).await.expect("a")
    ));
    assert!(!a.cluster.is_stopped());
}

#[tokio::test]
async fn pnamespace_bad_input_is_reported_and_the_others_carry_on() {
    let env = Env::new().await;

    // An invalid selector fails the provider with the apiserver's reason.
    let bad = Namespaces::new(env.host.clone()).selector("tier in (web");
    let error = tokio::time::timeout(WAIT, bad.start(env.token.child_token(), EngagementLog::new()))
        .await
        .expect("fails promptly")
        .expect_err("invalid selector");
    let message = error.to_string();
    assert!(
        message.starts_with("provider namespaces: invalid namespace label selector \"tier in (web\""),
        "{message}"
    );

    // A namespace whose client cannot be built, one already terminating, one that
    // starts terminating: each only affects itself.
    let selected = [("bad-input", "yes")];
    for name in ["ok-1", "ok-2", "broken", "dying"] {
        env.create_namespace(name, &selected).await;
    }
    env.delete_namespace("dying").await;
    let config = env.fleet.cluster(0).config();
    let provider = Namespaces::with_clients(env.host.clone(), move |namespace| {
        if namespace == "broken" {
            return Err(kube::Error::Service("no credentials for this namespace".into()));
        }
        let mut config = config.clone();
        config.default_namespace = namespace.to_owned();
        kube::Client::try_from(config)
    })
    .selector("bad-input=yes")
    .disengage_terminating(true);
    let provider = Arc::new(provider);
    let log = env.start(&provider);
    log.wait_live(&["ok-1", "ok-2"]).await;
    for name in ["broken", "dying"] {
        let error = provider.get(&name.into()).await.expect_err("not a cluster");
        assert!(error.is_cluster_not_found(), "{error}");
        assert_eq!(log.count(name), 0);
    }

    env.delete_namespace("ok-2").await;
    log.wait_live(&["ok-1"]).await;
    assert!(provider.get(&"ok-2".into()).await.is_err());
    assert_eq!(log.count("ok-1"), 1);
}

/// Every reconcile: the request, the namespace scope of its cluster's cache, and
/// whether the object existed.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(Request, Option<String>, bool)>>,
}

impl Recorder {
    fn requests(&self) -> Vec<Request> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _, _)| r.clone())
            .collect()
    }

    fn has(&self, cluster: &str, name: &str) -> bool {
        self.requests()
            .iter()
            .any(|r| r.cluster == cluster && r.name() == name)
    }
}

async fn record(req: ReconcileRequest<ConfigMap>, recorder: Arc<Recorder>) -> Result<Action, Infallible> {
    let scope = req.cluster.cache().namespace_scope().map(str::to_owned);
    recorder
        .seen
        .lock()
        .unwrap()
        .push((req.request.clone(), scope, req.object.is_some()));
    Ok(Action::await_change())
}

async fn recording_controller(manager: &Manager) -> Arc<Recorder> {
    let recorder = Arc::new(Recorder::default());
    Controller::builder::<ConfigMap>(manager)
        .register(
            record,
            |_: &Request, _: &Infallible, _| Action::backoff(),
            recorder.clone(),
        )
        .await
        .expect("controller");
    recorder
}

#[tokio::test]
async fn pnamespace_clusters_see_only_their_namespace_and_share_one_index() {
    let env = Env::new().await;
    let selected = [("mcr-scope", "yes")];
    for name in ["a", "b"] {
        env.create_namespace(name, &selected).await;
        env.create_config_map(name, &format!("cm-{name}"), name).await;
        env.create_config_map(name, "same", "shared").await;
    }
    env.create_config_map("default", "outside", "shared").await;
    let provider = Arc::new(env.provider().selector("mcr-scope=yes"));
    let manager = Manager::with_provider(env.host.clone(), provider.clone());
    let by_value = FieldIndex::new::<ConfigMap>("data.k", |cm| {
        cm.data
            .iter()
            .flatten()
            .filter(|(k, _)| *k == "k")
            .map(|(_, v)| v.clone())
            .collect()
    });
    // The manager registers it on its local cluster, the host, and the provider finds
    // it there: registered once, not once per namespace.
    manager
        .index_field(by_value.clone())
        .await
        .expect("index registered");
    assert!(matches!(
        by_value.apply(env.host.cache()),
        Err(CacheError::IndexExists { .. })
    ));
    let recorder = recording_controller(&manager).await;
    let (running, token) = (manager.clone(), env.token.clone());
    tokio::spawn(async move { running.start(token).await.expect("manager runs") });

    // Requests are named by namespace-cluster and carry only its objects.
    wait_until("ConfigMaps of a and b reconciled", || {
        ["a/cm-a", "a/same", "b/cm-b", "b/same"].iter().all(|key| {
            let (cluster, name) = key.split_once('/').unwrap();
            recorder.has(cluster, name)
        })
    })
    .await;
    env.create_config_map("b", "late", "b").await;
    wait_until("late reconciled in b", || recorder.has("b", "late")).await;
    for (request, scope, exists) in recorder.seen.lock().unwrap().iter() {
        assert_eq!(request.namespace(), Some(request.cluster.as_str()), "{request:?}");
        assert_eq!(scope.as_deref(), Some(request.cluster.as_str()));
        assert!(exists, "{request:?}");
    }
    assert!(!recorder.requests().iter().any(|r| r.name() == "outside"));

    // Cache reads see one namespace.
    let a = manager.get_cluster(&ClusterName::from("a")).await.expect("a");
    let listed = a.cache().list::<ConfigMap>(None).await.expect("list");
    assert_eq!(names(&listed), ["a/cm-a", "a/same"]);
    assert!(
        a.cache()
            .get::<ConfigMap>(Some("b"), "cm-b")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        a.cache()
            .list::<ConfigMap>(Some("b"))
            .await
            .expect("list")
            .is_empty()
    );

    // The index: a sees its own matches, the host all of them.
    let in_a = a
        .cache()
        .list_by_index::<ConfigMap>("data.k", "shared")
        .await
        .expect("index");
    assert_eq!(names(&in_a), ["a/same"]);
    let on_host = env
        .host
        .cache()
        .list_by_index::<ConfigMap>("data.k", "shared")
        .await
        .expect("index");
    assert_eq!(names(&on_host), ["a/same", "b/same", "default/outside"]);

    // The client works in the namespace by default.
    let api: Api<ConfigMap> = Api::default_namespaced(a.client());
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("via-client".to_owned());
    let created = api.create(&PostParams::default(), &cm).await.expect("create");
    assert_eq!(created.namespace().as_deref(), Some("a"));
    wait_until("via-client reconciled in a", || recorder.has("a", "via-client")).await;
    assert!(!recorder.has("b", "via-client"));

    // One watch per type on the host, whatever the views.
    assert_eq!(a.cache().watch_count(), env.host.cache().watch_count());
    assert_eq!(env.host.cache().watch_count(), 2, "Namespaces and ConfigMaps");
}

#[tokio::test]
async fn pnamespace_one_watch() {
    const CLUSTERS: usize = 50;
    let env = Env::new().await;
    let names: Vec<String> = (0..CLUSTERS).map(|i| format!("fleet-{i:02}")).collect();
    for chunk in names.chunks(10) {
        futures::future::join_all(chunk.iter().map(|name| async {
            env.create_namespace(name, &[("mcr-fleet", "yes")]).await;
            env.create_config_map(name, "marker", name).await;
        }))
        .await;
    }
    let provider = Arc::new(env.provider().selector("mcr-fleet=yes"));
    let (manager, recorder) = manager_with_controller(&env, provider.clone()).await;

    wait_until("a marker reconciled in each of the 50 clusters", || {
        let seen: BTreeSet<String> = recorder
            .requests()
            .iter()
            .filter(|r| r.name() == "marker")
            .map(|r| r.cluster.as_str().to_owned())
            .collect();
        seen.len() == CLUSTERS
    })
    .await;
    assert_eq!(
        manager.engaged_clusters().len(),
        CLUSTERS + 1,
        "the fleet and the local cluster"
    );
    for request in recorder.requests() {
        assert_eq!(request.name(), "marker", "{request:?}");
        assert_eq!(request.namespace(), Some(request.cluster.as_str()));
    }

    // 50 namespace-clusters and one controller: one ConfigMap watch on the host, plus
    // the provider's own watch of Namespaces.
    let host = env.host.cache();
    assert_eq!(host.watch_count(), 2);
    for name in &names {
        let cluster = provider.get(&name.as_str().into()).await.expect("engaged");
        assert_eq!(cluster.cache().watch_count(), 2);
        let informer = cluster.cache().informer::<ConfigMap>();
        assert_eq!(informer.store().len(), 1, "{name} sees its marker only");
    }
    let fleet_objects = host.informer::<ConfigMap>().store().list();
    let in_fleet = fleet_objects
        .iter()
        .filter(|cm| cm.namespace().is_some_and(|ns| ns.starts_with("fleet-")));
    assert_eq!(in_fleet.count(), CLUSTERS, "one shared store holds them all");
    assert_eq!(
        host.watch_count(),
        2,
        "reading through the views started no watch"
    );
}

/// A manager whose local cluster is the host, so that everything shares one cache,
/// with a recording controller of ConfigMaps, running.
async fn manager_with_controller(env: &Env, provider: Arc<Namespaces>) -> (Manager, Arc<Recorder>) {
    let manager = Manager::with_provider(env.host.clone(), provider);
    let recorder = recording_controller(&manager).await;
    let (running, token) = (manager.clone(), env.token.clone());
    tokio::spawn(async move { running.start(token).await.expect("manager runs") });
    (manager, recorder)
}

/// The provider run as a user holding exactly `deploy/rbac/namespace-provider.yaml`
/// (list and watch on Namespaces) engages the namespaces there are and those created.
#[tokio::test]
async fn pnamespace_runs_with_the_documented_cluster_role() {
    let env = Env::new().await;
    env.create_namespace("ns-a", &[]).await;
    let spec = support::rbac::user("namespace-provider", "namespace-provider.yaml", "");
    let user = env.fleet.cluster(0).create_user(spec).await.expect("user");
    let host = Arc::new(Cluster::new("", user.client().expect("client")));
    let provider = Arc::new(Namespaces::new(host));
    let log = env.start(&provider);
    log.wait_live(&["default", "ns-a"]).await;
    env.create_namespace("ns-b", &[]).await;
    log.wait_live(&["default", "ns-a", "ns-b"]).await;
}
