//! Kubeconfig Secrets: clusters added and removed by creating and deleting Secrets.
//!
//! Starts a local fleet (the manager's cluster plus three). The manager's cluster
//! holds, in namespace `fleet`, one Secret per fleet cluster, made from that
//! cluster's kubeconfig by `kubeconfig_secret` (labelled
//! `sigs.k8s.io/multicluster-runtime-kubeconfig=true`, key `kubeconfig`). Two exist
//! at start; a third is created after a few seconds and the first deleted after a few
//! more; the uniform reconciler follows. Stop with Ctrl-C.
//!
//!     cargo run -p examples --example kubeconfig_secrets
//!
//! To turn any kubeconfig into such a Secret, see `kubeconfig_secret` in
//! `multicluster_runtime::providers::secret`.

use std::sync::Arc;
use std::time::Duration;

use examples::fleet::LocalFleet;
use examples::uniform::{self, Progress};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use multicluster_runtime::Manager;
use multicluster_runtime::providers::secret::{Secrets, SecretsOptions, kubeconfig_secret};

const NAMESPACE: &str = "fleet";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let fleet = LocalFleet::start(4).await?;
    let host = fleet.client(0)?;
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(NAMESPACE.into());
    Api::<Namespace>::all(host.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let secrets: Api<Secret> = Api::namespaced(host.clone(), NAMESPACE);
    for index in 1..=3 {
        uniform::create_managed(fleet.client(index)?, "app-settings").await?;
    }
    for index in 1..=2 {
        add(&fleet, &secrets, index).await?;
    }

    let provider = Arc::new(Secrets::new(host, SecretsOptions::new(NAMESPACE)));
    let manager = Manager::with_provider(fleet.local()?, provider);
    uniform::controller(&manager)
        .register(uniform::reconcile, uniform::error_policy, Progress::new())
        .await?;
    let script = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        add(&fleet, &secrets, 3).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let first = LocalFleet::name(1);
        println!("--- deleting Secret {NAMESPACE}/{first}");
        secrets.delete(&first, &DeleteParams::default()).await?;
        Ok(())
    };
    examples::run_demo(manager, script).await
}

/// Creates the kubeconfig Secret of fleet apiserver `index`.
async fn add(fleet: &LocalFleet, secrets: &Api<Secret>, index: usize) -> anyhow::Result<()> {
    let name = LocalFleet::name(index);
    println!("--- creating Secret {NAMESPACE}/{name}");
    let secret = kubeconfig_secret(&name, NAMESPACE, fleet.fleet().cluster(index).kubeconfig());
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}
