//! The multi provider against real apiservers: providers composed under prefixes.
#![cfg(feature = "multi")]

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use kube_envtest::Fleet;
use multicluster_runtime::cache::FieldIndex;
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::providers::multi::Multi;
use multicluster_runtime::{Cluster, Manager, Provider};
use support::EngagementLog;
use support::objects::create_labelled_namespace;
use tokio_util::sync::CancellationToken;

/// A manager over a `Multi` provider, with an engagement log added.
struct Env {
    fleet: Fleet,
    multi: Arc<Multi>,
    manager: Manager,
    log: Arc<EngagementLog>,
    token: CancellationToken,
}

impl Env {
    async fn new(clusters: usize) -> Self {
        let fleet = Fleet::start(clusters).await.expect("start fleet");
        let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
        let multi = Arc::new(Multi::new());
        let manager = Manager::with_provider(local, multi.clone());
        let log = EngagementLog::new();
        manager.add_aware(log.clone()).await.expect("add log");
        Env {
            fleet,
            multi,
            manager,
            log,
            token: CancellationToken::new(),
        }
    }

    fn client(&self, index: usize) -> Client {
        self.fleet.cluster(index).client().expect("client")
    }

    /// A `Clusters` provider offering fleet clusters under the given inner names.
    async fn member(&self, clusters: &[(&str, usize)]) -> Arc<Clusters> {
        let provider = Arc::new(Clusters::new());
        for (name, index) in clusters {
            provider
                .add(Arc::new(Cluster::new(*name, self.client(*index))))
                .await
                .expect("add");
        }
        provider
    }

    fn start(&self) {
        let (manager, token) = (self.manager.clone(), self.token.clone());
        tokio::spawn(async move { manager.start(token).await.expect("manager runs") });
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The namespaces an engaged cluster's client sees: proves which apiserver it reaches.
async fn marker(cluster: &Cluster) -> Vec<String> {
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    let list = namespaces
        .list(&ListParams::default().labels("marker"))
        .await
        .expect("list namespaces");
    list.items.iter().map(|ns| ns.name_any()).collect()
}

async fn mark(client: Client, name: &str) {
    create_labelled_namespace(&client, name, &[("marker", "yes")]).await;
}

#[tokio::test]
async fn pmulti_prefixes_runtime_changes_and_removal() {
    let env = Env::new(4).await;
    for index in 1..=3 {
        mark(env.client(index), &format!("fleet-{index}")).await;
    }
    // Existing at start: two members.
    env.multi
        .add_provider("a", env.member(&[("x", 1)]).await)
        .await
        .expect("add a");
    let b = env.member(&[("x", 2)]).await;
    env.multi.add_provider("b", b.clone()).await.expect("add b");
    env.start();
    env.log.wait_live(&["", "a#x", "b#x"]).await;
    let a_x = env.log.current("a#x").expect("a#x engaged");
    // One name: the engaged cluster carries the prefixed name, and so do lookups.
    assert_eq!(a_x.cluster.name(), "a#x");
    let found = env.manager.get_cluster(&"a#x".into()).await.expect("a#x");
    assert!(Arc::ptr_eq(&found, &a_x.cluster), "the engaged instance");
    let via_provider = env.multi.get(&"a#x".into()).await.expect("a#x");
    assert_eq!(via_provider.name(), "a#x");
    assert!(Arc::ptr_eq(&via_provider, &a_x.cluster), "the engaged instance");
    assert_eq!(
        marker(&a_x.cluster).await,
        vec!["fleet-1"],
        "a#x reaches fleet cluster 1"
    );

    // Added at runtime: a member, and a cluster inside a member.
    env.multi
        .add_provider("c", env.member(&[("y", 3)]).await)
        .await
        .expect("add c");
    b.add(Arc::new(Cluster::new("z", env.client(3))))
        .await
        .expect("add z");
    env.log.wait_live(&["", "a#x", "b#x", "b#z", "c#y"]).await;

    // A change inside one member re-engages only that cluster.
    let b_x = env.log.current("b#x").expect("b#x engaged");
    b.replace(Arc::new(Cluster::new("x", env.client(3))))
        .await
        .expect("replace");
    support::wait_until("b#x re-engaged", || env.log.count("b#x") == 2).await;
    assert!(b_x.token.is_cancelled(), "the old instance of b#x is disengaged");
    assert_eq!(env.log.count("a#x"), 1, "a#x untouched");
    assert!(!a_x.token.is_cancelled());
    let new_b_x = env.log.current("b#x").expect("b#x engaged");
    assert_eq!(new_b_x.cluster.name(), "b#x");
    assert!(!Arc::ptr_eq(&new_b_x.cluster, &b_x.cluster), "a new instance");
    assert_eq!(marker(&new_b_x.cluster).await, vec!["fleet-3"]);

    // Removing a member disengages all its clusters before returning.
    let b_z = env.log.current("b#z").expect("b#z engaged");
    assert!(env.multi.remove_provider("b"));
    assert!(
        new_b_x.token.is_cancelled() && b_z.token.is_cancelled(),
        "b's clusters are disengaged at once"
    );
    for gone in ["b#x", "b#z"] {
        let err = env.manager.get_cluster(&gone.into()).await.expect_err("removed");
        assert!(err.is_cluster_not_found(), "{err}");
    }
    env.log.wait_live(&["", "a#x", "c#y"]).await;
    assert!(!env.multi.remove_provider("b"), "already gone");
}

#[tokio::test]
async fn pmulti_bad_input_is_refused_and_others_carry_on() {
    let env = Env::new(2).await;
    env.multi
        .add_provider("a", env.member(&[("x", 1)]).await)
        .await
        .expect("add a");
    env.start();
    env.log.wait_live(&["", "a#x"]).await;

    for bad in ["", "with#separator"] {
        let err = env
            .multi
            .add_provider(bad, Arc::new(Clusters::new()))
            .await
            .expect_err("bad name");
        assert!(
            err.to_string().contains("must be non-empty and without \"#\""),
            "{err}"
        );
    }
    let err = env
        .multi
        .add_provider("a", Arc::new(Clusters::new()))
        .await
        .expect_err("duplicate");
    assert!(err.to_string().contains("exists already"), "{err}");
    for unknown in ["no-separator", "missing#x", "a#missing"] {
        let err = env.multi.get(&unknown.into()).await.expect_err("unknown");
        assert!(err.is_cluster_not_found(), "{unknown}: {err}");
        assert_eq!(
            err.to_string(),
            format!("cluster {unknown} not found"),
            "the full name is reported"
        );
    }
    assert_eq!(env.log.live().len(), 2, "nothing else changed");
    let x = env.multi.get(&"a#x".into()).await.expect("a#x still served");
    assert_eq!(x.name().as_str(), "a#x", "the cluster under its engaged name");
}

fn owner_index() -> FieldIndex {
    FieldIndex::new::<ConfigMap>("owner", |cm: &ConfigMap| {
        cm.data
            .as_ref()
            .and_then(|d| d.get("owner"))
            .cloned()
            .into_iter()
            .collect()
    })
}

async fn owned(client: Client, name: &str, owner: &str) {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.data = Some([("owner".to_owned(), owner.to_owned())].into());
    Api::<ConfigMap>::namespaced(client, "default")
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
}

#[tokio::test]
async fn pmulti_same_inner_name_stays_two_clusters_with_separate_indexes() {
    let env = Env::new(3).await;
    owned(env.client(1), "first", "alice").await;
    owned(env.client(2), "second", "alice").await;
    // An index registered before the members exist reaches both of them.
    env.manager
        .index_field(owner_index())
        .await
        .expect("index before members");
    env.multi
        .add_provider("one", env.member(&[("a", 1)]).await)
        .await
        .expect("add one");
    env.start();
    env.multi
        .add_provider("two", env.member(&[("a", 2)]).await)
        .await
        .expect("add two");
    env.log.wait_live(&["", "one#a", "two#a"]).await;

    let one = env.manager.get_cluster(&"one#a".into()).await.expect("one#a");
    let two = env.manager.get_cluster(&"two#a".into()).await.expect("two#a");
    assert!(!Arc::ptr_eq(&one, &two), "two clusters, not one");
    let names = |list: Vec<Arc<ConfigMap>>| list.iter().map(|cm| cm.name_any()).collect::<Vec<_>>();
    let by_one = one
        .cache()
        .list_by_index::<ConfigMap>("owner", "alice")
        .await
        .expect("index in one#a");
    let by_two = two
        .cache()
        .list_by_index::<ConfigMap>("owner", "alice")
        .await
        .expect("index in two#a");
    assert_eq!(names(by_one), vec!["first"]);
    assert_eq!(names(by_two), vec!["second"]);
    assert_eq!(env.log.count("one#a") + env.log.count("two#a"), 2);
    assert!(
        env.log.all().iter().all(|e| e.name != "a"),
        "inner names never leak out"
    );
}
