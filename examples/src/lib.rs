//! Shared pieces of the examples: a local fleet to run against, readable logging,
//! a component that announces engagements, and the two demo reconcilers.
//!
//! Every example runs on its own: without arguments it starts a local fleet of real
//! apiservers (building them the first time) and stops it on Ctrl-C.

pub mod announce;
pub mod fleet;
pub mod sync;
pub mod uniform;

/// Logs to stderr: `info` for the examples and the library, quiet for the client's
/// retries of a cluster that is still starting. `RUST_LOG` overrides it.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off,kube_runtime=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves when the user presses Ctrl-C (or the process gets SIGTERM).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
