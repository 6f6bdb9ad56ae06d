//! Acceptance tests of the kubeconfig files provider: real apiservers from one
//! kube-envtest fleet, kubeconfig files in a temporary directory, and the provider
//! watching them.
#![cfg(feature = "file")]

mod support;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::config::Kubeconfig;
use kube_envtest::Fleet;
use multicluster_runtime::providers::file::{FileError, FileNaming, Files, default_paths};
use multicluster_runtime::providers::kubeconfig::KubeconfigPolicy;
use multicluster_runtime::{Cluster, ClusterName, Provider, ProviderRunnable};
use serde_json::json;
use support::files::{offline_kubeconfig, write_bytes};
use support::logs::Logs;
use support::objects::create_namespace;
use support::{EngagementLog, WAIT, wait_until};
use tokio_util::sync::CancellationToken;

const A: &str = "a.kubeconfig+admin";
const B: &str = "b.kubeconfig+admin";
const C1: &str = "c.kubeconfig+one";
const C2: &str = "c.kubeconfig+two";
const D: &str = "d.kubeconfig+admin";

/// A kubeconfig with one context per `(context, fleet cluster)`, each with its own
/// cluster and user entries named after the context.
fn kubeconfig(fleet: &Fleet, contexts: &[(&str, usize)]) -> Kubeconfig {
    let mut out = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        current_context: contexts.first().map(|(name, _)| (*name).to_owned()),
        ..Kubeconfig::default()
    };
    for &(name, index) in contexts {
        let admin = fleet.cluster(index).kubeconfig();
        let mut cluster = admin.clusters[0].clone();
        let mut user = admin.auth_infos[0].clone();
        let mut context = admin.contexts[0].clone();
        cluster.name = name.into();
        user.name = name.into();
        context.name = name.into();
        let entry = context.context.as_mut().expect("context entry");
        entry.cluster = name.into();
        entry.user = Some(name.into());
        out.clusters.push(cluster);
        out.auth_infos.push(user);
        out.contexts.push(context);
    }
    out
}

/// Writes as JSON (valid YAML), replacing the file by a rename as editors do.
fn write(path: &Path, kubeconfig: &Kubeconfig) {
    write_bytes(path, &serde_json::to_vec(kubeconfig).expect("serialize"));
}

/// The `marker-<i>` namespace that identifies the apiserver a cluster talks to.
async fn marker(cluster: &Cluster) -> String {
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    let list = namespaces
        .list(&ListParams::default())
        .await
        .expect("list namespaces");
    let markers: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .filter(|name| name.starts_with("marker-"))
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    markers[0].clone()
}

async fn create_marker(fleet: &Fleet, index: usize) {
    let client = fleet.cluster(index).client().expect("client");
    create_namespace(&client, &format!("marker-{index}")).await;
}

/// Warnings that name `path`.
fn warnings_about(logs: &Logs, path: &Path) -> Vec<String> {
    let path = path.display().to_string();
    let text = logs.text();
    let lines = text.lines().filter(|l| l.contains("WARN") && l.contains(&path));
    lines.map(str::to_owned).collect()
}

fn is_not_found(result: multicluster_runtime::Result<Arc<Cluster>>) -> bool {
    result.is_err_and(|e| e.is_cluster_not_found())
}

/// The whole life of a fleet of files: clusters present at start, added, changed,
/// rewritten unchanged, removed, and broken, against two real apiservers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pfile_fleet_lifecycle() {
    // Providers log from their own tasks, which a thread's subscriber would miss.
    let logs = Logs::capture_with("info");
    let fleet = Fleet::start(2).await.expect("start fleet");
    create_marker(&fleet, 0).await;
    create_marker(&fleet, 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(&d.join("a.kubeconfig"), &kubeconfig(&fleet, &[("admin", 0)]));
    write(&d.join("b.kubeconfig"), &kubeconfig(&fleet, &[("admin", 1)]));
    // A valid kubeconfig whose name matches no default pattern: not a cluster.
    write(&d.join("notes.yaml"), &kubeconfig(&fleet, &[("admin", 0)]));

    let files = Arc::new(
        Files::builder()
            .path(d)
            .debounce(Duration::from_millis(100))
            .build(),
    );
    let log = EngagementLog::new();
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let (files, log, token) = (files.clone(), log.clone(), token.clone());
        async move { files.start(token, log).await }
    });

    // Files present at start: one cluster each, talking to its own apiserver.
    log.wait_live(&[A, B]).await;
    let (a, b) = (log.current(A).expect("a"), log.current(B).expect("b"));
    assert_eq!(marker(&a.cluster).await, "marker-0");
    assert_eq!(marker(&b.cluster).await, "marker-1");

    // A file added at runtime, with two contexts.
    write(
        &d.join("c.kubeconfig"),
        &kubeconfig(&fleet, &[("one", 0), ("two", 1)]),
    );
    log.wait_live(&[A, B, C1, C2]).await;
    let c1 = log.current(C1).expect("c1");
    assert_eq!(marker(&log.current(C2).expect("c2").cluster).await, "marker-1");

    // A points at the other apiserver: only A is engaged again.
    write(&d.join("a.kubeconfig"), &kubeconfig(&fleet, &[("admin", 1)]));
    log.wait_count(A, 2).await;
    assert!(
        a.token.is_cancelled(),
        "the replaced instance's token is cancelled"
    );
    let a2 = log.current(A).expect("new a");
    assert!(!Arc::ptr_eq(&a.cluster, &a2.cluster));
    assert_eq!(marker(&a2.cluster).await, "marker-1");
    assert_eq!((log.count(B), log.count(C1), log.count(C2)), (1, 1, 1));
    assert!(!b.token.is_cancelled());
    assert!(Arc::ptr_eq(&files.get(&B.into()).await.expect("b"), &b.cluster));

    // The same settings written again, formatted differently: nothing is engaged
    // again. The file written after it is a barrier: once its cluster is engaged, a
    // reload has read the rewritten A.
    let same = serde_json::to_vec_pretty(&kubeconfig(&fleet, &[("admin", 1)])).expect("json");
    write_bytes(&d.join("a.kubeconfig"), &same);
    write(&d.join("d.kubeconfig"), &kubeconfig(&fleet, &[("admin", 0)]));
    log.wait_live(&[A, B, C1, C2, D]).await;
    assert_eq!(log.count(A), 2);
    assert!(!a2.token.is_cancelled());

    // A vanished context and a deleted file: their clusters are disengaged and gone.
    let (c2, dd) = (log.current(C2).expect("c2"), log.current(D).expect("d"));
    write(&d.join("c.kubeconfig"), &kubeconfig(&fleet, &[("one", 0)]));
    std::fs::remove_file(d.join("d.kubeconfig")).expect("delete d");
    log.wait_live(&[A, B, C1]).await;
    assert!(c2.token.is_cancelled() && dd.token.is_cancelled());
    assert!(is_not_found(files.get(&C2.into()).await));
    assert!(is_not_found(files.get(&D.into()).await));
    assert_eq!(log.count(C1), 1);
    assert!(!c1.token.is_cancelled());

    // A file broken in place and a new broken file: reported by path, never by
    // content; B keeps its last good cluster, and every cluster keeps working.
    let secret = "s3cr3t-t0ken-in-a-broken-file";
    write_bytes(
        &d.join("b.kubeconfig"),
        format!("users: [ {{ token: {secret} ").as_bytes(),
    );
    write_bytes(&d.join("bad.kubeconfig"), b"kind: Config\n");
    wait_until("warnings about both broken files", || {
        !warnings_about(&logs, &d.join("b.kubeconfig")).is_empty()
            && !warnings_about(&logs, &d.join("bad.kubeconfig")).is_empty()
    })
    .await;
    assert!(!logs.text().contains(secret), "a credential reached the log");
    assert_eq!(log.live(), BTreeSet::from([A, B, C1].map(str::to_owned)));
    assert_eq!(log.count(B), 1);
    assert!(!b.token.is_cancelled());
    assert_eq!(marker(&b.cluster).await, "marker-1");
    assert_eq!(marker(&log.current(C1).expect("c1").cluster).await, "marker-0");
    let report = files.reload().await;
    let mut paths: Vec<PathBuf> = report
        .errors
        .iter()
        .filter_map(|e| e.path().map(Path::to_owned))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [d.join("b.kubeconfig"), d.join("bad.kubeconfig")],
        "{:?}",
        report.errors
    );
    assert!(
        report.unchanged.contains(&B.into()) && !report.changed(),
        "{report:?}"
    );

    // Stopping the provider disengages everything.
    token.cancel();
    let stopped = tokio::time::timeout(WAIT, run)
        .await
        .expect("stops")
        .expect("joins");
    stopped.expect("provider ran without error");
    assert!(log.live().is_empty(), "{:?}", log.live());
}

/// A user whose exec credential plugin is `sh -c script` (a program that exists, and
/// no executable file written by the test, which a concurrent fork could keep busy).
fn exec_user(script: &str) -> serde_json::Value {
    let exec =
        json!({ "apiVersion": "client.authentication.k8s.io/v1", "command": "sh", "args": ["-c", script] });
    json!({ "exec": exec })
}

fn sorted(names: &[ClusterName]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|n| n.as_str().to_owned()).collect();
    names.sort();
    names
}

/// Which files a configuration finds and how their clusters are named, without an
/// apiserver: directories with the default patterns, globs, name clashes, naming
/// options and the policy.
#[tokio::test]
async fn pfile_discovery_and_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir(d.join("sub")).expect("mkdir");
    let two = offline_kubeconfig(&["a", "b"], json!({ "token": "t" }));
    std::fs::write(
        d.join("kubeconfig.yaml"),
        offline_kubeconfig(&["x"], json!({ "token": "t" })),
    )
    .expect("write");
    std::fs::write(d.join("eu.kubeconfig"), &two).expect("write");
    std::fs::write(d.join("notes.yaml"), &two).expect("write");
    std::fs::write(d.join(".eu.kubeconfig.swp"), &two).expect("write");
    std::fs::write(d.join("sub/eu.kubeconfig"), &two).expect("write");

    let files = Files::builder()
        .path(d)
        .glob(format!("{}/sub/*.kubeconfig", d.display()))
        .build();
    let report = files.reload().await;
    assert_eq!(
        report.files,
        [
            d.join("eu.kubeconfig"),
            d.join("kubeconfig.yaml"),
            d.join("sub/eu.kubeconfig")
        ]
    );
    assert_eq!(
        sorted(&report.added),
        ["eu.kubeconfig+a", "eu.kubeconfig+b", "kubeconfig.yaml+x"]
    );
    // The second eu.kubeconfig would give the same names: the first file keeps them.
    assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
    assert!(
        report
            .errors
            .iter()
            .all(|e| matches!(e, FileError::DuplicateName { .. }))
    );
    assert!(files.get(&"eu.kubeconfig+a".into()).await.is_ok());

    // Full paths (here with another separator) tell the two files apart; stems
    // shorten the names.
    let files = Files::builder()
        .path(d.join("eu.kubeconfig"))
        .path(d.join("sub/eu.kubeconfig"))
        .naming(FileNaming::Path)
        .separator("#")
        .build();
    let report = files.reload().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let path = |file: &str, context: &str| format!("{}#{context}", d.join(file).display());
    let expected = [
        path("eu.kubeconfig", "a"),
        path("eu.kubeconfig", "b"),
        path("sub/eu.kubeconfig", "a"),
        path("sub/eu.kubeconfig", "b"),
    ];
    assert_eq!(sorted(&report.added), expected);
    let files = Files::builder().path(d).naming(FileNaming::Stem).build();
    assert_eq!(
        sorted(&files.reload().await.added),
        ["eu+a", "eu+b", "kubeconfig+x"]
    );

    // An exec plugin is fine by default (the operator chose the files), refused by the
    // untrusted policy; the refusal names the file. kube runs the plugin as the client
    // is built.
    let credential =
        r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t"}}"#;
    let exec = exec_user(&format!("echo '{credential}'"));
    std::fs::write(d.join("exec.kubeconfig"), offline_kubeconfig(&["e"], exec)).expect("write");
    let only = |policy| {
        Files::builder()
            .path(d.join("exec.kubeconfig"))
            .policy(policy)
            .build()
    };
    let report = only(KubeconfigPolicy::trusted()).reload().await;
    assert_eq!(
        sorted(&report.added),
        ["exec.kubeconfig+e"],
        "{:?}",
        report.errors
    );
    let report = only(KubeconfigPolicy::untrusted()).reload().await;
    assert!(report.added.is_empty());
    let error = report.errors.first().expect("refused").to_string();
    assert!(error.starts_with(&d.join("exec.kubeconfig").display().to_string()) && error.contains("refused"));

    // A plugin that fails: reported for its context, without what it printed.
    let secret = "s3cr3t-printed-by-a-failing-plugin";
    let failing = exec_user(&format!("echo {secret}; echo {secret} >&2; exit 3"));
    std::fs::write(d.join("exec.kubeconfig"), offline_kubeconfig(&["f"], failing)).expect("write");
    let report = only(KubeconfigPolicy::trusted()).reload().await;
    let error = report.errors.first().expect("plugin failed").to_string();
    assert!(
        error.contains("context \"f\"")
            && error.contains("the exec credential plugin failed (exit status: 3)"),
        "{error}"
    );
    assert!(!error.contains(secret), "{error}");
}

/// A configured path that does not exist, or an invalid glob, makes the provider
/// fail at start with an error naming it.
#[tokio::test]
async fn pfile_bad_configuration_fails_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing-dir");
    let start = async |files: Files| {
        let run = files.start(CancellationToken::new(), EngagementLog::new());
        let result = tokio::time::timeout(WAIT, run).await.expect("start returns");
        result.expect_err("start fails").to_string()
    };

    let error = start(Files::builder().path(&missing).build()).await;
    let expected = format!("provider file: {}: no such file or directory", missing.display());
    assert_eq!(error, expected);
    let report = Files::builder().path(&missing).build().reload().await;
    assert!(matches!(&report.errors[..], [FileError::Missing { path }] if *path == missing));

    let error = start(
        Files::builder()
            .glob(format!("{}/[", dir.path().display()))
            .build(),
    )
    .await;
    assert!(error.contains("not a valid glob pattern"), "{error}");
    let error = start(Files::builder().path(dir.path()).patterns(["[z"]).build()).await;
    assert!(
        error.starts_with("provider file: [z: not a valid glob pattern"),
        "{error}"
    );
}

/// With nothing configured: the files of `$KUBECONFIG`, else `~/.kube/config`.
#[test]
fn pfile_default_locations() {
    let home = Some(Path::new("/home/me"));
    let env = |value: &str| default_paths(Some(OsStr::new(value)), home);
    assert_eq!(env("/a/one:/b/two"), [PathBuf::from("/a/one"), "/b/two".into()]);
    assert_eq!(env(":/only::"), [PathBuf::from("/only")]);
    let fallback = [PathBuf::from("/home/me/.kube/config")];
    assert_eq!(env(""), fallback);
    assert_eq!(default_paths(None, home), fallback);
    assert!(default_paths(None, None).is_empty());
    assert_eq!(default_paths(Some(OsStr::new("/k")), None), [PathBuf::from("/k")]);
}
