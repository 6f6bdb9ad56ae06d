//! Admission webhooks for a whole fleet: one server, one validating and one mutating
//! handler, every member wired by the library as it joins and unwired as it leaves.
//!
//! Starts a local fleet (the manager's cluster plus three members, one of which
//! joins later), and a `WebhookServer` on 127.0.0.1 that every member's apiserver
//! calls:
//!
//! 1. the validating webhook refuses a ConfigMap with the key `forbidden`, with a
//!    message naming the member it was sent to;
//! 2. the mutating webhook labels every ConfigMap `example.com/cluster=<member>`;
//! 3. a member that joins is wired (its apiserver calls the server) within seconds;
//! 4. a member that leaves is unwired (its configurations are deleted: it admits
//!    the forbidden key again);
//! 5. Ctrl-C stops everything cleanly.
//!
//!     cargo run -p examples --example fleet_webhook
//!
//! See `docs/decisions/webhooks.md` for how a request is attributed to its cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use examples::admission::{CLUSTER_LABEL, FORBIDDEN_KEY, label_with_cluster, no_forbidden_key};
use examples::fleet::LocalFleet;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::webhook::{DEFAULT_CONFIGURATION_NAME, Webhook, WebhookServer};
use multicluster_runtime::{Cluster, Manager};

/// A manager over `local` whose fleet is the returned provider's, with a webhook
/// server on 127.0.0.1 (a free port) serving both webhooks.
///
/// # Errors
/// No free port, or the server's settings are refused.
pub async fn manager(local: Arc<Cluster>) -> anyhow::Result<(Manager, Arc<Clusters>, SocketAddr)> {
    // The members' apiservers run on this machine, so they reach the server on
    // 127.0.0.1; its URL must be known before it listens, hence a port chosen now.
    let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let server = WebhookServer::builder(address, format!("https://{address}"))
        .validating(
            Webhook::new("no-forbidden-key.example.com"),
            no_forbidden_key,
            Arc::new(()),
        )
        .mutating(
            Webhook::new("cluster-label.example.com"),
            label_with_cluster,
            Arc::new(()),
        )
        .build()?;
    let provider = Arc::new(Clusters::new());
    let manager = Manager::with_provider(local, provider.clone());
    manager.add_cluster_runnable(Arc::new(server)).await?;
    Ok((manager, provider, address))
}

/// What the demo saw.
#[derive(Debug, Default)]
pub struct Demo {
    /// Per member, the refusal of a ConfigMap with the forbidden key.
    pub refusals: BTreeMap<String, String>,
    /// Per member, the label the mutating webhook gave an admitted ConfigMap.
    pub labels: BTreeMap<String, Option<String>>,
    /// How long the joining member took from joining to enforcing the webhook.
    pub joined_enforced_in: Duration,
    /// The member that left, once its configuration was gone and it admitted the
    /// forbidden key.
    pub left_unwired: Option<String>,
}

/// The demo's script, while the manager runs: `members` join, and in each one a
/// forbidden ConfigMap is refused and an allowed one labelled; then `joining`
/// joins and is shown the same; then the first member leaves and is unwired.
///
/// # Errors
/// A cluster cannot be added, a create fails unexpectedly, or a cluster is not
/// wired (or unwired) within a minute.
pub async fn script(
    provider: &Clusters,
    members: Vec<Arc<Cluster>>,
    joining: Arc<Cluster>,
) -> anyhow::Result<Demo> {
    let mut demo = Demo::default();
    for member in &members {
        println!("--- {} joins", member.name());
        provider.add(member.clone()).await?;
    }
    for member in &members {
        show(member, &mut demo).await?;
    }
    println!("--- {} joins while the server runs", joining.name());
    let joined = Instant::now();
    provider.add(joining.clone()).await?;
    show(&joining, &mut demo).await?;
    demo.joined_enforced_in = joined.elapsed();
    println!(
        "--- {} was wired and enforced {:.1} s after it joined",
        joining.name(),
        demo.joined_enforced_in.as_secs_f64()
    );

    let leaving = &members[0];
    println!("--- {} leaves the fleet", leaving.name());
    provider.remove(leaving.name());
    let configurations = Api::<ValidatingWebhookConfiguration>::all(leaving.client());
    eventually(&format!("{} unwired", leaving.name()), || async {
        matches!(configurations.get_opt(DEFAULT_CONFIGURATION_NAME).await, Ok(None)).then_some(())
    })
    .await?;
    // The apiserver's admission follows webhook configurations through its own
    // watch, so for a moment after their deletion a create may still be sent to
    // the server, which refuses a cluster it no longer serves: retried until the
    // member has caught up.
    let api = Api::<ConfigMap>::namespaced(leaving.client(), "default");
    let after = config_map("after-leaving", true);
    let params = PostParams::default();
    eventually(
        &format!("{} admits the key `{FORBIDDEN_KEY}`", leaving.name()),
        || async { api.create(&params, &after).await.ok().map(|_| ()) },
    )
    .await?;
    println!(
        "--- {} is unwired: its webhook configurations are deleted and it admits the key `{FORBIDDEN_KEY}` again",
        leaving.name()
    );
    demo.left_unwired = Some(leaving.name().to_string());
    Ok(demo)
}

/// In `member`: a ConfigMap with the forbidden key refused, and an allowed one
/// admitted with its label (each retried until the member is wired).
async fn show(member: &Cluster, demo: &mut Demo) -> anyhow::Result<()> {
    let name = member.name().to_string();
    let api = Api::<ConfigMap>::namespaced(member.client(), "default");
    let refusal = eventually(&format!("{name} enforces the webhook"), || async {
        match api
            .create(&PostParams::default(), &config_map("risky-settings", true))
            .await
        {
            Err(kube::Error::Api(status)) if status.message.contains(FORBIDDEN_KEY) => Some(status.message),
            Ok(_) => {
                // Created before the member was wired: remove it and try again.
                let _ = api.delete("risky-settings", &DeleteParams::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await?;
    println!("--- {name}: refused: {refusal}");
    // The mutating configuration is a second object, which the member's apiserver
    // may pick up a moment after the validating one: retried until labelled.
    let label = eventually(&format!("{name} labels what it admits"), || async {
        let created = api
            .create(&PostParams::default(), &config_map("app-settings", false))
            .await
            .ok()?;
        let label = created.metadata.labels.unwrap_or_default().remove(CLUSTER_LABEL);
        if label.is_none() {
            let _ = api.delete("app-settings", &DeleteParams::default()).await;
        }
        label.map(Some)
    })
    .await?;
    println!(
        "--- {name}: admitted app-settings, labelled {CLUSTER_LABEL}={}",
        label.as_deref().unwrap_or("(none)")
    );
    demo.refusals.insert(name.clone(), refusal);
    demo.labels.insert(name, label);
    Ok(())
}

fn config_map(name: &str, forbidden: bool) -> ConfigMap {
    let mut config_map = ConfigMap::default();
    config_map.metadata.name = Some(name.into());
    let key = if forbidden { FORBIDDEN_KEY } else { "log-level" };
    config_map.data = Some([(key.to_owned(), "info".to_owned())].into());
    config_map
}

/// Polls `check` every 100 ms until it gives a value, for at most a minute.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[allow(dead_code)] // the integration test includes this file for `manager` and `script`
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let fleet = LocalFleet::start(4).await?;
    let (manager, provider, address) = manager(fleet.local()?).await?;
    println!(
        "--- webhook server: https://{address} (self-signed; its authority is each configuration's CA bundle)"
    );
    let members = (1..=2)
        .map(|i| fleet.member(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let joining = fleet.member(3)?;
    let script = async {
        script(&provider, members, joining).await?;
        Ok(())
    };
    examples::run_demo(manager, script).await
}
