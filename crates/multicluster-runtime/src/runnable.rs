//! Work the manager runs for as long as it runs: the contract between the manager
//! and what it starts (controllers among them).

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// Something the manager runs: started by [`Manager::start`](crate::Manager::start),
/// stopped by cancelling its token.
///
/// A runnable that also works per cluster implements [`crate::Aware`] too and is added
/// with [`Manager::add_cluster_runnable`](crate::Manager::add_cluster_runnable).
#[async_trait]
pub trait Runnable: Send + Sync {
    /// A name for logs and errors.
    fn name(&self) -> String {
        std::any::type_name::<Self>().to_owned()
    }

    /// Whether it runs only on the elected leader, when the manager has
    /// [leader election](crate::Manager::with_leader_election); without it, every
    /// runnable runs.
    ///
    /// `true` by default, as in controller-runtime: controllers (and runnables that
    /// do not say otherwise) must not act from two replicas at once. Return `false`
    /// for work that should run on every replica, such as warming a cache, so that a
    /// new leader starts warm. Caches and providers always run on every replica.
    fn needs_leader_election(&self) -> bool {
        true
    }

    /// Runs until `token` is cancelled. Returning `Ok` early is fine (the work is
    /// done); returning an error stops the manager.
    ///
    /// # Errors
    /// A fatal failure; the manager stops and [`start`](crate::Manager::start)
    /// returns it.
    async fn run(&self, token: CancellationToken) -> Result<()>;
}
