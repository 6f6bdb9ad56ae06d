//! Admission webhooks for the whole fleet (issue 20), against real apiservers: each
//! member's kube-apiserver calls the one webhook server on 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, PostParams};
use multicluster_runtime::ClusterName;
use multicluster_runtime::manager::ServingCertificate;
use multicluster_runtime::webhook::{
    AdmissionContext, DEFAULT_CONFIGURATION_NAME, FailurePolicy, Verdict, Webhook, WebhookServer,
};
use support::fleet::Env;
use support::logs::Logs;
use support::{eventually, http};

/// The label the mutating webhook puts on every ConfigMap: its cluster's name.
const CLUSTER_LABEL: &str = "w04.example.com/cluster";

/// Refuses a ConfigMap with a key `forbidden`, and one named `unique-*` whose name
/// another cluster of the fleet uses in the same namespace; panics for `panic-*`,
/// and outlives its timeout for `slow-*`.
async fn validate(req: AdmissionContext<ConfigMap>, _: Arc<()>) -> Verdict {
    let Some(config_map) = req.request.object.as_ref() else {
        return Verdict::allow();
    };
    let name = config_map.metadata.name.clone().unwrap_or_default();
    if config_map
        .data
        .as_ref()
        .is_some_and(|data| data.contains_key("forbidden"))
    {
        return Verdict::deny(format!(
            "the key `forbidden` is not allowed in cluster {}",
            req.cluster_name
        ));
    }
    if name.starts_with("panic-") {
        panic!("w01: a handler's bug");
    }
    if name.starts_with("slow-") {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    if name.starts_with("unique-") {
        let namespace = req.request.namespace.as_deref();
        for (other, cluster) in req.fleet.clusters() {
            if other == req.cluster_name {
                continue;
            }
            if let Ok(Some(_)) = cluster.cache().get::<ConfigMap>(namespace, &name).await {
                return Verdict::deny(format!("{name} is used in cluster {other} already"));
            }
        }
    }
    Verdict::allow()
}

/// Labels every ConfigMap with its cluster's name.
async fn label(req: AdmissionContext<ConfigMap>, _: Arc<()>) -> Verdict {
    let Some(mut config_map) = req.request.object.clone() else {
        return Verdict::allow();
    };
    config_map
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CLUSTER_LABEL.into(), req.cluster_name.to_string());
    Verdict::mutate(&config_map)
}

/// Panics for `soft-panic-*`, under failure policy `Ignore`.
async fn soft(req: AdmissionContext<ConfigMap>, _: Arc<()>) -> Verdict {
    let name = req.request.name.clone();
    if name.starts_with("soft-panic-") {
        panic!("w01: a bug in a webhook that may be ignored");
    }
    Verdict::allow()
}

/// A port free now, for a server whose URL must be known before it listens.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A server on a free port with the tests' three webhooks, added to `env`'s
/// manager (which the caller starts), and its port.
async fn add_server(env: &Env, certificate: ServingCertificate) -> (Arc<WebhookServer>, u16) {
    let port = free_port();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = WebhookServer::builder(address, format!("https://127.0.0.1:{port}"))
        .certificate(certificate)
        .validating(
            Webhook::new("validate.w04.example.com").timeout(Duration::from_secs(2)),
            validate,
            Arc::new(()),
        )
        .mutating(Webhook::new("label.w04.example.com"), label, Arc::new(()))
        .validating(
            Webhook::new("soft.w01.example.com").failure_policy(FailurePolicy::Ignore),
            soft,
            Arc::new(()),
        )
        .build()
        .expect("webhook server");
    let server = Arc::new(server);
    env.manager
        .add_cluster_runnable(server.clone())
        .await
        .expect("add the server");
    (server, port)
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let mut config_map = ConfigMap::default();
    config_map.metadata.name = Some(name.into());
    config_map.data = Some(data.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
    config_map
}

async fn create(client: &Client, config_map: &ConfigMap) -> Result<ConfigMap, kube::Error> {
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), config_map)
        .await
}

fn refusal(result: Result<ConfigMap, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => status.message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Waits until `client`'s cluster enforces the webhooks (its configurations are in
/// place and its apiserver calls the server): a forbidden ConfigMap is refused.
async fn wait_enforced(client: &Client, cluster: &str) {
    eventually(&format!("{cluster} enforces the webhooks"), || async {
        let result = create(client, &config_map("probe-forbidden", &[("forbidden", "x")])).await;
        match result {
            Err(kube::Error::Api(status)) if status.message.contains("is not allowed") => Some(()),
            Ok(_) => {
                // Made before the webhooks were wired: remove it and try again.
                let api = Api::<ConfigMap>::namespaced(client.clone(), "default");
                let _ = api.delete("probe-forbidden", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
}

async fn configuration_present(client: &Client) -> bool {
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get_opt(DEFAULT_CONFIGURATION_NAME)
        .await
        .expect("read the validating configuration");
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(DEFAULT_CONFIGURATION_NAME)
        .await
        .expect("read the mutating configuration");
    validating.is_some() || mutating.is_some()
}

/// w04 (with w01 and w03): one server for three clusters, then a fourth joins and one
/// leaves. Forbidden objects are refused in every cluster with a message naming it;
/// every object is labelled with its cluster; a name used in one cluster is refused
/// in another; the joining cluster is wired and enforced within seconds; the
/// leaving one is unwired.
#[tokio::test]
async fn w04_one_server_validates_and_mutates_in_every_cluster_as_the_fleet_changes() {
    let env = Env::with_spare(3, 1).await;
    let (server, _) = add_server(&env, ServingCertificate::self_signed()).await;
    env.start();

    for index in 1..=3 {
        let (client, cluster) = (env.client(index), format!("c{index}"));
        wait_enforced(&client, &cluster).await;
        let message = refusal(create(&client, &config_map("bad", &[("forbidden", "x")])).await);
        assert!(
            message.contains(&format!("not allowed in cluster {cluster}")),
            "{cluster}: {message}"
        );
        let created = create(&client, &config_map("good", &[("ok", "y")]))
            .await
            .expect("admitted");
        assert_eq!(
            created.metadata.labels.unwrap_or_default().get(CLUSTER_LABEL),
            Some(&cluster),
            "the mutating webhook labels the object with its cluster"
        );
    }

    // Fleet-wide: a name used in c1 is refused in c2. The handler reads c1's cache,
    // which must have seen the object first.
    create(&env.client(1), &config_map("unique-a", &[]))
        .await
        .expect("first use");
    let c1 = server.fleet().get(&ClusterName::from("c1")).expect("c1 engaged");
    eventually("c1's cache holds unique-a", || async {
        c1.cache()
            .get::<ConfigMap>(Some("default"), "unique-a")
            .await
            .ok()
            .flatten()
    })
    .await;
    let message = refusal(create(&env.client(2), &config_map("unique-a", &[])).await);
    assert!(
        message.contains("unique-a is used in cluster c1 already"),
        "{message}"
    );

    // w01: a panicking handler and one that outlives its timeout are answered by the
    // failure policy, and the server goes on.
    let message = refusal(create(&env.client(1), &config_map("panic-1", &[])).await);
    assert!(
        message.contains("handler panicked") && message.contains("c1"),
        "{message}"
    );
    let message = refusal(create(&env.client(1), &config_map("slow-1", &[])).await);
    assert!(message.contains("took longer than"), "{message}");
    create(&env.client(1), &config_map("soft-panic-1", &[]))
        .await
        .expect("Ignore admits it");
    create(&env.client(1), &config_map("after-the-panics", &[]))
        .await
        .expect("still serving");

    // A cluster that joins is wired and enforced within seconds.
    let joined = Instant::now();
    env.add(4).await;
    wait_enforced(&env.client(4), "c4").await;
    let wired_in = joined.elapsed();
    assert!(
        wired_in < Duration::from_secs(10),
        "c4 enforced after {wired_in:?}"
    );
    println!("w04: a joining cluster was enforced {wired_in:?} after it was added");

    // One that leaves is unwired: its configurations are gone, its objects admitted.
    let c3 = env.client(3);
    assert!(configuration_present(&c3).await);
    assert!(env.provider.remove(&ClusterName::from("c3")));
    eventually("c3's configurations deleted", || async {
        (!configuration_present(&c3).await).then_some(())
    })
    .await;
    create(&c3, &config_map("bad-after-leaving", &[("forbidden", "x")]))
        .await
        .expect("c3 no longer calls the webhooks");
}

/// w02: a request that names a cluster the server does not serve is refused with a
/// message saying so (failure policy `Fail`), whether the cluster left or the path's
/// tag is not the server's for it; w03: the self-signed certificate is rotated and
/// every rotation verifies against the CA bundle the configurations carry.
#[tokio::test]
async fn w02_w03_attribution_refusals_and_certificate_rotation() {
    let env = Env::new(2).await;
    let rotation = Duration::from_secs(1);
    let certificate = ServingCertificate::self_signed().rotate_every(rotation);
    let (server, port) = add_server(&env, certificate).await;
    env.start();
    wait_enforced(&env.client(1), "c1").await;

    // The URL c2's apiserver calls, read from its configuration.
    let c2 = env.client(2);
    wait_enforced(&c2, "c2").await;
    let configuration = Api::<ValidatingWebhookConfiguration>::all(c2.clone())
        .get(DEFAULT_CONFIGURATION_NAME)
        .await
        .expect("c2's configuration");
    let webhook = &configuration.webhooks.expect("webhooks")[0];
    let url = webhook.client_config.url.clone().expect("url");
    let ca = String::from_utf8(webhook.client_config.ca_bundle.clone().expect("CA bundle").0).expect("PEM");
    assert_eq!(ca.as_bytes(), server.ca_bundle());
    let path = url
        .strip_prefix(&format!("https://127.0.0.1:{port}"))
        .expect("the server's URL");
    assert!(path.starts_with("/clusters/c2/"), "{path}");

    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let review = |name: &str| {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "w02-uid",
                "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                "name": name,
                "namespace": "default",
                "operation": "CREATE",
                "userInfo": {"username": "w02"},
                "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}},
                "dryRun": false
            }
        })
        .to_string()
    };
    let answer = |body: &str| -> serde_json::Value {
        let review: serde_json::Value = serde_json::from_str(body).expect("an AdmissionReview");
        review["response"].clone()
    };
    let client = http::trusting(&ca);

    // c2's own path, as its apiserver would: admitted.
    let response = http::post_json_tls(address, path, &review("direct"), client.clone())
        .await
        .expect("POST");
    assert_eq!(response.status, 200, "{}", response.body);
    let response = answer(&response.body);
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["uid"], "w02-uid");

    // c1's name in c2's path (an admin of c2 claiming to be c1): refused.
    let forged = path.replacen("/clusters/c2/", "/clusters/c1/", 1);
    let response = http::post_json_tls(address, &forged, &review("forged"), client.clone())
        .await
        .expect("POST");
    let response = answer(&response.body);
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("not attributed to cluster c1"), "{message}");

    // c2 leaves; a request on its (once valid) path is refused, naming it.
    assert!(env.provider.remove(&ClusterName::from("c2")));
    let message = eventually("c2's path refused", || async {
        let response = http::post_json_tls(address, path, &review("after"), client.clone())
            .await
            .ok()?;
        let response = answer(&response.body);
        (response["allowed"] == false).then(|| {
            response["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
    })
    .await;
    assert!(message.contains("cluster c2 is not engaged"), "{message}");

    // w03: rotations, each verified by the CA bundle, while c1 keeps being served.
    let (any, seen) = http::accepting_any();
    let mut served = Vec::new();
    for _ in 0..3 {
        http::get_tls(address, "/", None, any.clone())
            .await
            .expect("handshake");
        served.push(seen.lock().unwrap().last().cloned().expect("a certificate"));
        http::get_tls(address, "/", None, client.clone())
            .await
            .expect("verified by the CA bundle");
        tokio::time::sleep(rotation + Duration::from_millis(200)).await;
    }
    served.dedup();
    assert!(
        served.len() >= 2,
        "the certificate was rotated: {} distinct",
        served.len()
    );
    let created = create(&env.client(1), &config_map("after-rotation", &[]))
        .await
        .expect("admitted");
    assert_eq!(
        created
            .metadata
            .labels
            .unwrap_or_default()
            .get(CLUSTER_LABEL)
            .map(String::as_str),
        Some("c1")
    );
}

/// w03: a cluster that leaves and comes back at once stays wired: the removal for
/// its leaving never lands after the apply for its return (one writer of a
/// cluster's configurations at a time).
#[tokio::test]
async fn w03_a_cluster_that_leaves_and_returns_at_once_stays_wired() {
    let logs = Logs::capture();
    let env = Env::new(1).await;
    add_server(&env, ServingCertificate::self_signed()).await;
    env.start();
    let client = env.client(1);
    wait_enforced(&client, "c1").await;
    let decided = || {
        let text = logs.text();
        let ours = |line: &&str| line.contains("cluster=c1");
        let lines = text.lines().filter(ours);
        lines
            .filter(|l| l.contains("webhooks unwired") || l.contains("webhooks stay wired"))
            .count()
    };
    let c1 = ClusterName::from("c1");
    for round in 1..=6 {
        assert!(env.provider.remove(&c1));
        if round % 2 == 0 {
            // Back after its removal is done: unwired, then wired again.
            support::wait_until("c1 unwired", || decided() >= round).await;
            env.add(1).await;
        } else {
            // Back at once: the new instance replaces the leaving one, whose removal
            // must not undo its wiring. (Between the two, a return while the removal
            // runs waits for it: one writer per cluster, `Gates`.)
            env.add(1).await;
            support::wait_until("the leaving's removal decided", || decided() >= round).await;
        }
        wait_enforced(&client, "c1").await;
        assert!(configuration_present(&client).await, "round {round}: c1 is wired");
    }
}

/// w03: the configurations stay in place when the server stops with the manager
/// (a restart or a rollout leaves no gap in enforcement); only a cluster that
/// leaves the fleet is unwired. On several threads: the manager ends the
/// engagements as it stops the server, and a wiring task may see its engagement end
/// before the server has marked itself stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn w03_configurations_stay_when_the_manager_stops() {
    let env = Env::new(3).await;
    add_server(&env, ServingCertificate::self_signed()).await;
    let running = tokio::spawn({
        let (manager, token) = (env.manager.clone(), env.token.clone());
        async move { manager.start(token).await }
    });
    for index in 1..=3 {
        wait_enforced(&env.client(index), &format!("c{index}")).await;
    }
    env.token.cancel();
    // `start` returns once the server's tasks, removals included, have ended.
    running.await.expect("joined").expect("a clean stop");
    for index in 1..=2 {
        assert!(
            configuration_present(&env.client(index)).await,
            "c{index} still wired after the stop"
        );
    }
}
