//! What can go wrong with one configured path or one kubeconfig file.

use std::path::{Path, PathBuf};

use crate::cluster::ClusterName;
use crate::cluster::kubeconfig::KubeconfigError;

/// A path, pattern or kubeconfig file that cannot be used, and why.
///
/// The message always starts with the path (or the pattern) and never quotes the
/// file's content, so it is safe to log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A configured file or directory does not exist.
    #[error("{}: no such file or directory", path.display())]
    Missing {
        /// The configured path.
        path: PathBuf,
    },

    /// A glob pattern (a [`glob`](super::FilesBuilder::glob) or a directory
    /// [pattern](super::FilesBuilder::patterns)) is not valid.
    #[error("{pattern}: not a valid glob pattern: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A file or directory cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// The file is not a usable kubeconfig, or one of its contexts cannot be turned
    /// into a client configuration.
    #[error("{source}")] // its origin is the path already
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What is wrong.
        source: KubeconfigError,
    },

    /// A context's cluster could not be built (e.g. its exec credential plugin failed)
    /// or engaged.
    #[error("{}: context {context:?}: {reason}", path.display())]
    Cluster {
        /// The kubeconfig file.
        path: PathBuf,
        /// The context.
        context: String,
        /// Why, without what a failed credential plugin printed.
        reason: String,
    },

    /// Two contexts map to the same cluster name; the first one found keeps it.
    #[error(
        "{}: context {context:?} would be cluster {name}, which {} provides already",
        path.display(),
        other.display()
    )]
    DuplicateName {
        /// The file whose context was skipped.
        path: PathBuf,
        /// The skipped context.
        context: String,
        /// The contested cluster name.
        name: ClusterName,
        /// The file that provides the cluster.
        other: PathBuf,
    },
}

impl FileError {
    /// The path the error is about; `None` for an invalid pattern.
    pub fn path(&self) -> Option<&Path> {
        match self {
            FileError::Missing { path }
            | FileError::Io { path, .. }
            | FileError::Kubeconfig { path, .. }
            | FileError::Cluster { path, .. }
            | FileError::DuplicateName { path, .. } => Some(path),
            FileError::Pattern { .. } => None,
        }
    }

    /// Whether the error is about the configuration (a configured path that does not
    /// exist, an invalid pattern) rather than about one file. Such errors make the
    /// provider's start fail when they are present at startup: a typo should stop the
    /// program at once rather than leave a cluster silently missing.
    pub fn is_configuration_error(&self) -> bool {
        matches!(self, FileError::Missing { .. } | FileError::Pattern { .. })
    }
}
