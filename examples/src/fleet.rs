//! A local fleet of real apiservers for the examples, started through kube-envtest.

use std::sync::Arc;
use std::time::Instant;

use kube_envtest::{Binaries, Fleet};
use multicluster_runtime::Cluster;

/// Cluster 0 is the manager's own cluster; clusters 1.. form the fleet, named
/// `cluster-<index>`.
pub struct LocalFleet {
    fleet: Fleet,
}

impl LocalFleet {
    /// Starts `clusters` apiservers (building the binaries first if needed) and prints
    /// each as it becomes ready.
    ///
    /// # Errors
    /// The binaries cannot be built or an apiserver does not start.
    pub async fn start(clusters: usize) -> anyhow::Result<Self> {
        let binaries = Binaries::find_or_build()?;
        let started = Instant::now();
        println!("starting a local fleet of {clusters} apiservers ...");
        let fleet = Fleet::builder()
            .clusters(clusters)
            .binaries(binaries)
            .start_with_progress(|c| {
                println!(
                    "  apiserver {} ready at {} ({:.1} s)",
                    c.name(),
                    c.server_url(),
                    started.elapsed().as_secs_f64()
                )
            })
            .await?;
        Ok(LocalFleet { fleet })
    }

    /// The manager's own cluster (apiserver 0), named `""`.
    pub fn local(&self) -> anyhow::Result<Arc<Cluster>> {
        Ok(Arc::new(Cluster::new("", self.client(0)?)))
    }

    /// A new `Cluster` for apiserver `index`, named `cluster-<index>`.
    pub fn member(&self, index: usize) -> anyhow::Result<Arc<Cluster>> {
        Ok(Arc::new(Cluster::new(Self::name(index), self.client(index)?)))
    }

    /// The name the examples give apiserver `index`.
    pub fn name(index: usize) -> String {
        format!("cluster-{index}")
    }

    /// An admin client of apiserver `index`.
    pub fn client(&self, index: usize) -> anyhow::Result<kube::Client> {
        Ok(self.fleet.cluster(index).client()?)
    }

    /// The underlying kube-envtest fleet.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}
