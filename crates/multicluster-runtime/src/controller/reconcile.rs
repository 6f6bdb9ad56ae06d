//! The reconciler's view of a request, and its type-erased form.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::request::{Action, Request};
use super::source::wait_synced_logged;
use crate::cache::{CacheObject, WatchSpec};
use crate::cluster::Cluster;

/// One request as the reconciler sees it: which object, in which cluster, and the
/// object itself from the cluster's cache.
#[derive(Debug, Clone)]
pub struct ReconcileRequest<K> {
    /// The cluster and object key.
    pub request: Request,
    /// The object as cached, or `None` if it does not exist (any more).
    pub object: Option<Arc<K>>,
    /// The cluster the object lives in: its client and cache.
    pub cluster: Arc<Cluster>,
}

impl<K> ReconcileRequest<K> {
    /// A client for the request's cluster.
    pub fn client(&self) -> kube::Client {
        self.cluster.client()
    }
}

/// How a reconcile ended, after the error policy had its say.
pub(crate) enum Outcome {
    Done(Action),
    Failed { action: Action, error: String },
}

/// A reconciler with its object type and context erased, so the runner is not generic.
pub(crate) trait Reconciler: Send + Sync {
    fn reconcile(&self, request: Request, cluster: Arc<Cluster>) -> BoxFuture<'static, Outcome>;

    /// Waits until `cluster`'s cache of the primary type has synced (logging every
    /// `timeout` that passes); `false` if the cache stopped first.
    fn wait_synced(&self, cluster: &Arc<Cluster>, timeout: Duration) -> BoxFuture<'static, bool>;
}

pub(crate) struct TypedReconciler<K: CacheObject, R, P, C> {
    pub dyntype: K::DynamicType,
    pub spec: WatchSpec,
    pub reconcile: R,
    pub error_policy: P,
    pub context: Arc<C>,
}

impl<K, R, P, C, F, E> Reconciler for TypedReconciler<K, R, P, C>
where
    K: CacheObject,
    R: Fn(ReconcileRequest<K>, Arc<C>) -> F + Send + Sync,
    F: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    P: Fn(&Request, &E, Arc<C>) -> Action + Send + Sync + Clone + 'static,
    C: Send + Sync + 'static,
{
    fn wait_synced(&self, cluster: &Arc<Cluster>, timeout: Duration) -> BoxFuture<'static, bool> {
        let informer = cluster
            .cache()
            .informer_with::<K>(&self.dyntype, self.spec.clone());
        Box::pin(async move { wait_synced_logged(&informer, timeout).await })
    }

    fn reconcile(&self, request: Request, cluster: Arc<Cluster>) -> BoxFuture<'static, Outcome> {
        let informer = cluster
            .cache()
            .informer_with::<K>(&self.dyntype, self.spec.clone());
        let object = informer.store().get(request.namespace(), request.name());
        let target = ReconcileRequest {
            request: request.clone(),
            object,
            cluster,
        };
        let attempt = (self.reconcile)(target, self.context.clone());
        let (policy, context) = (self.error_policy.clone(), self.context.clone());
        Box::pin(async move {
            match attempt.await {
                Ok(action) => Outcome::Done(action),
                Err(error) => Outcome::Failed {
                    action: policy(&request, &error, context),
                    error: error.to_string(),
                },
            }
        })
    }
}
