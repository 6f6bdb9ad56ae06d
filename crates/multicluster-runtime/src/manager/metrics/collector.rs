//! The gauges, computed at every scrape from the live state of the manager.
//!
//! Why a collector rather than gauges set as things change: a gauge set on events
//! must be reset on every path a cluster can leave by, and one forgotten path leaves
//! a removed cluster's series behind for good. Read at scrape time, a cluster that is
//! gone is simply not there.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{Inner, Metrics};
use crate::exposition::{Labels, family};
use crate::manager::Manager;

/// Reads the manager's state at scrape time. Holds both weakly: the registry that
/// holds the collector belongs to the manager.
pub(crate) struct StateCollector {
    manager: Weak<crate::manager::Inner>,
    metrics: Weak<Inner>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl StateCollector {
    pub(crate) fn new(manager: &Manager) -> Self {
        StateCollector {
            manager: Arc::downgrade(&manager.inner),
            metrics: Arc::downgrade(&manager.inner.metrics.inner),
        }
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (Some(manager), Some(metrics)) = (self.manager.upgrade(), self.metrics.upgrade()) else {
            return Ok(());
        };
        let manager = Manager { inner: manager };
        let metrics = Metrics { inner: metrics };
        cluster_families(&mut encoder, &manager, &metrics)?;
        health_families(&mut encoder, &manager, metrics.cluster_label())?;
        leader_family(&mut encoder, &manager)?;
        if let Some(coordinator) = manager.coordinator() {
            shard_families(&mut encoder, coordinator)?;
        }
        Ok(())
    }
}

/// Engaged clusters per provider, and their caches: synced, and watch restarts.
fn cluster_families(
    encoder: &mut DescriptorEncoder,
    manager: &Manager,
    metrics: &Metrics,
) -> Result<(), std::fmt::Error> {
    let by_cluster = metrics.cluster_label();
    let engaged = manager.engaged_instances();
    let mut per_provider: BTreeMap<String, u64> = BTreeMap::new();
    let mut caches: BTreeMap<Labels, (bool, u64, u64)> = BTreeMap::new();
    for (name, cluster) in &engaged {
        *per_provider
            .entry(metrics.provider_of(name).to_string())
            .or_default() += 1;
        for informer in cluster.cache().informer_statuses() {
            let mut labels = Vec::new();
            if by_cluster {
                labels.push(("cluster", name.as_str().to_owned()));
            }
            labels.push(("resource", informer.resource));
            // Informers of one resource with different selections fold into one.
            let entry = caches.entry(labels).or_insert((true, 0, 0));
            entry.0 &= informer.synced;
            entry.1 += informer.restarts;
            entry.2 += informer.failures;
        }
    }
    family(
        encoder,
        "multicluster_runtime_engaged_clusters",
        "Clusters engaged now, per provider (local: the manager's own cluster)",
        MetricType::Gauge,
        per_provider
            .into_iter()
            .map(|(provider, count)| (vec![("provider", provider)], ConstGauge::new(count as i64))),
    )?;
    family(
        encoder,
        "multicluster_runtime_cache_synced",
        "Whether the cache of a resource in a cluster has synced (1) or is still syncing (0)",
        MetricType::Gauge,
        caches
            .iter()
            .map(|(labels, (synced, _, _))| (labels.clone(), ConstGauge::new(i64::from(*synced)))),
    )?;
    family(
        encoder,
        "multicluster_runtime_cache_watch_failures",
        "Watch and list attempts of a cache that failed, per cluster and resource (retried with backoff)",
        MetricType::Counter,
        caches
            .iter()
            .map(|(labels, (_, _, failures))| (labels.clone(), ConstCounter::new(*failures))),
    )?;
    family(
        encoder,
        "multicluster_runtime_cache_watch_restarts",
        "Watches of a cache dropped and started again, per cluster and resource",
        MetricType::Counter,
        caches
            .into_iter()
            .map(|(labels, (_, restarts, _))| (labels, ConstCounter::new(restarts))),
    )
}

/// Cluster health, from the probes: clusters per state, each cluster's, transitions.
fn health_families(
    encoder: &mut DescriptorEncoder,
    manager: &Manager,
    by_cluster: bool,
) -> Result<(), std::fmt::Error> {
    let health = manager.cluster_health();
    let mut by_state: BTreeMap<&'static str, i64> = [("healthy", 0), ("unhealthy", 0), ("unknown", 0)]
        .into_iter()
        .collect();
    for state in health.values() {
        *by_state.entry(state.state.name()).or_default() += 1;
    }
    family(
        encoder,
        "multicluster_runtime_clusters",
        "Engaged clusters by the state of their health probes (healthy, unhealthy, unknown)",
        MetricType::Gauge,
        by_state
            .into_iter()
            .map(|(state, count)| (vec![("health", state.to_owned())], ConstGauge::new(count))),
    )?;
    if by_cluster {
        family(
            encoder,
            "multicluster_runtime_cluster_healthy",
            "Whether a cluster's health probes pass (1; also before the first probe) or it is unhealthy (0)",
            MetricType::Gauge,
            health.iter().map(|(name, health)| {
                (
                    vec![("cluster", name.as_str().to_owned())],
                    ConstGauge::new(i64::from(health.is_healthy())),
                )
            }),
        )?;
    }
    family(
        encoder,
        "multicluster_runtime_cluster_health_transitions",
        "Changes of health state (unknown, healthy, unhealthy) of every cluster since the manager was made",
        MetricType::Counter,
        [(Labels::new(), ConstCounter::new(manager.health_transitions()))],
    )
}

/// Whether this replica leads.
fn leader_family(encoder: &mut DescriptorEncoder, manager: &Manager) -> Result<(), std::fmt::Error> {
    family(
        encoder,
        "leader_election_master_status",
        "Whether this replica leads (1) or not (0); name is the lease, empty without leader election",
        MetricType::Gauge,
        [(
            vec![("name", manager.lease_name().unwrap_or_default())],
            ConstGauge::new(i64::from(manager.is_leader())),
        )],
    )
}

/// The sharded coordinator's view: peers, owned clusters, changes of ownership.
fn shard_families(
    encoder: &mut DescriptorEncoder,
    coordinator: &crate::manager::coordination::Coordinator,
) -> Result<(), std::fmt::Error> {
    let view = coordinator.view();
    let changes = coordinator.changes();
    family(
        encoder,
        "multicluster_runtime_shard_peers",
        "Replicas this replica sees alive in its shard group, itself included",
        MetricType::Gauge,
        [(Labels::new(), ConstGauge::new(view.peers.len() as i64))],
    )?;
    family(
        encoder,
        "multicluster_runtime_shard_owned_clusters",
        "Clusters this replica owns and works on",
        MetricType::Gauge,
        [(Labels::new(), ConstGauge::new(view.owned.len() as i64))],
    )?;
    family(
        encoder,
        "multicluster_runtime_shard_ownership_changes",
        "Changes of ownership of clusters on this replica: acquired, handed over (released), or lost with the fence",
        MetricType::Counter,
        [
            ("acquired", changes.acquired),
            ("released", changes.released),
            ("lost", changes.lost),
        ]
        .map(|(change, count)| (vec![("change", change.to_owned())], ConstCounter::new(count))),
    )
}
