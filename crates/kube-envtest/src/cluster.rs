//! One local cluster: a kube-apiserver with its certificates, admin credentials and
//! kubeconfig, backed by a shared or an own etcd.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::config::Kubeconfig;
use kube::{Api, Client};

use crate::certs::{Authority, CertAndKey};
use crate::controller_manager::{ControllerManager, ControllerManagerSpec};
use crate::error::{Error, Result};
use crate::etcd::Etcd;
use crate::kubeconfig;
use crate::ports::{PORT_ATTEMPTS, free_port, is_port_conflict};
use crate::process::Process;

/// The user of every cluster's admin kubeconfig, a member of `system:masters`.
pub const ADMIN_USER: &str = "kube-envtest-admin";

/// How long [`LocalCluster::stop`] waits for a graceful exit before killing.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a cluster is started from; filled in by the fleet builder.
pub(crate) struct ClusterSpec<'a> {
    pub name: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub apiserver: &'a Path,
    pub etcd_url: String,
    pub own_etcd: Option<Etcd>,
    pub extra_args: &'a [String],
    pub ready_timeout: Duration,
    pub controller_manager: Option<ControllerManagerSpec<'a>>,
}

/// A running (or deliberately stopped) local cluster.
///
/// Created by [`crate::Fleet`]; dropping the fleet stops it. Its admin kubeconfig is
/// written to [`LocalCluster::kubeconfig_path`] and is available in memory as
/// [`LocalCluster::config`] and [`LocalCluster::client`].
#[derive(Debug)]
pub struct LocalCluster {
    name: String,
    port: u16,
    authority: Arc<Authority>,
    kubeconfig: Kubeconfig,
    kubeconfig_path: PathBuf,
    config: kube::Config,
    args: Vec<String>,
    binary: PathBuf,
    log: PathBuf,
    ready_timeout: Duration,
    // Declared first: the controller manager stops before the apiserver it uses.
    controller_manager: Option<ControllerManager>,
    // Declared before `own_etcd` so the apiserver stops before its storage.
    process: Mutex<Option<Process>>,
    own_etcd: Option<Etcd>,
}

impl LocalCluster {
    pub(crate) async fn create(mut spec: ClusterSpec<'_>) -> Result<Self> {
        let files = ClusterFiles::write(&spec)?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut cluster = LocalCluster::new(&spec, &files, port).await?;
            match cluster.launch().await {
                Ok(()) => {
                    cluster.own_etcd = spec.own_etcd.take();
                    if let Some(manager) = &spec.controller_manager {
                        cluster.controller_manager = Some(
                            ControllerManager::start(manager, &cluster.name, &files.dir, spec.ready_timeout)
                                .await?,
                        );
                    }
                    return Ok(cluster);
                }
                Err(err) if is_port_conflict(&err) => last = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last.expect("PORT_ATTEMPTS is not zero"))
    }

    async fn new(spec: &ClusterSpec<'_>, files: &ClusterFiles, port: u16) -> Result<Self> {
        let server = format!("https://127.0.0.1:{port}");
        let admin = files.authority.client(ADMIN_USER, &["system:masters"])?;
        let kubeconfig =
            kubeconfig::for_user(&spec.name, &server, &files.authority.ca_pem(), ADMIN_USER, &admin);
        let kubeconfig_path = spec.dir.join("kubeconfig");
        kubeconfig::write(&kubeconfig_path, &kubeconfig)?;
        let config = kubeconfig::to_config(&spec.name, &kubeconfig).await?;
        Ok(LocalCluster {
            name: spec.name.clone(),
            port,
            authority: files.authority.clone(),
            kubeconfig,
            kubeconfig_path,
            config,
            args: files.apiserver_args(spec, port),
            binary: spec.apiserver.to_path_buf(),
            log: spec.log.clone(),
            ready_timeout: spec.ready_timeout,
            controller_manager: None,
            process: Mutex::new(None),
            own_etcd: None,
        })
    }

    /// The cluster's name, e.g. `cluster-0`; also its kubeconfig context's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>`; it keeps its port across
    /// [`stop`](Self::stop) and [`start`](Self::start).
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The admin kubeconfig (user in `system:masters`), as written to
    /// [`kubeconfig_path`](Self::kubeconfig_path).
    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.kubeconfig
    }

    /// Path of the admin kubeconfig file (mode 0600).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin client configuration.
    pub fn config(&self) -> kube::Config {
        self.config.clone()
    }

    /// A new admin client.
    ///
    /// # Errors
    /// [`Error::Client`] if the TLS configuration cannot be built.
    pub fn client(&self) -> Result<Client> {
        client_for(&self.name, self.config.clone())
    }

    /// The apiserver's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The apiserver's process id while it runs.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.process().as_ref().map(Process::pid)
    }

    /// The process id of the etcd this cluster owns, when the fleet gives each
    /// cluster its own ([`crate::EtcdTopology::PerCluster`]).
    pub fn etcd_pid(&self) -> Option<u32> {
        self.own_etcd.as_ref().map(Etcd::pid)
    }

    /// The process id of the cluster's kube-controller-manager, when the fleet runs
    /// one ([`crate::FleetBuilder::controller_manager`]). It runs for the cluster's
    /// whole life: across [`stop`](Self::stop) and [`start`](Self::start) of the
    /// apiserver it keeps retrying and carries on once the apiserver is back.
    pub fn controller_manager_pid(&self) -> Option<u32> {
        self.controller_manager.as_ref().map(ControllerManager::pid)
    }

    /// Copies the admin kubeconfig to `<dir>/<name>.kubeconfig` (mode 0600),
    /// creating `dir` if needed, and returns that path.
    ///
    /// # Errors
    /// [`Error::Io`] if `dir` cannot be created or the file written.
    pub fn write_kubeconfig(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        let path = dir.join(format!("{}.kubeconfig", self.name));
        kubeconfig::write(&path, &self.kubeconfig)?;
        Ok(path)
    }

    /// Whether the apiserver process is running (paused counts as running).
    pub fn is_running(&self) -> bool {
        self.process().is_some()
    }

    /// Stops the apiserver (SIGTERM, then SIGKILL after a few seconds). Its data stays
    /// in etcd, so [`start`](Self::start) brings the cluster back as it was.
    pub async fn stop(&self) {
        let process = self.process().take();
        if let Some(process) = process {
            process.terminate(STOP_GRACE).await;
            tracing::info!(cluster = self.name, "apiserver stopped");
        }
    }

    /// Starts a stopped apiserver again on the same port and with the same
    /// certificates, so existing clients and kubeconfigs work again, and waits until
    /// it is ready.
    ///
    /// # Errors
    /// [`Error::State`] if it is running; otherwise as for start-up.
    pub async fn start(&self) -> Result<()> {
        if self.is_running() {
            return Err(Error::State {
                cluster: self.name.clone(),
                reason: "the apiserver is already running".into(),
            });
        }
        self.launch().await
    }

    /// Stops and starts the apiserver.
    ///
    /// # Errors
    /// As for [`start`](Self::start).
    pub async fn restart(&self) -> Result<()> {
        self.stop().await;
        self.start().await
    }

    /// Freezes the apiserver (SIGSTOP): connections are accepted by the kernel but no
    /// request is answered, like a hung server. Undo with [`resume`](Self::resume).
    pub fn pause(&self) {
        if let Some(process) = self.process().as_ref() {
            process.pause();
        }
    }

    /// Thaws an apiserver frozen by [`pause`](Self::pause).
    pub fn resume(&self) {
        if let Some(process) = self.process().as_ref() {
            process.resume();
        }
    }

    async fn launch(&self) -> Result<()> {
        let process = Process::spawn(
            format!("kube-apiserver of {}", self.name),
            &self.binary,
            &self.args,
            &self.log,
        )?;
        *self.process() = Some(process);
        let result = self.wait_ready().await;
        if result.is_err()
            && let Some(mut process) = self.process().take()
        {
            process.kill();
        }
        result
    }

    /// Waits for `/readyz` and for the `default` namespace, which the apiserver
    /// creates shortly after it starts serving.
    async fn wait_ready(&self) -> Result<()> {
        let mut probe = self.config.clone();
        probe.connect_timeout = Some(Duration::from_secs(1));
        probe.read_timeout = Some(Duration::from_secs(5));
        probe.default_retry = false;
        let client = client_for(&self.name, probe)?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let started = Instant::now();
        loop {
            if let Some(process) = self.process().as_mut() {
                process.check_running()?;
            }
            let last = match answers_ok(&client, "/readyz").await {
                Ok(()) => match namespaces.get_opt("default").await {
                    Ok(Some(_)) => break,
                    Ok(None) => "namespace default does not exist yet".to_owned(),
                    Err(e) => format!("cannot read namespace default: {e}"),
                },
                Err(e) => e,
            };
            if started.elapsed() > self.ready_timeout {
                return Err(Error::NotReady {
                    what: format!("kube-apiserver of {}", self.name),
                    waited: self.ready_timeout,
                    last,
                    log: self.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(cluster = self.name, elapsed = ?started.elapsed(), "apiserver ready");
        Ok(())
    }

    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    fn process(&self) -> std::sync::MutexGuard<'_, Option<Process>> {
        self.process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `path` of the server behind `client` answers `ok` (`/readyz`, `/healthz`).
pub(crate) async fn answers_ok(client: &Client, path: &str) -> std::result::Result<(), String> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match client.request_text(request).await {
        Ok(body) if body.trim() == "ok" => Ok(()),
        Ok(body) => Err(format!("{path} answered {body:?}")),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

pub(crate) fn client_for(cluster: &str, config: kube::Config) -> Result<Client> {
    Client::try_from(config).map_err(|e| Error::Client {
        cluster: cluster.to_owned(),
        reason: e.to_string(),
    })
}

/// The certificates and keys of one cluster, written once and reused across restarts.
struct ClusterFiles {
    authority: Arc<Authority>,
    dir: PathBuf,
}

impl ClusterFiles {
    fn write(spec: &ClusterSpec<'_>) -> Result<Self> {
        let dir = &spec.dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        let authority = Authority::new(&spec.name)?;
        let serving: CertAndKey = authority.serving()?;
        let (service_account_public, service_account_private) = crate::certs::service_account_keys()?;
        for (name, content) in [
            ("ca.crt", authority.ca_pem()),
            ("apiserver.crt", serving.cert_pem),
            ("apiserver.key", serving.key_pem),
            ("service-account.pub", service_account_public),
            ("service-account.key", service_account_private),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, content).map_err(|e| Error::io("cannot write", path, e))?;
        }
        Ok(ClusterFiles {
            authority: Arc::new(authority),
            dir: dir.clone(),
        })
    }

    fn apiserver_args(&self, spec: &ClusterSpec<'_>, port: u16) -> Vec<String> {
        let file = |name: &str| self.dir.join(name).display().to_string();
        let mut args = vec![
            format!("--etcd-servers={}", spec.etcd_url),
            // Distinct prefixes let several apiservers share one etcd as separate clusters.
            format!("--etcd-prefix=/kube-envtest/{}", spec.name),
            format!("--cert-dir={}", self.dir.display()),
            format!("--tls-cert-file={}", file("apiserver.crt")),
            format!("--tls-private-key-file={}", file("apiserver.key")),
            format!("--client-ca-file={}", file("ca.crt")),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The endpoint reconciler refuses loopback addresses, and nothing in a test
            // reaches the apiserver through the `kubernetes` Service anyway.
            "--endpoint-reconciler-type=none".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            // No controller-manager creates service accounts, so pods could not be admitted.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", file("service-account.pub")),
            format!(
                "--service-account-signing-key-file={}",
                file("service-account.key")
            ),
            "--profiling=false".into(),
        ];
        args.extend(spec.extra_args.iter().cloned());
        args
    }
}
