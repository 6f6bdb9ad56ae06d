//! Log capture: for one thread ([`Capture`]), or for the whole test binary ([`Logs`]).
//!
//! Both rest on one global subscriber per test binary ([`install`]). It writes to
//! [`Logs`] what its filter (set by [`Logs::capture_with`], none before) lets
//! through, and it finds every callsite *sometimes* interesting, so that tracing
//! never caches a callsite as disabled for every subscriber: with per-thread
//! [`Capture`]s alone, a callsite first hit by one test while another test set its
//! capture could stay disabled for that capture too (the tests of one binary run
//! concurrently), and its lines were lost.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

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
        install();
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

    /// The capture, with `filter` for the whole binary from the first call on;
    /// every later call must ask for the same filter.
    pub fn capture_with(filter: &str) -> Logs {
        let logs = install();
        let (installed, _) = FILTER.get_or_init(|| {
            let parsed = tracing_subscriber::EnvFilter::new(filter);
            (filter.to_owned(), parsed)
        });
        assert_eq!(installed, filter, "one filter per test binary");
        // Callsites registered before the filter was set were asked of none.
        tracing::callsite::rebuild_interest_cache();
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

/// The filter of the global subscriber's [`Logs`], once set.
static FILTER: OnceLock<(String, tracing_subscriber::EnvFilter)> = OnceLock::new();

/// Installs the binary's global subscriber (once; see the module docs) and returns
/// its [`Logs`].
pub fn install() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(SetLater);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber in a binary using support::logs");
        logs
    })
}

/// Enables what [`FILTER`] enables, once set, deciding each event as it comes: every
/// callsite is *sometimes* interesting to it.
struct SetLater;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Filter<S> for SetLater {
    fn enabled(&self, metadata: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        FILTER
            .get()
            .is_some_and(|(_, filter)| Filter::<S>::enabled(filter, metadata, cx))
    }

    fn callsite_enabled(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        // Unknown until set, and per-thread captures may want any level.
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
}
