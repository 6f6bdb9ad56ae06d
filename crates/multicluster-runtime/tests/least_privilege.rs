//! Least privilege against real apiservers: caches that watch some namespaces only,
//! run as users holding exactly the RBAC of `deploy/rbac/`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube_envtest::Fleet;
use multicluster_runtime::cache::{Cache, CacheError, CacheOptions, WatchNamespaces, WatchSpec};
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, ClusterName, ClusterOptions, Manager};
use support::objects::create_namespace;
use support::{WAIT, rbac};
use tokio_util::sync::CancellationToken;

const ANNOTATION: &str = "example.com/reconciled";

async fn create_cm(client: &Client, namespace: &str, name: &str, app: &str) {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.metadata.labels = Some(BTreeMap::from([("app".to_owned(), app.to_owned())]));
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &cm)
        .await
        .expect("create ConfigMap");
}

fn app_of(cm: &ConfigMap) -> Vec<String> {
    cm.metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| *k == "app")
        .map(|(_, v)| v.clone())
        .collect()
}

fn names(objects: &[Arc<ConfigMap>]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .map(|cm| {
            format!(
                "{}/{}",
                cm.metadata.namespace.as_deref().unwrap_or_default(),
                cm.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    names.sort();
    names
}

/// Two namespaces watched for one type, by a user with a Role in each and nothing
/// else: one store holds both, an index answers across both, objects created later
/// in either arrive, and a `get` in a third namespace is an error that names the
/// two watched ones.
#[tokio::test]
async fn p02_two_namespaces_one_store() {
    let fleet = Fleet::start(1).await.expect("start fleet");
    let cluster = fleet.cluster(0);
    let admin = cluster.client().expect("client");
    for namespace in ["team-a", "team-b", "team-c"] {
        create_namespace(&admin, namespace).await;
    }
    create_cm(&admin, "team-a", "one", "web").await;
    create_cm(&admin, "team-b", "two", "web").await;
    create_cm(&admin, "team-b", "three", "db").await;
    create_cm(&admin, "team-c", "hidden", "web").await;
    let mut spec = rbac::user("tenant", "namespaced-controller.yaml", "team-a");
    let (rules, _) = rbac::rules("namespaced-controller.yaml");
    spec = spec.allow_in("team-b", rules);
    let tenant = cluster.create_user(spec).await.expect("user");

    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let options = CacheOptions::default()
        .default_namespaces(["team-a", "team-b"])
        .sync_timeout(Duration::from_secs(30));
    let cache = Cache::new(
        ClusterName::from("c0"),
        tenant.client().expect("client"),
        options,
        token,
    );
    cache.index_field::<ConfigMap>("app", app_of).expect("index");

    let all = cache.list::<ConfigMap>(None).await.expect("synced");
    assert_eq!(names(&all), ["team-a/one", "team-b/three", "team-b/two"]);
    assert_eq!(cache.watch_count(), 2, "one watch per namespace");
    let informer = cache.informer::<ConfigMap>();
    assert_eq!(
        informer.spec().namespace_list(),
        Some(vec!["team-a".into(), "team-b".into()])
    );
    // The same informer, whether the namespaces are named or left to the cache.
    let named = cache.informer_with::<ConfigMap>(&(), WatchSpec::default().namespaces(["team-b", "team-a"]));
    assert!(Arc::ptr_eq(&informer, &named));
    assert_eq!(cache.watch_count(), 2);

    let web = cache
        .list_by_index::<ConfigMap>("app", "web")
        .await
        .expect("index");
    assert_eq!(names(&web), ["team-a/one", "team-b/two"]);

    create_cm(&admin, "team-b", "four", "web").await;
    create_cm(&admin, "team-c", "hidden-2", "web").await;
    support::wait_until("team-b/four in the store", || {
        informer.store().get(Some("team-b"), "four").is_some()
    })
    .await;
    let web = informer.store().by_index("app", "web").expect("index");
    assert_eq!(names(&web), ["team-a/one", "team-b/four", "team-b/two"]);

    let error = cache
        .get::<ConfigMap>(Some("team-c"), "hidden")
        .await
        .expect_err("team-c is not watched");
    assert!(matches!(error, CacheError::NamespaceNotWatched { .. }));
    assert_eq!(
        error.to_string(),
        "namespace \"team-c\" is not watched by the cache of ConfigMap (v1) in cluster c0 \
         (it watches team-a, team-b)"
    );
    let error = cache
        .list::<ConfigMap>(Some("team-c"))
        .await
        .expect_err("not watched");
    assert!(
        error.to_string().contains("(it watches team-a, team-b)"),
        "{error}"
    );
    assert!(
        cache
            .get::<ConfigMap>(Some("team-b"), "four")
            .await
            .expect("watched")
            .is_some()
    );
    assert!(
        informer.last_error().is_none(),
        "no watch failed: {:?}",
        informer.last_error()
    );

    // Cluster-scoped types are not affected: watched cluster-wide (by the admin,
    // since the tenant may not list Namespaces).
    let admin_cache = Cache::new(
        ClusterName::from("c0"),
        admin,
        CacheOptions::default().default_namespaces(["team-a"]),
        CancellationToken::new(),
    );
    let namespaces = admin_cache.informer::<k8s_openapi::api::core::v1::Namespace>();
    assert_eq!(namespaces.spec().namespaces, WatchNamespaces::All);
    namespaces.wait_synced(WAIT).await.expect("synced");
    assert!(namespaces.store().get(None, "team-c").is_some());
}

/// In each of two clusters, a user allowed only get/list/watch/patch on ConfigMaps
/// in `team-a` (`deploy/rbac/namespaced-controller.yaml`); a controller of
/// ConfigMaps whose clusters' caches default to `team-a` reconciles every ConfigMap
/// there within 10 s of start, and nothing logs a 403.
#[tokio::test(flavor = "current_thread")]
async fn p01_namespaced_controller_reconciles_with_a_role_only() {
    let fleet = Fleet::start(2).await.expect("start fleet");
    let mut tenants = Vec::new();
    for index in 0..2 {
        let cluster = fleet.cluster(index);
        let admin = cluster.client().expect("client");
        for namespace in ["team-a", "team-b"] {
            create_namespace(&admin, namespace).await;
        }
        for name in ["alpha", "beta", "gamma"] {
            create_cm(&admin, "team-a", name, "web").await;
        }
        create_cm(&admin, "team-b", "other", "web").await;
        let spec = rbac::user("tenant", "namespaced-controller.yaml", "team-a");
        tenants.push(cluster.create_user(spec).await.expect("user"));
    }

    let logs = support::logs::Capture::default();
    let _guard = logs.set_default("debug");
    let options = ClusterOptions::default().cache(CacheOptions::default().default_namespaces(["team-a"]));
    let client = |index: usize| tenants[index].client().expect("client");
    // The manager's own cluster runs no controller; the fleet is c0 and c1, each
    // reached as the tenant.
    let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
    let provider = Arc::new(Clusters::new());
    for index in 0..2 {
        let name = format!("c{index}");
        let cluster = Cluster::with_options(name.clone(), client(index), options.clone());
        provider.add(Arc::new(cluster)).await.expect("add");
    }
    let manager = Manager::with_provider(local, provider);

    async fn reconcile(req: ReconcileRequest<ConfigMap>, _: Arc<()>) -> Result<Action, kube::Error> {
        let Some(cm) = &req.object else {
            return Ok(Action::await_change());
        };
        if cm
            .metadata
            .annotations
            .iter()
            .flatten()
            .any(|(k, _)| k == ANNOTATION)
        {
            return Ok(Action::await_change());
        }
        let namespace = cm.metadata.namespace.as_deref().unwrap_or_default();
        let patch = serde_json::json!({ "metadata": { "annotations": { ANNOTATION: "yes" } } });
        Api::<ConfigMap>::namespaced(req.client(), namespace)
            .patch(req.request.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(Action::await_change())
    }
    fn retry(_: &Request, _: &kube::Error, _: Arc<()>) -> Action {
        Action::backoff()
    }
    Controller::builder::<ConfigMap>(&manager)
        .register(reconcile, retry, Arc::new(()))
        .await
        .expect("controller");
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let started = Instant::now();
    let runs = manager.clone();
    let run_token = token.clone();
    tokio::spawn(async move { runs.start(run_token).await.expect("manager runs") });

    let admins: Vec<Api<ConfigMap>> = (0..2)
        .map(|i| Api::namespaced(fleet.cluster(i).client().expect("client"), "team-a"))
        .collect();
    loop {
        let mut pending = 0;
        for api in &admins {
            let list = api.list(&ListParams::default()).await.expect("list");
            pending += list
                .items
                .iter()
                .filter(|cm| {
                    !cm.metadata
                        .annotations
                        .iter()
                        .flatten()
                        .any(|(k, _)| k == ANNOTATION)
                })
                .count();
        }
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{pending} ConfigMaps in team-a not reconciled within 10 s; logs:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    for index in 0..2 {
        let other = Api::<ConfigMap>::namespaced(fleet.cluster(index).client().expect("client"), "team-b")
            .get("other")
            .await
            .expect("get");
        assert!(other.metadata.annotations.is_none(), "team-b is left alone");
    }
    let text = logs.text();
    assert!(text.contains("watch started"), "the capture works: {text}");
    // Not a bare "403": random ports contain it.
    for needle in [
        "status_code=403",
        "code: 403",
        "403 Forbidden",
        "forbidden",
        "Forbidden",
    ] {
        assert!(!text.contains(needle), "a 403 was logged:\n{text}");
    }
    eprintln!("p01: every ConfigMap of team-a in 2 clusters reconciled {elapsed:?} after start");
}

/// x07: `deploy/operator/overlays/leader-election/leader-election-rbac.yaml` pins the Lease rights to the leader-election
/// Lease: a user holding exactly its rules creates, reads and renews
/// `fleet-operator`, and may neither read nor write another Lease of the namespace
/// (another program's election, or a shard fence).
#[tokio::test]
async fn x07_the_operators_rbac_pins_its_lease_by_name() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    let fleet = Fleet::start(1).await.expect("start fleet");
    let cluster = fleet.cluster(0);
    let admin = cluster.client().expect("client");
    create_namespace(&admin, "fleet-system").await;
    let lease = |name: &str, holder: &str| Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(admin, "fleet-system")
        .create(&PostParams::default(), &lease("other", "someone"))
        .await
        .expect("create another Lease");
    let (rules, namespaced) =
        rbac::deploy_rules("operator/overlays/leader-election/leader-election-rbac.yaml");
    assert!(namespaced);
    let user = cluster
        .create_user(kube_envtest::UserSpec::new("fleet-operator").allow_in("fleet-system", rules))
        .await
        .expect("user");
    let leases: Api<Lease> = Api::namespaced(user.client().expect("client"), "fleet-system");

    let created = leases
        .create(&PostParams::default(), &lease("fleet-operator", "a"))
        .await
        .expect("create its own Lease");
    let mut own = leases.get("fleet-operator").await.expect("get its own Lease");
    assert_eq!(own.metadata.uid, created.metadata.uid);
    own.spec.get_or_insert_default().holder_identity = Some("b".into());
    leases
        .replace("fleet-operator", &PostParams::default(), &own)
        .await
        .expect("update its own Lease");

    let forbidden = |result: Result<Lease, kube::Error>| matches!(result, Err(kube::Error::Api(status)) if status.code == 403);
    assert!(forbidden(leases.get("other").await), "read another Lease");
    let mut other = lease("other", "fleet-operator");
    other.metadata.namespace = Some("fleet-system".into());
    assert!(
        forbidden(leases.replace("other", &PostParams::default(), &other).await),
        "overwrote another Lease"
    );
    let patch = serde_json::json!({ "spec": { "holderIdentity": "fleet-operator" } });
    assert!(
        forbidden(
            leases
                .patch("other", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        ),
        "patched another Lease"
    );
}
