//! The examples run against a local fleet of real apiservers, checked by their effect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use examples::uniform::{self, Progress};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_envtest::{Fleet, UserSpec};
use multicluster_runtime::Cluster;
use tokio_util::sync::CancellationToken;

#[allow(dead_code)]
#[path = "../create_kubeconfig_secret.rs"]
mod create_kubeconfig_secret;
#[allow(dead_code)]
#[path = "../fleet_webhook.rs"]
mod fleet_webhook;
#[allow(dead_code)]
#[path = "../../crates/multicluster-runtime/tests/support/http.rs"]
mod http;
#[path = "support/manifests.rs"]
mod manifests;
#[allow(dead_code)]
#[path = "../operator.rs"]
mod operator;
#[allow(dead_code)]
#[path = "../../crates/multicluster-runtime/tests/support/rbac.rs"]
mod rbac;
#[allow(dead_code)]
#[path = "../sharded.rs"]
mod sharded;
#[allow(dead_code)]
#[path = "../sync_local_to_fleet.rs"]
mod sync_local_to_fleet;
#[allow(dead_code)]
#[path = "../uniform_reconciler.rs"]
mod uniform_reconciler;

const WAIT: Duration = Duration::from_secs(60);

/// A fleet of four: apiserver 0 for the manager, 1..=3 named `cluster-<i>`.
async fn fleet() -> (Fleet, Arc<Cluster>, Vec<Arc<Cluster>>) {
    let fleet = Fleet::start(4).await.expect("start fleet");
    let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
    let members = (1..=3)
        .map(|i| {
            Arc::new(Cluster::new(
                format!("cluster-{i}"),
                fleet.cluster(i).client().expect("client"),
            ))
        })
        .collect();
    (fleet, local, members)
}

/// Polls `check` until it returns `Some`, or fails naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn configmap(client: Client, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client, "default")
        .get_opt(name)
        .await
        .expect("get configmap")
}

#[tokio::test]
async fn q01_uniform_reconciler_reconciles_every_clusters_configmaps() {
    let (_fleet, local, members) = fleet().await;
    let token = CancellationToken::new();
    let progress = Progress::new();
    let running = tokio::spawn(uniform_reconciler::run(
        local,
        members.clone(),
        progress.clone(),
        token.clone(),
    ));
    for member in &members {
        let name = member.name().as_str().to_owned();
        eventually(&format!("app-settings annotated in {name}"), || async {
            let cm = configmap(member.client(), "app-settings").await?;
            (cm.annotations().get(uniform::RECONCILED_IN) == Some(&name)).then_some(())
        })
        .await;
    }
    let counts = progress.per_cluster();
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        vec!["cluster-1", "cluster-2", "cluster-3"]
    );
    token.cancel();
    running.await.expect("join").expect("the example stops cleanly");
}

/// w06: the `fleet_webhook` example on a local fleet (the manager's apiserver, two
/// members, one that joins later): in every member a ConfigMap with the forbidden
/// key is refused with a message naming that member and an allowed one is labelled
/// with it; the joining member is enforced within seconds; the member that leaves
/// is unwired (it admits the forbidden key); the manager stops cleanly.
#[tokio::test]
async fn w06_fleet_webhook_example_refuses_labels_wires_and_unwires() {
    let fleet = Fleet::start(4).await.expect("start fleet");
    let cluster = |index: usize| {
        Arc::new(Cluster::new(
            format!("cluster-{index}"),
            fleet.cluster(index).client().expect("client"),
        ))
    };
    let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
    let (manager, provider, _) = fleet_webhook::manager(local).await.expect("manager");
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });
    let demo = fleet_webhook::script(&provider, vec![cluster(1), cluster(2)], cluster(3))
        .await
        .expect("the script runs");
    let names = ["cluster-1", "cluster-2", "cluster-3"];
    assert_eq!(
        demo.refusals.keys().map(String::as_str).collect::<Vec<_>>(),
        names
    );
    for (name, message) in &demo.refusals {
        assert!(
            message.contains(&format!("is not allowed in cluster {name}")),
            "{name}: {message}"
        );
    }
    for name in names {
        assert_eq!(
            demo.labels[name].as_deref(),
            Some(name),
            "the label of {name}'s ConfigMap"
        );
    }
    assert!(
        demo.joined_enforced_in < Duration::from_secs(10),
        "cluster-3 enforced after {:?}",
        demo.joined_enforced_in
    );
    assert_eq!(demo.left_unwired.as_deref(), Some("cluster-1"));
    token.cancel();
    running.await.expect("join").expect("the example stops cleanly");
}

async fn log_level(client: Client) -> Option<String> {
    configmap(client, "shared-settings")
        .await?
        .data?
        .get("log-level")
        .cloned()
}

#[tokio::test]
async fn q02_sync_copies_to_the_fleet_reverts_drift_and_removes_copies() {
    let (fleet, local, members) = fleet().await;
    let originals: Api<ConfigMap> = Api::namespaced(fleet.cluster(0).client().expect("client"), "default");
    originals
        .create(&PostParams::default(), &sync_local_to_fleet::original("info"))
        .await
        .expect("original");
    let token = CancellationToken::new();
    let running = tokio::spawn(sync_local_to_fleet::run(local, members.clone(), token.clone()));

    for member in &members {
        eventually(&format!("a copy in {}", member.name()), || async {
            (log_level(member.client()).await? == "info").then_some(())
        })
        .await;
    }

    let drifted: Api<ConfigMap> = Api::namespaced(members[1].client(), "default");
    let edit = serde_json::json!({ "data": { "log-level": "debug" } });
    drifted
        .patch("shared-settings", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("edit copy");
    eventually("the manual edit reverted", || async {
        (log_level(members[1].client()).await? == "info").then_some(())
    })
    .await;

    originals
        .delete("shared-settings", &DeleteParams::default())
        .await
        .expect("delete original");
    for member in &members {
        eventually(&format!("the copy in {} removed", member.name()), || async {
            configmap(member.client(), "shared-settings")
                .await
                .is_none()
                .then_some(())
        })
        .await;
    }
    token.cancel();
    running.await.expect("join").expect("the example stops cleanly");
}

/// o08: the `operator` example against a local fleet (the manager's apiserver and
/// two more, found through kubeconfig Secrets), with leader election on: it answers
/// `/readyz` on its probe port (the fleet one line, reasons withheld) once both
/// clusters have synced, serves their metrics over HTTPS to a ServiceAccount
/// allowed to read them (x05: 401 without a token), annotates their ConfigMaps and
/// records an Event in each, and stops cleanly.
#[tokio::test]
async fn o08_operator_example_answers_readyz_and_reconciles_the_fleet() {
    use clap::Parser;
    let fleet = Fleet::start(3).await.expect("start fleet");
    // Every client of the operator holds exactly the rules of deploy/operator/ (its
    // leader-election overlay); c07 below runs it with the rendered manifests.
    let (mut host_rules, _) = rbac::deploy_rules("operator/base/rbac.yaml");
    let (lease_rules, _) = rbac::deploy_rules("operator/overlays/leader-election/leader-election-rbac.yaml");
    host_rules.extend(lease_rules);
    let (member_rules, _) = rbac::deploy_rules("operator/member/member-rbac.yaml");
    let (metrics_auth_rules, _) = rbac::deploy_rules("operator/base/metrics-auth-rbac.yaml");
    let (metrics_reader_rules, _) = rbac::deploy_rules("operator/base/metrics-reader-rbac.yaml");
    let admin = fleet.cluster(0).client().expect("client");
    let mut members = Vec::new();
    for index in 1..=2 {
        let user = fleet
            .cluster(index)
            .create_user(UserSpec::new("fleet-operator").allow(member_rules.clone()))
            .await
            .expect("member user");
        members.push(operator::Member {
            name: format!("cluster-{index}"),
            admin: fleet.cluster(index).client().expect("client"),
            kubeconfig: user.kubeconfig().clone(),
        });
    }
    operator::seed(&admin, "fleet-system", &members)
        .await
        .expect("seed");
    let host = fleet
        .cluster(0)
        .create_user(
            UserSpec::new("fleet-operator")
                .allow_in("fleet-system", host_rules)
                .allow(metrics_auth_rules),
        )
        .await
        .expect("host user")
        .client()
        .expect("client");
    let scraper = rbac::service_account_token(&admin, "fleet-system", "scraper").await;
    rbac::bind_service_account(
        &admin,
        "o08-metrics-reader",
        metrics_reader_rules,
        "fleet-system",
        "scraper",
    )
    .await;
    let args = operator::Args::parse_from([
        "operator",
        "--health-probe-bind-address",
        "127.0.0.1:0",
        "--metrics-bind-address",
        "127.0.0.1:0",
        "--leader-elect",
    ]);
    // The fleet's apiservers listen on 127.0.0.1, which the operator refuses by default.
    let args = operator::Args {
        allow_loopback_servers: true,
        ..args
    };
    let manager = operator::build(&args, host.clone()).await.expect("build");
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });

    let address = eventually("the probe endpoint listens", || async { manager.probe_address() }).await;
    let synced = |name: &str| {
        manager.cluster_states().iter().any(|(cluster, state)| {
            cluster == name && *state == multicluster_runtime::manager::ClusterState::Synced
        })
    };
    let verbose = eventually("/readyz answers 200 with both clusters synced", || async {
        let response = http::get(address, "/readyz?verbose").await;
        (response.status == 200 && synced("cluster-1") && synced("cluster-2")).then_some(response.body)
    })
    .await;
    eprintln!("o08: /readyz?verbose\n{verbose}");
    assert!(verbose.contains("[+]clusters ok\n"), "{verbose}");
    assert!(
        !verbose.contains("cluster-1"),
        "the probe port names no cluster: {verbose}"
    );
    assert_eq!(http::get(address, "/healthz").await.status, 200);

    for index in 1..=2 {
        let client = fleet.cluster(index).client().expect("client");
        let name = format!("cluster-{index}");
        eventually(&format!("app-settings annotated in {name}"), || async {
            let cm = configmap(client.clone(), "app-settings").await?;
            (cm.annotations().get(uniform::RECONCILED_IN) == Some(&name)).then_some(())
        })
        .await;
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
        eventually(&format!("an Annotated Event in {name}"), || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Annotated"))
                .then_some(())
        })
        .await;
    }
    let metrics_address = manager.metrics_address().expect("the metrics endpoint listens");
    let (tls, _) = http::accepting_any();
    let anonymous = http::get_tls(metrics_address, "/metrics", None, tls.clone())
        .await
        .expect("HTTPS");
    assert_eq!(anonymous.status, 401);
    let metrics = eventually("the scraper reads the metrics", || async {
        let response = http::get_tls(metrics_address, "/metrics", Some(&scraper), tls.clone())
            .await
            .ok()?;
        (response.status == 200).then_some(response.body)
    })
    .await;
    for index in 1..=2 {
        let series = format!(
            "controller_runtime_reconcile_total{{controller=\"fleet-operator\",cluster=\"cluster-{index}\",result=\"success\"}}"
        );
        assert!(metrics.contains(&series), "{series} missing in:\n{metrics}");
    }
    assert!(
        metrics.contains("leader_election_master_status{name=\"fleet-system/fleet-operator\"} 1"),
        "{metrics}"
    );

    token.cancel();
    running.await.expect("join").expect("the operator stops cleanly");
}

/// c07: every kustomization of `deploy/operator/` (the base, each overlay, the
/// member's) renders with kustomize and is accepted by a real apiserver with
/// server-side apply and `dryRun=All` (schema, defaulting, admission), the
/// ServiceMonitor against the Prometheus Operator's own CRD, the webhook's
/// Certificate and Issuers against cert-manager's; and each Deployment's
/// pod passes Pod Security `restricted` in its namespace, where a pod that may run
/// as root is refused.
#[tokio::test]
async fn c07_every_kustomization_applies_with_server_side_dry_run() {
    use k8s_openapi::api::apps::v1::Deployment;
    let tools = manifests::tools();
    let fleet = Fleet::start(1).await.expect("start fleet");
    let admin = fleet.cluster(0).client().expect("client");
    let mut crds = manifests::read_objects(&tools.join("servicemonitors.crd.yaml"));
    crds.extend(manifests::read_objects(&tools.join("cert-manager.crds.yaml")));
    manifests::apply_all(&admin, &crds, false).await;
    for (group, kind) in [
        ("monitoring.coreos.com", "ServiceMonitor"),
        ("cert-manager.io", "Certificate"),
        ("cert-manager.io", "Issuer"),
    ] {
        let gvk = kube::api::GroupVersionKind::gvk(group, "v1", kind);
        eventually(&format!("the {kind} CRD served"), || async {
            kube::discovery::pinned_kind(&admin, &gvk).await.ok()
        })
        .await;
    }
    for kustomization in manifests::KUSTOMIZATIONS {
        let objects = manifests::render(&tools, kustomization);
        assert!(objects.len() > 2, "{kustomization}: {objects:#?}");
        // A namespaced object's dry run needs its namespace to exist.
        let namespaces: Vec<_> = objects
            .iter()
            .filter(|o| o["kind"] == "Namespace")
            .cloned()
            .collect();
        manifests::apply_all(&admin, &namespaces, false).await;
        manifests::apply_all(&admin, &objects, true).await;
        for deployment in objects.iter().filter(|o| o["kind"] == "Deployment") {
            pod_security_admits_only_its_pod(&admin, deployment).await;
        }
        eprintln!("c07: {kustomization}: {} objects accepted", objects.len());
    }
    let stored = Api::<Deployment>::namespaced(admin.clone(), "fleet-system")
        .get_opt("fleet-operator")
        .await
        .expect("get");
    assert!(stored.is_none(), "a dry run stores nothing");
}

/// The pod of `deployment` passes Pod Security in the Deployment's namespace (as
/// labelled by the kustomization just applied: `restricted`), and the same pod
/// allowed to run as root is refused there.
async fn pod_security_admits_only_its_pod(admin: &Client, deployment: &serde_json::Value) {
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "fleet-operator-c07", "namespace": deployment["metadata"]["namespace"] },
        "spec": deployment["spec"]["template"]["spec"],
    });
    manifests::apply(admin, &pod, true)
        .await
        .expect("the operator's pod passes Pod Security restricted");
    let mut as_root = pod.clone();
    as_root["spec"]["securityContext"]["runAsNonRoot"] = false.into();
    let refused = manifests::apply(admin, &as_root, true)
        .await
        .expect_err("a pod that may run as root is refused in the operator's namespace");
    assert!(refused.to_string().contains("PodSecurity"), "{refused}");
}

/// A replica of the operator as the rendered Deployment runs it: its container's
/// arguments (`$(POD_NAME)` = `pod`), local listeners, loopback servers allowed
/// (the test's apiservers listen on 127.0.0.1).
fn replica_args(deployment: &serde_json::Value, pod: &str) -> operator::Args {
    use clap::Parser;
    let args = manifests::container_args(deployment, pod)
        .into_iter()
        .filter(|a| !a.contains("-bind-address="));
    let local = [
        "--health-probe-bind-address=127.0.0.1:0",
        "--metrics-bind-address=127.0.0.1:0",
        "--allow-loopback-servers",
        "--shutdown-timeout=5",
    ]
    .map(str::to_owned);
    operator::Args::parse_from(std::iter::once("operator".to_owned()).chain(args).chain(local))
}

/// Applies `overlay` of `deploy/operator/` to the hub `index` of `fleet` (stored:
/// the Deployment too, which nothing runs here), registers the `members` through
/// `create_kubeconfig_secret`, and starts the Deployment's replicas in-process, each
/// with a token of the ServiceAccount fleet-system/fleet-operator: exactly the RBAC
/// the overlay grants.
async fn start_replicas(
    fleet: &Fleet,
    tools: &std::path::Path,
    overlay: &str,
    index: usize,
    members: &[usize],
) -> Vec<(
    String,
    multicluster_runtime::Manager,
    CancellationToken,
    tokio::task::JoinHandle<multicluster_runtime::Result<()>>,
)> {
    let hub = fleet.cluster(index);
    let admin = hub.client().expect("client");
    let objects = manifests::render(tools, overlay);
    manifests::apply_all(&admin, &objects, false).await;
    for &member in members {
        let cluster = fleet.cluster(member);
        let endpoint = create_kubeconfig_secret::MemberEndpoint::from_kubeconfig(cluster.kubeconfig(), None)
            .expect("member endpoint");
        let target = create_kubeconfig_secret::Target {
            name: format!("member-{member}"),
            namespace: "fleet-system".into(),
            account_namespace: "fleet-system".into(),
            account: "fleet-operator-member".into(),
            expiration_seconds: 3600,
        };
        create_kubeconfig_secret::create(&cluster.client().expect("client"), &endpoint, &admin, &target)
            .await
            .expect("create the kubeconfig Secret");
    }
    let token = rbac::token_of(&admin, "fleet-system", "fleet-operator").await;
    let endpoint =
        create_kubeconfig_secret::MemberEndpoint::from_kubeconfig(hub.kubeconfig(), None).expect("hub");
    let kubeconfig =
        create_kubeconfig_secret::token_kubeconfig("hub", &endpoint, &token).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let deployment = manifests::find(&objects, "Deployment", "fleet-operator");
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    let mut started = Vec::new();
    for replica in 0..replicas {
        let pod = format!(
            "fleet-operator-{overlay_name}-{replica}",
            overlay_name = overlay.rsplit('/').next().unwrap_or(overlay)
        );
        let args = replica_args(deployment, &pod);
        let client = kube::Client::try_from(config.clone()).expect("client");
        let manager = operator::build(&args, client).await.expect("build");
        let token = CancellationToken::new();
        let running = tokio::spawn({
            let (manager, token) = (manager.clone(), token.clone());
            async move { manager.start(token).await }
        });
        started.push((pod, manager, token, running));
    }
    started
}

/// Creates a managed ConfigMap `name` in each member cluster (existing is fine),
/// and waits until each is annotated with its member's name.
async fn reconciled_everywhere(fleet: &Fleet, members: &[usize], name: &str) {
    for &member in members {
        let client = fleet.cluster(member).client().expect("client");
        uniform::create_managed(client.clone(), name)
            .await
            .expect("ConfigMap");
        let cluster = format!("member-{member}");
        eventually(&format!("{name} annotated in {cluster}"), || async {
            let cm = configmap(client.clone(), name).await?;
            (cm.annotations().get(uniform::RECONCILED_IN) == Some(&cluster)).then_some(())
        })
        .await;
    }
}

/// c07: the operator runs with exactly the RBAC of the rendered manifests: in the
/// manager's cluster, a token of the ServiceAccount the overlay binds; in each
/// member, a token of the member's ServiceAccount (`deploy/operator/member`), put
/// into the kubeconfig Secret by `create_kubeconfig_secret` (c06). With the
/// leader-election overlay, its two replicas: one leads and reconciles; when it
/// stops, the other takes over and reconciles a new ConfigMap. With the sharding
/// overlay, its three replicas split the members: each is owned by exactly one
/// replica, not all by the same, and each member's new ConfigMap is reconciled.
#[tokio::test]
async fn c07_the_operator_runs_with_the_rendered_rbac_through_a_leader_handover_and_a_sharded_split() {
    use k8s_openapi::api::coordination::v1::Lease;
    let tools = manifests::tools();
    // 0: the leader-election overlay's cluster, 1: the sharding overlay's, 2 and 3: members.
    let fleet = Fleet::start(4).await.expect("start fleet");
    let members = [2, 3];
    let member_objects = manifests::render(&tools, "member");
    for &member in &members {
        let admin = fleet.cluster(member).client().expect("client");
        manifests::apply_all(&admin, &member_objects, false).await;
    }

    let replicas = start_replicas(&fleet, &tools, "overlays/leader-election", 0, &members).await;
    assert_eq!(replicas.len(), 2, "the overlay runs two replicas");
    reconciled_everywhere(&fleet, &members, "app-settings").await;
    let leader = eventually("one replica leads", || async {
        let leading: Vec<_> = replicas.iter().filter(|(_, m, _, _)| m.is_leader()).collect();
        (leading.len() == 1).then(|| leading[0].0.clone())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(fleet.cluster(0).client().expect("client"), "fleet-system");
    let holder = |lease: Lease| lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(
        holder(leases.get("fleet-operator").await.expect("the Lease")),
        Some(leader.clone())
    );
    let mut survivor = None;
    for (pod, manager, token, running) in replicas {
        if pod == leader {
            token.cancel();
            running.await.expect("join").expect("the leader stops cleanly");
        } else {
            survivor = Some((pod, manager, token, running));
        }
    }
    let (pod, manager, token, running) = survivor.expect("a second replica");
    eventually("the other replica leads", || async {
        manager.is_leader().then_some(())
    })
    .await;
    assert_eq!(
        holder(leases.get("fleet-operator").await.expect("the Lease")),
        Some(pod)
    );
    reconciled_everywhere(&fleet, &members, "after-handover").await;
    token.cancel();
    running
        .await
        .expect("join")
        .expect("the new leader stops cleanly");

    let replicas = start_replicas(&fleet, &tools, "overlays/sharding", 1, &members).await;
    assert_eq!(replicas.len(), 3, "the overlay runs three replicas");
    let names: Vec<String> = members.iter().map(|m| format!("member-{m}")).collect();
    let owners = eventually(
        "each member owned by exactly one replica, not all by one",
        || async {
            let mut owners = std::collections::BTreeMap::new();
            for (pod, manager, _, _) in &replicas {
                for cluster in manager.owned_clusters() {
                    if !cluster.as_str().is_empty()
                        && owners.insert(cluster.as_str().to_owned(), pod.clone()).is_some()
                    {
                        return None;
                    }
                }
            }
            let split = owners.values().collect::<std::collections::BTreeSet<_>>().len() > 1;
            (owners.keys().cloned().collect::<Vec<_>>() == names && split).then_some(owners)
        },
    )
    .await;
    eprintln!("c07: sharded owners {owners:?}");
    reconciled_everywhere(&fleet, &members, "after-split").await;
    for (_, _, token, running) in replicas {
        token.cancel();
        running
            .await
            .expect("join")
            .expect("a sharded replica stops cleanly");
    }
}

/// Engages nothing: for running a provider alone.
struct Unaware;

#[multicluster_runtime::async_trait]
impl multicluster_runtime::Aware for Unaware {
    async fn engage(
        &self,
        _: CancellationToken,
        _: multicluster_runtime::ClusterName,
        _: Arc<Cluster>,
    ) -> multicluster_runtime::Result<()> {
        Ok(())
    }
}

/// x06: the `operator` example reads kubeconfig Secrets with the policy for
/// untrusted kubeconfigs and `deny_local()`: by default a Secret whose server is a
/// loopback address (here the host apiserver itself, on 127.0.0.1) gets a
/// `KubeconfigRefused` Event naming the deny-list entry and no cluster;
/// `--allow-loopback-servers` lets it through, and a metadata address stays refused
/// with it.
#[tokio::test]
async fn x06_operator_example_refuses_loopback_servers_unless_allowed() {
    use clap::Parser;
    use k8s_openapi::api::events::v1::Event;
    use multicluster_runtime::ProviderRunnable;
    let fleet = Fleet::start(1).await.expect("start fleet");
    let admin = fleet.cluster(0).client().expect("client");
    let own = fleet.cluster(0).kubeconfig().clone();
    let mut metadata = own.clone();
    for cluster in &mut metadata.clusters {
        if let Some(cluster) = cluster.cluster.as_mut() {
            cluster.server = Some("https://169.254.169.254".into());
        }
    }
    let members = [("loopback", own), ("metadata", metadata)].map(|(name, kubeconfig)| operator::Member {
        name: name.into(),
        admin: admin.clone(),
        kubeconfig,
    });
    operator::seed(&admin, "fleet-system", &members)
        .await
        .expect("seed");
    let events: Api<Event> = Api::namespaced(admin.clone(), "fleet-system");
    let refused = |name: &'static str| {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let on = e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name);
                (on && e.reason.as_deref() == Some("KubeconfigRefused")).then(|| e.note.unwrap_or_default())
            })
        }
    };

    let run = |args: operator::Args| {
        let provider = operator::provider(&args, admin.clone());
        let token = CancellationToken::new();
        let running = tokio::spawn({
            let (provider, token) = (provider.clone(), token.clone());
            async move { provider.start(token, Arc::new(Unaware)).await }
        });
        (provider, token, running)
    };
    let (provider, token, running) = run(operator::Args::parse_from(["operator"]));
    let note = eventually("the loopback Secret refused", || refused("loopback")).await;
    assert!(
        note.contains("server host is in the deny-list entry 127.0.0.0/8"),
        "{note}"
    );
    let note = eventually("the metadata Secret refused", || refused("metadata")).await;
    assert!(note.contains("deny-list entry 169.254.0.0/16"), "{note}");
    assert!(provider.names().is_empty(), "{:?}", provider.names());
    token.cancel();
    running.await.expect("join").expect("the provider stops");

    let (provider, token, running) = run(operator::Args::parse_from([
        "operator",
        "--allow-loopback-servers",
    ]));
    eventually("the loopback Secret engaged", || async {
        provider
            .names()
            .iter()
            .any(|n| n.as_str() == "loopback")
            .then_some(())
    })
    .await;
    assert!(
        provider.names().iter().all(|n| n.as_str() != "metadata"),
        "{:?}",
        provider.names()
    );
    token.cancel();
    running.await.expect("join").expect("the provider stops");
}

/// The arguments of a replica started by sh05, one per line: set only in the
/// replica processes, which run [`sharded_replica_child`].
const SHARDED_REPLICA_ARGS: &str = "SHARDED_REPLICA_ARGS";

/// A replica of the `sharded` example, as a process of this test binary: sh05
/// starts it with `sharded_replica_child --exact --ignored` and its arguments in
/// `SHARDED_REPLICA_ARGS` (the example's own binary is not built for this test).
#[test]
#[ignore = "a replica process of sh05, started by it"]
fn sharded_replica_child() {
    use clap::Parser;
    let Ok(args) = std::env::var(SHARDED_REPLICA_ARGS) else {
        return;
    };
    examples::init_tracing();
    let args = sharded::Args::parse_from(std::iter::once("sharded").chain(args.lines()));
    let identity = args.replica.expect("--replica");
    let dir = args.fleet_dir.expect("--fleet-dir");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(sharded::run_replica(&identity, &dir, args.bind_address))
        .expect("the replica stops cleanly");
}

/// sh05: the `sharded` example's supervisor, with its three replicas as separate
/// processes, over 12 namespaces-as-clusters of two apiservers: every member is
/// owned by exactly one replica; after the busiest one is killed with SIGKILL, its
/// clusters are owned by the survivors within lease duration + probe interval + a
/// little slack, and only its clusters moved; the survivors exit 0 on SIGTERM and
/// leave no Lease held.
#[tokio::test]
async fn sh05_sharded_example_moves_a_killed_replicas_clusters() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("fleet directory");
    let this_binary = std::env::current_exe().expect("test binary");
    let demo = sharded::supervise(dir.path(), |args| {
        let mut command = std::process::Command::new(&this_binary);
        command
            .args(["sharded_replica_child", "--exact", "--ignored", "--nocapture"])
            .env(SHARDED_REPLICA_ARGS, args.join("\n"));
        command
    })
    .await
    .expect("the example runs");

    let members: Vec<String> = (0..sharded::MEMBERS).map(sharded::member).collect();
    // A map has one owner per cluster; the supervisor only accepts a split in which
    // no two replicas report the same cluster.
    assert_eq!(demo.before.keys().cloned().collect::<Vec<_>>(), members);
    assert!(
        demo.before
            .values()
            .all(|o| sharded::REPLICAS.contains(&o.as_str()))
    );
    let lost = sharded::owned_by(&demo.before, &demo.killed);
    assert!(!lost.is_empty(), "the killed replica owned clusters: {demo:?}");

    assert_eq!(demo.after.keys().cloned().collect::<Vec<_>>(), members);
    for (cluster, owner) in &demo.after {
        assert_ne!(*owner, demo.killed, "{cluster} still owned by the killed replica");
        if !lost.contains(cluster) {
            assert_eq!(
                *owner, demo.before[cluster],
                "{cluster} moved though its owner lives"
            );
        }
    }
    let slack = Duration::from_secs(3);
    assert!(
        demo.moved_in <= sharded::LEASE + sharded::PROBE + slack,
        "the move took {:?}",
        demo.moved_in
    );
    assert_eq!(demo.survivors_exit.len(), 2);
    for (identity, status) in &demo.survivors_exit {
        assert!(status.success(), "replica {identity} exited with {status}");
    }
    assert_eq!(demo.leases_held_after_stop, 0, "Leases left held");
    eprintln!(
        "sh05: {} clusters of replica {} moved in {:.1} s; test took {:.1} s",
        lost.len(),
        demo.killed,
        demo.moved_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
