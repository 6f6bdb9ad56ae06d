//! The controller's own tasks per engaged cluster.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Action, Controller, ReconcileRequest};
use crate::cluster::{Cluster, ClusterHealth, ClusterName};
use crate::manager::Manager;
use crate::multicluster::{Aware, Engagement};

/// A client of an apiserver that never answers (nothing listens on port 9): the
/// caches of its clusters never sync, so every wait of an engagement stays pending.
fn unreachable_client() -> kube::Client {
    let config = kube::Config::new("https://127.0.0.1:9".parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

async fn reconcile(_: ReconcileRequest<ConfigMap>, _: Arc<()>) -> Result<Action, kube::Error> {
    Ok(Action::await_change())
}

/// v04 (issue 21): a controller runs one task per engaged cluster, however many
/// sources it has and whether or not it follows the cluster's health. It ran one
/// per source, one for the health, one waiting for the caches to sync and one
/// waiting for the engagement's end (five here), each with its own task header and
/// cancellation wait: ≈ 1.5 KB per namespace-cluster of a large fleet. The one
/// task still disengages the cluster when its engagement ends.
#[tokio::test]
async fn v04_a_controller_runs_one_task_per_engaged_cluster() {
    let manager = Manager::new(Arc::new(Cluster::new("", unreachable_client())));
    let controller = Controller::builder::<ConfigMap>(&manager)
        .owns::<Secret>()
        .register(reconcile, |_, _, _| Action::backoff(), Arc::new(()))
        .await
        .expect("controller");
    let mut engaged = Vec::new();
    for index in 0..3 {
        let name = ClusterName::from(format!("c{index}"));
        let cluster = Arc::new(Cluster::new(name.clone(), unreachable_client()));
        let token = CancellationToken::new();
        let (health, follower) = watch::channel(ClusterHealth::unknown());
        let mut engagement = Engagement::new(name.clone(), cluster, token.clone());
        engagement.health = Some(follower);
        controller.engage_with(engagement).await.expect("engage");
        engaged.push((name, token, health));
    }
    assert_eq!(controller.cluster_names().len(), 3);
    assert_eq!(
        controller.tasks.len(),
        3,
        "one task per engaged cluster (sources, sync wait, health and disengagement in one)"
    );

    // The engagement's end still reaches the controller, and ends the task.
    let (gone, token, _health) = &engaged[0];
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), async {
        while controller.cluster_names().contains(gone) || controller.tasks.len() != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the cancelled cluster is disengaged and its task ends");
    assert!(!controller.queue().is_paused(gone), "its queue entry is gone");
    assert!(
        controller.queue().is_paused(&engaged[1].0),
        "the others still wait for their caches"
    );
}
