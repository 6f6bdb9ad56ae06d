//! A provider of exactly one cluster.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::cache::FieldIndex;
use crate::cluster::{Cluster, ClusterName};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider, ProviderRunnable};

/// A provider that knows one cluster, engaged when the manager starts it and
/// disengaged when the manager stops.
#[derive(Debug, Clone)]
pub struct Single {
    name: ClusterName,
    cluster: Arc<Cluster>,
}

impl Single {
    /// A provider of `cluster` under `name`.
    pub fn new(name: impl Into<ClusterName>, cluster: Arc<Cluster>) -> Self {
        Single {
            name: name.into(),
            cluster,
        }
    }
}

#[async_trait]
impl Provider for Single {
    async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        if *name == self.name {
            Ok(self.cluster.clone())
        } else {
            Err(Error::ClusterNotFound(name.clone()))
        }
    }

    async fn index_field(&self, index: FieldIndex) -> Result<()> {
        index.apply(self.cluster.cache()).map_err(Error::from)
    }

    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
        Some(self)
    }
}

#[async_trait]
impl ProviderRunnable for Single {
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()> {
        aware
            .engage(token.child_token(), self.name.clone(), self.cluster.clone())
            .await?;
        token.cancelled().await;
        Ok(())
    }
}
