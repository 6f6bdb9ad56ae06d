//! The manager's operational endpoints: probes (`/healthz`, `/livez`, `/readyz`) and
//! `/metrics`, each on an address of its own (or both on one, with
//! [`Manager::with_http_endpoint`]).
//!
//! One serving loop serves them all, told which paths it serves, whether it speaks
//! TLS and whether callers must be authorized (see `auth.rs` and `tls.rs`). HTTP/1.1
//! on hyper, `GET` and `HEAD` only, one request per connection.
//!
//! # Limits
//!
//! - At most [`max_connections`](ProbeEndpoint::max_connections) connections at once
//!   (64 by default): one more is accepted and closed at once, without an answer,
//!   so that the client fails fast instead of queueing behind the others.
//! - Each connection lives at most
//!   [`connection_timeout`](ProbeEndpoint::connection_timeout) (30 s by default):
//!   the TLS handshake, the request, the answer and its delivery. A client that
//!   sends slowly or reads slowly is cut off then, and its slot freed.
//! - An IPv6 address works; the unspecified `[::]` serves IPv4 too (dual-stack,
//!   whatever `net.ipv6.bindv6only` says).

mod auth;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::serving::tls::{DEFAULT_RELOAD_INTERVAL, DEFAULT_ROTATION, ServingCertificate};
pub use auth::CACHE_ENTRIES as REVIEW_CACHE_ENTRIES;

use super::Manager;
use crate::serving::{self, Limits, tls};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// How many connections an endpoint serves at once, unless set otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// How long a connection to an endpoint may last, unless set otherwise.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the metrics endpoint keeps a review's decision, unless set otherwise.
pub const DEFAULT_REVIEW_CACHE_TTL: Duration = Duration::from_secs(10);

/// The limits of an endpoint unless set otherwise.
const DEFAULT_LIMITS: Limits = Limits {
    max_connections: DEFAULT_MAX_CONNECTIONS,
    connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
};

/// Where and how the manager serves its probes, `/healthz`, `/livez` and `/readyz`,
/// for the kubelet: plain HTTP, no authentication. See
/// [`Manager::with_probe_endpoint`].
///
/// Anyone who reaches the port may call it, so by default a failing check shows
/// only its name: `[-]database failed: reason withheld`, as kube-apiserver answers
/// callers it has not authenticated; the clusters of the provider are one line,
/// `clusters`, and a shard's line does not name its peers (see
/// [`show_reasons`](Self::show_reasons)).
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::manager::ProbeEndpoint;
///
/// let probes = ProbeEndpoint::new("[::]:8081".parse().unwrap())
///     .max_connections(16)
///     .connection_timeout(Duration::from_secs(10));
/// assert_eq!(probes.address().port(), 8081);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeEndpoint {
    address: SocketAddr,
    show_reasons: bool,
    limits: Limits,
}

impl ProbeEndpoint {
    /// Probes on `address`, reasons withheld, with the default limits.
    pub fn new(address: SocketAddr) -> Self {
        ProbeEndpoint {
            address,
            show_reasons: false,
            limits: DEFAULT_LIMITS,
        }
    }

    /// Whether `/healthz`, `/livez` and `/readyz` say why a check fails and list
    /// every engaged cluster by name with its state, shard peers and error text
    /// (default `false`). Turn it on only where everyone who reaches the port may
    /// know the fleet: [`Manager::readyz`] and [`Manager::cluster_states`] give the
    /// same in code.
    #[must_use]
    pub fn show_reasons(mut self, show: bool) -> Self {
        self.show_reasons = show;
        self
    }

    /// At most `max` connections at once (default [`DEFAULT_MAX_CONNECTIONS`]; at
    /// least 1): one more is closed at once, unanswered.
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max.max(1);
        self
    }

    /// How long one connection may last, its request and answer included (default
    /// [`DEFAULT_CONNECTION_TIMEOUT`]).
    #[must_use]
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.limits.connection_timeout = timeout;
        self
    }

    /// The address asked for.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// Where and how the manager serves `/metrics`. See
/// [`Manager::with_metrics_endpoint`].
///
/// [`secure`](Self::secure) is what a pod network shared with others calls for, as
/// controller-runtime's `SecureServing` with its
/// `WithAuthenticationAndAuthorization` filter: HTTPS, and only callers whose bearer
/// token the manager's own cluster accepts (TokenReview) and who may `get` the
/// non-resource URL `/metrics` there (SubjectAccessReview) get metrics; others get
/// 401 or 403. The manager's cluster must let it create `tokenreviews` and
/// `subjectaccessreviews` (see `deploy/rbac/metrics-auth.yaml`), and the scraper's
/// ServiceAccount needs a ClusterRole with `nonResourceURLs: ["/metrics"]`,
/// `verbs: ["get"]`.
///
/// ```
/// use multicluster_runtime::manager::{MetricsEndpoint, ServingCertificate};
///
/// // HTTPS with a self-signed certificate, callers authorized.
/// let secure = MetricsEndpoint::secure("[::]:8443".parse().unwrap());
/// // The same, with cert-manager's certificate, read again when it is renewed.
/// let with_files = MetricsEndpoint::secure("[::]:8443".parse().unwrap())
///     .certificate(ServingCertificate::files("/certs/tls.crt", "/certs/tls.key"));
/// // Plain HTTP, no authentication: inside a network you trust only.
/// let plain = MetricsEndpoint::plain("127.0.0.1:8080".parse().unwrap());
/// # let _ = (secure, with_files, plain);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsEndpoint {
    address: SocketAddr,
    certificate: Option<ServingCertificate>,
    authorize: bool,
    review_cache_ttl: Duration,
    limits: Limits,
}

impl MetricsEndpoint {
    /// Plain HTTP on `address`, no authentication: whoever reaches the port reads
    /// the metrics (cluster names among them).
    pub fn plain(address: SocketAddr) -> Self {
        MetricsEndpoint {
            address,
            certificate: None,
            authorize: false,
            review_cache_ttl: DEFAULT_REVIEW_CACHE_TTL,
            limits: DEFAULT_LIMITS,
        }
    }

    /// HTTPS on `address` with a [self-signed](ServingCertificate::self_signed)
    /// certificate (replace it with [`certificate`](Self::certificate)), and every
    /// caller authenticated and authorized against the manager's cluster.
    pub fn secure(address: SocketAddr) -> Self {
        MetricsEndpoint {
            certificate: Some(ServingCertificate::self_signed()),
            authorize: true,
            ..Self::plain(address)
        }
    }

    /// Serve HTTPS with `certificate`.
    #[must_use]
    pub fn certificate(mut self, certificate: ServingCertificate) -> Self {
        self.certificate = Some(certificate);
        self
    }

    /// Whether callers must present a bearer token that the manager's cluster
    /// accepts, for a user allowed to `get` the path (see the type's docs). Needs
    /// a [certificate](Self::certificate): [`Manager::start`] refuses it over plain
    /// HTTP, where the token would travel in clear.
    #[must_use]
    pub fn authentication_and_authorization(mut self, on: bool) -> Self {
        self.authorize = on;
        self
    }

    /// How long a review's decision about an authenticated caller is kept (default
    /// [`DEFAULT_REVIEW_CACHE_TTL`], 10 s; zero: none is kept). A revoked token or
    /// a removed RoleBinding takes effect within it. At most
    /// [`REVIEW_CACHE_ENTRIES`] decisions are kept; tokens the apiserver rejects
    /// are never cached.
    #[must_use]
    pub fn review_cache_ttl(mut self, ttl: Duration) -> Self {
        self.review_cache_ttl = ttl;
        self
    }

    /// At most `max` connections at once (default [`DEFAULT_MAX_CONNECTIONS`]; at
    /// least 1): one more is closed at once, unanswered.
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max.max(1);
        self
    }

    /// How long one connection may last, its TLS handshake, request and answer
    /// included (default [`DEFAULT_CONNECTION_TIMEOUT`]).
    #[must_use]
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.limits.connection_timeout = timeout;
        self
    }

    /// The address asked for.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// Which endpoint: where its address is recorded, and for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Everything, plain ([`Manager::with_http_endpoint`]).
    All,
    Probes,
    Metrics,
}

/// What one listener serves, and how.
#[derive(Clone, Debug)]
pub(crate) struct Serving {
    pub role: Role,
    address: SocketAddr,
    /// Serve the probes; `Some(true)` with their reasons.
    probes: Option<bool>,
    metrics: bool,
    certificate: Option<ServingCertificate>,
    authorize: bool,
    review_cache_ttl: Duration,
    limits: Limits,
}

impl Serving {
    /// Everything on one plain port, reasons shown: the endpoint as it was before
    /// the probes and metrics got endpoints of their own.
    pub fn all(address: SocketAddr) -> Self {
        Serving {
            role: Role::All,
            address,
            probes: Some(true),
            metrics: true,
            certificate: None,
            authorize: false,
            review_cache_ttl: Duration::ZERO,
            limits: DEFAULT_LIMITS,
        }
    }

    pub fn probes(endpoint: &ProbeEndpoint) -> Self {
        Serving {
            role: Role::Probes,
            probes: Some(endpoint.show_reasons),
            metrics: false,
            limits: endpoint.limits,
            ..Self::all(endpoint.address)
        }
    }

    pub fn metrics(endpoint: &MetricsEndpoint) -> Self {
        Serving {
            role: Role::Metrics,
            address: endpoint.address,
            probes: None,
            metrics: true,
            certificate: endpoint.certificate.clone(),
            authorize: endpoint.authorize,
            review_cache_ttl: endpoint.review_cache_ttl,
            limits: endpoint.limits,
        }
    }

    /// What the endpoint serves, for the log line.
    pub fn describe(&self) -> String {
        let mut paths = Vec::new();
        if self.probes.is_some() {
            paths.extend(["/healthz", "/livez", "/readyz"]);
        }
        if self.metrics {
            paths.push("/metrics");
        }
        let scheme = if self.certificate.is_some() {
            "https"
        } else {
            "http"
        };
        let auth = if self.authorize {
            ", callers authorized"
        } else {
            ""
        };
        format!("{} over {scheme}{auth}", paths.join(", "))
    }
}

/// An endpoint ready to serve: its listener, TLS and reviewer set up.
pub(crate) struct Bound {
    pub serving: Serving,
    pub listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    watcher: Option<tls::Watcher>,
}

/// Checks `serving`, loads its certificate and binds its listener: everything that
/// can fail does so here, before the manager runs.
pub(crate) async fn bind(serving: Serving) -> crate::Result<Bound> {
    let address = serving.address;
    let invalid = |reason: String| crate::Error::Endpoint {
        address,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
    };
    if serving.authorize && serving.certificate.is_none() {
        return Err(invalid(
            "authentication and authorization need TLS (a certificate): the bearer tokens would travel in clear"
                .into(),
        ));
    }
    let (tls, watcher) = match &serving.certificate {
        Some(certificate) => {
            // The endpoint speaks HTTP/1.1 only.
            let loaded = tls::load(certificate, &[b"http/1.1"]).map_err(invalid)?;
            (
                Some(tokio_rustls::TlsAcceptor::from(loaded.config)),
                loaded.watcher,
            )
        }
        None => (None, None),
    };
    let listener = serving::listen(address).map_err(|source| crate::Error::Endpoint { address, source })?;
    Ok(Bound {
        serving,
        listener,
        tls,
        watcher,
    })
}

/// Accepts connections until `token` is cancelled; each connection is served on a
/// task of the manager's and ends with the token too.
pub(crate) async fn serve(manager: Manager, bound: Bound, token: CancellationToken) {
    let Bound {
        serving,
        listener,
        tls,
        watcher,
    } = bound;
    if let Some(watcher) = watcher {
        let token = token.clone();
        manager.inner.tasks.spawn(watcher.run(token));
    }
    let reviewer = serving.authorize.then(|| {
        Arc::new(auth::Reviewer::new(
            manager.local_cluster().client(),
            serving.review_cache_ttl,
        ))
    });
    let handler = Handler {
        manager: manager.clone(),
        serving: Arc::new(serving),
        reviewer,
    };
    let limits = handler.serving.limits;
    let connection: serving::Connection = Arc::new(move |io| Box::pin(handler.clone().connection(io)));
    serving::accept(
        "endpoint",
        listener,
        tls,
        limits,
        &manager.inner.tasks,
        token,
        connection,
    )
    .await;
}

/// Serves the requests of one connection.
#[derive(Clone)]
struct Handler {
    manager: Manager,
    serving: Arc<Serving>,
    reviewer: Option<Arc<auth::Reviewer>>,
}

impl Handler {
    async fn connection<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |request| {
            let handler = self.clone();
            async move { Ok::<_, Infallible>(handler.respond(&request).await) }
        });
        // One request per connection: the connection's timeout then bounds a
        // request, not an idle keep-alive. The timer arms hyper's header read
        // timeout too.
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), service)
            .await;
        if let Err(err) = served {
            tracing::debug!(error = %err, "endpoint connection ended with an error");
        }
    }

    async fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n".into());
        }
        let path = request.uri().path();
        if let Some(reviewer) = &self.reviewer {
            // HEAD reveals less than GET: both need `get`.
            match reviewer.admit(request.headers(), "get", path).await {
                auth::Admission::Allowed => {}
                auth::Admission::Unauthenticated => {
                    let mut response = reply(StatusCode::UNAUTHORIZED, TEXT, "Unauthorized\n".into());
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer"),
                    );
                    return response;
                }
                auth::Admission::Forbidden => {
                    return reply(StatusCode::FORBIDDEN, TEXT, "Forbidden\n".into());
                }
                auth::Admission::Failed => {
                    return reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        TEXT,
                        "Authorization error\n".into(),
                    );
                }
            }
        }
        let verbose = request.uri().query().is_some_and(|query| {
            query
                .split('&')
                .any(|p| p == "verbose" || p.starts_with("verbose="))
        });
        let manager = &self.manager;
        let report = match (path, self.serving.probes) {
            ("/metrics", _) if self.serving.metrics => {
                return reply(StatusCode::OK, OPENMETRICS, manager.metrics().encode());
            }
            ("/healthz" | "/livez", Some(reasons)) => manager.liveness(reasons).await,
            ("/readyz", Some(reasons)) => manager.readiness(reasons).await,
            _ => return reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        };
        let status = if report.passed() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        // Like kube-apiserver: a bare `ok` when all is well, the full list on request
        // or on failure (so that a failed probe's event says which check failed).
        let body = if verbose || !report.passed() {
            report.to_string()
        } else {
            "ok\n".into()
        };
        reply(status, TEXT, body)
    }
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
