//! A cluster-aware component that prints when clusters come and go.

use std::sync::Arc;

use async_trait::async_trait;
use multicluster_runtime::{Aware, Cluster, ClusterName};
use tokio_util::sync::CancellationToken;

/// Prints `engaged <cluster>` and, once the cluster's token is cancelled,
/// `disengaged <cluster>`. Add it with `Manager::add_aware`.
#[derive(Debug, Default)]
pub struct Announcer;

impl Announcer {
    /// A shareable announcer.
    pub fn new() -> Arc<Self> {
        Arc::new(Announcer)
    }
}

#[async_trait]
impl Aware for Announcer {
    async fn engage(
        &self,
        token: CancellationToken,
        name: ClusterName,
        _: Arc<Cluster>,
    ) -> multicluster_runtime::Result<()> {
        println!("engaged     {name}");
        tokio::spawn(async move {
            token.cancelled().await;
            println!("disengaged  {name}");
        });
        Ok(())
    }
}
