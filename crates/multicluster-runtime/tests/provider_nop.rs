//! The nop provider: a manager with it runs its local cluster only.
#![cfg(feature = "nop")]

mod support;

use std::sync::Arc;

use kube_envtest::Fleet;
use multicluster_runtime::cache::FieldIndex;
use multicluster_runtime::providers::nop::Nop;
use multicluster_runtime::{Cluster, Manager, Provider};
use support::EngagementLog;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn pnop_knows_no_cluster_and_runs_until_cancelled() {
    let nop = Nop;
    for name in ["", "a", "a#b"] {
        let err = nop.get(&name.into()).await.expect_err("no cluster");
        assert!(err.is_cluster_not_found(), "{err}");
    }
    let index = FieldIndex::new::<k8s_openapi::api::core::v1::ConfigMap>("x", |_| Vec::new());
    nop.index_field(index).await.expect("indexes apply to nothing");

    let fleet = Fleet::start(1).await.expect("start fleet");
    let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
    let manager = Manager::with_provider(local, Arc::new(Nop));
    let log = EngagementLog::new();
    manager.add_aware(log.clone()).await.expect("add log");
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });
    log.wait_live(&[""]).await;
    let err = manager
        .get_cluster(&"anything".into())
        .await
        .expect_err("nop knows nothing");
    assert!(err.is_cluster_not_found());
    token.cancel();
    run.await
        .expect("join")
        .expect("the manager and the nop provider stop cleanly");
    assert!(log.live().is_empty(), "the local cluster is disengaged on stop");
}
