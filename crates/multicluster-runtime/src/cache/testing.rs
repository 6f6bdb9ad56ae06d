//! Test helpers shared by the cache's unit tests.

use std::io;

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

thread_local! {
    /// What this crate logged on the current thread.
    static LINES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes into the current thread's [`LINES`].
struct ThreadLines;

impl io::Write for ThreadLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LINES.with(|lines| lines.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What this crate logs on the current thread, for tests that check log lines.
///
/// One global subscriber serves every test of the binary and files each line under
/// the thread that wrote it. A subscriber set per thread would depend on tracing's
/// process-wide cache of enabled callsites, which tests running concurrently on
/// other threads can leave disabled for it (seen as lost lines, repeatedly).
pub(crate) struct Logs(());

impl Logs {
    /// Starts capturing the current thread's lines, forgetting earlier ones.
    pub(crate) fn capture() -> Logs {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("multicluster_runtime=debug"))
                .with_writer(|| ThreadLines)
                .with_ansi(false)
                .finish();
            // Fails only if a global subscriber exists already; it then captures nothing
            // and the test's assertions say so.
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        LINES.with(|lines| lines.borrow_mut().clear());
        Logs(())
    }

    /// The lines written so far that contain `needle`.
    pub(crate) fn lines_with(&self, needle: &str) -> Vec<String> {
        let text = LINES.with(|lines| String::from_utf8_lossy(&lines.borrow()).into_owned());
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
