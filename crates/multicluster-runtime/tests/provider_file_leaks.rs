//! The file provider leaks no credential (p06), in a test binary of its own: it
//! captures every log line of its thread with a scoped subscriber, which another
//! test of the same process installing a global one could starve.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use multicluster_runtime::providers::file::Files;
use multicluster_runtime::{ClusterName, Provider, ProviderRunnable};
use serde_json::json;
use support::files::{offline_kubeconfig, write_bytes};
use support::{EngagementLog, wait_until};
use tokio_util::sync::CancellationToken;

mod support;

/// The provider with every log level on, given kubeconfig files whose users hold
/// markers in a token, a password, a client key, a proxy URL and an exec plugin's
/// arguments and environment, some giving clusters (whose requests then fail) and
/// some failing to build: no marker appears in the logs, in errors, in reload
/// reports or in `Debug` output.
#[tokio::test(flavor = "current_thread")]
async fn p06_file_provider_leaks_no_credential() {
    const TOKEN: &str = "p06-file-marker-token-0d4e";
    const PASSWORD: &str = "p06-file-marker-password-a61b";
    const KEY: &str = "p06-file-marker-key-5f90";
    const PROXY: &str = "p06-file-marker-proxy-28c7";
    const EXEC_ARG: &str = "p06-file-marker-exec-arg-e3d2";
    const EXEC_ENV: &str = "p06-file-marker-exec-env-91fa";
    let dir = tempfile::tempdir().expect("temp dir");
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{KEY}\n-----END PRIVATE KEY-----\n");
    let cert_and_key = json!({
        "client-certificate-data": k8s_openapi::ByteString(pem.clone().into_bytes()),
        "client-key-data": k8s_openapi::ByteString(pem.into_bytes()),
    });
    let exec = json!({ "exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "sh",
        "args": ["-c", format!("echo {EXEC_ARG} >&2; exit 4")],
        "env": [{ "name": "SECRET", "value": EXEC_ENV }],
    }});
    let mut proxied: serde_json::Value =
        serde_json::from_str(&offline_kubeconfig(&["admin"], json!({ "token": TOKEN }))).expect("JSON");
    proxied["clusters"][0]["cluster"]["proxy-url"] = json!(format!("http://u:{PROXY}@127.0.0.1:9"));
    let files = [
        (
            "token.kubeconfig",
            offline_kubeconfig(&["admin"], json!({ "token": TOKEN })),
        ),
        (
            "password.kubeconfig",
            offline_kubeconfig(&["admin"], json!({ "username": "admin", "password": PASSWORD })),
        ),
        ("key.kubeconfig", offline_kubeconfig(&["admin"], cert_and_key)),
        ("exec.kubeconfig", offline_kubeconfig(&["admin"], exec)),
        ("proxied.kubeconfig", proxied.to_string()),
    ];
    for (name, text) in &files {
        write_bytes(&dir.path().join(name), text.as_bytes());
    }

    let capture = support::logs::Capture::default();
    let guard = capture.set_default("trace,tower=debug,hyper=debug,h2=debug,rustls=debug");
    let provider = Arc::new(Files::builder().path(dir.path()).build());
    let log = EngagementLog::new();
    let token = CancellationToken::new();
    let (runs, aware, stop) = (provider.clone(), log.clone(), token.clone());
    let running = tokio::spawn(async move { runs.start(stop, aware).await });
    let dump = capture.clone();
    let _dump = DumpOnPanic(dump);
    // The proxied one fails to build: kube is built without proxy support.
    log.wait_live(&["password.kubeconfig+admin", "token.kubeconfig+admin"])
        .await;
    wait_until("the proxied file's failure logged", || {
        capture.text().contains("proxied.kubeconfig: context")
    })
    .await;
    let mut texts = vec![format!("{provider:?}")];
    for name in ["token.kubeconfig+admin", "password.kubeconfig+admin"] {
        let cluster = provider.get(&ClusterName::from(name)).await.expect("engaged");
        texts.push(format!("{cluster:?}"));
        let listed = tokio::time::timeout(
            Duration::from_secs(5),
            Api::<Namespace>::all(cluster.client()).list(&ListParams::default()),
        )
        .await;
        if let Ok(Err(error)) = listed {
            texts.push(format!("{error} {error:?}"));
        }
    }
    for name in [
        "key.kubeconfig+admin",
        "exec.kubeconfig+admin",
        "proxied.kubeconfig+admin",
    ] {
        let error = provider
            .get(&ClusterName::from(name))
            .await
            .expect_err("no cluster");
        texts.push(format!("{error} {error:?}"));
    }
    token.cancel();
    let _ = running.await;
    drop(guard);
    let text = capture.text();
    assert!(text.contains("key.kubeconfig"), "the capture works: {text}");
    texts.push(text);
    for text in &texts {
        for marker in [TOKEN, PASSWORD, KEY, PROXY, EXEC_ARG, EXEC_ENV] {
            assert!(
                !text.contains(marker),
                "a credential left the process's secrets: {marker}"
            );
        }
    }
}

/// Prints a capture when a test panics, to see why.
struct DumpOnPanic(support::logs::Capture);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.0.text();
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("TRACE")).collect();
            eprintln!("--- captured logs ---\n{}", lines.join("\n"));
        }
    }
}
