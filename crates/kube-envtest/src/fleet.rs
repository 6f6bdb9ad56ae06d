//! A fleet of local clusters and the builder that starts it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};

use crate::binaries::Binaries;
use crate::cluster::{ClusterSpec, LocalCluster};
use crate::controller_manager::ControllerManagerSpec;
use crate::error::{Error, Result};
use crate::etcd::Etcd;
use crate::logs::LogDir;

/// How the clusters of a fleet store their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EtcdTopology {
    /// One etcd for the whole fleet, each apiserver under its own `--etcd-prefix`
    /// (as Kubernetes' own integration tests do). Cheaper in memory and start-up;
    /// the clusters share etcd's compaction and its failures.
    #[default]
    Shared,
    /// One etcd per cluster: fully independent clusters.
    PerCluster,
}

/// Starts a [`Fleet`]; see [`Fleet::builder`].
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    clusters: usize,
    topology: EtcdTopology,
    binaries: Option<Binaries>,
    binary_dir: Option<PathBuf>,
    ready_timeout: Duration,
    parallelism: usize,
    apiserver_args: Vec<String>,
    name_prefix: String,
    controller_manager: bool,
    controller_manager_args: Vec<String>,
}

impl Default for FleetBuilder {
    fn default() -> Self {
        FleetBuilder {
            clusters: 1,
            topology: EtcdTopology::default(),
            binaries: None,
            binary_dir: None,
            ready_timeout: Duration::from_secs(90),
            parallelism: 4,
            apiserver_args: Vec::new(),
            name_prefix: "cluster-".into(),
            controller_manager: false,
            controller_manager_args: Vec::new(),
        }
    }
}

impl FleetBuilder {
    /// How many clusters to start (default 1).
    #[must_use]
    pub fn clusters(mut self, count: usize) -> Self {
        self.clusters = count;
        self
    }

    /// Shared or per-cluster etcd (default [`EtcdTopology::Shared`]).
    #[must_use]
    pub fn etcd(mut self, topology: EtcdTopology) -> Self {
        self.topology = topology;
        self
    }

    /// Use these binaries instead of [`Binaries::find`].
    #[must_use]
    pub fn binaries(mut self, binaries: Binaries) -> Self {
        self.binaries = Some(binaries);
        self
    }

    /// Use `kube-apiserver` and `etcd` from this directory instead of
    /// [`Binaries::find`]; checked when the fleet starts.
    #[must_use]
    pub fn binary_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.binary_dir = Some(dir.into());
        self
    }

    /// How long one apiserver may take to become ready (default 90 s, generous for
    /// busy 2-core CI machines).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How many apiservers start at once (default 4). Start-up is CPU-bound: more
    /// than a few per core only makes each slower.
    #[must_use]
    pub fn parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism.max(1);
        self
    }

    /// Extra kube-apiserver flags, appended after the defaults (later flags win).
    #[must_use]
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// Cluster names are this prefix plus the index (default `cluster-`).
    #[must_use]
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.name_prefix = prefix.into();
        self
    }

    /// Whether each cluster also runs a kube-controller-manager (default off), with
    /// the controllers listed in [`CONTROLLERS`](crate::CONTROLLERS): then a deleted
    /// namespace is emptied and goes away, and objects whose owners are deleted are
    /// garbage-collected, as in a real cluster. It costs one more process per cluster
    /// (about 90 MiB of memory, and a second or two of start-up), and needs the
    /// `kube-controller-manager` binary ([`Binaries::kube_controller_manager`]),
    /// which the build script builds with the others; starting fails with
    /// [`Error::BinaryMissing`] naming how to build it when it is missing.
    #[must_use]
    pub fn controller_manager(mut self, enabled: bool) -> Self {
        self.controller_manager = enabled;
        self
    }

    /// Extra kube-controller-manager flags, appended after the defaults (later flags
    /// win, e.g. another `--controllers=`); used only with
    /// [`controller_manager`](Self::controller_manager).
    #[must_use]
    pub fn controller_manager_arg(mut self, arg: impl Into<String>) -> Self {
        self.controller_manager_args.push(arg.into());
        self
    }

    /// Starts etcd and every apiserver, and waits until all are ready.
    ///
    /// # Errors
    /// Missing binaries, a process that exits or is not ready in time (the error names
    /// its log file, which is then kept), or an I/O failure in the temporary directory.
    pub async fn start(self) -> Result<Fleet> {
        self.start_with_progress(|_| {}).await
    }

    /// Like [`start`](Self::start), calling `progress` with each cluster as soon as it
    /// is ready (in the order they become ready).
    ///
    /// # Errors
    /// As for [`start`](Self::start).
    pub async fn start_with_progress(self, mut progress: impl FnMut(&LocalCluster)) -> Result<Fleet> {
        let binaries = match (&self.binaries, &self.binary_dir) {
            (Some(binaries), _) => binaries.clone(),
            (None, Some(dir)) => Binaries::in_dir(dir)?,
            (None, None) => Binaries::find()?,
        };
        if self.controller_manager {
            binaries.check_controller_manager()?;
        }
        let dir = tempfile::Builder::new()
            .prefix("kube-envtest-")
            .tempdir()
            .map_err(|e| Error::io("cannot create a temporary directory in", std::env::temp_dir(), e))?;
        let id = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let logs = Arc::new(LogDir::new(&id)?);
        let started = self
            .start_processes(&binaries, dir.path(), &logs, &mut progress)
            .await;
        let (etcd, clusters) = started.inspect_err(|_| logs.keep())?;
        Ok(Fleet {
            clusters,
            etcd,
            dir,
            logs,
        })
    }

    async fn start_processes(
        &self,
        binaries: &Binaries,
        dir: &Path,
        logs: &LogDir,
        progress: &mut impl FnMut(&LocalCluster),
    ) -> Result<(Option<Etcd>, Vec<LocalCluster>)> {
        let shared = match self.topology {
            EtcdTopology::Shared => Some(self.start_etcd(binaries, "shared", dir, logs).await?),
            EtcdTopology::PerCluster => None,
        };
        let shared_url = shared.as_ref().map(|etcd| etcd.url().to_owned());
        let mut ready = futures::stream::iter(0..self.clusters)
            .map(|index| {
                let shared_url = shared_url.clone();
                async move {
                    let name = format!("{}{index}", self.name_prefix);
                    let own_etcd = match shared_url {
                        Some(_) => None,
                        None => Some(self.start_etcd(binaries, &name, dir, logs).await?),
                    };
                    let etcd_url = shared_url
                        .or_else(|| own_etcd.as_ref().map(|e| e.url().to_owned()))
                        .unwrap_or_default();
                    let controller_manager = self.controller_manager.then(|| ControllerManagerSpec {
                        binary: &binaries.kube_controller_manager,
                        log: logs.path().join(format!("{name}-controller-manager.log")),
                        extra_args: &self.controller_manager_args,
                    });
                    let spec = ClusterSpec {
                        dir: dir.join(&name),
                        log: logs.path().join(format!("{name}-apiserver.log")),
                        name,
                        apiserver: &binaries.kube_apiserver,
                        etcd_url,
                        own_etcd,
                        extra_args: &self.apiserver_args,
                        ready_timeout: self.ready_timeout,
                        controller_manager,
                    };
                    LocalCluster::create(spec).await.map(|cluster| (index, cluster))
                }
            })
            .buffer_unordered(self.parallelism);
        let mut clusters = Vec::with_capacity(self.clusters);
        while let Some((index, cluster)) = ready.try_next().await? {
            progress(&cluster);
            clusters.push((index, cluster));
        }
        drop(ready);
        clusters.sort_by_key(|(index, _)| *index);
        Ok((shared, clusters.into_iter().map(|(_, cluster)| cluster).collect()))
    }

    async fn start_etcd(&self, binaries: &Binaries, name: &str, dir: &Path, logs: &LogDir) -> Result<Etcd> {
        let etcd_dir = dir.join(format!("etcd-{name}"));
        let log = logs.path().join(format!("etcd-{name}.log"));
        Etcd::start(&binaries.etcd, name, &etcd_dir, &log, self.ready_timeout).await
    }
}

/// Local clusters, each a real kube-apiserver, ready to serve.
///
/// Dropping the fleet kills every process it started (also when a test panics) and
/// removes its temporary directory; logs are kept, and their path printed, only when
/// a test panicked or start-up failed.
#[derive(Debug)]
pub struct Fleet {
    // Field order is drop order: apiservers, then their etcd, then files.
    clusters: Vec<LocalCluster>,
    etcd: Option<Etcd>,
    dir: tempfile::TempDir,
    logs: Arc<LogDir>,
}

impl Fleet {
    /// A builder with one cluster, a shared etcd and the binaries from
    /// [`Binaries::find`].
    pub fn builder() -> FleetBuilder {
        FleetBuilder::default()
    }

    /// Starts `clusters` clusters with the default settings.
    ///
    /// # Errors
    /// As for [`FleetBuilder::start`].
    pub async fn start(clusters: usize) -> Result<Self> {
        Self::builder().clusters(clusters).start().await
    }

    /// The clusters, in index order.
    pub fn clusters(&self) -> &[LocalCluster] {
        &self.clusters
    }

    /// The cluster at `index`.
    ///
    /// # Panics
    /// If `index` is out of range, like slice indexing.
    pub fn cluster(&self, index: usize) -> &LocalCluster {
        &self.clusters[index]
    }

    /// The fleet's temporary directory (certificates, kubeconfigs, etcd data); removed
    /// on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory of the process logs.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// Process ids of every etcd, apiserver and controller manager of the fleet that
    /// is running now.
    pub fn pids(&self) -> Vec<u32> {
        let own = self
            .clusters
            .iter()
            .flat_map(|c| [c.apiserver_pid(), c.etcd_pid(), c.controller_manager_pid()])
            .flatten();
        self.etcd.iter().map(Etcd::pid).chain(own).collect()
    }

    /// Copies each cluster's admin kubeconfig to `<dir>/<cluster>.kubeconfig` and
    /// returns the paths, in cluster order.
    ///
    /// # Errors
    /// [`Error::Io`] if `dir` cannot be created or written.
    pub fn write_kubeconfigs(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        self.clusters
            .iter()
            .map(|cluster| cluster.write_kubeconfig(dir.as_ref()))
            .collect()
    }
}
