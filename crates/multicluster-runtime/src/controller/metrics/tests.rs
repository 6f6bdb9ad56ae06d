use std::sync::Arc;
use std::time::Duration;

use super::{ControllerFamilies, Reconciled};
use crate::cache::ObjectKey;
use crate::cluster::{Cluster, ClusterName};
use crate::controller::queue::WorkQueue;
use crate::manager::Manager;

fn manager() -> Manager {
    let config = kube::Config::new("https://127.0.0.1:9".parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    Manager::new(Arc::new(Cluster::new("", client)))
}

/// A controller's metrics on `manager`, with a queue; `clusters` engaged, and for
/// each a reconcile of every result, a panic, a retry and a finished lease, so that
/// every series a cluster can have exists.
async fn busy_controller(
    manager: &Manager,
    clusters: usize,
) -> (Arc<super::ControllerMetrics>, WorkQueue<ClusterName, ObjectKey>) {
    let queue = WorkQueue::new();
    let metrics = manager
        .metrics()
        .shared(ControllerFamilies::register)
        .controller("demo", 4, queue.view());
    queue.observe(metrics.queue_observer());
    for n in 0..clusters {
        let cluster = ClusterName::new(format!("cluster-{n:03}"));
        metrics.cluster_engaged(&cluster);
        for how in [
            Reconciled::Success,
            Reconciled::Error,
            Reconciled::Panic,
            Reconciled::Requeue,
            Reconciled::RequeueAfter,
        ] {
            metrics.reconciled(&cluster, how, Duration::from_millis(20));
        }
        let key = ObjectKey::new(Some("default"), "web");
        queue.add(cluster.clone(), key.clone());
        drop(queue.next().await.expect("lease"));
        queue.add_rate_limited(cluster, key);
    }
    (metrics, queue)
}

/// Sample lines of an exposition (no metadata, no `# EOF`).
fn samples(text: &str) -> usize {
    text.lines().filter(|line| !line.starts_with('#')).count()
}

#[tokio::test(start_paused = true)]
async fn a_removed_clusters_series_are_deleted_and_stay_deleted() {
    let manager = manager();
    let (metrics, queue) = busy_controller(&manager, 2).await;
    let text = manager.metrics().encode();
    assert!(text.contains("cluster=\"cluster-001\""), "{text}");
    assert!(text.contains(
        "controller_runtime_reconcile_total{controller=\"demo\",cluster=\"cluster-001\",result=\"requeue_after\"} 1\n"
    ));
    assert!(
        text.contains("workqueue_depth{name=\"demo\",cluster=\"cluster-001\"} 1\n"),
        "{text}"
    );

    let gone = ClusterName::new("cluster-001");
    metrics.cluster_disengaged(&gone);
    queue.remove_cluster(&gone);
    // A reconcile that was running when the cluster left ends afterwards.
    metrics.reconciled(&gone, Reconciled::Success, Duration::from_millis(5));
    queue.add(gone.clone(), ObjectKey::new(None, "late"));

    let text = manager.metrics().encode();
    assert!(!text.contains("cluster-001"), "{text}");
    assert!(
        text.contains("cluster=\"cluster-000\""),
        "the other cluster keeps its series"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_controller_leaves_no_gauges() {
    let manager = manager();
    let (metrics, queue) = busy_controller(&manager, 1).await;
    assert!(manager.metrics().encode().contains("workqueue_depth{"));
    drop((metrics, queue));
    let text = manager.metrics().encode();
    assert!(!text.contains("workqueue_depth{"), "{text}");
    assert!(
        !text.contains("controller_runtime_max_concurrent_reconciles{"),
        "{text}"
    );
}

/// What each cluster costs, with and without the `cluster` label; the numbers in
/// `docs/decisions/metrics.md` come from here (`--nocapture`).
#[tokio::test(start_paused = true)]
async fn cost_per_cluster_with_and_without_the_cluster_label() {
    let mut measured = Vec::new();
    for label in [true, false] {
        let mut sizes = Vec::new();
        for clusters in [1, 101] {
            let manager = manager().with_cluster_label(label);
            let _busy = busy_controller(&manager, clusters).await;
            let text = manager.metrics().encode();
            sizes.push((text.len(), samples(&text)));
        }
        let bytes = (sizes[1].0 - sizes[0].0) as f64 / 100.0;
        let series = (sizes[1].1 - sizes[0].1) as f64 / 100.0;
        eprintln!(
            "cluster label {label}: one cluster of one controller costs {series} series, {bytes} bytes; \
             1 cluster: {} series, {} bytes",
            sizes[0].1, sizes[0].0
        );
        measured.push((bytes, series));
    }
    let (with, without) = (measured[0], measured[1]);
    assert!(with.1 >= 10.0, "every cluster has its own series: {with:?}");
    // Without the label, more clusters change values, not series; bytes grow only
    // where a value needs more digits.
    assert_eq!(without.1, 0.0);
    assert!(without.0 < with.0 / 100.0, "{without:?}");
}

/// v04 (issue 21): histograms are the controller's, summed over its clusters; each
/// cluster's reconciles and queue transitions are counted in its own series. A
/// histogram per cluster (three of them, 46 series) was ≈ 1.4 KB of heap per
/// engaged cluster.
#[tokio::test(start_paused = true)]
async fn v04_histograms_are_per_controller_and_counters_per_cluster() {
    let manager = manager();
    let (metrics, _queue) = busy_controller(&manager, 3).await;
    let text = manager.metrics().encode();
    for histogram in [
        "controller_runtime_reconcile_time_seconds",
        "workqueue_queue_duration_seconds",
        "workqueue_work_duration_seconds",
    ] {
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with(histogram)).collect();
        assert!(!series.is_empty(), "{histogram} recorded: {text}");
        assert!(
            series.iter().all(|line| !line.contains("cluster=")),
            "{histogram} has no cluster label: {series:?}"
        );
    }
    // Five reconciles in each of three clusters, one lease each.
    assert!(
        text.contains("controller_runtime_reconcile_time_seconds_count{controller=\"demo\"} 15\n"),
        "{text}"
    );
    assert!(
        text.contains("workqueue_work_duration_seconds_count{name=\"demo\"} 3\n"),
        "{text}"
    );
    assert!(text.contains(
        "controller_runtime_reconcile_total{controller=\"demo\",cluster=\"cluster-002\",result=\"success\"} 1\n"
    ));
    // A cluster's removal leaves the controller's histograms as they are.
    metrics.cluster_disengaged(&ClusterName::new("cluster-002"));
    let text = manager.metrics().encode();
    assert!(!text.contains("cluster-002"), "{text}");
    assert!(
        text.contains("controller_runtime_reconcile_time_seconds_count{controller=\"demo\"} 15\n"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn users_register_their_own_metrics_beside_the_managers() {
    let manager = manager();
    let made: prometheus_client::metrics::counter::Counter = Default::default();
    manager
        .metrics()
        .register("widgets_made", "Widgets made", made.clone());
    made.inc_by(3);
    let text = manager.metrics().encode();
    assert!(text.contains("widgets_made_total 3\n"), "{text}");
    assert!(
        text.contains("# TYPE leader_election_master_status gauge\n"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}
