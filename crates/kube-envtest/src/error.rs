//! The one error type of this crate.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while starting, driving or stopping a local control plane.
///
/// Errors about a process name the log file that holds its output, so a failed
/// start can be diagnosed without re-running it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A control-plane binary is not where it was looked for. The message names the
    /// environment variables that point elsewhere and the exact command that builds
    /// it ([`crate::Binaries::build_command`]).
    #[error(
        "{binary} not found at {}: {}",
        path.display(),
        crate::binaries::missing_hint(binary)
    )]
    BinaryMissing {
        /// `kube-apiserver`, `etcd` or `kube-controller-manager`.
        binary: &'static str,
        /// Where it was expected.
        path: PathBuf,
    },

    /// A control-plane binary is a program for another system or CPU (a directory
    /// copied from a Mac, say): kube-envtest runs Linux programs for the machine it
    /// runs on.
    #[error(
        "{binary} at {} is {found}, not a Linux program for {}: {}",
        path.display(),
        std::env::consts::ARCH,
        crate::binaries::missing_hint(binary)
    )]
    BinaryForAnotherPlatform {
        /// `kube-apiserver`, `etcd` or `kube-controller-manager`.
        binary: &'static str,
        /// The file.
        path: PathBuf,
        /// What it is instead, e.g. `a macOS program`.
        found: String,
    },

    /// A process could not be spawned at all.
    #[error("cannot start {what} ({}): {source}", binary.display())]
    Spawn {
        /// Which process, e.g. `kube-apiserver of cluster-1`.
        what: String,
        /// The binary that was run.
        binary: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// The control-plane build script failed.
    #[error("{} failed ({status}); run it by hand to see why", script.display())]
    Build {
        /// The script that was run.
        script: PathBuf,
        /// How it ended.
        status: std::process::ExitStatus,
    },

    /// A process exited while it was expected to start up or keep running.
    #[error("{what} exited during start-up ({status}); its log is {}:\n{tail}", log.display())]
    Exited {
        /// Which process.
        what: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its log file, kept for inspection.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// A process did not become ready in time.
    #[error("{what} was not ready after {waited:?}: {last}; its log is {}", log.display())]
    NotReady {
        /// Which process.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last readiness check's failure.
        last: String,
        /// Its log file, kept for inspection.
        log: PathBuf,
    },

    /// A custom resource definition did not become established and served in time.
    #[error("CRD {name} was not served after {waited:?}: {last}")]
    CrdNotServed {
        /// The CRD's name, `<plural>.<group>`.
        name: String,
        /// How long we waited.
        waited: Duration,
        /// What was still missing.
        last: String,
    },

    /// A CRD manifest could not be read or parsed.
    #[error("cannot read CRDs from {}: {reason}", path.display())]
    CrdManifest {
        /// The file (or `<inline>`).
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// Certificates or keys could not be generated.
    #[error("cannot generate {what}: {source}")]
    Certificate {
        /// Which certificate or key.
        what: String,
        /// The generator's reason.
        source: rcgen::Error,
    },

    /// A file or directory of the environment could not be written or read.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `cannot write`.
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// A kubeconfig or client could not be built for a cluster.
    #[error("cannot build a client for {cluster}: {reason}")]
    Client {
        /// The cluster's name.
        cluster: String,
        /// What was wrong.
        reason: String,
    },

    /// A Kubernetes API call made by the environment itself failed.
    #[error("{action} on {cluster}: {source}")]
    Api {
        /// What was being done, e.g. `cannot create Role`.
        action: String,
        /// The cluster's name.
        cluster: String,
        /// The client's error.
        source: kube::Error,
    },

    /// An operation that needs a running apiserver was called on a stopped one,
    /// or the reverse.
    #[error("{cluster}: {reason}")]
    State {
        /// The cluster's name.
        cluster: String,
        /// What state it was in.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
