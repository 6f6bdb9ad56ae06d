//! Sources: the watches of a controller, turning object changes into requests.
//!
//! A source watches one type through a cluster's shared cache and maps each change
//! to requests: the object itself (`for`), its owner (`owns`), or whatever a mapper
//! says (`watches`), possibly in other clusters. Each engaged cluster feeds its own
//! sources (in the controller's one task for that cluster), so a cluster that is
//! slow to sync only delays its own requests.
//!
//! A source emits nothing before its informer has synced. That alone does not keep
//! a reconciler from reading an informer that has not listed yet (the primary's
//! requests may come first), so the controller also holds a cluster's requests
//! until every source it runs for that cluster reports [`synced`](Source::synced).
//!
//! A source remembers, per object, the requests it last mapped it to. When it falls
//! behind its informer's event channel and events are lost, it enqueues what the
//! objects map to now *and* what they mapped to before, so that an object deleted
//! during the gap still reaches the reconciler, which finds it absent.
//!
//! Mappers and predicates are user code: a panic in one is caught, logged with the
//! cluster and the callback, and costs only the event at hand.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::Resource;

use super::predicate::Predicate;
use super::queue::WorkQueue;
use super::request::Request;
use crate::cache::follow::{Step, Steps, wait_synced_logged};
use crate::cache::{CacheObject, Informer, ObjectKey, WatchSpec};
use crate::cluster::{Cluster, ClusterName};

/// What a mapper knows besides the object.
#[derive(Debug, Clone)]
#[non_exhaustive]
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

    /// Queues `requests`, each run of requests for one cluster in one batch (a
    /// resync's are all for the cluster listed, as a rule).
    pub(crate) fn push(&self, requests: Vec<Request>) {
        let mut requests = requests.into_iter().peekable();
        while let Some(first) = requests.next() {
            let cluster = first.cluster;
            let mut keys = vec![first.key];
            while let Some(next) = requests.next_if(|r| r.cluster == cluster) {
                keys.push(next.key);
            }
            self.queue.add_all(cluster, keys);
        }
    }
}

/// A type-erased source, so a controller can hold sources of different types.
pub(crate) trait Source: Send + Sync {
    /// Feeds `sink` from `cluster` until dropped: first every object once the cache
    /// has synced, then every change.
    fn run(&self, cluster: Arc<Cluster>, sink: Sink) -> BoxFuture<'static, ()>;

    /// The requests the objects in `cluster`'s cache cause right now (none until its
    /// cache has synced).
    fn snapshot(&self, cluster: &Cluster, sink: &Sink) -> Vec<Request>;

    /// Waits until the informer this source follows in `cluster` has synced,
    /// logging each sync timeout that passes; `false` if its cache stopped first.
    fn synced(&self, cluster: &Cluster) -> BoxFuture<'static, bool>;
}

/// A source of objects of type `T`.
pub(crate) struct TypedSource<T: CacheObject> {
    pub dyntype: T::DynamicType,
    pub spec: WatchSpec,
    pub predicates: Vec<Predicate<T>>,
    pub mapper: Mapper<T>,
    pub sync_timeout: Duration,
}

/// The requests a source last mapped each object to, by object.
type Known = HashMap<ObjectKey, Mapped>;

/// What an object last mapped to. Most objects map to themselves (every object of
/// a controller's primary type does): that is kept as a mark, not as a copy of the
/// object's key in a list of its own, which cost three allocations per cached
/// object.
enum Mapped {
    /// The one request for the object itself, in the source's cluster.
    Itself,
    /// Anything else.
    To(Vec<Request>),
}

impl Mapped {
    fn new(requests: &[Request], source: &ClusterName, key: &ObjectKey) -> Self {
        match requests {
            [only] if only.cluster == *source && only.key == *key => Mapped::Itself,
            _ => Mapped::To(requests.to_vec()),
        }
    }

    fn into_requests(self, source: &ClusterName, key: ObjectKey) -> Vec<Request> {
        match self {
            Mapped::Itself => vec![Request::for_key(source.clone(), key)],
            Mapped::To(requests) => requests,
        }
    }
}

/// Remembers what the object `key` maps to now, and returns what it mapped to
/// before that is not among `mapped` (nothing when both are the object itself).
fn remember(known: &mut Known, source: &ClusterName, key: ObjectKey, mapped: &[Request]) -> Vec<Request> {
    let now = Mapped::new(mapped, source, &key);
    match known.entry(key) {
        Entry::Occupied(mut entry) => match (std::mem::replace(entry.get_mut(), now), entry.get()) {
            (Mapped::Itself, Mapped::Itself) => Vec::new(),
            (before, _) => before.into_requests(source, entry.key().clone()),
        },
        Entry::Vacant(entry) => {
            entry.insert(now);
            Vec::new()
        }
    }
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
    fn run(&self, cluster: Arc<Cluster>, sink: Sink) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move { this.follow(&cluster, &sink).await })
    }

    fn snapshot(&self, cluster: &Cluster, sink: &Sink) -> Vec<Request> {
        let informer = cluster
            .cache()
            .informer_with::<T>(&self.dyntype, self.spec.clone());
        if !informer.is_synced() {
            return Vec::new();
        }
        let context = sink.context(cluster.name());
        let mut requests = Vec::new();
        informer.store().for_each(|object| {
            if self.passes(cluster.name(), None, &object) {
                requests.extend(self.map(&context, &object));
            }
        });
        requests
    }

    fn synced(&self, cluster: &Cluster) -> BoxFuture<'static, bool> {
        let informer = cluster
            .cache()
            .informer_with::<T>(&self.dyntype, self.spec.clone());
        let timeout = self.sync_timeout;
        Box::pin(async move { wait_synced_logged(&informer, timeout, "controller").await })
    }
}

impl<T: CacheObject> TypedSource<T> {
    /// Whether every predicate passes the change; a panicking predicate passes it
    /// (a spare reconcile is harmless, a lost one is not).
    fn passes(&self, cluster: &ClusterName, old: Option<&T>, new: &T) -> bool {
        self.predicates.iter().all(|predicate| {
            std::panic::catch_unwind(AssertUnwindSafe(|| predicate(old, new))).unwrap_or_else(|panic| {
                report_panic(cluster, "predicate", new, panic.as_ref());
                true
            })
        })
    }

    /// The requests `object` maps to; none if the mapper panics.
    fn map(&self, context: &MapContext, object: &T) -> Vec<Request> {
        std::panic::catch_unwind(AssertUnwindSafe(|| (self.mapper)(context, object))).unwrap_or_else(
            |panic| {
                report_panic(&context.source, "mapper", object, panic.as_ref());
                Vec::new()
            },
        )
    }

    /// Maps every stored object, remembering what each maps to.
    fn map_all(&self, informer: &Informer<T>, context: &MapContext, known: &mut Known) -> Vec<Request> {
        known.clear();
        let store = informer.store();
        known.reserve(store.len());
        let mut requests = Vec::with_capacity(store.len());
        // One object at a time: a compact store decodes each for its turn only.
        store.for_each(|object| {
            let mapped = self.map(context, &object);
            if let Some(key) = ObjectKey::of(&*object) {
                let mark = Mapped::new(&mapped, &context.source, &key);
                known.insert(key, mark);
            }
            if self.passes(&context.source, None, &object) {
                requests.extend(mapped);
            }
        });
        requests
    }

    /// Maps what the cluster's informer says into requests, until the informer stops
    /// (the task running this is dropped when the engagement ends).
    async fn follow(&self, cluster: &Cluster, sink: &Sink) {
        let informer = cluster
            .cache()
            .informer_with::<T>(&self.dyntype, self.spec.clone());
        let name = cluster.name();
        let mut known = Known::new();
        let mut steps = Steps::new(informer.clone(), self.sync_timeout, "controller");
        while let Some(step) = steps.next().await {
            match step {
                Step::Resync { .. } => {
                    // What objects mapped to before (e.g. deleted while events were
                    // lost), and what they map to now; nothing before the first list.
                    let before: Vec<Request> = known
                        .drain()
                        .flat_map(|(key, mapped)| mapped.into_requests(name, key))
                        .collect();
                    sink.push(before);
                    sink.push(self.map_all(&informer, &sink.context(name), &mut known));
                }
                Step::Applied { old, new } => {
                    let context = sink.context(name);
                    let mapped = self.map(&context, &new);
                    // What `old` mapped to, e.g. a previous owner, needs a look too.
                    let before = ObjectKey::of(&*new)
                        .map(|key| remember(&mut known, name, key, &mapped))
                        .unwrap_or_default();
                    if self.passes(name, old.as_deref(), &new) {
                        sink.push(mapped);
                        sink.push(before);
                    }
                }
                Step::Deleted(object) => {
                    let before = ObjectKey::of(&*object)
                        .and_then(|key| Some(known.remove(&key)?.into_requests(name, key)));
                    sink.push(self.map(&sink.context(name), &object));
                    sink.push(before.unwrap_or_default());
                }
            }
        }
    }
}

fn report_panic<T: Resource>(
    cluster: &ClusterName,
    callback: &str,
    object: &T,
    panic: &(dyn std::any::Any + Send),
) {
    let meta = object.meta();
    tracing::error!(
        %cluster,
        callback,
        namespace = meta.namespace.as_deref().unwrap_or(""),
        name = meta.name.as_deref().unwrap_or(""),
        panic = %super::panic_message(panic),
        "user callback panicked"
    );
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

/// The request for the controlling owner of kind `K`, in the same cluster as the
/// child (Go's `EnqueueRequestForOwner` with `OnlyControllerOwner`): in the child's
/// namespace if `K` is namespaced, with no namespace if `K` is cluster-scoped.
pub(crate) fn map_owner<K: Resource, T: Resource>(
    owner_type: &K::DynamicType,
    owner_namespaced: bool,
) -> Mapper<T> {
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
                let namespace = if owner_namespaced {
                    meta.namespace.as_deref()
                } else {
                    None
                };
                Request::new(context.source.clone(), namespace, owner.name.clone())
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
        let mapper = map_owner::<Deployment, ConfigMap>(&(), true);
        let requests = mapper(&context(), &child(vec![("apps/v1", "Deployment", "web", true)]));
        assert_eq!(requests, vec![Request::new("b", Some("ns"), "web")]);
    }

    #[test]
    fn only_the_controlling_owner_of_the_right_kind() {
        let mapper = map_owner::<Deployment, ConfigMap>(&(), true);
        let owners = vec![
            ("apps/v1", "Deployment", "not-controller", false),
            ("apps/v1", "StatefulSet", "other-kind", true),
            ("other.io/v1", "Deployment", "other-group", true),
        ];
        assert!(mapper(&context(), &child(owners)).is_empty());
    }

    #[test]
    fn cluster_scoped_owner_has_no_namespace() {
        let mapper = map_owner::<k8s_openapi::api::core::v1::Namespace, ConfigMap>(&(), false);
        let requests = mapper(&context(), &child(vec![("v1", "Namespace", "ns", true)]));
        assert_eq!(requests, vec![Request::new("b", None, "ns")]);
    }

    #[test]
    fn v02_objects_mapped_to_themselves_are_remembered_as_a_mark() {
        let source = ClusterName::from("b");
        let key = ObjectKey::new(Some("ns"), "web");
        let itself = vec![Request::for_key(source.clone(), key.clone())];
        let owner = vec![Request::new("b", Some("ns"), "owner")];
        let mut known = Known::new();

        assert!(remember(&mut known, &source, key.clone(), &itself).is_empty());
        assert!(matches!(known[&key], Mapped::Itself), "no copy of the key");
        // Itself again: nothing new to look at.
        assert!(remember(&mut known, &source, key.clone(), &itself).is_empty());
        // Mapped elsewhere now: the object itself needs a look too, and the other way round.
        assert_eq!(remember(&mut known, &source, key.clone(), &owner), itself);
        assert_eq!(remember(&mut known, &source, key.clone(), &itself), owner);
        // A resync (or a deletion) gets the object's request back from the mark.
        let (key, mapped) = known.drain().next().expect("remembered");
        assert_eq!(mapped.into_requests(&source, key), itself);
    }

    #[test]
    fn core_group_is_empty() {
        assert_eq!(api_group("v1"), "");
        assert_eq!(api_group("apps/v1"), "apps");
    }
}
