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
#[path = "../../crates/multicluster-runtime/tests/support/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../operator.rs"]
mod operator;
#[allow(dead_code)]
#[path = "../../crates/multicluster-runtime/tests/support/rbac.rs"]
mod rbac;
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
/// `/readyz` with both clusters listed, serves their metrics, annotates their
/// ConfigMaps and records an Event in each, and stops cleanly.
#[tokio::test]
async fn o08_operator_example_answers_readyz_and_reconciles_the_fleet() {
    use clap::Parser;
    let fleet = Fleet::start(3).await.expect("start fleet");
    // Every client of the operator holds exactly the rules of deploy/operator/.
    let (host_rules, _) = rbac::deploy_rules("operator/rbac.yaml");
    let (member_rules, _) = rbac::deploy_rules("operator/fleet-member-rbac.yaml");
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
        .create_user(UserSpec::new("fleet-operator").allow_in("fleet-system", host_rules))
        .await
        .expect("host user")
        .client()
        .expect("client");
    let args = operator::Args::parse_from(["operator", "--bind-address", "127.0.0.1:0", "--leader-elect"]);
    let manager = operator::build(&args, host.clone()).await.expect("build");
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });

    let address = eventually("the endpoint listens", || async { manager.http_address() }).await;
    let verbose = eventually("/readyz answers 200 with both clusters synced", || async {
        let response = http::get(address, "/readyz?verbose").await;
        let synced = |name: &str| {
            response
                .body
                .lines()
                .any(|l| l.contains(&format!("cluster \"{name}\" synced")))
        };
        (response.status == 200 && synced("cluster-1") && synced("cluster-2")).then_some(response.body)
    })
    .await;
    eprintln!("o08: /readyz?verbose\n{verbose}");
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
    let metrics = http::get(address, "/metrics").await.body;
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
