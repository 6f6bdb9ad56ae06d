//! The contract between providers, the manager and cluster-aware components.
//!
//! It mirrors Go's `sigs.k8s.io/multicluster-runtime/pkg/multicluster`:
//!
//! | Go | Rust |
//! |---|---|
//! | `Aware.Engage(ctx, name, cluster)` | [`Aware::engage`] with a [`CancellationToken`] |
//! | `Provider.Get(ctx, name)` | [`Provider::get`] |
//! | `Provider.IndexField(ctx, obj, field, fn)` | [`Provider::index_field`] with a [`FieldIndex`] |
//! | `ProviderRunnable.Start(ctx, aware)` | [`ProviderRunnable::start`] |
//! | `ErrClusterNotFound` | [`Error::ClusterNotFound`] |
//!
//! A Go `context.Context` that lives as long as a cluster becomes a
//! `CancellationToken`, cancelled when the cluster is removed. All three traits are
//! object safe and used as `Arc<dyn …>`.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::cache::FieldIndex;
use crate::cluster::{Cluster, ClusterName};
use crate::error::Result;

#[cfg(doc)]
use crate::error::Error;

/// A component that starts work for clusters as they appear and stops it when they go.
///
/// The manager is `Aware` (providers engage clusters into it) and so is every
/// controller (the manager engages clusters into them).
#[async_trait]
pub trait Aware: Send + Sync {
    /// Starts work for `cluster` under `name`.
    ///
    /// `token` lives as long as the cluster: it is cancelled when the cluster is
    /// removed, and the work must then stop. Must return promptly (spawn long-running
    /// work) and be re-entrant. Engaging the same instance again is a no-op; a new
    /// instance under a known name replaces the old one.
    ///
    /// # Errors
    /// [`Error::Engage`] if work cannot start for this cluster.
    ///
    /// # Cancel safety
    /// Callers should not rely on it: the manager and the crate's components may
    /// have engaged the cluster into some components and not others when the
    /// future is dropped. Await it; to undo an engagement, cancel `token`.
    async fn engage(&self, token: CancellationToken, name: ClusterName, cluster: Arc<Cluster>) -> Result<()>;
}

/// Knows clusters by name.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The cluster called `name`.
    ///
    /// # Errors
    /// [`Error::ClusterNotFound`] if the provider does not know it.
    ///
    /// # Cancel safety
    /// Implementations should only read, which makes it cancel safe; every provider
    /// of this crate's does.
    async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>>;

    /// Adds a field index to the cache of every cluster of this provider, those
    /// engaged now and those engaged later.
    ///
    /// # Errors
    /// An index of that name for that type exists already.
    ///
    /// # Cancel safety
    /// Not cancel safe in general: a dropped future may leave the index on some
    /// clusters only. Await it, before starting controllers that read the index.
    async fn index_field(&self, index: FieldIndex) -> Result<()>;

    /// This provider as a [`ProviderRunnable`], if it is one, so that the manager
    /// starts it: `Some(self)` for a provider that discovers clusters while it runs,
    /// `None` for one whose clusters are fixed.
    ///
    /// Required, with no default: a provider that runs but forgot to say so would
    /// otherwise never be started, and engage nothing, without any error. So every
    /// provider states it:
    ///
    /// ```compile_fail,E0046
    /// use std::sync::Arc;
    /// use async_trait::async_trait;
    /// use multicluster_runtime::cache::FieldIndex;
    /// use multicluster_runtime::{Cluster, ClusterName, Error, Provider, Result};
    ///
    /// struct Forgetful;
    ///
    /// #[async_trait]
    /// impl Provider for Forgetful { // error[E0046]: missing `into_runnable`
    ///     async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
    ///         Err(Error::ClusterNotFound(name.clone()))
    ///     }
    ///     async fn index_field(&self, _index: FieldIndex) -> Result<()> {
    ///         Ok(())
    ///     }
    /// }
    /// ```
    ///
    /// A provider that runs answers `Some(self)`, and implements
    /// [`ProviderRunnable`]:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use async_trait::async_trait;
    /// use tokio_util::sync::CancellationToken;
    /// use multicluster_runtime::cache::FieldIndex;
    /// use multicluster_runtime::{Aware, Cluster, ClusterName, Error, Provider, ProviderRunnable, Result};
    ///
    /// struct Discovering;
    ///
    /// #[async_trait]
    /// impl Provider for Discovering {
    ///     async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
    ///         Err(Error::ClusterNotFound(name.clone()))
    ///     }
    ///     async fn index_field(&self, _index: FieldIndex) -> Result<()> {
    ///         Ok(())
    ///     }
    ///     fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
    ///         Some(self)
    ///     }
    /// }
    ///
    /// #[async_trait]
    /// impl ProviderRunnable for Discovering {
    ///     async fn start(&self, token: CancellationToken, _aware: Arc<dyn Aware>) -> Result<()> {
    ///         token.cancelled().await; // discover and engage clusters until stopped
    ///         Ok(())
    ///     }
    /// }
    ///
    /// assert!(Arc::new(Discovering).into_runnable().is_some());
    /// ```
    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>>;
}

/// A provider that discovers clusters while it runs.
#[async_trait]
pub trait ProviderRunnable: Send + Sync {
    /// Runs the provider until `token` is cancelled, engaging clusters into `aware` as
    /// it discovers them and cancelling their tokens when they go away.
    ///
    /// Started by the manager (see [`Provider::into_runnable`]), never by users.
    ///
    /// # Errors
    /// A failure of the provider as a whole; the manager then stops.
    ///
    /// # Cancel safety
    /// Implementations may assume it is not dropped: the manager awaits it until
    /// it returns after `token` is cancelled. Stop it through `token`.
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()>;
}
