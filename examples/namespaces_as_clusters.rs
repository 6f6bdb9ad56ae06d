//! Namespaces as clusters: the namespaces of one cluster form the fleet.
//!
//! Starts one local apiserver. Every namespace labelled `example.com/fleet=true` is a
//! cluster of the fleet, named after the namespace, whose client and cache see only
//! that namespace; all of them share one watch per type on the host. The uniform
//! reconciler runs across them. A third namespace joins after a few seconds and the
//! first leaves (its label is removed). Stop with Ctrl-C.
//!
//!     cargo run -p examples --example namespaces_as_clusters
//!
//! This is also how to simulate a fleet of thousands of clusters on one apiserver.

use std::sync::Arc;
use std::time::Duration;

use examples::fleet::LocalFleet;
use examples::uniform::{self, Progress};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use multicluster_runtime::Manager;
use multicluster_runtime::providers::namespace::Namespaces;

const FLEET_LABEL: &str = "example.com/fleet";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let fleet = LocalFleet::start(1).await?;
    let host = fleet.local()?;
    for name in ["team-a", "team-b"] {
        join(fleet.client(0)?, name).await?;
    }
    let provider = Arc::new(Namespaces::new(host.clone()).selector(&format!("{FLEET_LABEL}=true")));
    let manager = Manager::with_provider(host, provider);
    uniform::controller(&manager)
        .register(uniform::reconcile, uniform::error_policy, Progress::new())
        .await?;
    let script = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        join(fleet.client(0)?, "team-c").await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        println!("--- team-a leaves the fleet (label removed)");
        let leave = serde_json::json!({ "metadata": { "labels": { FLEET_LABEL: null } } });
        let namespaces: Api<Namespace> = Api::all(fleet.client(0)?);
        namespaces
            .patch("team-a", &PatchParams::default(), &Patch::Merge(&leave))
            .await?;
        Ok(())
    };
    examples::run_demo(manager, script).await
}

/// Creates the labelled namespace `name` with a managed ConfigMap in it.
async fn join(host: kube::Client, name: &str) -> anyhow::Result<()> {
    println!("--- {name} joins the fleet");
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(name.to_owned());
    namespace.metadata.labels = Some([(FLEET_LABEL.to_owned(), "true".to_owned())].into());
    Api::<Namespace>::all(host.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    uniform::create_managed_in(host, name, "app-settings").await?;
    Ok(())
}
