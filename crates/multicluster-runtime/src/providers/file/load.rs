//! Reloading: reading every kubeconfig file and bringing the clusters in line with
//! what the files say.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::config::Kubeconfig;

use super::Files;
use super::error::FileError;
use super::scan::Scan;
use crate::cluster::kubeconfig::{self, KubeconfigError, KubeconfigPolicy};
use crate::cluster::{Cluster, ClusterName};
use crate::error::Error;

/// The clusters each file provided at the last reload.
pub(super) type Loaded = HashMap<PathBuf, Vec<ClusterName>>;

/// What one reload found and changed.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ReloadReport {
    /// The kubeconfig files found, in the order of the configuration.
    pub files: Vec<PathBuf>,
    /// Clusters seen for the first time: added, and engaged if the provider runs.
    pub added: Vec<ClusterName>,
    /// Clusters whose connection settings changed: built again and engaged again.
    pub updated: Vec<ClusterName>,
    /// Clusters left as they were, including the last good clusters of files that
    /// cannot be used now.
    pub unchanged: Vec<ClusterName>,
    /// Clusters whose file or context is gone: removed, their tokens cancelled.
    pub removed: Vec<ClusterName>,
    /// Paths, patterns, files and contexts that could not be used, one error each.
    pub errors: Vec<FileError>,
}

impl ReloadReport {
    /// Whether a cluster was added, updated or removed.
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty())
    }

    /// Logs the changes at info and the errors at warn.
    fn log(&self) {
        tracing::debug!(
            files = self.files.len(),
            errors = self.errors.len(),
            "kubeconfigs reloaded"
        );
        for error in &self.errors {
            let path = error.path().map(|p| p.display().to_string()).unwrap_or_default();
            tracing::warn!(%path, %error, "kubeconfig skipped");
        }
        for name in &self.added {
            tracing::info!(cluster = %name, "cluster added from kubeconfig");
        }
        for name in &self.updated {
            tracing::info!(cluster = %name, "kubeconfig changed; cluster replaced");
        }
        for name in &self.removed {
            tracing::info!(cluster = %name, "kubeconfig file or context gone; cluster removed");
        }
    }
}

/// The bookkeeping of one reload.
struct Round {
    report: ReloadReport,
    /// The clusters registered before this reload.
    before: HashSet<ClusterName>,
    /// The names claimed in this reload, and by which file.
    owners: HashMap<ClusterName, PathBuf>,
}

impl Round {
    /// Claims `name` for `context` of `path`. A name an earlier file claimed stays
    /// with that file, and the clash is reported.
    fn claim(&mut self, name: &ClusterName, path: &Path, context: &str) -> bool {
        if let Some(other) = self.owners.get(name) {
            self.report.errors.push(FileError::DuplicateName {
                path: path.to_owned(),
                context: context.to_owned(),
                name: name.clone(),
                other: other.clone(),
            });
            return false;
        }
        self.owners.insert(name.clone(), path.to_owned());
        true
    }

    /// Keeps, untouched, the clusters that `path` provided at the last reload.
    fn keep(&mut self, path: &Path, previous: Option<&Vec<ClusterName>>) -> Vec<ClusterName> {
        let mut kept = Vec::new();
        for name in previous.into_iter().flatten() {
            if self.before.contains(name) && !self.owners.contains_key(name) {
                self.owners.insert(name.clone(), path.to_owned());
                self.report.unchanged.push(name.clone());
                kept.push(name.clone());
            }
        }
        kept
    }
}

impl Files {
    /// Brings the clusters in line with the scanned files: adds new contexts, rebuilds
    /// those whose connection settings changed, keeps the clusters of files that cannot
    /// be used now, and removes those whose file or context is gone.
    pub(super) async fn apply(&self, scan: Scan, loaded: &mut Loaded) -> ReloadReport {
        let mut round = Round {
            report: ReloadReport {
                files: scan.files.clone(),
                errors: scan.errors,
                ..ReloadReport::default()
            },
            before: self.clusters.names().into_iter().collect(),
            owners: HashMap::new(),
        };
        let mut now = Loaded::new();
        for path in scan.files {
            let names = match read(&path, &self.config.policy) {
                Ok(Some(kubeconfig)) => self.load(&path, &kubeconfig, &mut round).await,
                Ok(None) => continue, // deleted since the scan: its clusters go
                Err(error) => {
                    round.report.errors.push(error);
                    round.keep(&path, loaded.get(&path))
                }
            };
            now.insert(path, names);
        }
        for name in &round.before {
            if !round.owners.contains_key(name) && self.clusters.remove(name) {
                round.report.removed.push(name.clone());
            }
        }
        *loaded = now;
        round.report.log();
        round.report
    }

    /// Installs a cluster per context of one file; returns the names it claimed.
    async fn load(&self, path: &Path, kubeconfig: &Kubeconfig, round: &mut Round) -> Vec<ClusterName> {
        let mut names = Vec::new();
        for context in kubeconfig::context_names(kubeconfig) {
            let name = self.config.cluster_name(path, &context);
            if !round.claim(&name, path, &context) {
                continue;
            }
            names.push(name.clone());
            let report = &mut round.report;
            match self.install(path, kubeconfig, &context, &name).await {
                Ok(true) if round.before.contains(&name) => report.updated.push(name),
                Ok(true) => report.added.push(name),
                Ok(false) => report.unchanged.push(name),
                // The cluster built from the last good settings, if any, stays.
                Err(error) => report.errors.push(error),
            }
        }
        names
    }

    /// Adds or replaces the cluster of `context` unless its connection settings are
    /// unchanged; returns whether it did.
    async fn install(
        &self,
        path: &Path,
        kubeconfig: &Kubeconfig,
        context: &str,
        name: &ClusterName,
    ) -> Result<bool, FileError> {
        let origin = path.display().to_string();
        let kubeconfig_error = |source| FileError::Kubeconfig {
            path: path.to_owned(),
            source,
        };
        let Some(fingerprint) = kubeconfig::fingerprint(kubeconfig, context) else {
            return Err(kubeconfig_error(KubeconfigError::Client {
                origin,
                context: context.to_owned(),
                reason: "the context entry is empty".into(),
            }));
        };
        let build = async || {
            let config = kubeconfig::client_config(kubeconfig, Some(context), &origin).await?;
            let options = self.config.cluster_options.clone();
            let timeout = kubeconfig::BUILD_TIMEOUT;
            let endpoints = &self.config.policy.endpoints;
            let client =
                kubeconfig::build_client(config, &options.client, endpoints, timeout, &origin, context)
                    .await?;
            Ok(Arc::new(Cluster::with_options(name.clone(), client, options)))
        };
        let installed = self.clusters.replace_if_changed(name.clone(), fingerprint, build);
        installed.await.map_err(|error| match error {
            Error::Kubeconfig(source) => kubeconfig_error(source),
            other => FileError::Cluster {
                path: path.to_owned(),
                context: context.to_owned(),
                reason: other.to_string(),
            },
        })
    }
}

/// Reads, parses and vets one kubeconfig file; `None` if it no longer exists.
fn read(path: &Path, policy: &KubeconfigPolicy) -> Result<Option<Kubeconfig>, FileError> {
    // Kubeconfigs are small local files: reading them in place, as kube's own
    // `Config::infer` does, is cheaper than a trip to a blocking thread.
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FileError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let origin = path.display().to_string();
    let vetted = kubeconfig::parse(&data, &origin).and_then(|mut kubeconfig| {
        kubeconfig::vet(&mut kubeconfig, policy, &origin)?;
        Ok(kubeconfig)
    });
    let mut kubeconfig = vetted.map_err(|source| FileError::Kubeconfig {
        path: path.to_owned(),
        source,
    })?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        resolve_relative(&mut kubeconfig, dir);
    }
    Ok(Some(kubeconfig))
}

/// Makes the file references of a kubeconfig relative to its directory, as kubectl
/// does; an exec command only if it is a path, not a name looked up in `PATH`.
fn resolve_relative(kubeconfig: &mut Kubeconfig, dir: &Path) {
    let resolve = |value: &mut Option<String>| {
        if let Some(file) = value
            .as_mut()
            .filter(|file| Path::new(file.as_str()).is_relative())
        {
            *file = dir.join(&*file).to_string_lossy().into_owned();
        }
    };
    for cluster in kubeconfig.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        resolve(&mut cluster.certificate_authority);
    }
    for auth in kubeconfig
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        resolve(&mut auth.client_certificate);
        resolve(&mut auth.client_key);
        resolve(&mut auth.token_file);
        if let Some(exec) = auth.exec.as_mut()
            && exec.command.as_ref().is_some_and(|c| c.contains('/'))
        {
            resolve(&mut exec.command);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_references_are_relative_to_the_kubeconfig() {
        let yaml = "clusters:\n- name: c\n  cluster:\n    server: https://x\n    certificate-authority: ca.pem\n\
                    contexts:\n- name: a\n  context:\n    cluster: c\n    user: u\n\
                    users:\n- name: u\n  user:\n    client-key: /abs/key.pem\n    tokenFile: t/token\n    \
                    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: bin/login\n";
        let mut parsed = kubeconfig::parse(yaml.as_bytes(), "t").expect("valid");
        resolve_relative(&mut parsed, Path::new("/etc/fleet"));
        let cluster = parsed.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/etc/fleet/ca.pem")
        );
        let auth = parsed.auth_infos[0].auth_info.as_ref().expect("user");
        assert_eq!(auth.client_key.as_deref(), Some("/abs/key.pem"));
        assert_eq!(auth.token_file.as_deref(), Some("/etc/fleet/t/token"));
        let command = auth.exec.as_ref().and_then(|e| e.command.as_deref());
        assert_eq!(command, Some("/etc/fleet/bin/login"));
    }

    proptest::proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        /// A kubeconfig file of any content, read, vetted and made relative to its
        /// directory as the file provider does: no panic, no credential in errors.
        #[test]
        fn p05_fuzz_kubeconfig_file(
            bytes in crate::providers::fuzz::kubeconfig_bytes(),
            dir in "[a-z/.]{0,12}",
            trusted in proptest::prelude::any::<bool>(),
        ) {
            let temp = tempfile::NamedTempFile::new().expect("temp file");
            std::fs::write(temp.path(), &bytes).expect("write");
            let policy = if trusted { KubeconfigPolicy::trusted() } else { KubeconfigPolicy::untrusted() };
            match read(temp.path(), &policy) {
                Ok(Some(mut kubeconfig)) => resolve_relative(&mut kubeconfig, Path::new(&dir)),
                Ok(None) => {}
                Err(error) => {
                    crate::providers::fuzz::assert_no_marker("file", &error.to_string());
                    crate::providers::fuzz::assert_no_marker("file (Debug)", &format!("{error:?}"));
                }
            }
        }
    }
}
