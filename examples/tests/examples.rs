//! The examples run against a local fleet of real apiservers, checked by their effect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use examples::uniform::{self, Progress};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_envtest::Fleet;
use multicluster_runtime::Cluster;
use tokio_util::sync::CancellationToken;

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
