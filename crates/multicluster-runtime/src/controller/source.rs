//! Sources: the watches of a controller, turning object changes into requests.
//!
//! A source watches one type through a cluster's shared cache and maps each change
//! to requests: the object itself (`for`), its owner (`owns`), or whatever a mapper
//! says (`watches`), possibly in other clusters. Each engaged cluster runs its own
//! source task, so a cluster that is slow to sync only delays its own requests.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::Resource;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::predicate::Predicate;
use super::queue::WorkQueue;
use super::request::Request;
use crate::cache::{CacheObject, InformerEvent, ObjectKey, WatchSpec};
use crate::cluster::{Cluster, ClusterName};

/// What a mapper knows besides the object.
#[derive(Debug, Clone)]
pub struct MapContext {
    /// The cluster the object was seen in.
    pub source: ClusterName,
    /// The clusters engaged with this controller right now, for fan-out.
    pub clusters: Arc<[ClusterName]>,
}

/// Maps a changed object to the requests it should cause.
pub type Mapper<T> = Arc<dyn Fn(&MapContext, &T) -> Vec<Request> + Send + Sync>;

/// The queue a controller's sources feed, with the current cluster list.
#[derive(Clone)]
pub(crate) struct Sink {
    pub queue: WorkQueue<ClusterName, ObjectKey>,
    pub clusters: Arc<RwLock<Arc<[ClusterName]>>>,
}

impl Sink {
    fn context(&self, source: &ClusterName) -> MapContext {
        let clusters = self.clusters.read().unwrap_or_else(|p| p.into_inner()).clone();
        MapContext {
            source: source.clone(),
            clusters,
        }
    }

    pub(crate) fn push(&self, requests: Vec<Request>) {
        for request in requests {
            self.queue.add(request.cluster, request.key);
        }
    }
}

/// A type-erased source, so a controller can hold sources of different types.
pub(crate) trait Source: Send + Sync {
    /// Feeds `sink` from `cluster` until `token` is cancelled: first every object
    /// once the cache has synced, then every change.
    fn start(&self, cluster: Arc<Cluster>, token: CancellationToken, sink: Sink);

    /// The requests the objects in `cluster`'s cache cause right now (none until its
    /// cache has synced).
    fn snapshot(&self, cluster: &Cluster, sink: &Sink) -> Vec<Request>;
}

/// A source of objects of type `T`.
pub(crate) struct TypedSource<T: CacheObject> {
    pub dyntype: T::DynamicType,
    pub spec: WatchSpec,
    pub predicates: Vec<Predicate<T>>,
    pub mapper: Mapper<T>,
    pub sync_timeout: Duration,
}

impl<T: CacheObject> Clone for TypedSource<T> {
    fn clone(&self) -> Self {
        TypedSource {
            dyntype: self.dyntype.clone(),
            spec: self.spec.clone(),
            predicates: self.predicates.clone(),
            mapper: self.mapper.clone(),
            sync_timeout: self.sync_timeout,
        }
    }
}

impl<T: CacheObject> Source for TypedSource<T> {
    fn start(&self, cluster: Arc<Cluster>, token: CancellationToken, sink: Sink) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = this.run(&cluster, &sink) => {}
            }
        });
    }

    fn snapshot(&self, cluster: &Cluster, sink: &Sink) -> Vec<Request> {
        let informer = cluster
            .cache()
            .informer_with::<T>(&self.dyntype, self.spec.clone());
        if !informer.is_synced() {
            return Vec::new();
        }
        let context = sink.context(cluster.name());
        let objects = informer.store().list();
        objects
            .iter()
            .filter(|o| self.passes(None, o))
            .flat_map(|o| (self.mapper)(&context, o))
            .collect()
    }
}

impl<T: CacheObject> TypedSource<T> {
    fn passes(&self, old: Option<&T>, new: &T) -> bool {
        self.predicates.iter().all(|p| p(old, new))
    }

    async fn run(&self, cluster: &Cluster, sink: &Sink) {
        let informer = cluster
            .cache()
            .informer_with::<T>(&self.dyntype, self.spec.clone());
        while let Err(err) = informer.wait_synced(self.sync_timeout).await {
            // Only this cluster waits; the informer keeps retrying underneath.
            tracing::error!(cluster = %cluster.name(), error = %err, "cache not synced; still waiting");
            if informer.is_stopped() {
                return;
            }
        }
        // Subscribe, then list: the informer stores a change before announcing it, so
        // every change is in the listing or among the events (or both, which the
        // queue dedups). Subscribing before the sync would deliver the initial list
        // twice, and a duplicate arriving mid-reconcile would requeue the key at
        // once, defeating the error backoff.
        let mut events = informer.subscribe();
        sink.push(self.snapshot(cluster, sink));
        loop {
            match events.recv().await {
                Ok(InformerEvent::Applied { old, new }) => {
                    if self.passes(old.as_deref(), &new) {
                        let context = sink.context(cluster.name());
                        sink.push((self.mapper)(&context, &new));
                        // Mapped targets may have changed (e.g. another owner).
                        if let Some(old) = old {
                            sink.push((self.mapper)(&context, &old));
                        }
                    }
                }
                Ok(InformerEvent::Deleted(object)) => {
                    sink.push((self.mapper)(&sink.context(cluster.name()), &object));
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(cluster = %cluster.name(), missed, "controller fell behind its cache; requeueing all");
                    sink.push(self.snapshot(cluster, sink));
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// The request for the object itself.
pub(crate) fn map_self<T: Resource>() -> Mapper<T> {
    Arc::new(|context: &MapContext, object: &T| {
        let meta = object.meta();
        match &meta.name {
            Some(name) => vec![Request::new(
                context.source.clone(),
                meta.namespace.as_deref(),
                name.clone(),
            )],
            None => Vec::new(),
        }
    })
}

/// The request for the controlling owner of kind `K`, in the same cluster and
/// namespace as the child (Go's `EnqueueRequestForOwner` with `OnlyControllerOwner`).
pub(crate) fn map_owner<K: Resource, T: Resource>(owner_type: &K::DynamicType) -> Mapper<T> {
    let kind = K::kind(owner_type).into_owned();
    let group = K::group(owner_type).into_owned();
    Arc::new(move |context: &MapContext, child: &T| {
        let meta = child.meta();
        let owners = meta.owner_references.iter().flatten();
        owners
            .filter(|owner| {
                owner.controller == Some(true) && owner.kind == kind && api_group(&owner.api_version) == group
            })
            .map(|owner| {
                Request::new(
                    context.source.clone(),
                    meta.namespace.as_deref(),
                    owner.name.clone(),
                )
            })
            .collect()
    })
}

/// The group of an `apiVersion`: `apps` of `apps/v1`, empty for the core `v1`.
fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn context() -> MapContext {
        MapContext {
            source: "b".into(),
            clusters: Arc::from(vec![ClusterName::from("b")]),
        }
    }

    fn child(owners: Vec<(&str, &str, &str, bool)>) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some("ns".into());
        cm.metadata.owner_references = Some(
            owners
                .into_iter()
                .map(|(api_version, kind, name, controller)| OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: "u".into(),
                    controller: Some(controller),
                    block_owner_deletion: None,
                })
                .collect(),
        );
        cm
    }

    #[test]
    fn owner_in_the_childs_cluster_and_namespace() {
        let mapper = map_owner::<Deployment, ConfigMap>(&());
        let requests = mapper(&context(), &child(vec![("apps/v1", "Deployment", "web", true)]));
        assert_eq!(requests, vec![Request::new("b", Some("ns"), "web")]);
    }

    #[test]
    fn only_the_controlling_owner_of_the_right_kind() {
        let mapper = map_owner::<Deployment, ConfigMap>(&());
        let owners = vec![
            ("apps/v1", "Deployment", "not-controller", false),
            ("apps/v1", "StatefulSet", "other-kind", true),
            ("other.io/v1", "Deployment", "other-group", true),
        ];
        assert!(mapper(&context(), &child(owners)).is_empty());
    }

    #[test]
    fn core_group_is_empty() {
        assert_eq!(api_group("v1"), "");
        assert_eq!(api_group("apps/v1"), "apps");
    }
}
