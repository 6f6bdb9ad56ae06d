//! Where the kube-apiserver, etcd and (optional) kube-controller-manager binaries
//! come from, and how to build them.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The Kubernetes release whose kube-apiserver this crate starts by default.
///
/// It must equal the `k8s.io/kubernetes` version pinned in the build module's
/// `go.mod` (`controlplane/go.mod` in this package); a unit test keeps the two in step.
pub const KUBERNETES_VERSION: &str = "v1.37.2";

/// Environment variable naming a directory that holds `kube-apiserver` and `etcd`
/// (and `kube-controller-manager`, for fleets that run one).
pub const BIN_DIR_ENV: &str = "KUBE_ENVTEST_BIN_DIR";

/// Environment variable naming the `kube-apiserver` program itself, as in Go's
/// controller-runtime envtest (so an existing setup carries over); it wins over
/// [`BIN_DIR_ENV`].
pub const APISERVER_ENV: &str = "TEST_ASSET_KUBE_APISERVER";

/// Environment variable naming the `etcd` program itself, as in Go's envtest; it
/// wins over [`BIN_DIR_ENV`].
pub const ETCD_ENV: &str = "TEST_ASSET_ETCD";

/// Environment variable naming the `kube-controller-manager` program itself (named
/// after the two above); it wins over [`BIN_DIR_ENV`].
pub const CONTROLLER_MANAGER_ENV: &str = "TEST_ASSET_KUBE_CONTROLLER_MANAGER";

/// The programs a control plane is made of.
///
/// `kube_controller_manager` is optional: it is looked for like the others but
/// checked only when a fleet runs one ([`crate::FleetBuilder::controller_manager`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Binaries {
    /// Path of the `kube-apiserver` executable.
    pub kube_apiserver: PathBuf,
    /// Path of the `etcd` executable.
    pub etcd: PathBuf,
    /// Where the `kube-controller-manager` executable is, or would be.
    pub kube_controller_manager: PathBuf,
}

impl Binaries {
    /// Finds the binaries, in this order: `TEST_ASSET_KUBE_APISERVER`,
    /// `TEST_ASSET_ETCD` and `TEST_ASSET_KUBE_CONTROLLER_MANAGER` for each binary, then
    /// the directory in `KUBE_ENVTEST_BIN_DIR`, then [`Binaries::default_dir`], where
    /// the build script this package ships ([`Binaries::build_script`]) puts them.
    ///
    /// # Errors
    /// [`Error::BinaryMissing`] naming what to set and the build command when
    /// kube-apiserver or etcd is absent (kube-controller-manager may be).
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
            kube_controller_manager: pick(CONTROLLER_MANAGER_ENV, "kube-controller-manager"),
        };
        found.check()?;
        Ok(found)
    }

    /// Uses `kube-apiserver`, `etcd` and (when a fleet runs one)
    /// `kube-controller-manager` from `dir`.
    ///
    /// # Errors
    /// [`Error::BinaryMissing`] naming the build command when kube-apiserver or etcd
    /// is absent.
    pub fn in_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let found = Binaries {
            kube_apiserver: dir.join("kube-apiserver"),
            etcd: dir.join("etcd"),
            kube_controller_manager: dir.join("kube-controller-manager"),
        };
        found.check()?;
        Ok(found)
    }

    /// Like [`find`](Self::find), but when kube-apiserver or etcd is missing, runs
    /// the build script this package ships ([`Binaries::build_script`]) first, with
    /// its progress on stderr; it needs Go on `PATH`. Meant for programs a person
    /// runs, such as the `envtest` command and the examples; tests should rather
    /// fail fast with [`find`](Self::find)'s message.
    ///
    /// # Errors
    /// [`Error::BinaryMissing`] if they are missing and the script is gone;
    /// [`Error::Spawn`] or [`Error::Build`] if the script cannot run or fails.
    pub fn find_or_build() -> Result<Self> {
        let missing = match Self::find() {
            Ok(binaries) => return Ok(binaries),
            Err(err) => err,
        };
        let build_script = Self::build_script();
        if !build_script.is_file() {
            return Err(missing);
        }
        eprintln!(
            "control-plane binaries missing; running `{}` to build kube-apiserver, \
             kube-controller-manager {KUBERNETES_VERSION} and etcd",
            Self::build_command()
        );
        eprintln!("(the first time: about 15 minutes on 2 cores; cached afterwards)");
        let started = std::time::Instant::now();
        let spawn_failed = |source| Error::Spawn {
            what: "the control-plane build script".into(),
            binary: build_script.clone(),
            source,
        };
        let mut child = std::process::Command::new("bash")
            .arg(&build_script)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(spawn_failed)?;
        let status = wait_reporting(&mut child, started).map_err(spawn_failed)?;
        if !status.success() {
            return Err(Error::Build {
                script: build_script,
                status,
            });
        }
        eprintln!("control plane built in {}", minutes(started.elapsed()));
        Self::find()
    }

    /// The control-plane build script that ships in this package:
    /// `controlplane/build.sh` in the kube-envtest source this program was compiled
    /// from (the repository checkout, or the package in Cargo's registry cache for a
    /// dependency or a `cargo install`). It builds kube-apiserver,
    /// kube-controller-manager and etcd from the Go module proxy into
    /// [`Binaries::default_dir`] (or `KUBE_ENVTEST_BIN_DIR`) and prints that
    /// directory. It needs Go; no cgo, no container engine.
    pub fn build_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("controlplane")
            .join("build.sh")
    }

    /// The shell command that runs [`Binaries::build_script`], as error messages
    /// name it: `bash <path>`, the path quoted when it needs to be.
    pub fn build_command() -> String {
        format!("bash {}", shell_quoted(&Self::build_script()))
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
            require(binary, path)?;
        }
        Ok(())
    }

    /// Whether kube-controller-manager is there; checked only for fleets that run it.
    pub(crate) fn check_controller_manager(&self) -> Result<()> {
        require("kube-controller-manager", &self.kube_controller_manager)
    }
}

fn require(binary: &'static str, path: &Path) -> Result<()> {
    if !is_executable(path) {
        return Err(Error::BinaryMissing {
            binary,
            path: path.to_path_buf(),
        });
    }
    match foreign_format(path) {
        None => Ok(()),
        Some(found) => Err(Error::BinaryForAnotherPlatform {
            binary,
            path: path.to_path_buf(),
            found,
        }),
    }
}

/// What the executable at `path` is when it is not for this machine, judged by its
/// first bytes; `None` for an ELF program for this CPU, a script (`#!`), or a file
/// that cannot be read (spawning it will say why).
fn foreign_format(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 20];
    let mut file = std::fs::File::open(path).ok()?;
    let read = file.read(&mut head).ok()?;
    let head = &head[..read];
    if head.starts_with(b"#!") {
        return None;
    }
    if head.starts_with(b"\x7fELF") {
        // e_machine, at offset 18 in both ELF classes, in the byte order of EI_DATA.
        let bytes = [*head.get(18)?, *head.get(19)?];
        let machine = match head.get(5) {
            Some(2) => u16::from_be_bytes(bytes),
            _ => u16::from_le_bytes(bytes),
        };
        let (expected, _) = ELF_MACHINES
            .iter()
            .find(|(_, arch)| *arch == std::env::consts::ARCH)?;
        if machine == *expected {
            return None;
        }
        let arch = ELF_MACHINES
            .iter()
            .find(|(number, _)| *number == machine)
            .map_or_else(|| format!("machine {machine}"), |(_, arch)| (*arch).to_owned());
        return Some(format!("a Linux program for {arch}"));
    }
    let macho = [
        [0xcf, 0xfa, 0xed, 0xfe],
        [0xce, 0xfa, 0xed, 0xfe],
        [0xca, 0xfe, 0xba, 0xbe],
    ];
    Some(if macho.iter().any(|magic| head.starts_with(magic)) {
        "a macOS program".to_owned()
    } else if head.starts_with(b"MZ") {
        "a Windows program".to_owned()
    } else {
        "no program kube-envtest can start".to_owned()
    })
}

/// ELF `e_machine` numbers of the CPUs Kubernetes builds for, with Rust's name.
const ELF_MACHINES: &[(u16, &str)] = &[
    (62, "x86_64"),
    (183, "aarch64"),
    (40, "arm"),
    (3, "x86"),
    (243, "riscv64"),
    (21, "powerpc64"),
    (22, "s390x"),
];

/// What to do about a missing `binary`, for [`Error::BinaryMissing`]: what to set,
/// and the exact command that builds it.
pub(crate) fn missing_hint(binary: &str) -> String {
    let set = if binary == "kube-controller-manager" {
        format!(
            "it is needed only because the fleet runs a controller manager; set {BIN_DIR_ENV} \
             to a directory that also holds kube-controller-manager, or \
             {CONTROLLER_MANAGER_ENV} to the program"
        )
    } else {
        format!(
            "set {BIN_DIR_ENV} to a directory holding kube-apiserver and etcd, or \
             {APISERVER_ENV} and {ETCD_ENV} to the two programs"
        )
    };
    let script = Binaries::build_script();
    let gone = if script.is_file() {
        ""
    } else {
        " (the script is not there now: Cargo may have cleaned its source cache; \
         `cargo fetch` in the project that depends on kube-envtest restores it)"
    };
    format!(
        "{set}; or build kube-apiserver, kube-controller-manager and etcd {KUBERNETES_VERSION} \
         (needs Go) with `{}`{gone}, which puts them where kube-envtest looks by default",
        Binaries::build_command()
    )
}

/// `path` as one shell word.
fn shell_quoted(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+@:=,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
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

    /// c05: outside this repository the message still leads somewhere: what to set,
    /// and the build script by the path it has in the package this was built from.
    #[test]
    fn c05_missing_binary_names_what_to_set_and_the_shipped_build_script() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = Binaries::in_dir(dir.path()).expect_err("an empty dir has no binaries");
        let text = err.to_string();
        assert!(text.contains("kube-apiserver not found at"), "{text}");
        for named in [BIN_DIR_ENV, APISERVER_ENV, ETCD_ENV] {
            assert!(text.contains(named), "names {named}: {text}");
        }
        let script = Binaries::build_script();
        assert!(script.is_file(), "{} ships in the package", script.display());
        assert!(
            script.starts_with(env!("CARGO_MANIFEST_DIR")),
            "the script of this package, not of a checkout: {}",
            script.display()
        );
        assert!(text.contains(&format!("`bash {}`", script.display())), "{text}");
        assert!(!text.contains("tools/controlplane"), "no repository path: {text}");

        let manager = Error::BinaryMissing {
            binary: "kube-controller-manager",
            path: dir.path().join("kube-controller-manager"),
        }
        .to_string();
        assert!(manager.contains(CONTROLLER_MANAGER_ENV), "{manager}");
        assert!(manager.contains(&Binaries::build_command()), "{manager}");
    }

    #[test]
    fn c05_paths_are_quoted_for_the_shell_when_needed() {
        assert_eq!(shell_quoted(Path::new("/a/b-1.0/build.sh")), "/a/b-1.0/build.sh");
        assert_eq!(shell_quoted(Path::new("/my dir/build.sh")), "'/my dir/build.sh'");
        assert_eq!(shell_quoted(Path::new("/it's/build.sh")), r"'/it'\''s/build.sh'");
    }

    /// c05: programs for another system or CPU are told apart from this machine's.
    #[test]
    fn c05_programs_for_another_platform_are_recognised() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            foreign_format(&path)
        };
        let ours = ELF_MACHINES
            .iter()
            .find(|(_, arch)| *arch == std::env::consts::ARCH)
            .map(|(number, _)| *number)
            .expect("this test runs on a CPU Kubernetes builds for");
        let other = if ours == 62 { 183 } else { 62 };
        let elf = |machine: u16| {
            let mut header = b"\x7fELF\x02\x01\x01".to_vec();
            header.resize(18, 0);
            header.extend(machine.to_le_bytes());
            header
        };
        assert_eq!(file("ours", &elf(ours)), None);
        let foreign = file("other", &elf(other)).expect("another CPU");
        assert!(foreign.starts_with("a Linux program for "), "{foreign}");
        assert_eq!(file("script", b"#!/bin/sh\n"), None);
        assert_eq!(
            file("mac", &[0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1]).as_deref(),
            Some("a macOS program")
        );
        assert_eq!(file("windows", b"MZ\x90\0").as_deref(), Some("a Windows program"));
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
