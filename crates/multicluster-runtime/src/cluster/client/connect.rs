//! A client that connects only where an [`EndpointPolicy`] allows, checked on the
//! addresses it really connects to.
//!
//! Vetting a kubeconfig sees the server's host as written; a DNS name may resolve to
//! a denied address, then or at any later connection (DNS rebinding). kube builds
//! its connector itself, so a client whose policy has rules gets this stack instead:
//! kube's own layers (base URI, authentication, extra headers, retries, TLS from
//! the config, timeouts) around an HTTP connector whose resolver refuses denied
//! addresses, and which refuses a denied IP literal before connecting (the
//! connector does not resolve those).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;
use kube::client::{ClientBuilder, ConfigExt, DynBody};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_service::Service;

use crate::cluster::kubeconfig::{EndpointPolicy, EndpointRule};

/// A connection refused by the endpoint policy: the server's host, or an address
/// its name resolved to, is in a deny-list entry (or the host is not allowed).
///
/// Names the rule, never the host or address, which come from whoever wrote the
/// kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}; refused by the endpoint policy")]
pub(crate) struct ConnectRefused {
    what: String,
}

impl ConnectRefused {
    fn denied(rule: &EndpointRule) -> Self {
        ConnectRefused {
            what: format!("server address is in the deny-list entry {rule}"),
        }
    }
}

/// The service under a kube client's builder: kube's own stack (its `GenericService`,
/// which kube does not export) and this one are both of this type.
pub(crate) type Stack =
    tower::util::BoxService<http::Request<kube::client::Body>, http::Response<Box<DynBody>>, BoxError>;

/// kube's client stack for `config`, connecting only where `endpoints` allows,
/// with names resolved by `resolver`.
pub(crate) fn checked_builder<R>(
    config: &kube::Config,
    endpoints: &EndpointPolicy,
    resolver: R,
) -> Result<ClientBuilder<Stack>, kube::Error>
where
    R: Service<Name, Error = io::Error> + Clone + Send + Sync + 'static,
    R::Response: Iterator<Item = SocketAddr> + Send,
    R::Future: Send,
{
    let endpoints = Arc::new(endpoints.clone());
    let mut http = HttpConnector::new_with_resolver(CheckedResolver {
        endpoints: endpoints.clone(),
        inner: resolver,
    });
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let https = config.rustls_https_connector_with_connector(CheckedHost {
        endpoints,
        inner: http,
    })?;
    let mut timed = hyper_timeout::TimeoutConnector::new(https);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    timed.set_reset_reader_on_write(config.reset_reader_on_write);
    let client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timed);

    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(client)
        .map_response(|response| {
            response
                .map(|body| Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>)
        });
    Ok(ClientBuilder::new(
        tower::util::BoxService::new(service),
        config.default_namespace.clone(),
    ))
}

/// The system resolver, as kube's client uses it.
pub(crate) fn system_resolver() -> GaiResolver {
    GaiResolver::new()
}

/// A resolver that fails when any address of the name is denied.
///
/// All or nothing, rather than connecting to the allowed addresses only: a name
/// that resolves into a denied range is someone aiming at it.
#[derive(Clone)]
struct CheckedResolver<R> {
    endpoints: Arc<EndpointPolicy>,
    inner: R,
}

impl<R> Service<Name> for CheckedResolver<R>
where
    R: Service<Name, Error = io::Error> + Clone + Send + 'static,
    R::Response: Iterator<Item = SocketAddr> + Send,
    R::Future: Send,
{
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolving = self.inner.call(name);
        let endpoints = self.endpoints.clone();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = resolving.await?.collect();
            if let Some(rule) = addresses.iter().find_map(|a| endpoints.denies_address(a.ip())) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    ConnectRefused::denied(rule),
                ));
            }
            Ok(addresses.into_iter())
        })
    }
}

/// The HTTP connector, refusing a URI whose host the policy refuses before it
/// connects: an IP literal never reaches the resolver.
#[derive(Clone)]
struct CheckedHost<C> {
    endpoints: Arc<EndpointPolicy>,
    inner: C,
}

impl<C> Service<Uri> for CheckedHost<C>
where
    C: Service<Uri>,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Err(refusal) = self.endpoints.check_server(&uri.to_string()) {
            let refused = ConnectRefused {
                what: format!("server {refusal}"),
            };
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::providers::fuzz::{address, is_local, lenient_addresses, server};

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        /// x08: through a client's connector, with `deny_local()`, no server host in
        /// any form and no address a name resolves to that is local is connected to;
        /// a refusal names the rule and neither the host nor the address.
        #[test]
        fn x08_fuzz_checked_connections_reach_no_local_address(
            url in server(),
            answers in prop::collection::vec(address(), 1..4),
        ) {
            let endpoints = Arc::new(EndpointPolicy::deny_local());
            if let Ok(uri) = url.trim().parse::<Uri>() {
                let reached = Arc::new(AtomicBool::new(false));
                let seen = reached.clone();
                let inner = tower::service_fn(move |_: Uri| {
                    seen.store(true, Ordering::SeqCst);
                    std::future::ready(Ok::<(), io::Error>(()))
                });
                let mut connector = CheckedHost { endpoints: endpoints.clone(), inner };
                let connected = block_on(connector.call(uri.clone()));
                prop_assert_eq!(connected.is_ok(), reached.load(Ordering::SeqCst));
                match connected {
                    Ok(()) => {
                        let host = uri.host().unwrap_or_default();
                        prop_assert!(!lenient_addresses(host).into_iter().any(is_local), "{}", url);
                    }
                    Err(refused) => prop_assert!(refused.to_string().ends_with("refused by the endpoint policy")),
                }
            }

            let fixed = answers.clone();
            let inner = tower::service_fn(move |_: Name| {
                let addresses: Vec<SocketAddr> = fixed.iter().map(|ip| SocketAddr::new(*ip, 443)).collect();
                std::future::ready(Ok::<_, io::Error>(addresses.into_iter()))
            });
            let mut resolver = CheckedResolver { endpoints, inner };
            let name: Name = "fleet.example".parse().expect("a name");
            match block_on(resolver.call(name)) {
                Ok(mut resolved) => prop_assert!(resolved.all(|a| !is_local(a.ip())), "{:?}", answers),
                Err(refused) => {
                    let text = refused.to_string();
                    prop_assert!(text.contains("deny-list entry"), "{}", text);
                    for answer in &answers {
                        prop_assert!(!text.contains(&format!("{answer} ")), "{} quotes {}", text, answer);
                    }
                }
            }
        }
    }
}
