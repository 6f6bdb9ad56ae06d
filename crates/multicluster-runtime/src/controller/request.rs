//! What a reconciler is asked to do, and what it answers.

use std::fmt;
use std::time::Duration;

use crate::cache::ObjectKey;
use crate::cluster::ClusterName;

/// A request to reconcile one object of one cluster.
///
/// Requests are keys, not objects: several changes of the same object while it waits
/// in the queue collapse into one request.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Request {
    /// The cluster the object lives in.
    pub cluster: ClusterName,
    /// The object's namespace and name.
    pub key: ObjectKey,
}

impl Request {
    /// A request for `namespace/name` (`namespace` `None` for cluster-scoped objects)
    /// in `cluster`.
    pub fn new(cluster: impl Into<ClusterName>, namespace: Option<&str>, name: impl Into<String>) -> Self {
        Request {
            cluster: cluster.into(),
            key: ObjectKey::new(namespace, name),
        }
    }

    /// A request for the object `key` in `cluster`.
    pub fn for_key(cluster: ClusterName, key: ObjectKey) -> Self {
        Request { cluster, key }
    }

    /// The object's namespace, if it is namespaced.
    pub fn namespace(&self) -> Option<&str> {
        self.key.namespace.as_deref()
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.key.name
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key.namespace {
            Some(ns) => write!(f, "{}/{ns}/{}", self.cluster, self.key.name),
            None => write!(f, "{}/{}", self.cluster, self.key.name),
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({self})")
    }
}

/// What should happen to a request after its reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action(pub(crate) Next);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    AwaitChange,
    RequeueAfter(Duration),
    Backoff,
}

impl Action {
    /// Reconcile again only when something changes.
    pub fn await_change() -> Self {
        Action(Next::AwaitChange)
    }

    /// Reconcile again after `delay` (sooner if something changes).
    pub fn requeue(delay: Duration) -> Self {
        Action(Next::RequeueAfter(delay))
    }

    /// Reconcile again after the key's exponential backoff delay, which doubles with
    /// each consecutive backoff and resets after a successful reconcile. The usual
    /// answer of an error policy.
    pub fn backoff() -> Self {
        Action(Next::Backoff)
    }
}
