//! A provider of the clusters of kubeconfig files, watched for changes.
//!
//! Available with the cargo feature `file` (or `providers`, which enables every provider).
//!
//! [`Files`] reads kubeconfig files, directories and glob patterns, and offers one
//! cluster per context, named `<file>+<context>`: the context `admin` of
//! `/etc/fleet/prod.kubeconfig` is the cluster `prod.kubeconfig+admin`. Both the
//! separator and how the file is rendered ([`FileNaming`]) can be changed;
//! [`FileNaming::Short`] names the context `cluster-1` of `cluster-1.kubeconfig`
//! just `cluster-1`.
//!
//! - A directory contributes its files whose names match [`DEFAULT_PATTERNS`]
//!   (`kubeconfig.yaml`, `kubeconfig.yml`, `*.kubeconfig`, `*.kubeconfig.yaml`,
//!   `*.kubeconfig.yml`), not any YAML file; hidden files never match.
//! - With nothing configured, the files of `$KUBECONFIG` are read, or else
//!   `~/.kube/config` ([`default_paths`]).
//! - The directories of the files are watched (editors and Secret mounts replace files
//!   by renaming them), and a change is read once the files have been quiet for a
//!   [debounce](FilesBuilder::debounce) interval. Only clusters whose connection
//!   settings changed ([`kubeconfig::fingerprint`]) are built and engaged again; the
//!   others keep their instance and their token. Clusters whose file or context is gone
//!   are removed.
//! - A file that cannot be used (malformed, unreadable, refused by the
//!   [`KubeconfigPolicy`]) is reported with its path at warn level and skipped: the
//!   clusters of the other files are unaffected, and the clusters it provided when it
//!   was last good stay engaged, as kubectl keeps working on a cluster while someone
//!   is halfway through editing its file. Deleting the file removes them. A context
//!   whose client cannot be built is handled the same way.
//! - A configured path that does not exist, or an invalid pattern, makes the provider
//!   fail at start; once running, a vanished path only removes its clusters, and the
//!   provider picks the path up again when it comes back.
//!
//! Reports and logs name paths and contexts, never the content of a file.
//!
//! Files that a kubeconfig refers to (certificates, keys) are read, and exec
//! credential plugins run, when a cluster is built; a change of such a file alone does
//! not rebuild the cluster. Relative references are resolved against the kubeconfig's
//! directory, as kubectl does.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use multicluster_runtime::providers::file::Files;
//! use multicluster_runtime::{Cluster, Manager};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let local = Arc::new(Cluster::new("", kube::Client::try_default().await?));
//! // Every `*.kubeconfig` (and `kubeconfig.yaml`, …) of /etc/fleet, and one more file.
//! let provider = Arc::new(
//!     Files::builder()
//!         .path("/etc/fleet")
//!         .path("/home/me/.kube/config")
//!         .build(),
//! );
//! let manager = Manager::with_provider(local, provider.clone());
//! // … add controllers to the manager; they reconcile in `prod.kubeconfig+admin`,
//! // `config+kind-kind`, … as the files come and go.
//! manager.start(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```
//!
//! [`kubeconfig::fingerprint`]: super::kubeconfig::fingerprint

mod builder;
mod error;
mod load;
mod scan;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::cache::FieldIndex;
use crate::cluster::{Cluster, ClusterName};
use crate::error::{BoxError, Error, Result};
use crate::multicluster::{Aware, Provider, ProviderRunnable};
use crate::providers::clusters::Clusters;

pub use builder::{
    DEFAULT_DEBOUNCE, DEFAULT_PATTERNS, DEFAULT_SEPARATOR, FileNaming, FilesBuilder, default_paths,
};
pub use error::FileError;
pub use load::ReloadReport;

#[cfg(doc)]
use crate::cluster::kubeconfig::KubeconfigPolicy;

use builder::Config;
use load::Loaded;
use scan::Source;
use watch::DirWatcher;

/// A provider of one cluster per context of kubeconfig files, directories and globs,
/// following changes of the files while it runs. See the [module](self) for the
/// rules.
///
/// Built on [`Clusters`]: field indexes reach every cluster, now and later, and a
/// removed cluster's token is cancelled.
pub struct Files {
    config: Config,
    clusters: Clusters,
    /// The clusters each file provided at the last reload; the lock also keeps two
    /// reloads from interleaving.
    loaded: tokio::sync::Mutex<Loaded>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("config", &self.config)
            .field("clusters", &self.clusters)
            .finish_non_exhaustive()
    }
}

impl Default for Files {
    fn default() -> Self {
        Self::new()
    }
}

impl Files {
    /// A provider of the files of `$KUBECONFIG`, or else of `~/.kube/config`, with
    /// default settings.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder, to choose files, directories, globs and settings.
    pub fn builder() -> FilesBuilder {
        FilesBuilder::default()
    }

    fn from_config(config: Config) -> Self {
        Files {
            config,
            clusters: Clusters::new(),
            loaded: tokio::sync::Mutex::default(),
        }
    }

    /// The configured files and directories (glob patterns aside), e.g. to log them.
    pub fn paths(&self) -> Vec<PathBuf> {
        let path = |source: &Source| match source {
            Source::Path(path) => Some(path.clone()),
            Source::Glob(_) => None,
        };
        self.config.sources.iter().filter_map(path).collect()
    }

    /// The names of the clusters, in no particular order.
    pub fn names(&self) -> Vec<ClusterName> {
        self.clusters.names()
    }

    /// Reads the files now and brings the clusters in line, as a change of the files
    /// does while the provider runs. Clusters found before the provider starts are
    /// engaged when it starts. Errors are logged and returned in the report; none
    /// stops the reload.
    pub async fn reload(&self) -> ReloadReport {
        let mut loaded = self.loaded.lock().await;
        let scan = scan::scan(&self.config.sources, &self.config.patterns);
        self.apply(scan, &mut loaded).await
    }

    /// The first load: like [`reload`](Self::reload), but nothing changes if a
    /// configured path is missing or a pattern is invalid.
    async fn first_load(&self) -> Result<ReloadReport, FileError> {
        let mut loaded = self.loaded.lock().await;
        let mut scan = scan::scan(&self.config.sources, &self.config.patterns);
        if let Some(at) = scan.errors.iter().position(FileError::is_configuration_error) {
            return Err(scan.errors.swap_remove(at));
        }
        Ok(self.apply(scan, &mut loaded).await)
    }

    /// Watches the files and reloads on changes until `token` is cancelled.
    async fn watch(&self, token: &CancellationToken) -> Result<()> {
        if self.config.sources.is_empty() {
            tracing::warn!("no kubeconfig configured: $KUBECONFIG and the home directory are unset");
        }
        // Watch before the first load, so that no change after it goes unseen; and
        // before each reload, so that a directory created since is watched.
        let mut watcher = DirWatcher::new().map_err(failure)?;
        watcher.sync(scan::watch_targets(&self.config.sources));
        let Some(first) = token.run_until_cancelled(self.first_load()).await else {
            return Ok(());
        };
        let first = first.map_err(failure)?;
        let (files, clusters) = (first.files.len(), self.names().len());
        tracing::info!(files, clusters, "kubeconfigs loaded");
        let debounce = self.config.debounce;
        while let Some(changed) = token.run_until_cancelled(watcher.changed(debounce)).await {
            if changed.is_none() {
                return Err(failure("the file watcher stopped"));
            }
            watcher.sync(scan::watch_targets(&self.config.sources));
            token.run_until_cancelled(self.reload()).await;
        }
        Ok(())
    }
}

fn failure(error: impl Into<BoxError>) -> Error {
    Error::Provider {
        provider: "file".into(),
        source: error.into(),
    }
}

#[async_trait]
impl Provider for Files {
    async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        self.clusters.get(name).await
    }

    async fn index_field(&self, index: FieldIndex) -> Result<()> {
        self.clusters.index_field(index).await
    }

    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
        Some(self)
    }
}

#[async_trait]
impl ProviderRunnable for Files {
    /// Loads the files, engages their clusters into `aware`, and follows changes of
    /// the files until `token` is cancelled.
    ///
    /// # Errors
    /// [`Error::Provider`] with a [`FileError`] if a configured path does not exist
    /// or a pattern is invalid at start, or if the file watcher cannot run.
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()> {
        // The clusters' tokens descend from `engaged`, cancelled when watching ends
        // for any reason, so that a failed start leaves nothing engaged.
        let engaged = token.child_token();
        let watch = async {
            let watched = self.watch(&token).await;
            engaged.cancel();
            watched
        };
        let (inner, watched) = tokio::join!(self.clusters.start(engaged.clone(), aware), watch);
        watched.and(inner)
    }
}
