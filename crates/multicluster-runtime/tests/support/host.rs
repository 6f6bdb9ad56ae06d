//! Helpers of the tests of providers that read a host cluster (Cluster API,
//! ClusterProfile): the host fleet, kubeconfigs, and checks that an engaged cluster
//! reaches the right apiserver.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ListParams};
use kube_envtest::{Fleet, LocalCluster};
use multicluster_runtime::{Cluster, ClusterName, Provider, ProviderRunnable};
use tokio_util::sync::CancellationToken;

use super::EngagementLog;
use super::objects::create_namespace;

/// Whether `cluster`'s client reaches fleet cluster `index`: it sees that cluster's
/// marker namespace and no other.
pub async fn reaches(cluster: &Cluster, index: usize) -> bool {
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    let Ok(list) = namespaces.list(&ListParams::default()).await else {
        return false;
    };
    let markers: Vec<String> = list
        .items
        .iter()
        .filter_map(|ns| ns.metadata.name.clone())
        .filter(|name| name.starts_with("marker-"))
        .collect();
    markers == vec![format!("marker-{index}")]
}

pub async fn assert_reaches(log: &EngagementLog, name: &str, index: usize) {
    let engaged = log
        .current(name)
        .unwrap_or_else(|| panic!("{name} is not engaged"));
    assert!(
        reaches(&engaged.cluster, index).await,
        "{name} does not reach cluster {index}"
    );
}

pub fn start<P: ProviderRunnable + 'static>(
    provider: &Arc<P>,
    log: &Arc<EngagementLog>,
    token: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (provider, log, token) = (provider.clone(), log.clone(), token.clone());
    tokio::spawn(async move { provider.start(token, log).await.expect("provider runs") })
}

pub async fn assert_not_found<P: Provider + ?Sized>(provider: &Arc<P>, name: &str) {
    let err = provider
        .get(&ClusterName::from(name))
        .await
        .expect_err("the cluster is gone");
    assert!(err.is_cluster_not_found(), "{err}");
}

/// A fleet of three for the host-reading providers: cluster 0 is the host, with the
/// CRD of `tests/fixtures/<fixture>` installed and the namespace `namespace`;
/// clusters 1 and 2 each hold a namespace `marker-<index>`, which [`reaches`] looks for.
pub async fn host_fleet(fixture: &str, namespace: &str) -> (Fleet, Client) {
    let fleet = Fleet::start(3).await.expect("start fleet");
    let host = fleet.cluster(0).client().expect("host client");
    let crd = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    fleet
        .cluster(0)
        .install_crds_from_path(&crd)
        .await
        .expect("install the CRD");
    create_namespace(&host, namespace).await;
    for index in 1..=2 {
        create_namespace(
            &fleet.cluster(index).client().expect("client"),
            &format!("marker-{index}"),
        )
        .await;
    }
    (fleet, host)
}

/// The admin kubeconfig of `cluster`, as a kubeconfig Secret holds it.
pub fn kubeconfig_of(cluster: &LocalCluster) -> Vec<u8> {
    serde_json::to_vec(cluster.kubeconfig()).expect("serialize kubeconfig")
}

/// Kubeconfigs derived from `base` (a kubeconfig as JSON) that each hide a marker
/// where a credential goes, for tests that no credential leaves the process: a
/// token, a password, a client key (which cannot build a client) and the password of
/// a proxy URL (refused by default), in that order.
pub fn marked_kubeconfigs(base: &[u8], token: &str, password: &str, key: &str, proxy: &str) -> [Vec<u8>; 4] {
    let base: serde_json::Value = serde_json::from_slice(base).expect("JSON");
    let changed = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut kubeconfig = base.clone();
        change(&mut kubeconfig);
        serde_json::to_vec(&kubeconfig).expect("JSON")
    };
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{key}\n-----END PRIVATE KEY-----\n");
    [
        changed(&|k| k["users"][0]["user"] = serde_json::json!({ "token": token })),
        changed(&|k| {
            k["users"][0]["user"] = serde_json::json!({ "username": "admin", "password": password })
        }),
        changed(&|k| {
            k["users"][0]["user"]["client-key-data"] =
                serde_json::json!(k8s_openapi::ByteString(pem.clone().into_bytes()))
        }),
        changed(&|k| {
            k["clusters"][0]["cluster"]["proxy-url"] =
                serde_json::json!(format!("http://u:{proxy}@proxy.example:3128"))
        }),
    ]
}
