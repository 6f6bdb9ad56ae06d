//! Stopping on SIGTERM or Ctrl-C, as a deployed controller must: the kubelet sends
//! SIGTERM and waits `terminationGracePeriodSeconds` before it kills.

use tokio_util::sync::CancellationToken;

use super::Manager;
use crate::error::{Error, Result};

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C) that arrives after it is first
/// polled (on other platforms than Unix: at the first Ctrl-C).
///
/// For programs that stop the manager themselves, e.g. to stop other work on the same
/// signal; [`Manager::start_until_signal`] is the whole pattern.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Without a SIGTERM handler (it cannot be installed), Ctrl-C still works.
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        // No handler can be installed: no signal will ever be seen.
        std::future::pending::<()>().await;
    }
}

impl Manager {
    /// [Starts](Self::start) the manager and runs it until SIGTERM or Ctrl-C, as
    /// kube-runtime's `Controller::shutdown_on_signal` and controller-runtime's
    /// `SetupSignalHandler` do.
    ///
    /// The first signal starts the graceful shutdown: no new reconciles, running ones
    /// get the [graceful shutdown timeout](Self::with_graceful_shutdown_timeout) to
    /// finish, the lease is released. A second signal stops waiting for them: they are
    /// cancelled and [`Error::ShutdownInterrupted`] is returned.
    ///
    /// ```no_run
    /// # async fn run(manager: multicluster_runtime::Manager) -> multicluster_runtime::Result<()> {
    /// // … register controllers on `manager`, then:
    /// manager.start_until_signal().await
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`start`](Self::start), and [`Error::ShutdownInterrupted`] after a second
    /// signal.
    pub async fn start_until_signal(&self) -> Result<()> {
        let token = CancellationToken::new();
        let running = self.start(token.clone());
        tokio::pin!(running);
        tokio::select! {
            result = &mut running => return result,
            () = shutdown_signal() => {}
        }
        tracing::info!("shutdown signal: draining reconciles; a second signal stops without waiting");
        token.cancel();
        tokio::select! {
            result = &mut running => result,
            // Dropping `running` cancels what it started without waiting for it.
            () = shutdown_signal() => Err(Error::ShutdownInterrupted),
        }
    }
}
