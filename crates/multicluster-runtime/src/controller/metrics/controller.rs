//! One controller's metrics: reconciles, and its queue's transitions.
//!
//! Counters carry the cluster's label only while the cluster is engaged into the
//! controller. Histograms are the controller's (or its queue's), summed over its
//! clusters: a latency distribution per cluster was 46 series and three
//! allocations (≈ 1.4 KB) per cluster, for a fleet of thousands (v04, issue 21;
//! `docs/decisions/metrics.md`). What each cluster does is counted per cluster. The set of engaged clusters kept here is the set of
//! clusters that *have series*: recording checks it and removal empties it under
//! the same lock, so a reconcile that ends after its cluster was removed cannot
//! recreate the series that removal deleted.
//! Whether a cluster's caches have synced is not kept here: the controller reports
//! it through the cluster's engagement, where readiness reads it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

use super::labels::SeriesLabels;
use super::{Families, lock};
use crate::cache::ObjectKey;
use crate::cluster::ClusterName;
use crate::controller::queue::{QueueObserver, QueueView, Running};

/// How one reconcile ended, in controller-runtime's `result` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reconciled {
    /// Done; nothing requested.
    Success,
    /// Done; asked to come back with backoff.
    Requeue,
    /// Done; asked to come back after a delay.
    RequeueAfter,
    /// The reconciler returned an error.
    Error,
    /// The reconciler panicked (counted as an error too).
    Panic,
}

impl Reconciled {
    fn result(self) -> &'static str {
        match self {
            Reconciled::Success => "success",
            Reconciled::Requeue => "requeue",
            Reconciled::RequeueAfter => "requeue_after",
            Reconciled::Error | Reconciled::Panic => "error",
        }
    }
}

/// A controller's metrics. The controller holds it; the manager's collector reads
/// its queue at scrape time.
pub(crate) struct ControllerMetrics {
    max_concurrent: usize,
    series: Arc<Series>,
    queue: QueueView<ClusterName, ObjectKey>,
}

/// The event-updated series of one controller, and the clusters they exist for.
/// Also the queue's observer (held by the queue, so it must not hold the queue).
struct Series {
    name: Arc<str>,
    families: Families,
    cluster_label: Arc<AtomicBool>,
    /// The engaged clusters, which have series.
    clusters: Mutex<BTreeSet<ClusterName>>,
    /// The controller's histograms (no cluster label), looked up in their
    /// families on first use only: they are observed for every item.
    reconcile_time: OnceLock<Histogram>,
    queue_duration: OnceLock<Histogram>,
    work_duration: OnceLock<Histogram>,
}

/// One engaged cluster's queue, as of a scrape.
pub(crate) struct QueueGauges {
    pub cluster: ClusterName,
    pub depth: usize,
    pub running: Running,
}

impl ControllerMetrics {
    pub(super) fn new(
        name: &str,
        max_concurrent: usize,
        queue: QueueView<ClusterName, ObjectKey>,
        families: Families,
        cluster_label: Arc<AtomicBool>,
    ) -> Arc<Self> {
        let series = Arc::new(Series {
            name: Arc::from(name),
            families,
            cluster_label,
            clusters: Mutex::default(),
            reconcile_time: OnceLock::new(),
            queue_duration: OnceLock::new(),
            work_duration: OnceLock::new(),
        });
        Arc::new(ControllerMetrics {
            max_concurrent,
            series,
            queue,
        })
    }

    /// The observer to give the controller's queue.
    pub(crate) fn queue_observer(&self) -> Arc<dyn QueueObserver<ClusterName>> {
        self.series.clone()
    }

    /// The controller's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.series.name
    }

    /// The concurrency limit, `0` for none.
    pub(crate) fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// `cluster` (a new instance of it, maybe) was engaged into the controller:
    /// record its series from now on.
    pub(crate) fn cluster_engaged(&self, cluster: &ClusterName) {
        lock(&self.series.clusters).insert(cluster.clone());
    }

    /// `cluster` left the controller: delete its series and record no more.
    pub(crate) fn cluster_disengaged(&self, cluster: &ClusterName) {
        let series = &self.series;
        let mut clusters = lock(&series.clusters);
        if !clusters.remove(cluster) {
            return;
        }
        let families = &series.families;
        let (owner, queue) = (
            SeriesLabels::controller(&series.name, Some(cluster)),
            SeriesLabels::queue(&series.name, Some(cluster)),
        );
        for result in ["success", "error", "requeue", "requeue_after"] {
            families
                .reconcile_total
                .remove(&owner.clone().with_result(result));
        }
        families.reconcile_errors.remove(&owner);
        families.reconcile_panics.remove(&owner);
        families.queue_adds.remove(&queue);
        families.queue_retries.remove(&queue);
    }

    /// Records one reconcile of `cluster` that took `took`.
    pub(crate) fn reconciled(&self, cluster: &ClusterName, how: Reconciled, took: Duration) {
        let name = &self.series.name;
        self.series.record(cluster, |families, cluster| {
            let labels = SeriesLabels::controller(name, cluster);
            families
                .reconcile_total
                .get_or_create(&labels.clone().with_result(how.result()))
                .inc();
            if matches!(how, Reconciled::Error | Reconciled::Panic) {
                families.reconcile_errors.get_or_create(&labels).inc();
            }
            if how == Reconciled::Panic {
                families.reconcile_panics.get_or_create(&labels).inc();
            }
        });
        let series = &self.series;
        series
            .reconcile_time
            .get_or_init(|| {
                let labels = SeriesLabels::controller(name, None);
                series.families.reconcile_time.get_or_create(&labels).clone()
            })
            .observe(took.as_secs_f64());
    }

    /// The queue of every engaged cluster, as of now.
    pub(crate) fn queue_gauges(&self) -> Vec<QueueGauges> {
        let clusters: Vec<ClusterName> = lock(&self.series.clusters).iter().cloned().collect();
        let stats = self.queue.cluster_stats(&clusters);
        clusters
            .into_iter()
            .zip(stats)
            .map(|(cluster, (depth, running))| QueueGauges {
                cluster,
                depth,
                running,
            })
            .collect()
    }
}

impl Series {
    /// Calls `record` with the labels' cluster (`None` without the cluster label),
    /// unless the cluster has no series (not engaged, or removed).
    fn record(&self, cluster: &ClusterName, record: impl FnOnce(&Families, Option<&ClusterName>)) {
        if !self.cluster_label.load(Ordering::Relaxed) {
            return record(&self.families, None);
        }
        let clusters = lock(&self.clusters);
        if clusters.contains(cluster) {
            record(&self.families, Some(cluster));
        }
    }
}

impl QueueObserver<ClusterName> for Series {
    fn added(&self, cluster: &ClusterName) {
        self.record(cluster, |families, cluster| {
            let labels = SeriesLabels::queue(&self.name, cluster);
            families.queue_adds.get_or_create(&labels).inc();
        });
    }

    fn retried(&self, cluster: &ClusterName) {
        self.record(cluster, |families, cluster| {
            let labels = SeriesLabels::queue(&self.name, cluster);
            families.queue_retries.get_or_create(&labels).inc();
        });
    }

    fn leased(&self, _: &ClusterName, waited: Duration) {
        self.queue_duration
            .get_or_init(|| {
                let labels = SeriesLabels::queue(&self.name, None);
                self.families.queue_duration.get_or_create(&labels).clone()
            })
            .observe(waited.as_secs_f64());
    }

    fn released(&self, _: &ClusterName, worked: Duration) {
        self.work_duration
            .get_or_init(|| {
                let labels = SeriesLabels::queue(&self.name, None);
                self.families.work_duration.get_or_create(&labels).clone()
            })
            .observe(worked.as_secs_f64());
    }
}
