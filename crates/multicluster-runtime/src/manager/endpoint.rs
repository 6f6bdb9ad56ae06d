//! The manager's HTTP endpoint: `/metrics`, `/healthz` and `/readyz` on one port.
//!
//! Plain HTTP/1.1 on hyper, no TLS: it is meant for the kubelet's probes and for a
//! Prometheus scraping the pod, inside the cluster's network. It serves only `GET`
//! and `HEAD` of those three paths and reveals nothing but metrics and check results.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Manager;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Accepts connections on `listener` until `token` is cancelled; each connection is
/// served on a task of the manager's and ends with the token too.
pub(crate) async fn serve(manager: Manager, listener: TcpListener, token: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = token.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // E.g. out of file descriptors: keep the endpoint up, try again soon.
                tracing::warn!(error = %err, "endpoint cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (this, token) = (manager.clone(), token.clone());
        manager.inner.tasks.spawn(async move {
            let service = service_fn(move |request| {
                let manager = this.clone();
                async move { Ok::<_, Infallible>(respond(&manager, &request).await) }
            });
            // The timer arms hyper's header read timeout (30 s), so that a client that
            // never finishes its request cannot hold a connection until shutdown.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(err) = result {
                    tracing::debug!(error = %err, "endpoint connection ended with an error");
                },
                () = token.cancelled() => {}
            }
        });
    }
}

/// Binds the endpoint's listener.
pub(crate) async fn bind(address: SocketAddr) -> crate::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|source| crate::Error::Endpoint { address, source })
}

async fn respond(manager: &Manager, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n".into());
    }
    let verbose = request.uri().query().is_some_and(|query| {
        query
            .split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    let report = match request.uri().path() {
        "/metrics" => return reply(StatusCode::OK, OPENMETRICS, manager.metrics().encode()),
        "/healthz" | "/livez" => manager.healthz().await,
        "/readyz" => manager.readyz().await,
        _ => return reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    };
    let status = if report.passed() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Like kube-apiserver: a bare `ok` when all is well, the full list on request or
    // on failure (so that a failed probe's event says why).
    let body = if verbose || !report.passed() {
        report.to_string()
    } else {
        "ok\n".into()
    };
    reply(status, TEXT, body)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
