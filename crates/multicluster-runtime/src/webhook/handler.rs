//! A webhook's handler: typed requests in, [`Verdict`]s out, erased so that one
//! server holds handlers of many types. A handler that panics, runs out of time or
//! answers what its kind cannot (a patch from a validating webhook) is a failure of
//! the webhook, answered by its failure policy: it never takes the server down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kube::Resource;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Fleet, Webhook};
use crate::cluster::{Cluster, ClusterName};

/// What a handler gets: the admission request, typed, and the cluster it came from.
#[non_exhaustive]
pub struct AdmissionContext<K: Resource> {
    /// The request as the apiserver sent it: the operation, the object (and the old
    /// one for updates and deletes), the user, `dry_run`.
    pub request: AdmissionRequest<K>,
    /// The cluster whose apiserver asked: attributed by the path of its webhook
    /// configuration and checked against its key (see the [module docs](super)).
    pub cluster_name: ClusterName,
    /// That cluster: its client and its cache.
    pub cluster: Arc<Cluster>,
    /// Every cluster engaged into the server, for rules across the fleet.
    pub fleet: Fleet,
}

/// A handler's answer.
#[derive(Clone, Debug)]
#[must_use]
pub struct Verdict {
    decision: Decision,
    warnings: Vec<String>,
}

#[derive(Clone, Debug)]
enum Decision {
    Allow,
    Deny(String),
    Patch(json_patch::Patch),
    Mutated(serde_json::Value),
}

impl Verdict {
    /// Admit the request unchanged.
    pub fn allow() -> Self {
        Self::of(Decision::Allow)
    }

    /// Refuse the request; the apiserver shows `message` to whoever made it.
    pub fn deny(message: impl Into<String>) -> Self {
        Self::of(Decision::Deny(message.into()))
    }

    /// Admit the request with this JSON patch applied to its object (mutating
    /// webhooks only).
    pub fn patch(patch: json_patch::Patch) -> Self {
        Self::of(Decision::Patch(patch))
    }

    /// Admit the request with its object replaced by `object`: the server sends the
    /// JSON patch from the request's object to this one (mutating webhooks only).
    /// Fields unknown to `K` are left as they are.
    pub fn mutate<K: Serialize>(object: &K) -> Self {
        match serde_json::to_value(object) {
            Ok(value) => Self::of(Decision::Mutated(value)),
            Err(err) => Self::deny(format!("the mutated object cannot be serialized: {err}")),
        }
    }

    /// Adds a warning, shown to the client (kubectl prints it) whatever the decision.
    pub fn warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }

    fn of(decision: Decision) -> Self {
        Verdict {
            decision,
            warnings: Vec::new(),
        }
    }
}

/// Validating or mutating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Validating,
    Mutating,
}

/// What the server knows of the request before the handler: where it came from.
pub(crate) struct Origin {
    pub cluster_name: ClusterName,
    pub cluster: Arc<Cluster>,
    pub fleet: Fleet,
}

/// An answer, or why the webhook failed (to be answered by its failure policy).
pub(crate) type Outcome = Result<AdmissionResponse, String>;

type BoxFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A handler, erased: the request's body and origin in, an outcome out.
type Handle = Box<dyn Fn(&[u8], Origin) -> BoxFuture + Send + Sync>;

/// A registered webhook: its configuration and its handler, type erased.
pub(crate) struct Hook {
    pub kind: Kind,
    pub webhook: Webhook,
    /// Group, version and plural of the handled type, for the webhook's rule.
    pub resource: (String, String, String),
    pub handle: Handle,
}

impl Hook {
    pub(crate) fn new<K, F, Fut, Ctx>(kind: Kind, webhook: Webhook, handler: F, ctx: Arc<Ctx>) -> Self
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Serialize + Clone + Send + Sync + 'static,
        F: Fn(AdmissionContext<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Verdict> + Send + 'static,
        Ctx: Send + Sync + 'static,
    {
        let resource = (
            K::group(&()).into_owned(),
            K::version(&()).into_owned(),
            K::plural(&()).into_owned(),
        );
        let (handler, timeout) = (Arc::new(handler), webhook.timeout);
        let handle = move |body: &[u8], origin: Origin| -> BoxFuture {
            let parsed = parse::<K>(body);
            let (handler, ctx) = (handler.clone(), ctx.clone());
            Box::pin(async move {
                let request = parsed?;
                let original = match kind {
                    Kind::Mutating => request
                        .object
                        .as_ref()
                        .map(serde_json::to_value)
                        .transpose()
                        .ok()
                        .flatten(),
                    Kind::Validating => None,
                };
                let response = AdmissionResponse::from(&request);
                let context = AdmissionContext {
                    request,
                    cluster_name: origin.cluster_name,
                    cluster: origin.cluster,
                    fleet: origin.fleet,
                };
                let verdict = AssertUnwindSafe(handler(context, ctx)).catch_unwind();
                // The apiserver gives up at the webhook's timeout; answering later
                // is pointless, and the handler's work is dropped with it.
                let verdict = match tokio::time::timeout(handler_budget(timeout), verdict).await {
                    Ok(Ok(verdict)) => verdict,
                    Ok(Err(_)) => return Err("its handler panicked".into()),
                    Err(_) => return Err(format!("its handler took longer than {timeout:?}")),
                };
                respond(kind, response, verdict, original)
            })
        };
        Hook {
            kind,
            webhook,
            resource,
            handle: Box::new(handle),
        }
    }
}

/// The time a handler gets: the apiserver's timeout, less a margin for the answer's
/// way back.
fn handler_budget(timeout: Duration) -> Duration {
    timeout
        .saturating_sub(Duration::from_millis(250))
        .max(Duration::from_millis(100))
}

fn parse<K>(body: &[u8]) -> Result<AdmissionRequest<K>, String>
where
    K: Resource + DeserializeOwned,
{
    let review: AdmissionReview<K> =
        serde_json::from_slice(body).map_err(|err| format!("the AdmissionReview cannot be read: {err}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview holds no request".to_owned())
}

fn respond(
    kind: Kind,
    mut response: AdmissionResponse,
    verdict: Verdict,
    original: Option<serde_json::Value>,
) -> Outcome {
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings);
    }
    let patch = match (verdict.decision, kind) {
        (Decision::Allow, _) => return Ok(response),
        (Decision::Deny(message), _) => return Ok(response.deny(message)),
        (Decision::Patch(_) | Decision::Mutated(_), Kind::Validating) => {
            return Err("its handler answered a patch, which a validating webhook cannot".into());
        }
        (Decision::Patch(patch), Kind::Mutating) => patch,
        (Decision::Mutated(mutated), Kind::Mutating) => {
            let Some(original) = original else {
                return Err("its handler mutated a request without an object (a delete?)".into());
            };
            json_patch::diff(&original, &mutated)
        }
    };
    if patch.0.is_empty() {
        return Ok(response);
    }
    response
        .with_patch(patch)
        .map_err(|err| format!("its patch cannot be serialized: {err}"))
}

/// The request's `uid`, read without its type, for answering a request that cannot
/// be read as the webhook's type.
pub(crate) fn request_uid(body: &[u8]) -> Option<String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).ok()?;
    review.request.map(|request| request.uid)
}
