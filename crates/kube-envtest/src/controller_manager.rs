//! An optional kube-controller-manager per cluster, for the controllers whose absence
//! a test would notice: namespaces that never finish deleting, dependents of a
//! deleted owner that are never collected.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ports::{PORT_ATTEMPTS, free_port, is_port_conflict};
use crate::process::Process;

/// The controllers a fleet's kube-controller-manager runs (its `--controllers`),
/// when [`crate::FleetBuilder::controller_manager`] is on:
///
/// - `namespace`: a deleted namespace has its content deleted and then goes away
///   (without it, it stays `Terminating`);
/// - `garbagecollector`: an object whose owners (`ownerReferences`) are all gone is
///   deleted, and foreground deletion waits for dependents;
/// - `serviceaccount`: every namespace gets its `default` ServiceAccount;
/// - `serviceaccount-token`: Secrets of type `kubernetes.io/service-account-token`
///   get a token (signed with the key the apiserver verifies);
/// - `root-ca-cert-publisher`: every namespace gets the `kube-root-ca.crt` ConfigMap
///   with the cluster's certificate authority.
///
/// Nothing that makes pods (no Deployment, ReplicaSet, Job controllers: without a
/// scheduler and kubelets their pods would never run), no node or cloud controllers.
/// [`crate::FleetBuilder::controller_manager_arg`] can pass another `--controllers=`.
pub const CONTROLLERS: &[&str] = &[
    "namespace",
    "garbagecollector",
    "serviceaccount",
    "serviceaccount-token",
    "root-ca-cert-publisher",
];

/// What a cluster's controller manager is started from.
pub(crate) struct ControllerManagerSpec<'a> {
    pub binary: &'a Path,
    pub log: PathBuf,
    pub extra_args: &'a [String],
}

/// A running kube-controller-manager, stopped (killed) when dropped.
#[derive(Debug)]
pub(crate) struct ControllerManager {
    process: Process,
}

impl ControllerManager {
    /// Starts kube-controller-manager for the cluster whose files (admin kubeconfig,
    /// CA, service-account key) are in `dir`, and waits until it answers `/healthz`.
    pub async fn start(
        spec: &ControllerManagerSpec<'_>,
        cluster: &str,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_once(spec, cluster, dir, timeout).await {
                Err(err) if is_port_conflict(&err) => last = Some(err),
                other => return other,
            }
        }
        Err(last.expect("PORT_ATTEMPTS is not zero"))
    }

    async fn start_once(
        spec: &ControllerManagerSpec<'_>,
        cluster: &str,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let port = free_port()?;
        let file = |name: &str| dir.join(name).display().to_string();
        let mut args = vec![
            // The admin kubeconfig (system:masters): every controller may do its work.
            format!("--kubeconfig={}", file("kubeconfig")),
            format!("--controllers={}", CONTROLLERS.join(",")),
            // One controller manager per cluster, nothing to elect.
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            // It generates a self-signed serving certificate there.
            format!("--cert-dir={}", file("controller-manager")),
            format!(
                "--service-account-private-key-file={}",
                file("service-account.key")
            ),
            format!("--root-ca-file={}", file("ca.crt")),
            "--profiling=false".into(),
        ];
        args.extend(spec.extra_args.iter().cloned());
        let what = format!("kube-controller-manager of {cluster}");
        let mut process = Process::spawn(what.clone(), spec.binary, &args, &spec.log)?;
        let client = health_client(cluster, port)?;
        let started = Instant::now();
        loop {
            process.check_running()?;
            let last = match crate::cluster::answers_ok(&client, "/healthz").await {
                Ok(()) => break,
                Err(e) => e,
            };
            if started.elapsed() > timeout {
                return Err(Error::NotReady {
                    what,
                    waited: timeout,
                    last,
                    log: spec.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(cluster, elapsed = ?started.elapsed(), "controller manager ready");
        Ok(ControllerManager { process })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// A client for the controller manager's own `/healthz`, which it serves
/// anonymously with a certificate it signed itself: nothing to verify it against,
/// and nothing secret is sent.
fn health_client(cluster: &str, port: u16) -> Result<kube::Client> {
    let url = format!("https://127.0.0.1:{port}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| Error::Client {
            cluster: cluster.to_owned(),
            reason: e.to_string(),
        })?;
    let mut config = kube::Config::new(url);
    config.accept_invalid_certs = true;
    config.connect_timeout = Some(Duration::from_secs(1));
    config.read_timeout = Some(Duration::from_secs(5));
    config.default_retry = false;
    crate::cluster::client_for(cluster, config)
}
