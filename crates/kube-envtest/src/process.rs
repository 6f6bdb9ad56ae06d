//! Child processes that cannot outlive the test that started them.
//!
//! Every child is spawned by one long-lived thread and asks the kernel to kill it when
//! that thread goes away (`PR_SET_PDEATHSIG`). The thread lives as long as the test
//! process, so a test binary that is killed outright (SIGKILL, a CI timeout) still
//! takes its apiservers and etcds with it. Spawning from the caller's thread would
//! not do: Linux ties the signal to the spawning *thread*, and tokio's blocking
//! threads come and go.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// A running child process with its output going to a log file.
#[derive(Debug)]
pub(crate) struct Process {
    what: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `binary` with `args`, stdout and stderr appended to `log`.
    pub fn spawn(what: String, binary: &Path, args: &[String], log: &Path) -> Result<Self> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io("cannot open log file", log, e))?;
        let stderr = file
            .try_clone()
            .map_err(|e| Error::io("cannot open log file", log, e))?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr);
        die_with_parent(&mut command);
        let child = spawn_from_reaper(command).map_err(|source| Error::Spawn {
            what: what.clone(),
            binary: binary.into(),
            source,
        })?;
        tracing::debug!(what, pid = child.id(), log = %log.display(), "started");
        Ok(Process {
            what,
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err(Exited)` if the process has ended; used while waiting for readiness.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(self.exited(status)),
            Ok(None) | Err(_) => Ok(()),
        }
    }

    pub fn exited(&self, status: ExitStatus) -> Error {
        Error::Exited {
            what: self.what.clone(),
            status,
            log: self.log.clone(),
            tail: log_tail(&self.log, 20),
        }
    }

    /// Freezes the process (SIGSTOP): its sockets stay open, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a process frozen by [`Process::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Asks the process to stop (SIGTERM) and kills it if it has not within `grace`.
    pub async fn terminate(mut self, grace: Duration) {
        self.resume(); // a frozen process cannot act on SIGTERM
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
    }

    /// Kills the process at once and reaps it, so its PID is gone when this returns.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            tracing::debug!(what = self.what, pid = self.child.id(), "killed");
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) has no memory effects; the child is not reaped yet while we
        // own it, so the PID cannot have been reused by another process.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl(2) and
    // getppid(2), both async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
}

fn spawn_from_reaper(command: Command) -> std::io::Result<Child> {
    static REAPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kube-envtest-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the kube-envtest spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the kube-envtest spawner thread has stopped"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the kube-envtest spawner thread has stopped"))?
}
