//! Settings of a cache and of one watch.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::runtime::watcher;
use serde::Serialize;

use super::{CacheObject, CompactTypes};

/// Settings shared by every informer of a [`Cache`](super::Cache).
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::cache::CacheOptions;
///
/// let options = CacheOptions::default()
///     .sync_timeout(Duration::from_secs(10))
///     .strip_managed_fields(false);
/// assert_eq!(options.event_capacity, 1024);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheOptions {
    /// How long the cache's reading shortcuts ([`Cache::get`](super::Cache::get),
    /// [`list`](super::Cache::list), [`list_by_index`](super::Cache::list_by_index))
    /// wait for an informer's first sync before failing with
    /// [`CacheError::SyncTimeout`](super::CacheError::SyncTimeout). Default: 30 s.
    pub sync_timeout: Duration,
    /// Whether to drop `metadata.managedFields` from every object before storing it.
    /// Controllers rarely read them, and they take more than half the memory of a
    /// small object. Default: `true`.
    pub strip_managed_fields: bool,
    /// How many events each informer buffers for subscribers that fall behind; a
    /// subscriber further behind gets
    /// [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged) (see
    /// [`Informer::subscribe`](super::Informer::subscribe)). Clamped to
    /// `1..=`[`MAX_EVENT_CAPACITY`](Self::MAX_EVENT_CAPACITY). Default: 1024.
    pub event_capacity: usize,
    /// How many events each per-namespace channel of an informer buffers: the
    /// channels that subscribers through a [namespace-scoped view](super::Cache::scoped)
    /// read (see [`Informer::subscribe`](super::Informer::subscribe)). A namespace
    /// sees a fraction of a cluster's events and there may be thousands of views, so
    /// this is smaller than [`event_capacity`](Self::event_capacity); a subscriber
    /// further behind gets `Lagged` and re-reads its namespace. Each channel's
    /// buffer is allocated when it is made, about 48 bytes per event, once per
    /// namespace-cluster a controller watches. Clamped like `event_capacity`.
    /// Default: 32.
    pub namespace_event_capacity: usize,
    /// The namespaces that watches of namespaced types cover when their
    /// [`WatchSpec`] does not say ([`WatchNamespaces::CacheDefault`]): one watch per
    /// namespace, merged into one store. Empty (the default): all namespaces, one
    /// cluster-wide watch. Like controller-runtime's `cache.Options.DefaultNamespaces`.
    ///
    /// Set it when the cluster's credentials may only read some namespaces: a
    /// cluster-wide watch would be refused (403) and retried forever. Cluster-scoped
    /// types (Namespaces, Nodes, …) are not affected.
    pub default_namespaces: BTreeSet<String>,
    /// Whether informers ask the apiserver to stream their first list as watch
    /// events (`sendInitialEvents`, Kubernetes' "watch-list") rather than list it
    /// in pages. A streamed list is decoded one object at a time; a paged one 500
    /// objects at a time, and those pages sit beside the store while it fills: with
    /// 8 clusters × 1,000 small ConfigMaps the peak was ≈ 8 MiB lower streamed. An
    /// apiserver that cannot stream lists (before 1.27; 1.27–1.31 and 1.33 unless
    /// its `WatchList` feature gate is on) refuses the first watch with 422 or 400,
    /// and the informer then lists in pages for the rest of its life, logged once
    /// at INFO (client-go's informers fall back likewise). Default: `true`, as
    /// client-go's since 1.35.
    pub streaming_lists: bool,
    /// The types whose informers keep their objects in the compact stored form:
    /// as JSON, decoded on every read. Set with [`compact`](Self::compact). Empty
    /// (the default): every store keeps decoded objects.
    pub compact: CompactTypes,
}

impl CacheOptions {
    /// The largest [`event_capacity`](Self::event_capacity) used; larger values are
    /// lowered to it, since the buffer is allocated up front.
    pub const MAX_EVENT_CAPACITY: usize = 1 << 20;

    /// Sets [`sync_timeout`](Self::sync_timeout).
    #[must_use]
    pub fn sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// Sets [`strip_managed_fields`](Self::strip_managed_fields).
    #[must_use]
    pub fn strip_managed_fields(mut self, strip: bool) -> Self {
        self.strip_managed_fields = strip;
        self
    }

    /// Sets [`streaming_lists`](Self::streaming_lists).
    #[must_use]
    pub fn streaming_lists(mut self, streaming: bool) -> Self {
        self.streaming_lists = streaming;
        self
    }

    /// Sets [`event_capacity`](Self::event_capacity).
    #[must_use]
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Sets [`namespace_event_capacity`](Self::namespace_event_capacity).
    #[must_use]
    pub fn namespace_event_capacity(mut self, capacity: usize) -> Self {
        self.namespace_event_capacity = capacity;
        self
    }

    /// Sets [`default_namespaces`](Self::default_namespaces); empty names are
    /// ignored.
    ///
    /// ```
    /// use multicluster_runtime::cache::CacheOptions;
    ///
    /// let options = CacheOptions::default().default_namespaces(["team-a", "team-b"]);
    /// assert_eq!(options.default_namespaces.len(), 2);
    /// ```
    #[must_use]
    pub fn default_namespaces<I>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.default_namespaces = namespaces
            .into_iter()
            .map(Into::into)
            .filter(|ns: &String| !ns.is_empty())
            .collect();
        self
    }

    /// Keeps the objects of `K` in the compact stored form: each informer's
    /// [`Store`](super::Store) holds every object as its JSON and decodes it on read.
    /// Like controller-runtime's per-object cache options (`ByObject`), it is set per
    /// type; for `DynamicObject` it covers every dynamic type, for a
    /// metadata-only informer name [`PartialObjectMeta<K>`](kube::core::PartialObjectMeta).
    ///
    /// # The trade-off
    ///
    /// - **Memory**: a small object is stored in about a fifth of the heap. A
    ///   ConfigMap with one label and one data entry takes ≈ 1.6 KiB as
    ///   k8s-openapi decodes it (each one-entry `BTreeMap` is a 544-byte B-tree
    ///   leaf) and ≈ 300 bytes as JSON. The larger and flatter the objects, the
    ///   smaller the gain.
    /// - **Each read decodes**: [`Store::get`](super::Store::get),
    ///   [`list`](super::Store::list), [`by_index`](super::Store::by_index) and the
    ///   cache's shortcuts return a new `Arc` per object per read, decoded outside
    ///   the store's lock (≈ 2 µs for that ConfigMap, so a list of 10,000 objects
    ///   costs ≈ 20 ms of CPU and allocates them all, where the decoded form hands
    ///   out shared `Arc`s). Readers that list many objects often should keep the
    ///   decoded form, or read through an index; a pass over all of them
    ///   ([`Store::for_each`](super::Store::for_each)) holds one decoded object at
    ///   a time, where a list holds them all.
    /// - **Each write encodes** (≈ 1 µs), and an update decodes the version it
    ///   replaces, for the event's `old`.
    /// - **Events** still carry decoded objects
    ///   ([`InformerEvent::Applied`](super::InformerEvent::Applied)'s `new` is the
    ///   object as it was stored, `old` is decoded from the stored form); they are
    ///   no longer shared with the store, so a subscriber that falls behind holds
    ///   the objects of its unread events.
    /// - **Field indexes** are computed when an object is stored, from the object
    ///   in hand, so indexing costs no decode.
    ///
    /// Reads return objects equal to those of the decoded form. `K` must read back
    /// from its own JSON, as every k8s-openapi type, `DynamicObject` and derived
    /// custom resource does; a store whose first object does not logs a warning and
    /// keeps the decoded form. Like [`Cache::set_transform`](super::Cache::set_transform),
    /// it applies to informers created after the cache is made with these options.
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// use multicluster_runtime::cache::CacheOptions;
    ///
    /// let options = CacheOptions::default().compact::<ConfigMap>();
    /// assert!(options.compact.contains::<ConfigMap>());
    /// ```
    #[must_use]
    pub fn compact<K: CacheObject + Serialize>(mut self) -> Self {
        self.compact.insert::<K>();
        self
    }

    /// The capacity actually used: never zero (the channel would panic), never huge.
    pub(crate) fn effective_event_capacity(&self) -> usize {
        self.event_capacity.clamp(1, Self::MAX_EVENT_CAPACITY)
    }

    /// The per-namespace capacity actually used, clamped likewise.
    pub(crate) fn effective_namespace_event_capacity(&self) -> usize {
        self.namespace_event_capacity.clamp(1, Self::MAX_EVENT_CAPACITY)
    }
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            sync_timeout: Duration::from_secs(30),
            strip_managed_fields: true,
            event_capacity: 1024,
            namespace_event_capacity: 32,
            default_namespaces: BTreeSet::new(),
            streaming_lists: true,
            compact: CompactTypes::default(),
        }
    }
}

/// Which namespaces a watch of a namespaced type covers. Cluster-scoped types ignore
/// it: their objects belong to no namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WatchNamespaces {
    /// The cache's [`default_namespaces`](CacheOptions::default_namespaces): all
    /// namespaces if it has none. The default.
    #[default]
    CacheDefault,
    /// All namespaces, with one cluster-wide watch, whatever the cache's default.
    All,
    /// These namespaces only: one watch per namespace, merged into one store, so that
    /// reads and indexes see one set of objects. Needs only namespaced RBAC (a Role
    /// in each namespace).
    Only(BTreeSet<String>),
}

/// Which objects of a type one watch covers. The default covers all of them, in the
/// cache's [default namespaces](CacheOptions::default_namespaces) (all namespaces
/// unless set).
///
/// Informers are shared per type *and* spec: requests with equal specs share one
/// informer; different specs get separate informers and separate stores. A spec's
/// namespaces are resolved against the cache's default first, so a spec that names
/// the default namespaces and one that leaves them to the cache share one informer.
///
/// ```
/// use multicluster_runtime::cache::{WatchNamespaces, WatchSpec};
///
/// let spec = WatchSpec::default().labels("app=web").namespace("team-a").namespace("team-b");
/// assert_eq!(spec.label_selector.as_deref(), Some("app=web"));
/// assert!(matches!(&spec.namespaces, WatchNamespaces::Only(set) if set.len() == 2));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WatchSpec {
    /// A label selector, e.g. `app=web,tier!=db`.
    pub label_selector: Option<String>,
    /// A field selector, e.g. `metadata.name=config`.
    pub field_selector: Option<String>,
    /// The namespaces watched (for namespaced types).
    pub namespaces: WatchNamespaces,
}

impl WatchSpec {
    /// Sets the label selector.
    #[must_use]
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_owned());
        self
    }

    /// Sets the field selector.
    #[must_use]
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_owned());
        self
    }

    /// Adds a namespace to watch: after the first call, only the namespaces named
    /// are watched, one watch each. An empty name is ignored.
    #[must_use]
    pub fn namespace(self, namespace: impl Into<String>) -> Self {
        self.namespaces([namespace])
    }

    /// Adds namespaces to watch, like [`namespace`](Self::namespace) for each.
    #[must_use]
    pub fn namespaces<I>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut set = match self.namespaces {
            WatchNamespaces::Only(set) => set,
            WatchNamespaces::CacheDefault | WatchNamespaces::All => BTreeSet::new(),
        };
        set.extend(namespaces.into_iter().map(Into::into).filter(|ns| !ns.is_empty()));
        self.namespaces = if set.is_empty() {
            WatchNamespaces::CacheDefault
        } else {
            WatchNamespaces::Only(set)
        };
        self
    }

    /// Watches all namespaces with one cluster-wide watch, whatever the cache's
    /// [default namespaces](CacheOptions::default_namespaces).
    #[must_use]
    pub fn all_namespaces(mut self) -> Self {
        self.namespaces = WatchNamespaces::All;
        self
    }

    /// The namespaces watched as a list, `None` for all namespaces. Only meaningful
    /// for a resolved spec ([`Informer::spec`](super::Informer::spec)), where
    /// [`WatchNamespaces::CacheDefault`] was replaced.
    pub fn namespace_list(&self) -> Option<Vec<String>> {
        match &self.namespaces {
            WatchNamespaces::Only(set) => Some(set.iter().cloned().collect()),
            WatchNamespaces::CacheDefault | WatchNamespaces::All => None,
        }
    }

    /// The same selection with empty selectors written as `None`, so that specs that
    /// select the same objects share one watch.
    pub(crate) fn normalized(self) -> Self {
        let keep = |selector: Option<String>| selector.filter(|s| !s.trim().is_empty());
        let namespaces = match self.namespaces {
            WatchNamespaces::Only(set) => {
                let set: BTreeSet<String> = set.into_iter().filter(|ns| !ns.is_empty()).collect();
                if set.is_empty() {
                    WatchNamespaces::CacheDefault
                } else {
                    WatchNamespaces::Only(set)
                }
            }
            other => other,
        };
        WatchSpec {
            label_selector: keep(self.label_selector),
            field_selector: keep(self.field_selector),
            namespaces,
        }
    }

    /// The spec as watched: namespaces resolved against the cache's `defaults`
    /// ([`WatchNamespaces::All`] or [`WatchNamespaces::Only`], never `CacheDefault`), and
    /// always `All` for a cluster-scoped type (`namespaced == false`).
    pub(crate) fn resolved(self, defaults: &BTreeSet<String>, namespaced: bool) -> Self {
        let mut spec = self.normalized();
        spec.namespaces = match spec.namespaces {
            _ if !namespaced => WatchNamespaces::All,
            WatchNamespaces::CacheDefault if defaults.is_empty() => WatchNamespaces::All,
            WatchNamespaces::CacheDefault => WatchNamespaces::Only(defaults.clone()),
            other => other,
        };
        spec
    }

    /// kube's watcher configuration for this spec (how the first list is made is
    /// the informer's [`ListWatch`](super::list_watch::ListWatch)'s to say).
    pub(crate) fn watcher_config(&self) -> watcher::Config {
        let mut config = watcher::Config::default();
        if let Some(labels) = &self.label_selector {
            config = config.labels(labels);
        }
        if let Some(fields) = &self.field_selector {
            config = config.fields(fields);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_selectors_normalize_to_none() {
        let spec = WatchSpec::default().labels(" ").fields("").normalized();
        assert_eq!(spec, WatchSpec::default());
    }

    #[test]
    fn namespaces_resolve_against_the_cache_default() {
        let defaults: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
        let none = BTreeSet::new();
        let only = |names: &[&str]| WatchNamespaces::Only(names.iter().map(|n| (*n).to_owned()).collect());
        let spec = WatchSpec::default();
        assert_eq!(
            spec.clone().resolved(&none, true).namespaces,
            WatchNamespaces::All
        );
        assert_eq!(
            spec.clone().resolved(&defaults, true).namespaces,
            only(&["a", "b"])
        );
        assert_eq!(
            spec.clone().resolved(&defaults, false).namespaces,
            WatchNamespaces::All
        );
        let named = WatchSpec::default().namespace("c").namespaces(["", "c", "d"]);
        assert_eq!(
            named.clone().resolved(&defaults, true).namespaces,
            only(&["c", "d"])
        );
        assert_eq!(named.namespace_list(), Some(vec!["c".to_owned(), "d".to_owned()]));
        let all = WatchSpec::default().namespace("x").all_namespaces();
        assert_eq!(all.resolved(&defaults, true).namespaces, WatchNamespaces::All);
        assert_eq!(
            WatchSpec::default().namespace("").normalized().namespaces,
            WatchNamespaces::CacheDefault
        );
        // The default namespaces named explicitly share the informer of the default.
        assert_eq!(
            WatchSpec::default()
                .namespaces(["b", "a"])
                .resolved(&defaults, true),
            WatchSpec::default().resolved(&defaults, true)
        );
    }

    #[test]
    fn event_capacity_is_clamped() {
        assert_eq!(
            CacheOptions::default()
                .event_capacity(0)
                .effective_event_capacity(),
            1
        );
        assert_eq!(
            CacheOptions::default()
                .event_capacity(usize::MAX)
                .effective_event_capacity(),
            CacheOptions::MAX_EVENT_CAPACITY
        );
    }
}
