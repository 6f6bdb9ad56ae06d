//! Where the kube-apiserver and etcd binaries come from.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The Kubernetes release whose kube-apiserver this crate starts by default.
///
/// It must equal the `k8s.io/kubernetes` version pinned in the build module's
/// `go.mod` (`controlplane/go.mod` in this package); a unit test keeps the two in step.
pub const KUBERNETES_VERSION: &str = "v1.37.2";

/// Environment variable naming a directory that holds `kube-apiserver` and `etcd`.
pub const BIN_DIR_ENV: &str = "KUBE_ENVTEST_BIN_DIR";

/// Per-binary overrides, named as in Go's controller-runtime envtest so that an
/// existing setup carries over.
const APISERVER_ENV: &str = "TEST_ASSET_KUBE_APISERVER";
const ETCD_ENV: &str = "TEST_ASSET_ETCD";

/// The two programs a control plane is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// Path of the `kube-apiserver` executable.
    pub kube_apiserver: PathBuf,
    /// Path of the `etcd` executable.
    pub etcd: PathBuf,
}

impl Binaries {
    /// Finds the binaries, in this order: `TEST_ASSET_KUBE_APISERVER` and
    /// `TEST_ASSET_ETCD` for each binary, then the directory in `KUBE_ENVTEST_BIN_DIR`,
    /// then [`Binaries::default_dir`], where `tools/controlplane/build.sh` puts them.
    ///
    /// # Errors
    /// [`Error::BinaryMissing`] naming the build command when either is absent.
    pub fn find() -> Result<Self> {
        let dir = std::env::var_os(BIN_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(Self::default_dir);
        let pick = |var: &str, name: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(name))
        };
        let found = Binaries {
            kube_apiserver: pick(APISERVER_ENV, "kube-apiserver"),
            etcd: pick(ETCD_ENV, "etcd"),
        };
        found.check()?;
        Ok(found)
    }

    /// Uses `kube-apiserver` and `etcd` from `dir`.
    ///
    /// # Errors
    /// [`Error::BinaryMissing`] naming the build command when either is absent.
    pub fn in_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let found = Binaries {
            kube_apiserver: dir.join("kube-apiserver"),
            etcd: dir.join("etcd"),
        };
        found.check()?;
        Ok(found)
    }

    /// Like [`find`](Self::find), but when the binaries are missing and
    /// `build_script` (the repository's `tools/controlplane/build.sh`) exists, runs it
    /// first, with its progress on stderr. Meant for programs run from a checkout,
    /// such as the `envtest` command and the quick start.
    ///
    /// # Errors
    /// [`Error::BinaryMissing`] if they are missing and there is no script;
    /// [`Error::Spawn`] or [`Error::Build`] if the script cannot run or fails.
    pub fn find_or_build(build_script: &Path) -> Result<Self> {
        let missing = match Self::find() {
            Ok(binaries) => return Ok(binaries),
            Err(err) => err,
        };
        if !build_script.exists() {
            return Err(missing);
        }
        eprintln!(
            "control-plane binaries missing; running {} to build kube-apiserver {KUBERNETES_VERSION} and etcd",
            crate::BUILD_COMMAND
        );
        eprintln!("(the first time: about 11 minutes on 2 cores; cached afterwards)");
        let started = std::time::Instant::now();
        let mut child = std::process::Command::new("bash")
            .arg(build_script)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                what: crate::BUILD_COMMAND.into(),
                binary: build_script.into(),
                source,
            })?;
        let status = wait_reporting(&mut child, started).map_err(|source| Error::Spawn {
            what: crate::BUILD_COMMAND.into(),
            binary: build_script.into(),
            source,
        })?;
        if !status.success() {
            return Err(Error::Build {
                script: build_script.into(),
                status,
            });
        }
        eprintln!("control plane built in {}", minutes(started.elapsed()));
        Self::find()
    }

    /// The build script's cache directory for [`KUBERNETES_VERSION`]:
    /// `${XDG_CACHE_HOME:-$HOME/.cache}/multicluster-runtime/controlplane/<version>`.
    pub fn default_dir() -> PathBuf {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        cache
            .join("multicluster-runtime")
            .join("controlplane")
            .join(KUBERNETES_VERSION)
    }

    fn check(&self) -> Result<()> {
        for (binary, path) in [("kube-apiserver", &self.kube_apiserver), ("etcd", &self.etcd)] {
            if !is_executable(path) {
                return Err(Error::BinaryMissing {
                    binary,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Waits for the build, printing how long it has been running every
/// [`PROGRESS_EVERY`]: a cold build is otherwise silent for minutes.
fn wait_reporting(
    child: &mut std::process::Child,
    started: std::time::Instant,
) -> std::io::Result<std::process::ExitStatus> {
    let mut next_report = PROGRESS_EVERY;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if started.elapsed() >= next_report {
            eprintln!(
                "still building the control plane: {} so far",
                minutes(started.elapsed())
            );
            next_report += PROGRESS_EVERY;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// How often [`wait_reporting`] says that the build is still running.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// `duration` as `3m05s`.
fn minutes(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    format!("{}m{:02}s", secs / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_the_build_module() {
        let go_mod = include_str!("../controlplane/go.mod");
        let pinned = go_mod
            .lines()
            .filter_map(|line| line.trim().strip_prefix("k8s.io/kubernetes "))
            .map(|rest| rest.split_whitespace().next().unwrap_or_default())
            .next();
        assert_eq!(
            pinned,
            Some(KUBERNETES_VERSION),
            "controlplane/go.mod pins another release"
        );
    }

    #[test]
    fn missing_binary_names_the_build_command() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = Binaries::in_dir(dir.path()).expect_err("an empty dir has no binaries");
        let text = err.to_string();
        assert!(text.contains("kube-apiserver not found at"), "{text}");
        assert!(text.contains(crate::BUILD_COMMAND), "{text}");
        assert!(text.contains(BIN_DIR_ENV), "{text}");
    }

    #[test]
    fn build_progress_reads_as_minutes_and_seconds() {
        assert_eq!(minutes(std::time::Duration::from_secs(5)), "0m05s");
        assert_eq!(minutes(std::time::Duration::from_secs(706)), "11m46s");
    }

    #[test]
    fn the_build_is_waited_for_with_its_status() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("sh");
        let status = wait_reporting(&mut child, std::time::Instant::now()).expect("wait");
        assert_eq!(status.code(), Some(3));
    }
}
