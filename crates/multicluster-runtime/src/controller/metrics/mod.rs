//! The controllers' metrics, in controller-runtime's names: reconciles
//! (`controller_runtime_reconcile_*`) and queues (`workqueue_*`), per controller;
//! counters and gauges also per cluster, histograms not.
//!
//! The families are registered once per registry, by the first controller built on
//! it (through [`Metrics::shared`](crate::manager::Metrics)): every controller of a
//! manager writes its own series into the same families. The gauges (queue depth,
//! workers) are read from the queues at scrape time by a collector, so a
//! removed cluster's gauges cannot outlive it.

mod controller;
mod gauges;
mod labels;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::cache::ObjectKey;
use crate::cluster::ClusterName;
pub(crate) use controller::{ControllerMetrics, Reconciled};
use gauges::QueueCollector;
use labels::SeriesLabels;

use super::queue::QueueView;

/// The families of every controller of one registry, and the controllers writing
/// to them (for the gauges computed at scrape time).
pub(crate) struct ControllerFamilies {
    families: Families,
    /// Whether series carry a `cluster` label; shared with the registry's owner.
    cluster_label: Arc<AtomicBool>,
    controllers: Mutex<Vec<Weak<ControllerMetrics>>>,
}

/// The metrics updated as things happen. Each `Family` is a shared handle; the
/// registry holds the other one.
#[derive(Clone)]
pub(crate) struct Families {
    pub reconcile_total: Family<SeriesLabels, Counter>,
    pub reconcile_errors: Family<SeriesLabels, Counter>,
    pub reconcile_panics: Family<SeriesLabels, Counter>,
    pub reconcile_time: Family<SeriesLabels, Histogram, fn() -> Histogram>,
    pub queue_adds: Family<SeriesLabels, Counter>,
    pub queue_retries: Family<SeriesLabels, Counter>,
    pub queue_duration: Family<SeriesLabels, Histogram, fn() -> Histogram>,
    pub work_duration: Family<SeriesLabels, Histogram, fn() -> Histogram>,
}

/// Buckets of `controller_runtime_reconcile_time_seconds`: 5 ms to 60 s in 13 steps
/// (controller-runtime uses 40).
const RECONCILE_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS)
}

/// client-go's workqueue buckets: 10 ns to 1000 s, by factors of 10.
fn queue_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-8, 10.0, 12))
}

impl ControllerFamilies {
    /// The families, registered in `registry` with the collector of the gauges.
    pub(crate) fn register(registry: &mut Registry, cluster_label: Arc<AtomicBool>) -> Arc<Self> {
        let families = Families {
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_panics: Family::default(),
            reconcile_time: Family::new_with_constructor(reconcile_histogram),
            queue_adds: Family::default(),
            queue_retries: Family::default(),
            queue_duration: Family::new_with_constructor(queue_histogram),
            work_duration: Family::new_with_constructor(queue_histogram),
        };
        families.register(registry);
        let shared = Arc::new(ControllerFamilies {
            families,
            cluster_label,
            controllers: Mutex::default(),
        });
        registry.register_collector(Box::new(QueueCollector::new(&shared)));
        shared
    }

    /// The metrics of a new controller: its counters, and its queue's gauges from
    /// now on.
    pub(crate) fn controller(
        &self,
        name: &str,
        max_concurrent: usize,
        queue: QueueView<ClusterName, ObjectKey>,
    ) -> Arc<ControllerMetrics> {
        let metrics = ControllerMetrics::new(
            name,
            max_concurrent,
            queue,
            self.families.clone(),
            self.cluster_label.clone(),
        );
        let mut controllers = lock(&self.controllers);
        controllers.retain(|c| c.strong_count() > 0);
        controllers.push(Arc::downgrade(&metrics));
        metrics
    }

    /// The controllers alive now.
    fn controllers(&self) -> Vec<Arc<ControllerMetrics>> {
        lock(&self.controllers).iter().filter_map(Weak::upgrade).collect()
    }

    fn cluster_label(&self) -> bool {
        self.cluster_label.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Families {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "controller_runtime_reconcile",
            "Reconciles per controller, cluster and result",
            self.reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Reconciles that failed or panicked, per controller and cluster",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_panics",
            "Reconciles that panicked, per controller and cluster",
            self.reconcile_panics.clone(),
        );
        registry.register_with_unit(
            "controller_runtime_reconcile_time",
            "How long reconciles took, per controller",
            Unit::Seconds,
            self.reconcile_time.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Items that became ready in a controller's queue, per cluster",
            self.queue_adds.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Items requeued with backoff, per controller queue and cluster",
            self.queue_retries.clone(),
        );
        registry.register_with_unit(
            "workqueue_queue_duration",
            "How long items waited, ready, before a worker took them",
            Unit::Seconds,
            self.queue_duration.clone(),
        );
        registry.register_with_unit(
            "workqueue_work_duration",
            "How long workers held items",
            Unit::Seconds,
            self.work_duration.clone(),
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
