//! Test helpers shared by the cache's unit tests.

use std::io;
use std::sync::{Arc, Mutex};

use futures::stream::{BoxStream, Stream, StreamExt};
use kube::runtime::watcher;

/// A watch factory for `Informer::run` that gives `stream` first, then watches that
/// never yield.
pub(crate) fn once<K: Send + 'static>(
    stream: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> impl FnMut() -> BoxStream<'static, watcher::Result<watcher::Event<K>>> + Send + 'static {
    let mut first = Some(stream.boxed());
    move || first.take().unwrap_or_else(|| futures::stream::pending().boxed())
}

/// Collects what a `tracing` subscriber writes, for tests that check log lines.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// A subscriber that writes every event of this crate, without colours, here.
    pub(crate) fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("multicluster_runtime=debug"))
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .finish()
    }

    /// The lines written so far that contain `needle`.
    pub(crate) fn lines_with(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Asserts that exactly one ERROR line was written, that it holds every part of
    /// `expected`, and none of `secrets`.
    #[track_caller]
    pub(crate) fn assert_one_error(&self, expected: &[&str], secrets: &[&str]) {
        let lines = self.lines_with(" ERROR ");
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        for part in expected {
            assert!(line.contains(part), "{part} in {line}");
        }
        for secret in secrets {
            assert!(!line.contains(secret), "{secret} leaked into {line}");
        }
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
