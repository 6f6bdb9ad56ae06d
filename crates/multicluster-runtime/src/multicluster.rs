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
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cache::FieldIndex;
use crate::cluster::{Cluster, ClusterHealth, ClusterName, SyncBoard};
use crate::error::Result;
use crate::term::{Term, Work};

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

    /// Starts work for a cluster with everything the engaging manager knows of it:
    /// what [`engage`](Self::engage) gets, and the cluster's health as the manager's
    /// probes find it. The manager engages its components through this method; the
    /// default forwards to [`engage`](Self::engage), so a component that needs no
    /// more implements only that.
    ///
    /// # Errors
    /// As for [`engage`](Self::engage).
    ///
    /// # Cancel safety
    /// As for [`engage`](Self::engage).
    async fn engage_with(&self, engagement: Engagement) -> Result<()> {
        self.engage(engagement.token, engagement.name, engagement.cluster)
            .await
    }
}

/// One cluster handed to a component for as long as [`token`](Self::token) lives:
/// everything the component needs from whoever engages it, so that it needs no
/// handle on the manager. Built by the manager for [`Aware::engage_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Engagement {
    /// The cluster's name.
    pub name: ClusterName,
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Lives as long as this engagement: cancelled when the cluster is removed or
    /// replaced, or (with sharding) handed to another replica.
    pub token: CancellationToken,
    /// The cluster's health as the manager's probes find it; `None` when it does
    /// not probe.
    pub health: Option<watch::Receiver<ClusterHealth>>,
    /// With sharding, this replica's term of ownership of the cluster: work enters
    /// it and is cut when the ownership is lost. `None`: free to work.
    term: Option<Term>,
    /// Where the component reports whether its caches of the cluster have synced,
    /// for readiness.
    sync: SyncBoard,
}

impl Engagement {
    /// An engagement with no health to follow and no term (as without sharding).
    pub fn new(name: ClusterName, cluster: Arc<Cluster>, token: CancellationToken) -> Self {
        Engagement {
            name,
            cluster,
            token,
            health: None,
            term: None,
            sync: SyncBoard::default(),
        }
    }

    /// With the manager's health record, ownership term and sync board.
    pub(crate) fn with_manager_state(
        mut self,
        health: Option<watch::Receiver<ClusterHealth>>,
        term: Option<Term>,
        sync: SyncBoard,
    ) -> Self {
        self.health = health;
        self.term = term;
        self.sync = sync;
        self
    }

    /// Leave to work on the cluster now, held for the length of the work; `None`
    /// once this replica's ownership has ended.
    pub(crate) fn enter_work(&self) -> Option<Work> {
        match &self.term {
            None => Some(Work::free()),
            Some(term) => term.enter(),
        }
    }

    /// Where the component reports its caches' sync.
    pub(crate) fn sync_board(&self) -> &SyncBoard {
        &self.sync
    }
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
    /// use multicluster_runtime::async_trait;
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
    /// use multicluster_runtime::async_trait;
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
