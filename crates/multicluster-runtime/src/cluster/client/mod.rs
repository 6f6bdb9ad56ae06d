//! How a cluster's client is built: the per-cluster [`ClientOptions`] (request
//! timeout, user agent, client-side rate limit) and the one function every provider
//! builds its clients with.
//!
//! The options belong to whoever builds the cluster: a provider applies its
//! [`ClusterOptions::client`](super::ClusterOptions::client) to every cluster it
//! builds, and so again to the cluster that replaces one (rotated credentials, a
//! moved server). Where the user builds a cluster, [`Cluster::connect`] and
//! [`Cluster::from_config`] apply the options given to them; a client built
//! elsewhere can get them from [`ClientOptions::build`].
//!
//! The rate limit is a tower layer in the client's service stack, under kube's
//! request buffer: every clone of the client, and so every controller, cache and
//! Event recorder of the cluster, draws from one budget. See
//! `docs/decisions/client-options.md` for the choice of limiter.
//!
//! [`Cluster::connect`]: super::Cluster::connect
//! [`Cluster::from_config`]: super::Cluster::from_config

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderValue;
use http::header::USER_AGENT;
use kube::client::ClientBuilder;
use tower::limit::RateLimitLayer;
use tower::timeout::TimeoutLayer;
use tower::util::{MapErrLayer, option_layer};

use hyper_util::client::legacy::connect::dns::Name;

use super::ClusterName;
use crate::cluster::kubeconfig::{self, EndpointPolicy, KubeconfigError};
use crate::redact;

mod connect;
mod limits;

pub use limits::{ResponseLimits, ResponseTooLarge};

/// Settings of the client of a cluster.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderValue;
/// use multicluster_runtime::cluster::{ClientOptions, RateLimit};
///
/// // At most 5 requests a second (10 at once after a quiet spell), each answered
/// // within 30 s, and named in the apiserver's audit log and managedFields.
/// let options = ClientOptions::default()
///     .rate_limit(RateLimit::new(5.0, 10).expect("valid"))
///     .timeout(Duration::from_secs(30))
///     .user_agent(HeaderValue::from_static("fleet-controller/1.2"));
/// assert_eq!(options.rate_limit.map(|r| r.qps()), Some(5.0));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// How long a request may wait for the server's answer (its status and
    /// headers); the body then streams without a limit, so watches are not cut.
    /// Time spent waiting for the [`rate_limit`](Self::rate_limit) does not count.
    /// A request that takes longer fails with an error that says it timed out.
    /// Default: `None`, no limit.
    pub timeout: Option<Duration>,
    /// The `User-Agent` header of every request, replacing any the
    /// `kube::Config` sets. The apiserver names it in audit logs, and the part
    /// before the first `/` becomes the field manager of writes that name none.
    /// Default: `None`, kube's own (none).
    pub user_agent: Option<HeaderValue>,
    /// At most this many requests a second to the cluster, shared by every user of
    /// the cluster's client: watches count once when they start. Default: `None`,
    /// no limit.
    pub rate_limit: Option<RateLimit>,
    /// How much of one response the client reads before it fails the request:
    /// the whole body, or one watch event. Default: [`ResponseLimits::default`],
    /// 64 MiB and 16 MiB.
    pub response_limits: ResponseLimits,
}

impl ClientOptions {
    /// Sets [`timeout`](Self::timeout).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets [`user_agent`](Self::user_agent).
    #[must_use]
    pub fn user_agent(mut self, user_agent: HeaderValue) -> Self {
        self.user_agent = Some(user_agent);
        self
    }

    /// Sets [`rate_limit`](Self::rate_limit).
    #[must_use]
    pub fn rate_limit(mut self, rate_limit: RateLimit) -> Self {
        self.rate_limit = Some(rate_limit);
        self
    }

    /// Sets [`response_limits`](Self::response_limits).
    #[must_use]
    pub fn response_limits(mut self, limits: ResponseLimits) -> Self {
        self.response_limits = limits;
        self
    }

    /// The client configuration with the options that live in it (the user agent).
    pub fn configure(&self, mut config: kube::Config) -> kube::Config {
        if let Some(agent) = &self.user_agent {
            config.headers.retain(|(name, _)| name != USER_AGENT);
            config.headers.push((USER_AGENT, agent.clone()));
        }
        config
    }

    /// A client built from `config` with these options.
    ///
    /// This blocks the thread while TLS is set up and an exec credential plugin, if
    /// any, runs; [`Cluster::connect`](super::Cluster::connect) does it on a
    /// blocking thread.
    ///
    /// # Errors
    /// kube's, if the client cannot be built (e.g. bad TLS material).
    pub fn build(&self, config: kube::Config) -> Result<kube::Client, kube::Error> {
        self.finish(ClientBuilder::try_from(self.configure(config))?)
    }

    /// A client built from `config` with these options that connects only where
    /// `endpoints` allows: the server's host, and every address its name resolves
    /// to on each new connection, must pass the policy (see
    /// [`EndpointPolicy::denies_address`]). Providers build the clients of
    /// kubeconfigs from outside the program with it.
    ///
    /// With a policy that allows any server, or a config with a `proxy-url` (the
    /// connection then goes to the proxy, whose host the policy checks when the
    /// kubeconfig is vetted), this is [`build`](Self::build). Blocks like it.
    ///
    /// # Errors
    /// kube's, if the client cannot be built (e.g. bad TLS material). A connection
    /// the policy refuses fails the request, with an error naming the rule.
    pub fn build_checked(
        &self,
        config: kube::Config,
        endpoints: &EndpointPolicy,
    ) -> Result<kube::Client, kube::Error> {
        self.build_checked_with(config, endpoints, connect::system_resolver())
    }

    /// [`build_checked`](Self::build_checked) with names resolved by `resolver`.
    pub(crate) fn build_checked_with<R>(
        &self,
        config: kube::Config,
        endpoints: &EndpointPolicy,
        resolver: R,
    ) -> Result<kube::Client, kube::Error>
    where
        R: tower_service::Service<Name, Error = std::io::Error> + Clone + Send + Sync + 'static,
        R::Response: Iterator<Item = std::net::SocketAddr> + Send,
        R::Future: Send,
    {
        let config = self.configure(config);
        if endpoints.allows_any() || config.proxy_url.is_some() {
            return self.finish(ClientBuilder::try_from(config)?);
        }
        self.finish(connect::checked_builder(&config, endpoints, resolver)?)
    }

    /// The options' layers around kube's client stack.
    fn finish(&self, builder: ClientBuilder<connect::Stack>) -> Result<kube::Client, kube::Error> {
        // Innermost, on the bodies as kube's stack hands them up.
        let builder = builder.with_layer(&limits::LimitLayer(self.response_limits));
        // The timeout sits inside the limiter, so waiting for a turn does not count.
        let builder = builder.with_layer(&option_layer(self.timeout.map(TimeoutLayer::new)));
        let limit = self
            .rate_limit
            .map(|limit| RateLimitLayer::new(u64::from(limit.burst.get()), limit.period));
        let builder = builder.with_layer(&option_layer(limit));
        // Outermost: whatever fails below, no caller (nor kube's own logs of the
        // error) sees an auth error's text.
        Ok(builder.with_layer(&MapErrLayer::new(withhold_auth_error)).build())
    }
}

/// An authentication error of a request (an exec plugin's token refresh failing,
/// above all) as [`redact::AuthFailed`]: kube's own text of it quotes the plugin's
/// command line, environment and output, and kube logs it as it is.
fn withhold_auth_error(error: tower::BoxError) -> tower::BoxError {
    let error = match error.downcast::<kube::client::AuthError>() {
        Ok(auth) => return Box::new(redact::AuthFailed::from_error(&*auth)),
        Err(other) => other,
    };
    match error.downcast::<kube::Error>() {
        Ok(kube) if matches!(*kube, kube::Error::Auth(_)) => Box::new(redact::AuthFailed::from_error(&*kube)),
        Ok(kube) => kube,
        Err(other) => other,
    }
}

/// A client-side rate limit: `qps` requests a second on average, up to `burst` at
/// once.
///
/// Requests are admitted `burst` at a time in windows of `burst / qps` seconds (a
/// request over the budget waits for the next window), so over any stretch of time
/// the rate stays at `qps`; right at the end of one window and the start of the
/// next, up to twice `burst` can go out together. With the same `burst` and `qps`,
/// e.g. `RateLimit::new(5.0, 5)`, that is 5 a second in one-second windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    qps: f64,
    burst: std::num::NonZeroU32,
    period: Duration,
}

impl RateLimit {
    /// `qps` requests a second on average, up to `burst` at once.
    ///
    /// ```
    /// use multicluster_runtime::cluster::RateLimit;
    ///
    /// assert!(RateLimit::new(0.5, 1).is_ok()); // one request every two seconds
    /// assert!(RateLimit::new(0.0, 1).is_err());
    /// assert!(RateLimit::new(5.0, 0).is_err());
    /// ```
    ///
    /// # Errors
    /// [`InvalidRateLimit`] unless `qps` is a finite number above 0, `burst` is at
    /// least 1, and a window (`burst / qps` seconds) is between a nanosecond and
    /// the longest [`Duration`].
    pub fn new(qps: f64, burst: u32) -> Result<Self, InvalidRateLimit> {
        let invalid = InvalidRateLimit { qps, burst };
        let nonzero = std::num::NonZeroU32::new(burst).ok_or(invalid)?;
        if !(qps.is_finite() && qps > 0.0) {
            return Err(invalid);
        }
        let period = Duration::try_from_secs_f64(f64::from(burst) / qps).map_err(|_| invalid)?;
        if period.is_zero() {
            return Err(invalid);
        }
        Ok(RateLimit {
            qps,
            burst: nonzero,
            period,
        })
    }

    /// Requests a second, on average.
    pub fn qps(&self) -> f64 {
        self.qps
    }

    /// Requests at once.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }
}

/// A [`RateLimit`] that cannot be: see [`RateLimit::new`].
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error(
    "invalid client rate limit: qps must be a finite number above 0 and burst at least 1, \
     with burst / qps seconds between 1 ns and the longest duration (got qps {qps}, burst {burst})"
)]
pub struct InvalidRateLimit {
    /// The requested rate.
    pub qps: f64,
    /// The requested burst.
    pub burst: u32,
}

/// A client could not be built for a cluster (bad TLS material, an exec credential
/// plugin that failed or hung). Converts into [`crate::Error::Client`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot build a client for cluster {cluster}: {reason}")]
pub struct ClientError {
    /// The cluster.
    pub cluster: ClusterName,
    /// Why, described without credentials (see [`redact::describe`]).
    pub reason: String,
}

impl From<ClientError> for crate::Error {
    fn from(error: ClientError) -> Self {
        crate::Error::Client {
            cluster: error.cluster,
            reason: error.reason,
        }
    }
}

/// Builds the client of the cluster `name` from `config` with `options`, on a
/// blocking thread, within [`BUILD_TIMEOUT`](kubeconfig::BUILD_TIMEOUT).
///
/// # Errors
/// [`ClientError`], with a reason that quotes no credentials.
pub(crate) async fn build_client(
    name: &ClusterName,
    config: kube::Config,
    options: &ClientOptions,
) -> Result<kube::Client, ClientError> {
    let origin = format!("cluster {name}");
    let anywhere = EndpointPolicy::any();
    kubeconfig::build_client(
        config,
        options,
        &anywhere,
        kubeconfig::BUILD_TIMEOUT,
        &origin,
        "-",
    )
    .await
    .map_err(|error| ClientError {
        cluster: name.clone(),
        reason: match error {
            KubeconfigError::Client { reason, .. } => reason,
            other => other.to_string(),
        },
    })
}

/// Identifies the client (and so the apiserver and credentials) that answers a
/// cluster's requests that name no namespace.
///
/// Each cluster built with a client of its own gets a new one. A cluster that sends
/// through a host's client shares the host's, and an alias its member's: the manager
/// probes the health of each endpoint once, however many clusters share it (a
/// thousand namespace-clusters of one apiserver are one `GET /readyz` per interval,
/// not a thousand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint(u64);

impl Endpoint {
    /// An endpoint no other cluster has (numbers are never reused).
    pub(crate) fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Endpoint(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// The client of a cluster: built, or to be built on first use.
///
/// A namespace-cluster that sends through its host's client needs a
/// [`kube::Client`] of its own only for its default namespace, and kube's client is
/// a buffered service: each one spawns a task and allocates its request queue
/// (about 11 KiB) when made. With thousands of namespace-clusters whose reconcilers
/// read only the cache, most of those clients would never send a request, so they
/// are made on first use (see `docs/decisions/memory.md`).
#[derive(Clone)]
pub(crate) enum ClusterClient {
    /// Built when the cluster was.
    Ready(kube::Client),
    /// Built on first use.
    #[cfg_attr(not(feature = "namespace"), allow(dead_code))]
    ThroughHost(Arc<ThroughHostClient>),
}

/// A client that sends through a host cluster's client, with another default
/// namespace, made on first use.
pub(crate) struct ThroughHostClient {
    host: kube::Client,
    namespace: String,
    /// Where the client's request buffer spawns its task, whichever thread asks.
    runtime: tokio::runtime::Handle,
    made: OnceLock<kube::Client>,
}

impl ClusterClient {
    /// A client that sends every request through `host` (its connection pool and
    /// credentials) with `namespace` as its default namespace. Inside a Tokio
    /// runtime it is made on first use; outside one, at once.
    #[cfg_attr(not(feature = "namespace"), allow(dead_code))]
    pub(crate) fn through_host(host: kube::Client, namespace: &str) -> Self {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => ClusterClient::ThroughHost(Arc::new(ThroughHostClient {
                host,
                namespace: namespace.to_owned(),
                runtime,
                made: OnceLock::new(),
            })),
            Err(_) => ClusterClient::Ready(shared_client(host, namespace)),
        }
    }

    /// The client, made now if it was not yet.
    pub(crate) fn get(&self) -> &kube::Client {
        match self {
            ClusterClient::Ready(client) => client,
            ClusterClient::ThroughHost(deferred) => deferred.made.get_or_init(|| {
                let _entered = deferred.runtime.enter();
                shared_client(deferred.host.clone(), &deferred.namespace)
            }),
        }
    }

    /// A client for requests that name no namespace, such as health probes: for a
    /// client through a host, the host's own, which sends the same request over the
    /// same connections without making this cluster's client.
    pub(crate) fn unnamespaced(&self) -> &kube::Client {
        match self {
            ClusterClient::Ready(client) => client,
            ClusterClient::ThroughHost(deferred) => &deferred.host,
        }
    }

    /// Whether the client was made (always, unless it is made on first use).
    #[cfg(test)]
    pub(crate) fn is_made(&self) -> bool {
        match self {
            ClusterClient::Ready(_) => true,
            ClusterClient::ThroughHost(deferred) => deferred.made.get().is_some(),
        }
    }
}

/// A client that sends every request through `host` (its connection pool and
/// credentials) with `namespace` as its default namespace.
///
/// Costs one small request buffer and its task (kube's `Client` is a buffered
/// service), not a connection pool or a TLS configuration.
pub(crate) fn shared_client(host: kube::Client, namespace: &str) -> kube::Client {
    let valid_until = *host.valid_until();
    kube::Client::new(ThroughHost(host), namespace).with_valid_until(valid_until)
}

/// A `tower` service that forwards each request to a shared client.
#[derive(Clone)]
struct ThroughHost(kube::Client);

impl tower_service::Service<http::Request<kube::client::Body>> for ThroughHost {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, kube::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), kube::Error>> {
        // The host client's own buffer applies back-pressure in `send`.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let host = self.0.clone();
        Box::pin(async move { host.send(request).await })
    }
}

#[cfg(test)]
pub(in crate::cluster) mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A plain-HTTP server on a loopback port that records the head of every
    /// request and answers `/version`; with `answer` false it never answers.
    pub(in crate::cluster) async fn server(answer: bool) -> (kube::Config, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0; 4096];
                    while let Ok(read) = socket.read(&mut chunk).await {
                        if read == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..read]);
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buffer.drain(..end + 4).collect();
                            seen.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&head).into_owned());
                            if !answer {
                                continue;
                            }
                            let body = r#"{"major":"1","minor":"37","gitVersion":"v1.37.0"}"#;
                            let response = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if socket.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (kube::Config::new(url.parse().expect("a URL")), heads)
    }

    #[tokio::test]
    async fn the_user_agent_reaches_the_server_and_replaces_the_configs() {
        let (mut config, heads) = server(true).await;
        config
            .headers
            .push((USER_AGENT, HeaderValue::from_static("from-config/0")));
        let options = ClientOptions::default().user_agent(HeaderValue::from_static("fleet-ctl/1.2"));
        let client = options.build(config).expect("client");
        client.apiserver_version().await.expect("version");
        let heads = heads.lock().unwrap().join("");
        let agents: Vec<&str> = heads
            .lines()
            .filter(|line| line.to_ascii_lowercase().starts_with("user-agent:"))
            .collect();
        assert_eq!(agents, ["user-agent: fleet-ctl/1.2"], "{heads}");
    }

    #[tokio::test]
    async fn a_request_without_an_answer_fails_after_the_timeout() {
        let (config, heads) = server(false).await;
        let options = ClientOptions::default().timeout(Duration::from_millis(300));
        let client = options.build(config).expect("client");
        let started = Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(20), client.apiserver_version())
            .await
            .expect("the client gives up by itself")
            .expect_err("no answer");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(error.to_string().contains("timed out"), "{error}");
        assert_eq!(heads.lock().unwrap().len(), 1, "the request was sent");
    }

    #[tokio::test]
    async fn requests_over_the_rate_wait_for_the_next_window() {
        let (config, heads) = server(true).await;
        // Two requests at once, then two more after a window of 2 / 10 = 200 ms.
        let options = ClientOptions::default().rate_limit(RateLimit::new(10.0, 2).expect("valid"));
        let client = options.build(config).expect("client");
        let started = Instant::now();
        for _ in 0..4 {
            client.apiserver_version().await.expect("version");
        }
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(heads.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn the_clones_of_a_client_share_one_budget() {
        let (config, _) = server(true).await;
        let options = ClientOptions::default().rate_limit(RateLimit::new(10.0, 2).expect("valid"));
        let client = options.build(config).expect("client");
        let started = Instant::now();
        let calls = (0..4).map(|_| {
            let client = client.clone();
            async move { client.apiserver_version().await.expect("version") }
        });
        futures::future::join_all(calls).await;
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    /// A resolver that answers every name with `to`, counting the questions.
    #[derive(Clone)]
    pub(in crate::cluster) struct FixedResolver {
        pub(in crate::cluster) to: std::net::IpAddr,
        pub(in crate::cluster) asked: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl tower_service::Service<Name> for FixedResolver {
        type Response = std::vec::IntoIter<std::net::SocketAddr>;
        type Error = std::io::Error;
        type Future = std::future::Ready<std::io::Result<Self::Response>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Name) -> Self::Future {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Port 0: the connector puts the URL's port on resolved addresses.
            std::future::ready(Ok(vec![std::net::SocketAddr::new(self.to, 0)].into_iter()))
        }
    }

    /// `config` with its server's host replaced by `host`, keeping the port.
    fn renamed(config: kube::Config, host: &str) -> kube::Config {
        let port = config.cluster_url.port_u16().expect("a port");
        let url = format!("http://{host}:{port}");
        kube::Config::new(url.parse().expect("a URL"))
    }

    #[tokio::test]
    async fn x02_a_name_that_resolves_to_a_denied_address_is_not_connected_to() {
        let (config, heads) = server(true).await;
        let config = renamed(config, "innocent.example");
        let resolver = FixedResolver {
            to: [127, 0, 0, 1].into(),
            asked: Arc::default(),
        };
        let policy = EndpointPolicy::deny_local();
        // As written, the name passes: only where it leads is denied.
        policy
            .check_server(&config.cluster_url.to_string())
            .expect("the name passes");
        let options = ClientOptions::default();
        let client = options
            .build_checked_with(config.clone(), &policy, resolver.clone())
            .expect("client");
        let error = client.apiserver_version().await.expect_err("refused");
        let text = redact::describe(&error);
        assert!(text.contains("deny-list entry 127.0.0.0/8"), "{text}");
        assert!(text.contains("refused by the endpoint policy"), "{text}");
        assert!(
            !text.contains("innocent.example") && !text.contains("127.0.0.1"),
            "{text}"
        );
        assert!(resolver.asked.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert!(heads.lock().unwrap().is_empty(), "nothing reached the server");

        // The same client stack with a policy that does not deny loopback connects:
        // the resolver, not a broken stack, made the difference.
        let elsewhere = EndpointPolicy::any().deny(["192.0.2.0/24"]).unwrap();
        let client = options
            .build_checked_with(config, &elsewhere, resolver)
            .expect("client");
        client.apiserver_version().await.expect("version");
        assert_eq!(heads.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn x02_a_denied_address_literal_is_not_connected_to_even_unvetted() {
        let (config, heads) = server(true).await;
        let client = ClientOptions::default()
            .build_checked(config, &EndpointPolicy::deny_local())
            .expect("client");
        let error = client.apiserver_version().await.expect_err("refused");
        let text = redact::describe(&error);
        assert!(text.contains("deny-list entry 127.0.0.0/8"), "{text}");
        assert!(heads.lock().unwrap().is_empty(), "nothing reached the server");
    }

    #[test]
    fn rate_limits_that_cannot_be_are_refused_not_panicked_on() {
        for (qps, burst) in [
            (0.0, 1),
            (-1.0, 1),
            (f64::NAN, 1),
            (f64::INFINITY, 1),
            (1.0, 0),
            (f64::MIN_POSITIVE, 1),
            (f64::MAX, 1),
        ] {
            let error = RateLimit::new(qps, burst).expect_err("invalid");
            assert!(error.to_string().contains("invalid client rate limit"), "{error}");
        }
        let limit = RateLimit::new(5.0, 10).expect("valid");
        assert_eq!(
            (limit.qps(), limit.burst(), limit.period),
            (5.0, 10, Duration::from_secs(2))
        );
    }
}
