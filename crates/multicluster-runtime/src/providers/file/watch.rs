//! Watching the directories of the kubeconfigs, and debouncing their changes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A file system watcher whose events arrive on a channel.
pub(super) struct DirWatcher {
    watcher: RecommendedWatcher,
    watched: BTreeMap<PathBuf, bool>,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
}

impl DirWatcher {
    pub(super) fn new() -> notify::Result<Self> {
        let (sender, events) = mpsc::unbounded_channel();
        // Runs on notify's thread; sending fails only once `events` is dropped.
        let watcher = notify::recommended_watcher(move |event| {
            let _ = sender.send(event);
        })?;
        Ok(DirWatcher {
            watcher,
            watched: BTreeMap::new(),
            events,
        })
    }

    /// Watches exactly `targets` (directory → recursively or not).
    ///
    /// Every target is watched again, not only new ones: a directory that was deleted
    /// and created again has lost its watch, and watching a path twice is harmless.
    pub(super) fn sync(&mut self, targets: BTreeMap<PathBuf, bool>) {
        for dir in self.watched.keys().filter(|dir| !targets.contains_key(*dir)) {
            // Fails if the directory is gone, and then it is not watched anyway.
            let _ = self.watcher.unwatch(dir);
        }
        for (dir, &deep) in &targets {
            let mode = if deep {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            if let Err(error) = self.watcher.watch(dir, mode) {
                tracing::warn!(path = %dir.display(), %error, "cannot watch kubeconfig directory");
            }
        }
        self.watched = targets;
    }

    /// Waits for a change, then `debounce` longer for the rest of it (editors and
    /// Secret mounts write in several steps), and swallows the events of that time.
    /// `None` if the watcher has stopped.
    pub(super) async fn changed(&mut self, debounce: Duration) -> Option<()> {
        while !is_change(&self.events.recv().await?) {}
        tokio::time::sleep(debounce).await;
        while self.events.try_recv().is_ok() {}
        Some(())
    }
}

/// Whether an event may change what the files say. Reads are not changes: the reload
/// itself opens every file, and must not trigger the next one.
fn is_change(event: &notify::Result<Event>) -> bool {
    match event {
        Ok(event) => match event.kind {
            EventKind::Access(kind) => kind == AccessKind::Close(AccessMode::Write),
            _ => true,
        },
        Err(error) => {
            // E.g. the kernel's event queue overflowed: reload to be safe.
            tracing::warn!(%error, "kubeconfig watch error; reloading");
            true
        }
    }
}
