//! Log capture: for one thread ([`Capture`]), or for the whole test binary ([`Logs`]).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use super::wait_until;

/// Log output captured by a subscriber set for one thread (use a current-thread
/// runtime so the code under test logs on it).
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// A subscriber writing everything `filter` lets through into this capture.
    pub fn subscriber(&self, filter: &str) -> impl tracing::Subscriber + Send + Sync + use<> {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
    }

    /// Sets a subscriber writing everything `filter` lets through into this capture
    /// as this thread's default, until the guard is dropped.
    ///
    /// Also rebuilds tracing's cache of which callsites are enabled: a callsite first
    /// hit by another test while it registered could otherwise stay disabled for
    /// this subscriber too (the tests of one binary run concurrently).
    pub fn set_default(&self, filter: &str) -> tracing::subscriber::DefaultGuard {
        let guard = tracing::subscriber::set_default(self.subscriber(filter));
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The filter of [`Logs::capture`]: warnings, and the runtime's info lines (kube's
/// client logs every failed request, e.g. while the fleet starts).
pub const PROVIDER_FILTER: &str = "warn,kube_client=off,multicluster_runtime=info";

/// Log lines of this test binary, from every thread, captured for assertions (and
/// echoed to stderr).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<String>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        self.0.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// The capture, with [`PROVIDER_FILTER`].
    pub fn capture() -> Logs {
        Self::capture_with(PROVIDER_FILTER)
    }

    /// The capture, installed as the global subscriber with `filter` on the first
    /// call; every later call must ask for the same filter.
    pub fn capture_with(filter: &str) -> Logs {
        static LOGS: OnceLock<(String, Logs)> = OnceLock::new();
        let (installed, logs) = LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            (filter.to_owned(), logs)
        });
        assert_eq!(installed, filter, "one filter per test binary");
        logs.clone()
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Whether one line contains every part.
    pub fn has_line(&self, parts: &[&str]) -> bool {
        self.text()
            .lines()
            .any(|line| parts.iter().all(|p| line.contains(p)))
    }

    pub async fn wait_line(&self, parts: &[&str]) {
        wait_until(&format!("a log line with {parts:?}"), || self.has_line(parts)).await;
    }
}
