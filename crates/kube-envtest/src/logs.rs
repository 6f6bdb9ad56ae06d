//! Where process logs go, and when they are kept.
//!
//! Logs live beside, not inside, a fleet's temporary directory: the temporary
//! directory always goes away with the fleet, while the logs stay when something
//! went wrong (a failed start, or a test that panicked while the fleet was alive) and
//! their path is printed, so a failure can be read after the fact.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A directory of log files that is removed on drop unless it must be kept.
#[derive(Debug)]
pub(crate) struct LogDir {
    path: PathBuf,
    keep: AtomicBool,
}

impl LogDir {
    /// A fresh directory named after `id` under `$TMPDIR/kube-envtest-logs/`.
    pub fn new(id: &str) -> Result<Self> {
        let path = std::env::temp_dir().join("kube-envtest-logs").join(id);
        std::fs::create_dir_all(&path).map_err(|e| Error::io("cannot create log directory", &path, e))?;
        Ok(LogDir {
            path,
            keep: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the logs after drop; called when start-up fails, since the error
    /// names a log file.
    pub fn keep(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking() || self.keep.load(Ordering::Relaxed) {
            eprintln!("kube-envtest: control-plane logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
