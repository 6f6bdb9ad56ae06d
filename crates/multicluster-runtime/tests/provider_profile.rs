//! Acceptance tests of the ClusterProfile provider against real apiservers: fleet
//! cluster 0 is the hub, with a hand-written stand-in of the `ClusterProfile` CRD
//! (tests/fixtures), hand-made profiles and credential Secrets; fleet clusters 1 and
//! 2 are the clusters they describe. Access providers use a real exec credential
//! plugin: a shell script that prints the admin client certificate of the cluster
//! whose server it is given (`provideClusterInfo`).
#![cfg(feature = "profile")]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube_envtest::LocalCluster;
use multicluster_runtime::Cluster;
use multicluster_runtime::providers::profile::{
    self, AccessProviders, ClusterProfiles, ClusterProfilesOptions,
};
use serde_json::{Value, json};
use support::host::{assert_not_found, assert_reaches, host_fleet, kubeconfig_of, marked_kubeconfigs, start};
use support::logs::Logs;
use support::{EngagementLog, wait_until};
use tokio_util::sync::CancellationToken;

const NS: &str = "inventory";
const CONSUMER: &str = "e2e";
const PLUGIN: &str = "envtest";
/// A credential-looking string that must never reach a log line.
const FAKE_TOKEN: &str = "profile-test-token-7b1d04aa";

fn profiles(host: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(host.clone(), NS, &profile::api_resource())
}

/// `status.accessProviders` naming `provider` for fleet cluster `cluster`.
fn access(provider: &str, cluster: &LocalCluster, extensions: Value) -> Value {
    let ca = cluster.kubeconfig().clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.certificate_authority_data.clone())
        .expect("the fleet's kubeconfig embeds its CA");
    let mut endpoint = json!({ "server": cluster.server_url(), "certificate-authority-data": ca });
    if !extensions.is_null() {
        endpoint["extensions"] = extensions;
    }
    json!([{ "name": provider, "cluster": endpoint }])
}

fn health(healthy: bool) -> Value {
    let status = if healthy { "True" } else { "False" };
    json!([{
        "type": profile::CONTROL_PLANE_HEALTHY, "status": status, "reason": "Test",
        "message": "set by the test", "lastTransitionTime": "2025-01-01T00:00:00Z",
    }])
}

async fn create_profile(host: &Client, name: &str, status: Value) {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ClusterProfile",
        "metadata": { "name": name, "namespace": NS, "labels": { "x-k8s.io/cluster-manager": "test" } },
        "spec": { "displayName": name, "clusterManager": { "name": "test" } },
    }))
    .expect("a ClusterProfile");
    profiles(host)
        .create(&PostParams::default(), &object)
        .await
        .expect("create ClusterProfile");
    set_status(host, name, status).await;
}

/// Merges `status` into the profile's status (lists are replaced whole).
async fn set_status(host: &Client, name: &str, status: Value) {
    profiles(host)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .expect("patch ClusterProfile status");
}

/// Creates or replaces the credentials Secret `name` for `profile`.
async fn put_secret(host: &Client, name: &str, profile: &str, config: &[u8], annotation: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": { profile::CONSUMER_LABEL: CONSUMER, profile::PROFILE_LABEL: profile },
            "annotations": { "test/revision": annotation },
        },
        "data": { profile::SECRET_KEY: ByteString(config.to_vec()) },
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(host.clone(), NS)
        .patch(
            name,
            &PatchParams::apply("provider-profile-test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("apply Secret");
}

/// Writes the exec plugin and, per fleet cluster, the ExecCredential it prints for
/// that cluster's server: its admin client certificate and key. With
/// `CRED_VARIANT=expiring` in its environment, the certificate is said to expire in
/// 20 seconds.
fn write_plugin(dir: &Path, clusters: &[&LocalCluster]) -> std::path::PathBuf {
    for cluster in clusters {
        let kubeconfig = serde_json::to_value(cluster.kubeconfig()).expect("kubeconfig as JSON");
        let user = &kubeconfig["users"][0]["user"];
        let pem = |field: &str| -> String {
            let bytes: ByteString = serde_json::from_value(user[field].clone()).expect("base64 PEM");
            String::from_utf8(bytes.0).expect("PEM text")
        };
        let port = cluster
            .server_url()
            .rsplit(':')
            .next()
            .expect("a port")
            .to_owned();
        for (variant, expiry) in [("", None), ("-expiring", Some("EXPIRES"))] {
            let mut status = json!({
                "clientCertificateData": pem("client-certificate-data"),
                "clientKeyData": pem("client-key-data"),
            });
            if let Some(expiry) = expiry {
                status["expirationTimestamp"] = json!(expiry);
            }
            let credential = json!({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": status,
            });
            let path = dir.join(format!("cred-{port}{variant}.json"));
            std::fs::write(path, credential.to_string()).expect("write credential");
        }
    }
    let script = format!(
        r#"#!/bin/sh
# Test exec credential plugin: the credential of the cluster named in KUBERNETES_EXEC_INFO.
port=$(printf '%s' "$KUBERNETES_EXEC_INFO" | grep -o '127\.0\.0\.1:[0-9]*' | head -n 1 | cut -d: -f2)
[ -n "$port" ] || {{ echo "no cluster in KUBERNETES_EXEC_INFO" >&2; exit 1; }}
file="{dir}/cred-$port${{CRED_VARIANT:+-$CRED_VARIANT}}.json"
[ -f "$file" ] || {{ echo "no credential for port $port" >&2; exit 1; }}
sed "s/EXPIRES/$(date -u -d '+20 seconds' +%Y-%m-%dT%H:%M:%SZ)/" "$file"
"#,
        dir = dir.display()
    );
    let path = dir.join("plugin.sh");
    std::fs::write(&path, script).expect("write plugin");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod plugin");
    path
}
/// One fleet for the whole life of profiles: existing and added ones, credentials
/// from access providers (a real exec plugin) and from labelled Secrets, endpoint
/// changes, Secret rotation, no-op updates, health changes, bad input and deletion;
/// provider A disengages unhealthy profiles, provider B (access providers only,
/// clusters named by profile name) keeps them.
#[tokio::test]
async fn pprofile_fleet_lifecycle() {
    let logs = Logs::capture();
    let (fleet, host) = host_fleet("clusterprofile-crd.yaml", NS).await;
    let (c1, c2) = (fleet.cluster(1), fleet.cluster(2));
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin = write_plugin(dir.path(), &[c1, c2]);
    let provider_file = dir.path().join("provider-file.json");
    let file = json!({ "providers": [{
        "name": PLUGIN,
        "execConfig": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": plugin,
            "provideClusterInfo": true,
        },
        "profileSourcedEnvVarsPolicy": "AppendIfNotExists",
    }]});
    std::fs::write(&provider_file, file.to_string()).expect("write provider file");
    let providers = AccessProviders::from_file(&provider_file).expect("a valid provider file");

    // Existing before the providers start.
    create_profile(
        &host,
        "p1",
        json!({ "conditions": health(true), "accessProviders": access(PLUGIN, c1, Value::Null) }),
    )
    .await;
    create_profile(&host, "psecret", json!({ "conditions": health(true) })).await;
    put_secret(&host, "psecret-creds", "psecret", &kubeconfig_of(c2), "1").await;
    create_profile(
        &host,
        "psick",
        json!({ "conditions": health(false), "accessProviders": access(PLUGIN, c2, Value::Null) }),
    )
    .await;
    create_profile(&host, "pnocreds", json!({ "conditions": health(true) })).await;
    create_profile(&host, "pbadsecret", json!({ "conditions": health(true) })).await;
    let garbage = format!("apiVersion: v1\nusers: [ {{ token: {FAKE_TOKEN} ");
    put_secret(&host, "pbadsecret-creds", "pbadsecret", garbage.as_bytes(), "1").await;
    create_profile(
        &host,
        "punknown",
        json!({ "conditions": health(true), "accessProviders": access("gke", c1, Value::Null) }),
    )
    .await;
    // A client certificate that expires in 20 s: the client is rebuilt before.
    let expiring = json!([{ "name": profile::access::ADDITIONAL_ENVS_EXTENSION, "extension": { "CRED_VARIANT": "expiring" } }]);
    create_profile(
        &host,
        "pexp",
        json!({ "conditions": health(true), "accessProviders": access(PLUGIN, c1, expiring) }),
    )
    .await;
    // The plugin fails for this one until its credential file appears: retried.
    let late = json!([{ "name": profile::access::ADDITIONAL_ENVS_EXTENSION, "extension": { "CRED_VARIANT": "late" } }]);
    create_profile(
        &host,
        "plate",
        json!({ "conditions": health(true), "accessProviders": access(PLUGIN, c2, late) }),
    )
    .await;

    let local = Cluster::new("", host.clone());
    let a = Arc::new(
        ClusterProfiles::new(
            &local,
            ClusterProfilesOptions::default()
                .namespace(NS)
                .access_providers(providers.clone())
                .secret_consumer(CONSUMER)
                .disengage_when_unhealthy(true),
        )
        .expect("provider A"),
    );
    let b = Arc::new(
        ClusterProfiles::new(
            &local,
            ClusterProfilesOptions::default()
                .access_providers(providers)
                .cluster_name(|_namespace, name| name.to_owned()),
        )
        .expect("provider B"),
    );
    let (log_a, log_b) = (EngagementLog::new(), EngagementLog::new());
    let token = CancellationToken::new();
    let running = [start(&a, &log_a, &token), start(&b, &log_b, &token)];

    // Healthy profiles with usable credentials are engaged and reach their cluster.
    log_a
        .wait_live(&["inventory/p1", "inventory/pexp", "inventory/psecret"])
        .await;
    log_b.wait_live(&["p1", "pexp"]).await;
    assert_reaches(&log_a, "inventory/p1", 1).await;
    assert_reaches(&log_a, "inventory/psecret", 2).await;
    assert_reaches(&log_a, "inventory/pexp", 1).await;
    assert_reaches(&log_b, "p1", 1).await;
    // The others are explained.
    let no_secret = "no Secret in namespace inventory is labelled";
    logs.wait_line(&["WARN", "cluster=inventory/pnocreds", no_secret])
        .await;
    logs.wait_line(&[
        "WARN",
        "cluster=inventory/pbadsecret",
        "Secret inventory/pbadsecret-creds: not a valid kubeconfig",
    ])
    .await;
    logs.wait_line(&[
        "WARN",
        "cluster=inventory/punknown",
        no_secret,
        "offers no access provider",
    ])
    .await;
    logs.wait_line(&[
        "WARN",
        "cluster=punknown",
        "offers no access provider of the provider file",
        "\"gke\"",
    ])
    .await;
    logs.wait_line(&["cluster=inventory/psick", "not healthy"]).await;
    let plugin_failed = [
        "WARN",
        "cluster=inventory/plate",
        "exec credential plugin",
        "failed (exit status: 1)",
        "retrying",
    ];
    logs.wait_line(&plugin_failed).await;
    let port = c2.server_url().rsplit(':').next().expect("a port").to_owned();
    std::fs::copy(
        dir.path().join(format!("cred-{port}.json")),
        dir.path().join(format!("cred-{port}-late.json")),
    )
    .expect("provide the late credential");
    log_a.wait_count("inventory/plate", 1).await;
    assert_reaches(&log_a, "inventory/plate", 2).await;

    // Added at runtime.
    create_profile(
        &host,
        "p2",
        json!({ "conditions": health(true), "accessProviders": access(PLUGIN, c2, Value::Null) }),
    )
    .await;
    log_a.wait_count("inventory/p2", 1).await;
    assert_reaches(&log_a, "inventory/p2", 2).await;

    // Healthy later.
    set_status(&host, "psick", json!({ "conditions": health(true) })).await;
    log_a.wait_count("inventory/psick", 1).await;
    assert_reaches(&log_a, "inventory/psick", 2).await;
    log_b.wait_live(&["p1", "p2", "pexp", "plate", "psick"]).await;

    // No-op changes re-engage nothing; an endpoint change re-engages p1 alone.
    set_status(
        &host,
        "p2",
        json!({ "properties": [{ "name": "region", "value": "eu" }] }),
    )
    .await;
    put_secret(&host, "psecret-creds", "psecret", &kubeconfig_of(c2), "2").await;
    let first_p1 = log_a.current("inventory/p1").expect("p1 engaged");
    set_status(
        &host,
        "p1",
        json!({ "accessProviders": access(PLUGIN, c2, Value::Null) }),
    )
    .await;
    log_a.wait_count("inventory/p1", 2).await;
    wait_until("p1's first engagement to end", || first_p1.token.is_cancelled()).await;
    assert_reaches(&log_a, "inventory/p1", 2).await;
    log_b.wait_count("p1", 2).await;
    assert_reaches(&log_b, "p1", 2).await;
    for name in ["inventory/p2", "inventory/psecret", "inventory/psick"] {
        assert_eq!(log_a.count(name), 1, "{name} was re-engaged");
    }

    // Secret rotation re-engages psecret alone.
    put_secret(&host, "psecret-creds", "psecret", &kubeconfig_of(c1), "3").await;
    log_a.wait_count("inventory/psecret", 2).await;
    assert_reaches(&log_a, "inventory/psecret", 1).await;
    assert_eq!(log_a.count("inventory/p1"), 2);

    // Unhealthy: A disengages, B keeps; healthy again: A engages again.
    let p2 = log_a.current("inventory/p2").expect("p2 engaged");
    set_status(&host, "p2", json!({ "conditions": health(false) })).await;
    wait_until("A to disengage p2", || p2.token.is_cancelled()).await;
    assert_not_found(&a, "inventory/p2").await;
    logs.wait_line(&["cluster disengaged", "cluster=inventory/p2", "not healthy"])
        .await;
    set_status(&host, "p2", json!({ "conditions": health(true) })).await;
    log_a.wait_count("inventory/p2", 2).await;
    assert_reaches(&log_a, "inventory/p2", 2).await;
    assert_eq!(log_b.count("p2"), 1, "B re-engaged p2");
    assert!(log_b.live().contains("p2"), "B disengaged p2");

    // Deletion disengages.
    let psecret = log_a.current("inventory/psecret").expect("psecret engaged");
    profiles(&host)
        .delete("psecret", &DeleteParams::default())
        .await
        .expect("delete psecret");
    wait_until("psecret to be disengaged", || psecret.token.is_cancelled()).await;
    assert_not_found(&a, "inventory/psecret").await;

    // The expiring certificate was renewed by rebuilding the client.
    log_a.wait_count("inventory/pexp", 2).await;
    assert_reaches(&log_a, "inventory/pexp", 1).await;

    log_a
        .wait_live(&[
            "inventory/p1",
            "inventory/p2",
            "inventory/pexp",
            "inventory/plate",
            "inventory/psick",
        ])
        .await;
    assert!(!logs.text().contains(FAKE_TOKEN), "a credential reached the logs");
    assert!(
        !logs.text().contains("no credential for port"),
        "the plugin's output reached the logs"
    );

    token.cancel();
    for handle in running {
        handle.await.expect("provider stops");
    }
    assert!(log_a.all().iter().all(|e| e.token.is_cancelled()));
    assert!(log_b.all().iter().all(|e| e.token.is_cancelled()));
}

/// The provider, limited to its namespace and run with exactly
/// `deploy/rbac/profile-provider.yaml` there and every log level on, given Secret
/// kubeconfigs with markers in a token, a password, a client key and a proxy URL,
/// and a profile whose access-provider extensions put markers in the exec plugin's
/// arguments and environment (the plugin fails): no marker appears in the logs, in
/// errors or in `Debug` output.
#[tokio::test(flavor = "current_thread")]
async fn p06_profile_provider_leaks_no_credential() {
    const TOKEN: &str = "p06-profile-marker-token-6e2a";
    const PASSWORD: &str = "p06-profile-marker-password-0c5f";
    const KEY: &str = "p06-profile-marker-key-b817";
    const PROXY: &str = "p06-profile-marker-proxy-3d94";
    const EXEC_ARG: &str = "p06-profile-marker-exec-arg-77a0";
    const EXEC_ENV: &str = "p06-profile-marker-exec-env-e4c1";
    let (fleet, host) = host_fleet("clusterprofile-crd.yaml", NS).await;
    let spec = support::rbac::user("profile-provider", "profile-provider.yaml", NS);
    let user = fleet.cluster(0).create_user(spec).await.expect("user");

    let [token, password, bad_key, proxied] =
        marked_kubeconfigs(&kubeconfig_of(fleet.cluster(1)), TOKEN, PASSWORD, KEY, PROXY);
    let secrets: [(&str, Vec<u8>); 4] = [
        ("ptoken", token),
        ("ppassword", password),
        ("pkey", bad_key),
        ("pproxy", proxied),
    ];
    for (name, data) in &secrets {
        create_profile(&host, name, json!({ "conditions": health(true) })).await;
        put_secret(&host, &format!("{name}-creds"), name, data, "1").await;
    }
    let extensions = json!([
        { "name": profile::access::ADDITIONAL_ARGS_EXTENSION, "extension": [format!("--token={EXEC_ARG}")] },
        { "name": profile::access::ADDITIONAL_ENVS_EXTENSION, "extension": { "SECRET": EXEC_ENV } },
    ]);
    create_profile(
        &host,
        "pexec",
        json!({ "conditions": health(true), "accessProviders": access("failing", fleet.cluster(2), extensions) }),
    )
    .await;
    let providers = AccessProviders::from_json(
        br#"{"providers": [{"name": "failing", "execConfig": {"apiVersion": "client.authentication.k8s.io/v1",
            "command": "/bin/sh", "args": ["-c", "echo \"$SECRET $*\" >&2; exit 3", "plugin"]},
            "profileSourcedCLIArgsPolicy": "Append", "profileSourcedEnvVarsPolicy": "Replace"}]}"#,
        "p06 provider file",
    )
    .expect("provider file");

    let capture = support::logs::Capture::default();
    let guard = capture.set_default("trace,tower=debug,hyper=debug,h2=debug,rustls=debug");
    let local = Cluster::new("", user.client().expect("client"));
    let provider = Arc::new(
        ClusterProfiles::new(
            &local,
            ClusterProfilesOptions::default()
                .namespace(NS)
                .access_providers(providers)
                .secret_consumer(CONSUMER),
        )
        .expect("provider"),
    );
    let log = EngagementLog::new();
    let token = CancellationToken::new();
    let _running = start(&provider, &log, &token);
    log.wait_live(&["inventory/ppassword", "inventory/ptoken"]).await;
    wait_until("the failures logged", || {
        let text = capture.text();
        [
            "cluster=inventory/pkey",
            "cluster=inventory/pexec",
            "allow_proxy_url",
        ]
        .iter()
        .all(|part| text.contains(part))
    })
    .await;
    let mut texts = vec![format!("{provider:?}")];
    for name in ["inventory/ptoken", "inventory/ppassword"] {
        let cluster = log.current(name).expect("engaged").cluster;
        texts.push(format!("{cluster:?}"));
        if let Err(error) = Api::<Secret>::namespaced(cluster.client(), "default")
            .list(&Default::default())
            .await
        {
            texts.push(format!("{error} {error:?}"));
        }
    }
    for name in ["inventory/pkey", "inventory/pproxy", "inventory/pexec"] {
        let error = multicluster_runtime::Provider::get(&*provider, &name.into())
            .await
            .expect_err("no cluster");
        texts.push(format!("{error} {error:?}"));
    }
    token.cancel();
    drop(guard);
    texts.push(capture.text());
    for text in &texts {
        for marker in [TOKEN, PASSWORD, KEY, PROXY, EXEC_ARG, EXEC_ENV] {
            assert!(
                !text.contains(marker),
                "a credential left the process's secrets: {marker}"
            );
        }
    }
}
