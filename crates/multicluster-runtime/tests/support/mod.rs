//! Helpers shared by the provider tests: a component that records engagements, and
//! waiting for a condition with a deadline.
#![allow(dead_code)] // each test binary uses a different part

pub mod files;
pub mod fleet;
pub mod host;
pub mod http;
pub mod openmetrics;
pub mod rbac;
pub mod replicas;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use multicluster_runtime::{Aware, Cluster, ClusterName};
use tokio_util::sync::CancellationToken;

/// How long any wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// One engagement of a cluster instance and whether its token was cancelled since.
#[derive(Clone)]
pub struct Engagement {
    pub name: ClusterName,
    pub cluster: Arc<Cluster>,
    pub token: CancellationToken,
}

/// Records every engagement it receives, to observe a provider from outside.
#[derive(Default)]
pub struct EngagementLog {
    entries: Mutex<Vec<Engagement>>,
}

#[async_trait]
impl Aware for EngagementLog {
    async fn engage(
        &self,
        token: CancellationToken,
        name: ClusterName,
        cluster: Arc<Cluster>,
    ) -> multicluster_runtime::Result<()> {
        self.entries
            .lock()
            .unwrap()
            .push(Engagement { name, cluster, token });
        Ok(())
    }
}

impl EngagementLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Every engagement so far, in order.
    pub fn all(&self) -> Vec<Engagement> {
        self.entries.lock().unwrap().clone()
    }

    /// How many times `name` was engaged.
    pub fn count(&self, name: &str) -> usize {
        self.all().iter().filter(|e| e.name == name).count()
    }

    /// Names engaged now: engaged, and the token not cancelled.
    pub fn live(&self) -> BTreeSet<String> {
        self.all()
            .iter()
            .filter(|e| !e.token.is_cancelled())
            .map(|e| e.name.as_str().to_owned())
            .collect()
    }

    /// The live engagement of `name`.
    pub fn current(&self, name: &str) -> Option<Engagement> {
        self.all()
            .into_iter()
            .rev()
            .find(|e| e.name == name && !e.token.is_cancelled())
    }

    /// Waits until exactly `names` are engaged.
    pub async fn wait_live(&self, names: &[&str]) {
        let want: BTreeSet<String> = names.iter().map(|n| (*n).to_owned()).collect();
        wait_until(&format!("live clusters {want:?}"), || self.live() == want).await;
    }

    /// Waits until `name` has been engaged `times` times in all.
    pub async fn wait_count(&self, name: &str, times: usize) {
        wait_until(&format!("{times} engagement(s) of {name}"), || {
            self.count(name) >= times
        })
        .await;
    }
}

/// Polls `done` every 50 ms until it holds; panics naming `what` after [`WAIT`].
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Log output captured by a subscriber set for one thread (use a current-thread
/// runtime so the code under test logs on it).
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
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
