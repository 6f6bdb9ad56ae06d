//! Serving HTTP(S) to others: the listening socket, the TLS certificate, and the
//! accept loop with its limits. Shared by the manager's operational endpoints and
//! the webhook server, which differ only in what they answer.
//!
//! # Limits
//!
//! - At most `max_connections` connections at once: one more is accepted and closed
//!   at once, without an answer, so that the client fails fast instead of queueing.
//! - Each connection lives at most `connection_timeout`: the TLS handshake, the
//!   requests, the answers and their delivery. A client that sends or reads slowly is
//!   cut off then, and its slot freed.
//! - The unspecified IPv6 address `[::]` serves IPv4 too (dual-stack, whatever
//!   `net.ipv6.bindv6only` says).

pub(crate) mod tls;

// The crypto backend the features chose, for TLS and for the few primitives the
// servers use (SHA-256, HMAC, random bytes): the two crates share one API.
#[cfg(feature = "aws-lc-rs")]
pub(crate) use aws_lc_rs as crypto;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
pub(crate) use ring as crypto;
#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!(
    "the feature `endpoint` (and `webhook`) needs a TLS crypto backend: enable `ring` (a default feature) or `aws-lc-rs`"
);

/// rustls on the chosen backend.
pub(crate) fn crypto_provider() -> rustls::crypto::CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return rustls::crypto::ring::default_provider();
}

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many connections at once, and for how long each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub connection_timeout: Duration,
}

/// One accepted connection, TLS already set up when the server speaks it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Serves one connection to its end.
pub(crate) type Connection =
    Arc<dyn Fn(Box<dyn Io>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A listening socket on `address`; the IPv6 unspecified address serves IPv4 too.
pub(crate) fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    if address.is_ipv6() && address.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    // As std's and tokio's `bind` do on Unix: a restarted server can bind at once.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections on `listener` until `token` is cancelled, within `limits`;
/// each connection is served by `connection` on a task of `tasks`, and ends with the
/// token too. `what` names the server in logs.
pub(crate) async fn accept(
    what: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    tasks: &TaskTracker,
    token: CancellationToken,
    connection: Connection,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // E.g. out of file descriptors: keep serving, try again soon.
                tracing::warn!(server = what, error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed unanswered: the client fails now rather than waiting.
            tracing::debug!(server = what, "at the connection limit; connection closed");
            drop(stream);
            continue;
        };
        let (tls, token, connection) = (tls.clone(), token.clone(), connection.clone());
        tasks.spawn(async move {
            let _slot = slot;
            let timeout = limits.connection_timeout;
            let served = async move {
                match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => connection(Box::new(stream)).await,
                        Err(err) => tracing::debug!(server = what, error = %err, "TLS handshake failed"),
                    },
                    None => connection(Box::new(stream)).await,
                }
            };
            tokio::select! {
                outcome = tokio::time::timeout(timeout, served) => if outcome.is_err() {
                    tracing::debug!(server = what, ?timeout, "connection cut off at its timeout");
                },
                () = token.cancelled() => {}
            }
        });
    }
}
