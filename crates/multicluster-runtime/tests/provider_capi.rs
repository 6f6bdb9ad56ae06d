//! Acceptance tests of the Cluster API provider against real apiservers: fleet
//! cluster 0 is the management cluster, with a hand-written stand-in of the Cluster
//! API `Cluster` CRD (tests/fixtures), and hand-made `Cluster` objects and kubeconfig
//! Secrets pointing at fleet clusters 1 and 2.
#![cfg(feature = "capi")]

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use multicluster_runtime::Cluster;
use multicluster_runtime::providers::capi::{ClusterApi, ClusterApiOptions, ClusterApiVersion};
use serde_json::{Value, json};
use support::host::{assert_not_found, assert_reaches, host_fleet, kubeconfig_of, marked_kubeconfigs, start};
use support::logs::Logs;
use support::{EngagementLog, wait_until};
use tokio_util::sync::CancellationToken;

const NS: &str = "fleet";
/// A credential-looking string that must never reach a log line.
const FAKE_TOKEN: &str = "capi-test-token-0f9c2e7d";

fn cluster_resource(version: ClusterApiVersion) -> ApiResource {
    version.api_resource()
}

/// The host's `Cluster` API (written as v1beta2).
fn clusters(host: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(host.clone(), NS, &cluster_resource(ClusterApiVersion::V1Beta2))
}

async fn create_cluster(host: &Client, name: &str, status: Value) {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "Cluster",
        "metadata": { "name": name, "namespace": NS },
        "spec": { "clusterNetwork": { "pods": { "cidrBlocks": ["10.1.0.0/16"] } } },
    }))
    .expect("a Cluster");
    clusters(host)
        .create(&PostParams::default(), &object)
        .await
        .expect("create Cluster");
    if !status.is_null() {
        set_status(host, name, status).await;
    }
}

async fn set_status(host: &Client, name: &str, status: Value) {
    clusters(host)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .expect("patch Cluster status");
}

fn initialized() -> Value {
    json!({ "initialization": { "infrastructureProvisioned": true, "controlPlaneInitialized": true } })
}

/// Creates or replaces the Secret `name` in the test namespace with `value` under the
/// key `value`, and `annotation` (to make a change that is not a credential change).
async fn put_secret(host: &Client, name: &str, value: &[u8], annotation: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": { "cluster.x-k8s.io/cluster-name": name.trim_end_matches("-kubeconfig") },
            "annotations": { "test/revision": annotation },
        },
        "type": "cluster.x-k8s.io/secret",
        "data": { "value": k8s_openapi::ByteString(value.to_vec()) },
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(host.clone(), NS)
        .patch(
            name,
            &PatchParams::apply("provider-capi-test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("apply Secret");
}
/// One fleet for the whole life of Cluster API clusters: clusters that exist before
/// the provider starts, appear later, become ready later, have bad or missing
/// Secrets, get their Secret rotated or rewritten without change, and are deleted;
/// and a second provider reading v1beta1.
#[tokio::test]
async fn pcapi_fleet_lifecycle() {
    let logs = Logs::capture();
    let (fleet, host) = host_fleet("capi-cluster-crd.yaml", NS).await;
    let (one, two) = (kubeconfig_of(fleet.cluster(1)), kubeconfig_of(fleet.cluster(2)));
    let garbage = format!("apiVersion: v1\nusers: [ {{ token: {FAKE_TOKEN} ");
    let exec = "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: x\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: x\n    user: x\nusers:\n- name: x\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/steal\n";

    // Existing before the provider starts.
    create_cluster(&host, "alpha", initialized()).await;
    put_secret(&host, "alpha-kubeconfig", &one, "1").await;
    create_cluster(
        &host,
        "pending",
        json!({ "initialization": { "controlPlaneInitialized": false } }),
    )
    .await;
    put_secret(&host, "pending-kubeconfig", &two, "1").await;
    create_cluster(&host, "nosecret", initialized()).await;
    create_cluster(&host, "broken", initialized()).await;
    put_secret(&host, "broken-kubeconfig", garbage.as_bytes(), "1").await;
    create_cluster(&host, "execy", initialized()).await;
    put_secret(&host, "execy-kubeconfig", exec.as_bytes(), "1").await;
    create_cluster(
        &host,
        "legacy",
        json!({ "controlPlaneReady": true, "phase": "Provisioned" }),
    )
    .await;
    put_secret(&host, "legacy-kubeconfig", &two, "1").await;

    let local = Cluster::new("", host.clone());
    let provider = Arc::new(ClusterApi::new(&local, ClusterApiOptions::default()));
    let legacy = Arc::new(ClusterApi::new(
        &local,
        ClusterApiOptions::default()
            .version(ClusterApiVersion::V1Beta1)
            .namespace(NS),
    ));
    let (log, legacy_log) = (EngagementLog::new(), EngagementLog::new());
    let token = CancellationToken::new();
    let running = start(&provider, &log, &token);
    let legacy_running = start(&legacy, &legacy_log, &token);

    // Only the ready Cluster with a good Secret is engaged, and reaches its cluster.
    log.wait_live(&["fleet/alpha"]).await;
    assert_reaches(&log, "fleet/alpha", 1).await;
    legacy_log.wait_live(&["fleet/legacy"]).await;
    assert_reaches(&legacy_log, "fleet/legacy", 2).await;
    // The others are explained, once each, without their content.
    logs.wait_line(&[
        "WARN",
        "cluster=fleet/nosecret",
        "Secret fleet/nosecret-kubeconfig not found",
    ])
    .await;
    logs.wait_line(&["WARN", "cluster=fleet/broken", "not a valid kubeconfig"])
        .await;
    logs.wait_line(&["WARN", "cluster=fleet/execy", "exec credential plugin", "refused"])
        .await;
    logs.wait_line(&["cluster=fleet/pending", "control plane is not initialized"])
        .await;

    // Added at runtime.
    create_cluster(&host, "beta", initialized()).await;
    put_secret(&host, "beta-kubeconfig", &two, "1").await;
    log.wait_live(&["fleet/alpha", "fleet/beta"]).await;
    assert_reaches(&log, "fleet/beta", 2).await;

    // Becomes ready later; the bad ones are retried when their Secret changes.
    set_status(&host, "pending", initialized()).await;
    put_secret(&host, "broken-kubeconfig", &one, "2").await;
    put_secret(&host, "nosecret-kubeconfig", &two, "1").await;
    log.wait_live(&[
        "fleet/alpha",
        "fleet/beta",
        "fleet/broken",
        "fleet/nosecret",
        "fleet/pending",
    ])
    .await;
    assert_reaches(&log, "fleet/pending", 2).await;
    assert_reaches(&log, "fleet/broken", 1).await;
    assert_reaches(&log, "fleet/nosecret", 2).await;

    // Changes that are not credential changes re-engage nothing; then a rotation of
    // beta's Secret re-engages beta alone.
    let mut labels = json!({ "metadata": { "labels": { "team": "blue" } } });
    clusters(&host)
        .patch("alpha", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("label alpha");
    put_secret(&host, "alpha-kubeconfig", &one, "2").await;
    set_status(&host, "alpha", json!({ "phase": "Provisioned" })).await;
    let first_beta = log.current("fleet/beta").expect("beta engaged");
    put_secret(&host, "beta-kubeconfig", &one, "2").await;
    log.wait_count("fleet/beta", 2).await;
    wait_until("beta's first engagement to end", || {
        first_beta.token.is_cancelled()
    })
    .await;
    assert_reaches(&log, "fleet/beta", 1).await;
    for name in ["fleet/alpha", "fleet/pending", "fleet/broken", "fleet/nosecret"] {
        assert_eq!(log.count(name), 1, "{name} was re-engaged");
    }

    // A Secret that turns bad keeps the cluster engaged on its last good credentials.
    put_secret(&host, "alpha-kubeconfig", garbage.as_bytes(), "3").await;
    logs.wait_line(&[
        "WARN",
        "cluster=fleet/alpha",
        "stays engaged with its previous credentials",
    ])
    .await;
    assert_eq!(log.count("fleet/alpha"), 1);
    assert_reaches(&log, "fleet/alpha", 1).await;

    // A deletionTimestamp disengages at once, while finalizers hold the object.
    labels = json!({ "metadata": { "finalizers": ["test.example.com/hold"] } });
    clusters(&host)
        .patch("pending", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("add a finalizer");
    let pending = log.current("fleet/pending").expect("pending engaged");
    clusters(&host)
        .delete("pending", &DeleteParams::default())
        .await
        .expect("delete pending");
    wait_until("pending to be disengaged", || pending.token.is_cancelled()).await;
    assert_not_found(&provider, "fleet/pending").await;
    assert!(clusters(&host).get_opt("pending").await.expect("get").is_some());
    labels = json!({ "metadata": { "finalizers": null } });
    clusters(&host)
        .patch("pending", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("remove the finalizer");

    // Deletion disengages.
    let beta = log.current("fleet/beta").expect("beta engaged");
    clusters(&host)
        .delete("beta", &DeleteParams::default())
        .await
        .expect("delete beta");
    wait_until("beta to be disengaged", || beta.token.is_cancelled()).await;
    assert_not_found(&provider, "fleet/beta").await;
    log.wait_live(&["fleet/alpha", "fleet/broken", "fleet/nosecret"])
        .await;

    // The v1beta2 provider never engaged the v1beta1-only ready Cluster, and vice versa.
    assert_eq!(log.count("fleet/legacy"), 0);
    assert_eq!(
        legacy_log.all().len(),
        1,
        "the v1beta1 provider engaged only legacy"
    );
    assert!(!logs.text().contains(FAKE_TOKEN), "a credential reached the logs");

    // Stopping the provider disengages everything.
    token.cancel();
    running.await.expect("provider stops");
    legacy_running.await.expect("provider stops");
    assert!(log.all().iter().all(|e| e.token.is_cancelled()));
    assert!(legacy_log.all().iter().all(|e| e.token.is_cancelled()));
}

/// The provider, limited to one namespace and run with exactly
/// `deploy/rbac/capi-provider.yaml` there and every log level on, given kubeconfig
/// Secrets holding markers in a token, a password, a client key and a proxy URL,
/// some giving clusters and some refused or failing to build: no marker appears in
/// the logs, in errors or in `Debug` output.
#[tokio::test(flavor = "current_thread")]
async fn p06_capi_provider_leaks_no_credential() {
    const TOKEN: &str = "p06-capi-marker-token-41aa";
    const PASSWORD: &str = "p06-capi-marker-password-9d03";
    const KEY: &str = "p06-capi-marker-key-77e2";
    const PROXY: &str = "p06-capi-marker-proxy-c5b8";
    let (fleet, host) = host_fleet("capi-cluster-crd.yaml", NS).await;
    let spec = support::rbac::user("capi-provider", "capi-provider.yaml", NS);
    let user = fleet.cluster(0).create_user(spec).await.expect("user");

    let [token, password, bad_key, proxied] =
        marked_kubeconfigs(&kubeconfig_of(fleet.cluster(1)), TOKEN, PASSWORD, KEY, PROXY);
    let secrets: [(&str, Vec<u8>); 4] = [
        ("token", token),
        ("password", password),
        ("badkey", bad_key),
        ("proxied", proxied),
    ];
    for (name, data) in &secrets {
        create_cluster(&host, name, initialized()).await;
        put_secret(&host, &format!("{name}-kubeconfig"), data, "1").await;
    }

    let capture = support::logs::Capture::default();
    let guard = capture.set_default("trace,tower=debug,hyper=debug,h2=debug,rustls=debug");
    let local = Cluster::new("", user.client().expect("client"));
    let provider = Arc::new(ClusterApi::new(
        &local,
        ClusterApiOptions::default().namespace(NS),
    ));
    let log = EngagementLog::new();
    let token = CancellationToken::new();
    let _running = start(&provider, &log, &token);
    log.wait_live(&["fleet/password", "fleet/token"]).await;
    wait_until("both refusals logged", || {
        let text = capture.text();
        text.contains("cluster=fleet/badkey")
            && text.contains("cluster=fleet/proxied")
            && text.contains("allow_proxy_url")
    })
    .await;
    let mut texts = vec![format!("{provider:?}")];
    for name in ["fleet/token", "fleet/password"] {
        let cluster = log.current(name).expect("engaged").cluster;
        texts.push(format!("{cluster:?}"));
        if let Err(error) = Api::<Secret>::namespaced(cluster.client(), "default")
            .list(&Default::default())
            .await
        {
            texts.push(format!("{error} {error:?}"));
        }
    }
    for name in ["fleet/badkey", "fleet/proxied"] {
        let error = multicluster_runtime::Provider::get(&*provider, &name.into())
            .await
            .expect_err("no cluster");
        texts.push(format!("{error} {error:?}"));
    }
    token.cancel();
    drop(guard);
    texts.push(capture.text());
    for text in &texts {
        for marker in [TOKEN, PASSWORD, KEY, PROXY] {
            assert!(
                !text.contains(marker),
                "a credential left the process's secrets: {marker}"
            );
        }
    }
}

/// Creates the Secret `name` in the test namespace with the given labels, type and
/// data.
async fn create_secret(host: &Client, name: &str, labels: Value, type_: &str, data: Value) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": labels,
            "annotations": { "kubectl.kubernetes.io/last-applied-configuration": X06_MARKER },
        },
        "type": type_,
        "data": data,
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(host.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");
}

/// A string that must never be held by the provider's cache.
const X06_MARKER: &str = "x06-capi-marker-8e1f";

/// x06: by default the provider caches only Cluster API's Secrets, and of those only
/// the kubeconfig key. Beside a `Cluster`'s kubeconfig Secret (which also holds an
/// extra key) are an unrelated Secret, a Secret with the Cluster API label but
/// another type, one of Cluster API's type without its label, and a Cluster API CA
/// Secret (label and type, a private key under `tls.key`). Run with the documented
/// Role: once the provider's Secret informer has listed, it holds the kubeconfig
/// Secret with the key `value` alone and the CA Secret with no data, and nothing
/// else; no annotation and no marker is held.
#[tokio::test(flavor = "current_thread")]
async fn x06_capi_provider_caches_only_kubeconfig_secrets_and_only_their_kubeconfig() {
    let (fleet, host) = host_fleet("capi-cluster-crd.yaml", NS).await;
    let spec = support::rbac::user("capi-provider", "capi-provider.yaml", NS);
    let user = fleet.cluster(0).create_user(spec).await.expect("user");
    let bytes = |text: &str| k8s_openapi::ByteString(text.as_bytes().to_vec());
    let capi_label = json!({ "cluster.x-k8s.io/cluster-name": "alpha" });
    let capi_type = "cluster.x-k8s.io/secret";

    create_cluster(&host, "alpha", initialized()).await;
    let kubeconfig = k8s_openapi::ByteString(kubeconfig_of(fleet.cluster(1)));
    create_secret(
        &host,
        "alpha-kubeconfig",
        capi_label.clone(),
        capi_type,
        json!({ "value": kubeconfig, "extra": bytes(X06_MARKER) }),
    )
    .await;
    create_secret(
        &host,
        "alpha-ca",
        capi_label.clone(),
        capi_type,
        json!({ "tls.crt": bytes("crt"), "tls.key": bytes(X06_MARKER) }),
    )
    .await;
    create_secret(
        &host,
        "unrelated",
        json!({}),
        "Opaque",
        json!({ "password": bytes(X06_MARKER) }),
    )
    .await;
    create_secret(
        &host,
        "labelled-opaque",
        capi_label,
        "Opaque",
        json!({ "value": bytes(X06_MARKER) }),
    )
    .await;
    create_secret(
        &host,
        "typed-unlabelled",
        json!({}),
        capi_type,
        json!({ "value": bytes(X06_MARKER) }),
    )
    .await;

    let local = Cluster::new("", user.client().expect("client"));
    let provider = Arc::new(ClusterApi::new(
        &local,
        ClusterApiOptions::default().namespace(NS),
    ));
    let log = EngagementLog::new();
    let token = CancellationToken::new();
    let running = start(&provider, &log, &token);
    log.wait_live(&["fleet/alpha"]).await;
    assert_reaches(&log, "fleet/alpha", 1).await;

    let informer = provider.secrets().expect("the provider runs");
    assert!(informer.is_synced(), "engaged from a listed informer");
    let mut held: Vec<(String, Vec<String>)> = informer
        .store()
        .list()
        .iter()
        .map(|secret| {
            let keys = secret.data.iter().flatten().map(|(key, _)| key.clone()).collect();
            (secret.metadata.name.clone().unwrap_or_default(), keys)
        })
        .collect();
    held.sort();
    assert_eq!(
        held,
        vec![
            ("alpha-ca".to_owned(), vec![]),
            ("alpha-kubeconfig".to_owned(), vec!["value".to_owned()]),
        ],
        "the cache holds only Cluster API's Secrets, and of them only the kubeconfig"
    );
    for secret in informer.store().list() {
        assert_eq!(secret.metadata.annotations, None);
        let text = serde_json::to_string(&*secret).expect("JSON");
        assert!(!text.contains(X06_MARKER), "the cache holds a marker");
    }
    // The host's own cache was not asked for Secrets at all.
    assert!(
        local
            .cache()
            .informer_statuses()
            .iter()
            .all(|status| !status.resource.contains("Secret")),
        "{:?}",
        local.cache().informer_statuses()
    );

    token.cancel();
    running.await.expect("provider stops");
    assert!(provider.secrets().is_none(), "forgotten once stopped");
}
