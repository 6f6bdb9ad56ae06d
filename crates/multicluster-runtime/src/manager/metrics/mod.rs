//! Prometheus metrics of the manager, its controllers and their queues.
//!
//! One [`Metrics`] registry per [`Manager`](super::Manager), served as OpenMetrics
//! text on `/metrics` by the manager's [metrics endpoint](super::Manager::with_metrics_endpoint)
//! or encoded by hand with [`Metrics::encode`]. Names follow controller-runtime and
//! client-go, so dashboards built for Go controllers work unchanged; each series that
//! concerns one cluster carries a `cluster` label (`""` for the manager's own
//! cluster).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `controller_runtime_reconcile_total` | counter | `controller`, `cluster`, `result` (`success`, `error`, `requeue`, `requeue_after`) |
//! | `controller_runtime_reconcile_errors_total` | counter | `controller`, `cluster` |
//! | `controller_runtime_reconcile_panics_total` | counter | `controller`, `cluster` |
//! | `controller_runtime_reconcile_time_seconds` | histogram | `controller` |
//! | `controller_runtime_active_workers` | gauge | `controller`, `cluster` |
//! | `controller_runtime_max_concurrent_reconciles` | gauge | `controller` |
//! | `workqueue_depth` | gauge | `name`, `cluster` |
//! | `workqueue_adds_total` | counter | `name`, `cluster` |
//! | `workqueue_retries_total` | counter | `name`, `cluster` |
//! | `workqueue_queue_duration_seconds` | histogram | `name` |
//! | `workqueue_work_duration_seconds` | histogram | `name` |
//! | `workqueue_unfinished_work_seconds` | gauge | `name`, `cluster` |
//! | `workqueue_longest_running_processor_seconds` | gauge | `name`, `cluster` |
//! | `multicluster_runtime_engaged_clusters` | gauge | `provider` (`local` for the manager's own cluster) |
//! | `multicluster_runtime_cluster_engagements_total` | counter | `provider`, `result` (`success`, `error`) |
//! | `multicluster_runtime_cluster_disengagements_total` | counter | `provider`, `reason` (`removed`, `replaced`) |
//! | `multicluster_runtime_cache_synced` | gauge (0/1) | `cluster`, `resource` |
//! | `multicluster_runtime_cache_watch_restarts_total` | counter | `cluster`, `resource` |
//! | `leader_election_master_status` | gauge (0/1) | `name` (the lease, `""` without leader election) |
//!
//! The workqueue's `name` is the controller's name. Histograms are per controller,
//! summed over its clusters: per cluster they were most of a cluster's series and
//! of its metrics' memory, and each cluster's reconciles are counted per cluster
//! all the same. A panicking reconcile counts as
//! an error too (`result="error"` and `..._errors_total`), as in controller-runtime.
//!
//! # Series of a removed cluster
//!
//! Gauges are computed at scrape time from the live state of the manager (a
//! [`Collector`]): a cluster that is no longer engaged is simply not in it. The
//! counters of a cluster are deleted when the cluster is disengaged from the
//! controller; a reconcile of it that ends afterwards is not recorded, so it cannot
//! bring the series back. A cluster that is *replaced* by a new instance under the
//! same name keeps its series.
//!
//! # Cardinality
//!
//! With the `cluster` label, every controller adds a fixed set of series for every
//! engaged cluster: 12 series and about 1 KB of exposition per cluster and
//! controller (see `docs/decisions/metrics.md` for the measurement).
//! [`Manager::with_cluster_label`](super::Manager::with_cluster_label)`(false)` drops
//! the label: every metric is then one series per controller (or resource), summed
//! over the clusters (the longest-running processor is the maximum; a resource's
//! `cache_synced` is 1 only when it has synced in every cluster).
//!
//! # Your own metrics
//!
//! Register them in the same registry, before or after the manager starts:
//!
//! ```
//! # use std::sync::Arc;
//! use prometheus_client::metrics::counter::Counter;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let client = kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
//! # let manager = multicluster_runtime::Manager::new(Arc::new(multicluster_runtime::Cluster::new("", client)));
//! let widgets: Counter = Counter::default();
//! manager.metrics().register("widgets_made", "Widgets made by the reconciler", widgets.clone());
//! widgets.inc();
//! assert!(manager.metrics().encode().contains("widgets_made_total 1\n"));
//! # }
//! ```

mod collector;
mod labels;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Metric, Registry};

use crate::cluster::ClusterName;

pub(crate) use collector::StateCollector;
use labels::EngagementLabels;

/// The registry of a manager's metrics; see the [module docs](self).
///
/// Cheap to clone: clones share one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    /// Whether series carry a `cluster` label.
    cluster_label: Arc<AtomicBool>,
    families: Families,
    /// The provider's name, for the engagement metrics.
    provider: Mutex<Arc<str>>,
    /// What other layers registered once per registry (the controllers'
    /// families), by type.
    shared: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

/// The engagement counters (the gauges are computed at scrape time). Each `Family`
/// is a shared handle; the registry holds the other one.
#[derive(Clone, Default)]
struct Families {
    engagements: Family<EngagementLabels, Counter>,
    disengagements: Family<EngagementLabels, Counter>,
}

impl Families {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "multicluster_runtime_cluster_engagements",
            "Engagements of clusters into the manager, per provider and result",
            self.engagements.clone(),
        );
        registry.register(
            "multicluster_runtime_cluster_disengagements",
            "Clusters that left the manager, per provider and reason",
            self.disengagements.clone(),
        );
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("cluster_label", &self.cluster_label())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let families = Families::default();
        let mut registry = Registry::default();
        families.register(&mut registry);
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                cluster_label: Arc::new(AtomicBool::new(true)),
                families,
                provider: Mutex::new(Arc::from("none")),
                shared: Mutex::default(),
            }),
        }
    }

    /// Registers `metric` under `name` (a counter's name gets `_total` appended);
    /// see [`Registry::register`].
    pub fn register(&self, name: impl Into<String>, help: impl Into<String>, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// Registers a collector, asked for its metrics at every scrape; see
    /// [`Registry::register_collector`].
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry().register_collector(collector);
    }

    /// Gives `register` the registry itself, e.g. for a sub-registry with a prefix.
    /// Do not encode the registry inside `register`: it is locked meanwhile.
    pub fn with_registry<T>(&self, register: impl FnOnce(&mut Registry) -> T) -> T {
        register(&mut self.registry())
    }

    /// Every metric as OpenMetrics text, ending in `# EOF`, as `/metrics` serves it.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(err) = text::encode(&mut text, &self.registry()) {
            // Only a collector or a label encoder can fail; serve what was written
            // rather than nothing, and say so.
            tracing::error!(error = %err, "metrics encoding failed; exposition incomplete");
        }
        text
    }

    /// Whether series carry the `cluster` label.
    pub fn cluster_label(&self) -> bool {
        self.inner.cluster_label.load(Ordering::Relaxed)
    }

    pub(crate) fn set_cluster_label(&self, on: bool) {
        self.inner.cluster_label.store(on, Ordering::Relaxed);
    }

    pub(crate) fn set_provider(&self, name: &str) {
        *lock(&self.inner.provider) = Arc::from(name);
    }

    fn provider_of(&self, cluster: &ClusterName) -> Arc<str> {
        if cluster.is_local() {
            Arc::from("local")
        } else {
            lock(&self.inner.provider).clone()
        }
    }

    /// Counts an engagement of `cluster` into the manager.
    pub(crate) fn cluster_engaged(&self, cluster: &ClusterName, ok: bool) {
        let labels = EngagementLabels::new(
            "result",
            self.provider_of(cluster),
            if ok { "success" } else { "error" },
        );
        self.inner.families.engagements.get_or_create(&labels).inc();
    }

    /// Counts a cluster leaving the manager, removed or replaced by a new instance.
    pub(crate) fn cluster_disengaged(&self, cluster: &ClusterName, replaced: bool) {
        let reason = if replaced { "replaced" } else { "removed" };
        let labels = EngagementLabels::new("reason", self.provider_of(cluster), reason);
        self.inner.families.disengagements.get_or_create(&labels).inc();
    }

    /// The one `T` of this registry, made and registered by `make` the first time
    /// it is asked for: how a layer below the manager (the controllers' families)
    /// registers its metrics once however many of its parts use them.
    pub(crate) fn shared<T: Send + Sync + 'static>(
        &self,
        make: impl FnOnce(&mut Registry, Arc<AtomicBool>) -> Arc<T>,
    ) -> Arc<T> {
        let mut shared = lock(&self.inner.shared);
        if let Some(existing) = shared
            .get(&TypeId::of::<T>())
            .and_then(|s| s.clone().downcast::<T>().ok())
        {
            return existing;
        }
        let made = make(&mut self.registry(), self.inner.cluster_label.clone());
        shared.insert(TypeId::of::<T>(), made.clone());
        made
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.inner.registry)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
