//! A provider that knows no cluster.
//!
//! Available with the cargo feature `nop` (or `providers`, which enables every provider).
//!
//! Useful where an API wants a provider but the program only works on its own
//! cluster, and in tests: every lookup is [`Error::ClusterNotFound`], indexes are
//! accepted and apply to nothing, and running it just waits for cancellation.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::cache::FieldIndex;
use crate::cluster::{Cluster, ClusterName};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider, ProviderRunnable};

/// Knows no cluster; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Nop;

#[async_trait]
impl Provider for Nop {
    async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        Err(Error::ClusterNotFound(name.clone()))
    }

    async fn index_field(&self, _index: FieldIndex) -> Result<()> {
        Ok(())
    }

    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
        Some(self)
    }
}

#[async_trait]
impl ProviderRunnable for Nop {
    async fn start(&self, token: CancellationToken, _aware: Arc<dyn Aware>) -> Result<()> {
        token.cancelled().await;
        Ok(())
    }
}
