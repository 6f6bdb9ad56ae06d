//! Helpers shared by the tests: a component that records engagements, and waiting
//! for a condition with a deadline; the modules hold the rest, each helper once.
#![allow(dead_code)] // each test binary uses a different part

pub mod files;
pub mod fleet;
pub mod host;
pub mod http;
pub mod logs;
pub mod objects;
pub mod openmetrics;
pub mod rbac;
pub mod replicas;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multicluster_runtime::async_trait;
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

/// Polls `probe` every 100 ms until it gives a value; panics naming `what` after
/// [`WAIT`]. The async twin of [`wait_until`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
