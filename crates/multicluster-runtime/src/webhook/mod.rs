//! Admission webhooks for the whole fleet: one handler serves every engaged cluster,
//! each request names its cluster, and clusters joining and leaving the fleet are
//! wired and unwired by the server itself.
//!
//! Available with the cargo feature `webhook`.
//!
//! A [`WebhookServer`] is a component like a controller: added to the manager with
//! [`Manager::add_cluster_runnable`](crate::Manager::add_cluster_runnable), it is
//! engaged with every cluster of the provider and serves HTTPS on an address of its
//! own. For each engaged cluster it applies a `ValidatingWebhookConfiguration` and a
//! `MutatingWebhookConfiguration` (server-side apply, field manager
//! `multicluster-runtime-webhooks`) whose webhooks call
//! `<url>/clusters/<cluster>/<tag>/<webhook>`, with the server's certificate
//! authority as their CA bundle; when the cluster leaves the fleet it deletes them
//! (unless [`remove_on_disengage`](WebhookServerBuilder::remove_on_disengage) is
//! off). The manager's own cluster is not wired.
//!
//! # Which cluster asked
//!
//! The path names the cluster, and `tag` (HMAC-SHA256 of the name under the
//! server's key) proves the path was written by this server for that cluster: an
//! admin of one member can read that member's configuration and call the server as
//! that member, never as another. A request whose tag does not match, or for a
//! cluster that is not engaged here (it left, or another replica owns it under
//! sharding), is answered by the webhook's failure policy: refused with a message
//! naming the cluster under `Fail`, admitted with a warning under `Ignore`.
//! `docs/decisions/webhooks.md` has the whole trust model.
//!
//! # Failures of a handler
//!
//! A handler that panics, takes longer than the webhook's timeout, or answers a
//! patch from a validating webhook is answered by the failure policy too, and the
//! failure is logged; the server and the other requests go on.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use multicluster_runtime::Manager;
//! use multicluster_runtime::webhook::{AdmissionContext, Verdict, Webhook, WebhookServer};
//!
//! async fn no_forbidden(req: AdmissionContext<ConfigMap>, _: Arc<()>) -> Verdict {
//!     let forbidden = req.request.object.as_ref().and_then(|cm| cm.data.as_ref()).is_some_and(|d| d.contains_key("forbidden"));
//!     if forbidden {
//!         return Verdict::deny(format!("no key `forbidden` in cluster {}", req.cluster_name));
//!     }
//!     Verdict::allow()
//! }
//!
//! # async fn run(manager: Manager) -> multicluster_runtime::Result<()> {
//! let server = WebhookServer::builder("0.0.0.0:9443".parse().unwrap(), "https://webhooks.example.com:9443")
//!     .validating(Webhook::new("no-forbidden.example.com"), no_forbidden, Arc::new(()))
//!     .build()?;
//! manager.add_cluster_runnable(Arc::new(server)).await?;
//! manager.start_until_signal().await
//! # }
//! ```

mod handler;
mod route;
mod wiring;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Resource;
use kube::core::admission::AdmissionResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use handler::{AdmissionContext, Verdict};
pub use json_patch;
pub use kube::core::admission::{AdmissionRequest, Operation};
pub use wiring::MANAGED_BY;

use crate::backoff::Backoff;
use crate::cluster::engagement::{Engage, Engagements, Gates};
use crate::cluster::{Cluster, ClusterName};
use crate::error::{Error, Result};
use crate::multicluster::Aware;
use crate::runnable::Runnable;
pub use crate::serving::tls::ServingCertificate;
use crate::serving::{self, Limits, tls};
use handler::{Hook, Kind, Origin};

/// The field manager of the configurations the server applies.
pub const FIELD_MANAGER: &str = "multicluster-runtime-webhooks";
/// The name of the configurations in each member, unless set otherwise.
pub const DEFAULT_CONFIGURATION_NAME: &str = "multicluster-runtime-webhooks";
/// The largest AdmissionReview read (the apiserver's requests are at most 3 MiB,
/// an object and its old version).
pub const MAX_REQUEST_BYTES: usize = 8 << 20;
/// How long a connection may last, unless set otherwise: apiservers keep
/// connections open for their next requests.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// How many connections at once, unless set otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// What the apiserver does when the webhook cannot answer, and what this server
/// answers for a request it cannot attribute or whose handler failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Refuse the request (the default, as Kubernetes').
    #[default]
    Fail,
    /// Admit it.
    Ignore,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

/// One webhook: its name, and which requests members send it.
///
/// The handled resource (group, version, plural) comes from the handler's type.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct Webhook {
    name: String,
    operations: Vec<String>,
    failure_policy: FailurePolicy,
    timeout: Duration,
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
}

impl Webhook {
    /// A webhook named `name`, a DNS name of at least three labels as Kubernetes
    /// requires (`no-forbidden.example.com`), for `CREATE` and `UPDATE`, failure
    /// policy `Fail`, timeout 10 s.
    pub fn new(name: impl Into<String>) -> Self {
        Webhook {
            name: name.into(),
            operations: vec!["CREATE".into(), "UPDATE".into()],
            failure_policy: FailurePolicy::Fail,
            timeout: Duration::from_secs(10),
            namespace_selector: None,
            object_selector: None,
        }
    }

    /// The operations sent (`CREATE`, `UPDATE`, `DELETE`, `CONNECT`, or `*`).
    pub fn operations<S: Into<String>>(mut self, operations: impl IntoIterator<Item = S>) -> Self {
        self.operations = operations.into_iter().map(Into::into).collect();
        self
    }

    /// What happens when the webhook cannot answer (see [`FailurePolicy`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// How long the apiserver waits for an answer (1 to 30 s, whole seconds;
    /// default 10 s); the handler gets that, less a quarter of a second.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_secs(1), Duration::from_secs(30));
        self
    }

    /// Only objects in namespaces that match.
    pub fn namespace_selector(mut self, selector: LabelSelector) -> Self {
        self.namespace_selector = Some(selector);
        self
    }

    /// Only objects that match.
    pub fn object_selector(mut self, selector: LabelSelector) -> Self {
        self.object_selector = Some(selector);
        self
    }

    fn timeout_seconds(&self) -> i32 {
        i32::try_from(self.timeout.as_secs()).unwrap_or(30)
    }

    /// Why Kubernetes would refuse the name, if it would.
    fn invalid_name(&self) -> Option<String> {
        let labels: Vec<&str> = self.name.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        (labels.len() < 3 || self.name.len() > 253 || !labels.iter().all(label_ok)).then(|| {
            format!(
                "webhook name {:?} is not a lowercase DNS name of at least three labels (e.g. `deny.example.com`)",
                self.name
            )
        })
    }
}

/// Builds a [`WebhookServer`]; see [`WebhookServer::builder`].
#[must_use]
pub struct WebhookServerBuilder {
    address: SocketAddr,
    url: String,
    name: String,
    certificate: ServingCertificate,
    ca_bundle: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    limits: Limits,
    remove_on_disengage: bool,
    hooks: Vec<Hook>,
}

impl WebhookServerBuilder {
    /// Adds a validating webhook: `handler` allows or denies each request of type
    /// `K` from any engaged cluster.
    pub fn validating<K, F, Fut, Ctx>(mut self, webhook: Webhook, handler: F, ctx: Arc<Ctx>) -> Self
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Serialize + Clone + Send + Sync + 'static,
        F: Fn(AdmissionContext<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Verdict> + Send + 'static,
        Ctx: Send + Sync + 'static,
    {
        self.hooks
            .push(Hook::new(Kind::Validating, webhook, handler, ctx));
        self
    }

    /// Adds a mutating webhook: `handler` may also change the object
    /// ([`Verdict::mutate`], [`Verdict::patch`]).
    pub fn mutating<K, F, Fut, Ctx>(mut self, webhook: Webhook, handler: F, ctx: Arc<Ctx>) -> Self
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Serialize + Clone + Send + Sync + 'static,
        F: Fn(AdmissionContext<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Verdict> + Send + 'static,
        Ctx: Send + Sync + 'static,
    {
        self.hooks.push(Hook::new(Kind::Mutating, webhook, handler, ctx));
        self
    }

    /// The name of the configurations in each member (default
    /// [`DEFAULT_CONFIGURATION_NAME`]).
    pub fn configuration_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The serving certificate (default: [self-signed](ServingCertificate::self_signed),
    /// whose authority the server puts into each configuration). With certificate
    /// files, give the authority that signed them with [`ca_bundle`](Self::ca_bundle).
    pub fn certificate(mut self, certificate: ServingCertificate) -> Self {
        self.certificate = certificate;
        self
    }

    /// The CA bundle (PEM) members verify the server's certificate with, for
    /// certificate files (e.g. cert-manager's `ca.crt`).
    pub fn ca_bundle(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_bundle = Some(pem.into());
        self
    }

    /// The key the paths' tags are made with. Replicas that serve the same members
    /// must share it (e.g. from a Secret); without it each server makes a random one,
    /// and a restarted server rewires every cluster as it engages it again.
    pub fn attribution_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Whether a cluster's configurations are deleted when it leaves the fleet
    /// (default `true`). They are never deleted when the server stops, so that a
    /// restart leaves no gap in enforcement. Turn it off under sharding, where a
    /// cluster that moves is wired again by its new owner.
    pub fn remove_on_disengage(mut self, remove: bool) -> Self {
        self.remove_on_disengage = remove;
        self
    }

    /// At most `max` connections at once (default [`DEFAULT_MAX_CONNECTIONS`]).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max.max(1);
        self
    }

    /// How long one connection may last (default [`DEFAULT_CONNECTION_TIMEOUT`]).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.limits.connection_timeout = timeout;
        self
    }

    /// Checks the settings and prepares the certificate; the server listens once the
    /// manager runs it.
    ///
    /// # Errors
    /// [`Error::Webhook`] naming what is wrong: no webhook, a name Kubernetes would
    /// refuse or used twice, a URL that is not `https://host[:port]`, a certificate
    /// that cannot be loaded, or certificate files without a CA bundle.
    pub fn build(self) -> Result<WebhookServer> {
        let invalid = |reason: String| Error::Webhook(reason);
        if self.hooks.is_empty() {
            return Err(invalid("no webhook was added".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for hook in &self.hooks {
            if let Some(reason) = hook.webhook.invalid_name() {
                return Err(invalid(reason));
            }
            if !names.insert(hook.webhook.name.clone()) {
                return Err(invalid(format!(
                    "webhook name {:?} is used twice",
                    hook.webhook.name
                )));
            }
        }
        let url = self.url.trim_end_matches('/').to_owned();
        let authority = url.strip_prefix("https://").unwrap_or_default();
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(invalid(format!(
                "the URL {:?} is not https://host[:port]: members reach the server there",
                self.url
            )));
        }
        let loaded = tls::load(&self.certificate, &[b"http/1.1"]).map_err(invalid)?;
        let ca_bundle = match (self.ca_bundle, loaded.authority.clone()) {
            (Some(bundle), _) => bundle,
            (None, Some(generated)) => generated.into_bytes(),
            (None, None) => {
                return Err(invalid(
                    "certificate files need the CA bundle members verify them with (ca_bundle)".into(),
                ));
            }
        };
        let key = match self.key {
            Some(secret) => route::Key::new(&secret),
            None => route::Key::random().map_err(invalid)?,
        };
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            address: self.address,
            url,
            name: self.name,
            ca_bundle,
            key,
            limits: self.limits,
            remove_on_disengage: self.remove_on_disengage,
            hooks: self.hooks,
            tls: Mutex::new(Some(loaded)),
            clusters: Mutex::default(),
            gates: Gates::default(),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            running: Mutex::new(None),
            bound: Mutex::new(None),
        });
        Ok(WebhookServer { inner })
    }
}

/// Serves admission webhooks for every engaged cluster; see the [module docs](self).
#[derive(Clone)]
pub struct WebhookServer {
    inner: Arc<Inner>,
}

struct Inner {
    me: Weak<Inner>,
    address: SocketAddr,
    url: String,
    name: String,
    ca_bundle: Vec<u8>,
    key: route::Key,
    limits: Limits,
    remove_on_disengage: bool,
    hooks: Vec<Hook>,
    /// The certificate, until the server runs.
    tls: Mutex<Option<tls::Loaded>>,
    /// The engaged clusters: the one map of them, written by engagements only.
    clusters: Mutex<Engagements<()>>,
    /// One writer of a cluster's configurations at a time: the removal for a
    /// cluster that left never lands after the apply for its return.
    gates: Gates,
    tasks: TaskTracker,
    /// Cancelled when the server stops: configurations stay in place then.
    stopping: CancellationToken,
    /// The token the server runs under, once it runs: its cancellation is the
    /// server's stop too, and may reach the engagements (its descendants under the
    /// manager) before `stopping` is cancelled.
    running: Mutex<Option<CancellationToken>>,
    /// The address it listens on, once it does.
    bound: Mutex<Option<SocketAddr>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WebhookServer {
    /// A server listening on `address`, which member apiservers reach at `url`
    /// (`https://host[:port]`, e.g. a load balancer's or a Service's name that
    /// resolves from the members).
    pub fn builder(address: SocketAddr, url: impl Into<String>) -> WebhookServerBuilder {
        WebhookServerBuilder {
            address,
            url: url.into(),
            name: DEFAULT_CONFIGURATION_NAME.into(),
            certificate: ServingCertificate::self_signed(),
            ca_bundle: None,
            key: None,
            limits: Limits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            },
            remove_on_disengage: true,
            hooks: Vec::new(),
        }
    }

    /// The CA bundle (PEM) the configurations carry.
    pub fn ca_bundle(&self) -> &[u8] {
        &self.inner.ca_bundle
    }

    /// The address the server listens on, once it runs (the port chosen for port 0).
    pub fn local_address(&self) -> Option<SocketAddr> {
        *lock(&self.inner.bound)
    }

    /// The engaged clusters.
    pub fn fleet(&self) -> Fleet {
        Fleet {
            server: self.inner.me.clone(),
        }
    }
}

/// The clusters engaged into a webhook server, for rules across the fleet.
#[derive(Clone)]
pub struct Fleet {
    server: Weak<Inner>,
}

impl Fleet {
    /// Every engaged cluster, by name.
    pub fn clusters(&self) -> BTreeMap<ClusterName, Arc<Cluster>> {
        let Some(server) = self.server.upgrade() else {
            return BTreeMap::new();
        };
        let clusters = lock(&server.clusters);
        clusters
            .live()
            .map(|(name, engaged)| (name.clone(), engaged.cluster.clone()))
            .collect()
    }

    /// The engaged cluster `name`.
    pub fn get(&self, name: &ClusterName) -> Option<Arc<Cluster>> {
        let server = self.server.upgrade()?;
        let clusters = lock(&server.clusters);
        clusters.get(name).map(|engaged| engaged.cluster.clone())
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.clusters().keys()).finish()
    }
}

impl Inner {
    fn wiring(&self) -> wiring::Wiring<'_> {
        wiring::Wiring {
            name: &self.name,
            url: &self.url,
            ca_bundle: &self.ca_bundle,
            key: &self.key,
            hooks: &self.hooks,
            field_manager: FIELD_MANAGER,
        }
    }

    /// Applies the configurations in `cluster` until they are in place or the
    /// engagement ends, then on its end deletes them if the cluster left.
    async fn wire(
        self: Arc<Self>,
        name: ClusterName,
        cluster: Arc<Cluster>,
        token: CancellationToken,
        generation: u64,
    ) {
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut failures = 0;
        loop {
            let gate = self.gates.enter(&name).await;
            if token.is_cancelled() {
                break;
            }
            let applied = self.wiring().apply(&name, &cluster.client()).await;
            drop(gate);
            match applied {
                Ok(()) => {
                    tracing::info!(cluster = %name, configuration = self.name, "webhooks wired");
                    break;
                }
                Err(err) => {
                    failures += 1;
                    let delay = backoff.delay(failures);
                    tracing::warn!(cluster = %name, error = %crate::redact::describe(&err), ?delay, "webhooks not wired; trying again");
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tokio::select! {
            () = token.cancelled() => {}
            () = self.stopping.cancelled() => return,
        }
        // Only this engagement's own end: a replaced instance's token fires after
        // the new one is in place, and the new one keeps the configurations.
        let ended = lock(&self.clusters).disengage(&name, generation).is_some();
        if !self.remove_on_disengage || self.is_stopping() {
            return;
        }
        if !ended {
            tracing::info!(cluster = %name, "instance replaced; webhooks stay wired");
            return;
        }
        let _gate = self.gates.enter(&name).await;
        // Engaged again while this waited: its apply came or comes after, and stays.
        if lock(&self.clusters).get(&name).is_some() {
            tracing::info!(cluster = %name, "cluster engaged again; webhooks stay wired");
            return;
        }
        if self.is_stopping() {
            return;
        }
        let (wiring, client) = (self.wiring(), cluster.client());
        match tokio::time::timeout(Duration::from_secs(10), wiring.remove(&client)).await {
            Ok(Ok(())) => tracing::info!(cluster = %name, configuration = self.name, "webhooks unwired"),
            Ok(Err(err)) => {
                tracing::warn!(cluster = %name, error = %crate::redact::describe(&err), "webhooks not unwired")
            }
            Err(_) => tracing::warn!(cluster = %name, "webhooks not unwired: no answer within 10 s"),
        }
    }

    /// Whether the server is stopping: the manager stops every engagement with it,
    /// and none of those clusters left the fleet.
    fn is_stopping(&self) -> bool {
        let running = lock(&self.running);
        self.stopping.is_cancelled() || running.as_ref().is_some_and(CancellationToken::is_cancelled)
    }

    /// Answers one request.
    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only POST\n");
        }
        let route = self.key.route(request.uri().path());
        let (cluster_name, webhook) = match &route {
            Ok((cluster, webhook)) => (cluster.clone(), webhook.as_str()),
            Err(route::Refusal::NotFound) => return plain(StatusCode::NOT_FOUND, "not found\n"),
            Err(route::Refusal::Unattributed(cluster)) => (cluster.clone(), ""),
        };
        let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request too large or cut off\n"),
        };
        let uid = handler::request_uid(&body);
        let hook = self.hooks.iter().find(|hook| hook.webhook.name == webhook);
        let hook = match (&route, hook) {
            (Ok(_), Some(hook)) => hook,
            (Ok(_), None) => return plain(StatusCode::NOT_FOUND, "no such webhook\n"),
            (Err(_), _) => {
                // No hook to take the policy from: refuse, naming the cluster claimed.
                let reason = format!(
                    "the request is not attributed to cluster {cluster_name}: its webhook configuration was not written by this server for it"
                );
                return review(failed(uid, FailurePolicy::Fail, &reason));
            }
        };
        let policy = hook.webhook.failure_policy;
        let cluster = lock(&self.clusters).get(&cluster_name).map(|e| e.cluster.clone());
        let Some(cluster) = cluster else {
            let reason = format!(
                "cluster {cluster_name} is not engaged into this webhook server (it left the fleet, or another replica serves it)"
            );
            return review(failed(uid, policy, &format!("webhook {webhook}: {reason}")));
        };
        let origin = Origin {
            cluster_name: cluster_name.clone(),
            cluster,
            fleet: Fleet {
                server: self.me.clone(),
            },
        };
        match (hook.handle)(&body, origin).await {
            Ok(response) => review(response),
            Err(reason) => {
                tracing::warn!(webhook, cluster = %cluster_name, reason, "webhook failed; answered by its failure policy");
                review(failed(
                    uid,
                    policy,
                    &format!("webhook {webhook} failed in cluster {cluster_name}: {reason}"),
                ))
            }
        }
    }
}

/// The answer to a request the server could not decide, by `policy`.
fn failed(uid: Option<String>, policy: FailurePolicy, reason: &str) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(reason);
    response.uid = uid.unwrap_or_default();
    if policy == FailurePolicy::Ignore {
        response.allowed = true;
        response.result = Default::default();
        response.warnings = Some(vec![format!("admitted by failure policy Ignore: {reason}")]);
    }
    response
}

fn review(response: AdmissionResponse) -> Response<Full<Bytes>> {
    match serde_json::to_vec(&response.into_review()) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer cannot be serialized\n",
        ),
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[async_trait]
impl Aware for WebhookServer {
    /// Records the cluster for its requests and wires its configurations (the
    /// manager's own cluster is never wired).
    async fn engage(&self, token: CancellationToken, name: ClusterName, cluster: Arc<Cluster>) -> Result<()> {
        if name.is_local() {
            return Ok(());
        }
        let inner = &self.inner;
        let generation = match lock(&inner.clusters).engage(&name, cluster.clone(), token.clone(), ()) {
            Engage::Stale | Engage::Unchanged => return Ok(()),
            Engage::New { generation, replaced } => {
                if let Some(old) = replaced {
                    old.token.cancel();
                }
                generation
            }
        };
        inner
            .tasks
            .spawn(inner.clone().wire(name, cluster, token, generation));
        Ok(())
    }
}

#[async_trait]
impl Runnable for WebhookServer {
    fn name(&self) -> String {
        format!("webhook server {}", self.inner.address)
    }

    /// Every replica serves: requests come to whichever the members reach.
    fn needs_leader_election(&self) -> bool {
        false
    }

    /// Serves until `token` is cancelled.
    ///
    /// # Errors
    /// [`Error::Endpoint`] if it cannot listen on its address; [`Error::Webhook`]
    /// if it runs twice.
    async fn run(&self, token: CancellationToken) -> Result<()> {
        let inner = &self.inner;
        let loaded = lock(&inner.tls)
            .take()
            .ok_or_else(|| Error::Webhook("the webhook server runs once".into()))?;
        *lock(&inner.running) = Some(token.clone());
        let address = inner.address;
        let listener = serving::listen(address).map_err(|source| Error::Endpoint { address, source })?;
        *lock(&inner.bound) = listener.local_addr().ok();
        tracing::info!(address = ?listener.local_addr().ok(), webhooks = inner.hooks.len(), "webhook server listens");
        if let Some(watcher) = loaded.watcher {
            inner.tasks.spawn(watcher.run(token.clone()));
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(loaded.config);
        let server = inner.clone();
        let connection: serving::Connection = Arc::new(move |io| {
            let server = server.clone();
            Box::pin(async move {
                let service = service_fn(move |request| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.respond(request).await) }
                });
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(io), service)
                    .await;
                if let Err(err) = served {
                    tracing::debug!(error = %err, "webhook connection ended with an error");
                }
            })
        });
        serving::accept(
            "webhooks",
            listener,
            Some(acceptor),
            inner.limits,
            &inner.tasks,
            token,
            connection,
        )
        .await;
        inner.stopping.cancel();
        inner.tasks.close();
        inner.tasks.wait().await;
        Ok(())
    }
}
