//! The controllers' gauges, read from their queues at every scrape: a cluster that
//! left a controller is simply not there, whatever path it left by.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::ControllerFamilies;
use crate::exposition::{Labels, family};

/// Reads every controller's queue at scrape time. Holds the families weakly: the
/// registry that holds the collector is theirs.
#[derive(Debug)]
pub(super) struct QueueCollector {
    families: Weak<ControllerFamilies>,
}

impl std::fmt::Debug for ControllerFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerFamilies").finish_non_exhaustive()
    }
}

impl QueueCollector {
    pub(super) fn new(families: &Arc<ControllerFamilies>) -> Self {
        QueueCollector {
            families: Arc::downgrade(families),
        }
    }
}

/// A gauge sample of `value`.
pub(crate) fn gauge(value: f64) -> ConstGauge<f64> {
    ConstGauge::new(value)
}

/// A count as a gauge sample.
pub(crate) fn count(value: usize) -> ConstGauge<i64> {
    ConstGauge::new(to_i64(value))
}

fn to_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Per queue (controller name, labels): depth, leases, their total age, the oldest's age.
type PerQueue = BTreeMap<(String, Labels), (i64, i64, f64, f64)>;

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(families) = self.families.upgrade() else {
            return Ok(());
        };
        let by_cluster = families.cluster_label();
        let mut max_concurrent = Vec::new();
        let mut per_queue = PerQueue::new();
        for controller in families.controllers() {
            let name = controller.name().to_string();
            max_concurrent.push((
                vec![("controller", name.clone())],
                count(controller.max_concurrent()),
            ));
            for queue in controller.queue_gauges() {
                let mut labels = Vec::new();
                if by_cluster {
                    labels.push(("cluster", queue.cluster.as_str().to_owned()));
                }
                // Without the cluster label, clusters fold into one sample.
                let entry = per_queue.entry((name.clone(), labels)).or_default();
                entry.0 += to_i64(queue.depth);
                entry.1 += to_i64(queue.running.leases);
                entry.2 += queue.running.total.as_secs_f64();
                entry.3 = entry.3.max(queue.running.longest.as_secs_f64());
            }
        }
        family(
            &mut encoder,
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller (0: no limit)",
            MetricType::Gauge,
            max_concurrent,
        )?;
        queue_families(&mut encoder, &per_queue)
    }
}

/// The per-queue gauges of `per_queue`.
fn queue_families(encoder: &mut DescriptorEncoder, per_queue: &PerQueue) -> Result<(), std::fmt::Error> {
    let with = |key: &'static str, name: &str, labels: &Labels| {
        let mut all = vec![(key, name.to_owned())];
        all.extend(labels.iter().cloned());
        all
    };
    family(
        encoder,
        "controller_runtime_active_workers",
        "Reconciles running now, per controller and cluster",
        MetricType::Gauge,
        per_queue
            .iter()
            .map(|((name, labels), v)| (with("controller", name, labels), ConstGauge::new(v.1))),
    )?;
    family(
        encoder,
        "workqueue_depth",
        "Items queued (ready or delayed), per controller queue and cluster",
        MetricType::Gauge,
        per_queue
            .iter()
            .map(|((name, labels), v)| (with("name", name, labels), ConstGauge::new(v.0))),
    )?;
    family(
        encoder,
        "workqueue_unfinished_work_seconds",
        "Seconds of work in progress not yet observed by work_duration; large values mean stuck workers",
        MetricType::Gauge,
        per_queue
            .iter()
            .map(|((name, labels), v)| (with("name", name, labels), gauge(v.2))),
    )?;
    family(
        encoder,
        "workqueue_longest_running_processor_seconds",
        "How long the longest-running worker of the queue has held its item",
        MetricType::Gauge,
        per_queue
            .iter()
            .map(|((name, labels), v)| (with("name", name, labels), gauge(v.3))),
    )
}
