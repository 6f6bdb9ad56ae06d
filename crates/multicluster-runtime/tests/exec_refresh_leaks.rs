//! A failed token refresh of an exec credential plugin leaks no credential (x01), in
//! a test binary of its own: it captures every log line of its thread with a scoped
//! subscriber, which another test of the same process installing a global one could
//! starve.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, ListParams};
use kube_envtest::Fleet;
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest};
use multicluster_runtime::manager::HealthProbes;
use multicluster_runtime::providers::file::Files;
use multicluster_runtime::{Cluster, ClusterName, Manager};
use serde_json::json;
use support::files::write_bytes;
use support::wait_until;
use tokio_util::sync::CancellationToken;

mod support;

/// In the plugin's environment; its first run hands it out as the token.
const ENV_MARKER: &str = "x01-marker-env-token-7c3e51";
/// On the plugin's command line.
const ARG_MARKER: &str = "x01-marker-arg-d90b2f";
/// Printed by the plugin on its failing runs, beside the environment's marker.
const OUT_MARKER: &str = "x01-marker-output-41aa6c";

/// A member whose kubeconfig runs an exec plugin that succeeds once, with a token
/// expiring soon enough that kube refreshes it on the first request, then fails,
/// printing its environment's token and a marker: kube's error text quotes the
/// command line, the environment and the output. With a controller watching that
/// member, health probes and the endpoint on, none of the markers appears in the
/// logs, in `/readyz?verbose`, `/metrics`, the cluster's health, a cache's errors
/// (`Display` and `Debug`), or Events; the failure is still described.
#[tokio::test(flavor = "current_thread")]
async fn x01_a_failed_exec_refresh_leaks_no_credential() {
    let fleet = Fleet::start(2).await.expect("start fleet");
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("plugin-ran");
    let runs = dir.path().join("plugin-runs");
    // The first run hands out a token that kube sees as expiring (it refreshes any
    // token within 60 s of its expiry), so every request runs the plugin again.
    let script = format!(
        r#"echo run >> "$RUNS"
if [ -e "$STATE" ]; then echo "refresh failed: $X01_SECRET {OUT_MARKER}" >&2; echo "$X01_SECRET $1"; exit 3; fi
touch "$STATE"
printf '{{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{{"token":"%s","expirationTimestamp":"%s"}}}}' "$X01_SECRET" "$(date -u -d '+30 seconds' +%Y-%m-%dT%H:%M:%SZ)""#
    );
    let mut kubeconfig = serde_json::to_value(fleet.cluster(1).kubeconfig()).expect("JSON");
    kubeconfig["users"][0]["user"] = json!({ "exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "sh",
        "args": ["-c", script, "plugin", ARG_MARKER],
        "env": [
            { "name": "X01_SECRET", "value": ENV_MARKER },
            { "name": "STATE", "value": state.to_str().expect("UTF-8 path") },
            { "name": "RUNS", "value": runs.to_str().expect("UTF-8 path") },
        ],
        "interactiveMode": "Never",
    }});
    let members = dir.path().join("members");
    std::fs::create_dir(&members).expect("members dir");
    write_bytes(
        &members.join("member.kubeconfig"),
        kubeconfig.to_string().as_bytes(),
    );

    let capture = support::logs::Capture::default();
    let guard = capture.set_default("trace,tower=debug,hyper=debug,h2=debug,rustls=debug");
    let local = Arc::new(Cluster::new("", fleet.cluster(0).client().expect("client")));
    let provider = Arc::new(Files::builder().path(&members).build());
    let probes = HealthProbes::default()
        .interval(Duration::from_millis(300))
        .failure_threshold(1);
    let manager = Manager::with_provider(local, provider)
        .with_health_probes(probes)
        .with_http_endpoint("127.0.0.1:0".parse().unwrap());
    Controller::builder::<ConfigMap>(&manager)
        .named("x01")
        .register(
            |_req: ReconcileRequest<ConfigMap>, _ctx: Arc<()>| async {
                Ok::<_, std::convert::Infallible>(Action::await_change())
            },
            |_req, _err: &std::convert::Infallible, _ctx| Action::await_change(),
            Arc::new(()),
        )
        .await
        .expect("register");
    let token = CancellationToken::new();
    let (runner, stop) = (manager.clone(), token.clone());
    let running = tokio::spawn(async move { runner.start(stop).await });

    let member_name = || {
        manager
            .engaged_clusters()
            .into_iter()
            .find(|n| !n.as_str().is_empty())
    };
    wait_until("the member engaged", || member_name().is_some()).await;
    let name: ClusterName = member_name().expect("engaged");
    wait_until("the member unhealthy, its watch failed and logged", || {
        let unhealthy = manager
            .cluster_health()
            .get(&name)
            .is_some_and(|h| !h.is_healthy());
        unhealthy && capture.text().contains("watch failed, retrying with backoff")
    })
    .await;
    let ran = std::fs::read_to_string(&runs)
        .expect("the plugin ran")
        .lines()
        .count();
    assert!(
        ran >= 2,
        "the plugin was refreshed after its first run ({ran} runs)"
    );

    let mut texts = Vec::new();
    let address = manager.http_address().expect("endpoint bound");
    for path in ["/readyz?verbose", "/readyz", "/healthz?verbose", "/metrics"] {
        texts.push(support::http::get(address, path).await.body);
    }
    let health = manager.cluster_health();
    texts.push(format!("{health:?}"));
    let member = manager.get_cluster(&name).await.expect("engaged");
    let informer = member.cache().informer::<ConfigMap>();
    let synced = informer.wait_synced(Duration::from_millis(200)).await;
    let error = synced.expect_err("the member's cache cannot sync");
    texts.push(format!("{error} {error:?}"));
    texts.push(format!("{:?}", informer.last_error()));
    let admin = fleet.cluster(1).client().expect("admin client");
    for client in [fleet.cluster(0).client().expect("client"), admin] {
        for event in Api::<Event>::all(client)
            .list(&ListParams::default())
            .await
            .expect("events")
        {
            texts.push(format!("{:?} {:?}", event.reason, event.message));
        }
    }
    token.cancel();
    running.await.expect("joined").expect("manager ran");
    drop(guard);
    let logs = capture.text();

    texts.push(logs);
    for text in &texts {
        for marker in [ENV_MARKER, ARG_MARKER, OUT_MARKER] {
            assert!(
                !text.contains(marker),
                "a credential left the process: {marker} in\n{}",
                excerpt(text, marker)
            );
        }
    }
    let described = "the exec credential plugin failed (exit status: 3)";
    assert!(
        texts.last().expect("logs").contains(described),
        "the failure is described in the logs"
    );
    assert!(
        health[&name]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(described)),
        "the failure is described in the cluster's health: {:?}",
        health[&name].last_error
    );
    assert!(
        error.to_string().contains(described),
        "and in the cache's error: {error}"
    );
}

/// The line of `text` that holds `marker`.
fn excerpt<'a>(text: &'a str, marker: &str) -> &'a str {
    text.lines()
        .find(|line| line.contains(marker))
        .unwrap_or_default()
}
