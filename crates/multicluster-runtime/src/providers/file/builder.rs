//! Configuring a [`Files`] provider.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Files;
use super::scan::Source;
use crate::cluster::kubeconfig::KubeconfigPolicy;
use crate::cluster::{ClusterName, ClusterOptions};

/// The file names a directory is searched for, unless
/// [`patterns`](FilesBuilder::patterns) says otherwise: names that say "kubeconfig",
/// so that a directory of other YAML files contributes nothing by accident.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "kubeconfig.yaml",
    "kubeconfig.yml",
    "*.kubeconfig",
    "*.kubeconfig.yaml",
    "*.kubeconfig.yml",
];

/// What separates the file part from the context in cluster names, unless
/// [`separator`](FilesBuilder::separator) says otherwise.
pub const DEFAULT_SEPARATOR: &str = "+";

/// How long to wait after a change of the files before reloading, unless
/// [`debounce`](FilesBuilder::debounce) says otherwise.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// How the file part of a cluster name (`<file>+<context>`) is rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileNaming {
    /// The file's name: `/etc/fleet/prod.kubeconfig` gives `prod.kubeconfig+admin`.
    /// Readable, and stable when the directory moves (a mounted volume, another
    /// host). Two files of the same name in different directories clash; the first
    /// keeps the name and the clash is reported. The default.
    #[default]
    FileName,
    /// The file's name without its last extension: `prod.kubeconfig` gives
    /// `prod+admin`, `~/.kube/config` gives `config+admin`.
    Stem,
    /// The path as configured or found: `/etc/fleet/prod.kubeconfig+admin`. Unique,
    /// but changes when the files move.
    Path,
    /// The file's name without its last extension, and the context only when it is
    /// not that name already: `cluster-1.kubeconfig` gives `cluster-1` for its context
    /// `cluster-1` (as `envtest up` and many tools write them, one context per file
    /// named after it) and `cluster-1+admin` for a context `admin`. The name depends
    /// on the file and the context alone, never on how many contexts the file has,
    /// so adding a context never renames a cluster. Names that meet (`a.yaml` and
    /// `a.kubeconfig`, both with the context `a`) clash as with
    /// [`Stem`](Self::Stem): the first keeps the name and the clash is reported.
    Short,
}

impl FileNaming {
    fn render(self, path: &Path) -> Cow<'_, str> {
        let part = match self {
            FileNaming::FileName => path.file_name(),
            FileNaming::Stem | FileNaming::Short => path.file_stem(),
            FileNaming::Path => None,
        };
        part.unwrap_or(path.as_os_str()).to_string_lossy()
    }
}

/// The settings of a [`Files`] provider.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub sources: Vec<Source>,
    pub patterns: Vec<String>,
    pub separator: String,
    pub naming: FileNaming,
    pub policy: KubeconfigPolicy,
    pub cluster_options: ClusterOptions,
    pub debounce: Duration,
}

impl Config {
    /// The name of the cluster of `context` in the kubeconfig at `path`.
    pub(super) fn cluster_name(&self, path: &Path, context: &str) -> ClusterName {
        let file = self.naming.render(path);
        if self.naming == FileNaming::Short && file == context {
            return ClusterName::from(context);
        }
        ClusterName::from(format!("{file}{}{context}", self.separator))
    }
}

/// Builds a [`Files`] provider; see [`Files::builder`].
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::providers::file::{FileNaming, Files};
///
/// let files = Files::builder()
///     .path("/etc/fleet")                      // a directory: its *.kubeconfig, kubeconfig.yaml, …
///     .path("/etc/extra/staging.yaml")         // a file: used whatever its name
///     .glob("/srv/clusters/*/kubeconfig.yaml") // every file that matches
///     .naming(FileNaming::Short)               // `staging+admin` rather than `staging.yaml+admin`
///     .debounce(Duration::from_millis(500))
///     .build();
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct FilesBuilder {
    config: Config,
}

impl Default for FilesBuilder {
    fn default() -> Self {
        FilesBuilder {
            config: Config {
                sources: Vec::new(),
                patterns: DEFAULT_PATTERNS.iter().map(|p| (*p).to_owned()).collect(),
                separator: DEFAULT_SEPARATOR.to_owned(),
                naming: FileNaming::default(),
                policy: KubeconfigPolicy::trusted(),
                cluster_options: ClusterOptions::default(),
                debounce: DEFAULT_DEBOUNCE,
            },
        }
    }
}

impl FilesBuilder {
    /// Adds a kubeconfig file, or a directory whose files matching the
    /// [`patterns`](Self::patterns) are kubeconfigs (subdirectories are not searched).
    /// The path is taken literally, wildcards included.
    ///
    /// The path must exist when the provider starts; later it may disappear (its
    /// clusters are removed) and come back.
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.sources.push(Source::Path(path.into()));
        self
    }

    /// Adds several [`path`](Self::path)s.
    pub fn paths<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        let paths = paths.into_iter().map(|p| Source::Path(p.into()));
        self.config.sources.extend(paths);
        self
    }

    /// Adds a glob pattern such as `/srv/clusters/*/kubeconfig.yaml` or
    /// `/srv/**/*.kubeconfig` (syntax of the [`glob`] crate; `*` does not match a
    /// leading dot). Every matching file is a kubeconfig, whatever its name; matching
    /// nothing is not an error.
    pub fn glob(mut self, pattern: impl Into<String>) -> Self {
        self.config.sources.push(Source::Glob(pattern.into()));
        self
    }

    /// The file name patterns a directory is searched for, replacing
    /// [`DEFAULT_PATTERNS`]. A pattern like `*.yaml` takes every YAML file of the
    /// directory for a kubeconfig, and reports those that are not.
    pub fn patterns<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.config.patterns = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// What separates the file part from the context in cluster names;
    /// [`DEFAULT_SEPARATOR`] (`+`) unless set.
    pub fn separator(mut self, separator: impl Into<String>) -> Self {
        self.config.separator = separator.into();
        self
    }

    /// How the file part of cluster names is rendered; [`FileNaming::FileName`]
    /// unless set. [`FileNaming::Short`] gives the shortest names: `cluster-1` for
    /// the context `cluster-1` of `cluster-1.kubeconfig`.
    pub fn naming(mut self, naming: FileNaming) -> Self {
        self.config.naming = naming;
        self
    }

    /// What the kubeconfigs may ask for. [`KubeconfigPolicy::trusted`] unless set:
    /// the operator chose the files, and kubeconfigs of cloud clusters commonly use
    /// exec plugins. Set [`KubeconfigPolicy::untrusted`] when others can write the
    /// files (a shared volume, a synced directory).
    pub fn policy(mut self, policy: KubeconfigPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Settings for every cluster the provider builds: of its cache and of its
    /// client (request timeout, user agent, rate limit). A cluster rebuilt after a
    /// change of its kubeconfig gets them again.
    pub fn cluster_options(mut self, options: ClusterOptions) -> Self {
        self.config.cluster_options = options;
        self
    }

    /// How long to wait after a change of the files before reloading, so that a file
    /// written in several steps is read once, complete; [`DEFAULT_DEBOUNCE`] unless
    /// set.
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.config.debounce = debounce;
        self
    }

    /// The provider. With neither a path nor a glob, it reads the files of
    /// `$KUBECONFIG`, or else `~/.kube/config` (see [`default_paths`]). Paths and
    /// patterns are checked when the provider starts or [reloads](Files::reload).
    pub fn build(mut self) -> Files {
        if self.config.sources.is_empty() {
            let kubeconfig = std::env::var_os("KUBECONFIG");
            let defaults = default_paths(kubeconfig.as_deref(), std::env::home_dir().as_deref());
            self = self.paths(defaults);
        }
        Files::from_config(self.config)
    }
}

/// The kubeconfig files used when none are configured, found as kubectl finds them:
/// the entries of `kubeconfig` (the value of `$KUBECONFIG`, a list separated like
/// `$PATH`; empty entries are ignored) or, if there are none, `.kube/config` in
/// `home`. Each file is a source of its own: contexts are not merged across files as
/// kubectl merges them, and each file's contexts become clusters of their own.
///
/// ```
/// use std::ffi::OsStr;
/// use std::path::{Path, PathBuf};
/// use multicluster_runtime::providers::file::default_paths;
///
/// let home = Some(Path::new("/home/me"));
/// assert_eq!(default_paths(Some(OsStr::new("/a:/b")), home), [PathBuf::from("/a"), "/b".into()]);
/// assert_eq!(default_paths(None, home), [PathBuf::from("/home/me/.kube/config")]);
/// ```
pub fn default_paths(kubeconfig: Option<&OsStr>, home: Option<&Path>) -> Vec<PathBuf> {
    let listed: Vec<PathBuf> = kubeconfig
        .map(|list| {
            std::env::split_paths(list)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    home.map(|home| home.join(".kube").join("config"))
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_render_the_file_as_configured() {
        let path = Path::new("/etc/fleet/prod.kubeconfig");
        let mut config = FilesBuilder::default().config;
        assert_eq!(config.cluster_name(path, "admin"), "prod.kubeconfig+admin");
        config.naming = FileNaming::Stem;
        config.separator = "/".into();
        assert_eq!(config.cluster_name(path, "admin"), "prod/admin");
        config.naming = FileNaming::Path;
        assert_eq!(config.cluster_name(path, "a"), "/etc/fleet/prod.kubeconfig/a");
    }

    /// c08: a file named after its one context names its cluster once.
    #[test]
    fn c08_short_names_say_the_file_once_when_its_context_has_its_name() {
        let mut config = FilesBuilder::default().naming(FileNaming::Short).config;
        let path = Path::new("/tmp/fleet/cluster-1.kubeconfig");
        assert_eq!(config.cluster_name(path, "cluster-1"), "cluster-1");
        assert_eq!(config.cluster_name(path, "admin"), "cluster-1+admin");
        assert_eq!(
            config.cluster_name(path, "cluster-1.kubeconfig"),
            "cluster-1+cluster-1.kubeconfig"
        );
        config.separator = "/".into();
        let path = Path::new("/etc/kubeconfig.yaml");
        assert_eq!(config.cluster_name(path, "kubeconfig"), "kubeconfig");
        assert_eq!(config.cluster_name(path, "kind-dev"), "kubeconfig/kind-dev");
    }

    proptest::proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        /// Cluster names from any file path, context name and separator.
        #[test]
        fn p05_fuzz_file_names(
            path in "\\PC{0,40}",
            context in "\\PC{0,20}",
            separator in "\\PC{0,3}",
            naming in proptest::sample::select(vec![
                FileNaming::FileName, FileNaming::Stem, FileNaming::Path, FileNaming::Short,
            ]),
        ) {
            let mut config = FilesBuilder::default().config;
            config.naming = naming;
            config.separator = separator.clone();
            let name = config.cluster_name(Path::new(&path), &context);
            let expected = format!("{separator}{context}");
            // Only a short name may be the context alone.
            let short = naming == FileNaming::Short && name.as_str() == context;
            proptest::prop_assert!(short || name.as_str().ends_with(&expected));
        }
    }
}
