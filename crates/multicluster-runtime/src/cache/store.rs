//! The store of one informer: objects by namespace and name, plus field indexes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::Resource;

use super::index::{Extractor, Index};
use super::{CacheError, InformerEvent, ObjectKey};
use crate::ClusterName;

/// The objects of one informer, readable by anyone, written only by the informer.
///
/// Unlike kube's `reflector::Store`, it files objects by namespace, so listing one
/// namespace reads only that namespace's objects (what a "namespace as a cluster"
/// view over one shared cache needs), and it keeps named field indexes
/// (see [`Cache::index_field`](super::Cache::index_field)).
///
/// Reads take a short read lock and never wait for the network; objects are returned
/// as `Arc`s shared with the store, never copied. An object read may be replaced by
/// the informer a moment later: the store is a recent view, not a transaction.
pub struct Store<K> {
    cluster: ClusterName,
    resource: Arc<str>,
    state: RwLock<State<K>>,
}

struct State<K> {
    /// Objects by namespace (`""` for cluster-scoped ones), then by name.
    namespaces: HashMap<String, HashMap<String, Entry<K>>>,
    len: usize,
    indexes: HashMap<String, Index<K>>,
    /// The number of the current, or last, relist. Entries the relist does not stamp
    /// with it were not listed: they are gone from the cluster.
    relist: u64,
}

struct Entry<K> {
    object: Arc<K>,
    relist: u64,
}

impl<K> Store<K> {
    pub(crate) fn new(cluster: ClusterName, resource: Arc<str>) -> Self {
        Store {
            cluster,
            resource,
            state: RwLock::new(State {
                namespaces: HashMap::new(),
                len: 0,
                indexes: HashMap::new(),
                relist: 0,
            }),
        }
    }

    // A panic in a user's index extractor poisons the lock; the maps are still
    // consistent enough to serve (at worst one object is filed under stale values),
    // and a cache that refuses all reads forever would be worse.
    fn read(&self) -> RwLockReadGuard<'_, State<K>> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State<K>> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cluster the objects come from.
    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    /// The resource type stored, e.g. `ConfigMap (v1)`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The object `name` in `namespace` (`None` for cluster-scoped objects).
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let state = self.read();
        let entry = state.namespaces.get(namespace.unwrap_or(""))?.get(name)?;
        Some(entry.object.clone())
    }

    /// Every object, in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        let state = self.read();
        let mut objects = Vec::with_capacity(state.len);
        objects.extend(
            state
                .namespaces
                .values()
                .flat_map(HashMap::values)
                .map(|e| e.object.clone()),
        );
        objects
    }

    /// The objects of one namespace, in no particular order, without looking at the
    /// others. Cluster-scoped objects are filed under the empty namespace `""`.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let state = self.read();
        state
            .namespaces
            .get(namespace)
            .map(|names| names.values().map(|e| e.object.clone()).collect())
            .unwrap_or_default()
    }

    /// The namespaces that hold at least one object, in no particular order
    /// (cluster-scoped objects are not counted).
    pub fn namespaces(&self) -> Vec<String> {
        let state = self.read();
        state
            .namespaces
            .keys()
            .filter(|ns| !ns.is_empty())
            .cloned()
            .collect()
    }

    /// The objects filed under `value` in the index `index`, in no particular order.
    ///
    /// # Errors
    /// [`CacheError::UnknownIndex`] if no index of that name was registered for the
    /// type.
    pub fn by_index(&self, index: &str, value: &str) -> Result<Vec<Arc<K>>, CacheError> {
        let state = self.read();
        let Some(found) = state.indexes.get(index) else {
            return Err(CacheError::UnknownIndex {
                cluster: self.cluster.clone(),
                resource: self.resource.to_string(),
                index: index.to_owned(),
            });
        };
        Ok(found
            .keys(value)
            .filter_map(|key| state.get(key))
            .map(|e| e.object.clone())
            .collect())
    }

    /// Whether an index of that name exists.
    pub fn has_index(&self, index: &str) -> bool {
        self.read().indexes.contains_key(index)
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.read().len
    }

    /// Whether no object is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an index and files every stored object in it at once.
    pub(crate) fn add_index(&self, name: &str, extract: Extractor<K>) -> Result<(), CacheError> {
        let mut state = self.write();
        if state.indexes.contains_key(name) {
            return Err(CacheError::IndexExists {
                cluster: self.cluster.clone(),
                resource: self.resource.to_string(),
                index: name.to_owned(),
            });
        }
        let mut index = Index::new(extract);
        for (namespace, names) in &state.namespaces {
            for (object_name, entry) in names {
                let key = ObjectKey::new(Some(namespace), object_name.clone());
                index.update(&key, None, Some(&entry.object));
            }
        }
        state.indexes.insert(name.to_owned(), index);
        Ok(())
    }
}

impl<K: Resource> Store<K> {
    /// Stores a created or changed object. `None` for an object without a name,
    /// which cannot be stored.
    pub(crate) fn apply(&self, object: K) -> Option<InformerEvent<K>> {
        let key = ObjectKey::of(&object)?;
        Some(self.write().upsert(key, object))
    }

    /// Removes a deleted object. The event carries the object as the apiserver last
    /// reported it.
    pub(crate) fn delete(&self, object: K) -> InformerEvent<K> {
        if let Some(key) = ObjectKey::of(&object) {
            self.write().remove(&key);
        }
        InformerEvent::Deleted(Arc::new(object))
    }

    /// A relist starts: from now on, [`relist_apply`](Self::relist_apply) marks what
    /// still exists. A relist that breaks off and starts over just begins again.
    pub(crate) fn begin_relist(&self) {
        let mut state = self.write();
        state.relist = state.relist.wrapping_add(1);
    }

    /// Stores an object listed by a relist. An event only if the object is new or its
    /// `resourceVersion` changed: after a reconnect most objects are unchanged, and
    /// waking every handler for each of them would be a storm of no-op reconciles.
    pub(crate) fn relist_apply(&self, object: K) -> Option<InformerEvent<K>> {
        let key = ObjectKey::of(&object)?;
        let mut state = self.write();
        let relist = state.relist;
        if let Some(entry) = state.get_mut(&key)
            && same_version(&*entry.object, &object)
        {
            entry.relist = relist;
            return None;
        }
        Some(state.upsert(key, object))
    }

    /// The relist is complete: removes what it did not list, which was deleted while
    /// the watch was down, and returns a [`InformerEvent::Deleted`] for each.
    pub(crate) fn finish_relist(&self) -> Vec<InformerEvent<K>> {
        let mut state = self.write();
        let relist = state.relist;
        let vanished: Vec<ObjectKey> = state
            .namespaces
            .iter()
            .flat_map(|(namespace, names)| {
                names
                    .iter()
                    .filter(|(_, entry)| entry.relist != relist)
                    .map(|(name, _)| ObjectKey::new(Some(namespace), name.clone()))
            })
            .collect();
        vanished
            .iter()
            .filter_map(|key| state.remove(key))
            .map(InformerEvent::Deleted)
            .collect()
    }
}

impl<K> State<K> {
    /// Stores `object`, stamped with the current relist, and describes the change.
    fn upsert(&mut self, key: ObjectKey, object: K) -> InformerEvent<K> {
        let new = Arc::new(object);
        let entry = Entry {
            object: new.clone(),
            relist: self.relist,
        };
        let old = self.insert(key, entry);
        InformerEvent::Applied { old, new }
    }

    fn get(&self, key: &ObjectKey) -> Option<&Entry<K>> {
        self.namespaces.get(key.namespace_or_empty())?.get(&key.name)
    }

    fn get_mut(&mut self, key: &ObjectKey) -> Option<&mut Entry<K>> {
        self.namespaces
            .get_mut(key.namespace_or_empty())?
            .get_mut(&key.name)
    }

    /// Inserts or replaces, keeping the count and the indexes right; returns the
    /// replaced object.
    fn insert(&mut self, key: ObjectKey, entry: Entry<K>) -> Option<Arc<K>> {
        let new = entry.object.clone();
        let names = self
            .namespaces
            .entry(key.namespace_or_empty().to_owned())
            .or_default();
        let old = names.insert(key.name.clone(), entry).map(|old| old.object);
        if old.is_none() {
            self.len += 1;
        }
        for index in self.indexes.values_mut() {
            index.update(&key, old.as_deref(), Some(&new));
        }
        old
    }

    /// Removes, keeping the count and the indexes right, and dropping namespaces that
    /// become empty so that namespaces coming and going do not leak.
    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let namespace = key.namespace_or_empty();
        let names = self.namespaces.get_mut(namespace)?;
        let entry = names.remove(&key.name)?;
        if names.is_empty() {
            self.namespaces.remove(namespace);
        }
        self.len -= 1;
        for index in self.indexes.values_mut() {
            index.update(key, Some(&entry.object), None);
        }
        Some(entry.object)
    }
}

/// Whether two versions are the same: equal, non-empty resource versions.
fn same_version<K: Resource>(stored: &K, listed: &K) -> bool {
    match (&stored.meta().resource_version, &listed.meta().resource_version) {
        (Some(stored), Some(listed)) => !stored.is_empty() && stored == listed,
        _ => false,
    }
}

impl<K> fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.read();
        f.debug_struct("Store")
            .field("cluster", &self.cluster)
            .field("resource", &self.resource)
            .field("len", &state.len)
            .field("indexes", &state.indexes.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::ObjectMeta;

    use super::*;

    fn config_map(namespace: &str, name: &str, version: &str, app: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn store<K>() -> Store<K> {
        Store::new(ClusterName::from("test"), Arc::from("ConfigMap (v1)"))
    }

    fn by_app() -> Extractor<ConfigMap> {
        Arc::new(|cm: &ConfigMap| {
            cm.metadata
                .labels
                .iter()
                .flatten()
                .filter(|(k, _)| *k == "app")
                .map(|(_, v)| v.clone())
                .collect()
        })
    }

    fn names(objects: Vec<Arc<ConfigMap>>) -> Vec<String> {
        let mut names: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o.metadata.namespace.as_deref().unwrap_or(""),
                    o.metadata.name.as_deref().unwrap_or("")
                )
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn gets_and_lists_by_namespace() {
        let store = store::<ConfigMap>();
        store.apply(config_map("a", "one", "1", "web"));
        store.apply(config_map("a", "two", "1", "web"));
        store.apply(config_map("b", "one", "1", "db"));
        assert_eq!(store.len(), 3);
        assert_eq!(
            store
                .get(Some("b"), "one")
                .map(|cm| cm.metadata.resource_version.clone()),
            Some(Some("1".into()))
        );
        assert!(store.get(Some("c"), "one").is_none());
        assert!(store.get(None, "one").is_none());
        assert_eq!(names(store.list_namespace("a")), ["a/one", "a/two"]);
        assert_eq!(names(store.list_namespace("missing")), Vec::<String>::new());
        assert_eq!(names(store.list()), ["a/one", "a/two", "b/one"]);
        let mut namespaces = store.namespaces();
        namespaces.sort();
        assert_eq!(namespaces, ["a", "b"]);

        // Deleting the last object of a namespace forgets the namespace.
        store.delete(config_map("b", "one", "2", "db"));
        assert_eq!(store.namespaces(), ["a"]);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn cluster_scoped_objects_are_under_no_namespace() {
        let store = store::<Namespace>();
        store.apply(Namespace {
            metadata: ObjectMeta {
                name: Some("prod".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        });
        assert!(store.get(None, "prod").is_some());
        assert!(store.get(Some(""), "prod").is_some());
        assert_eq!(store.list_namespace("").len(), 1);
        assert!(store.namespaces().is_empty());
    }

    #[test]
    fn objects_without_a_name_are_not_stored() {
        let store = store::<ConfigMap>();
        assert!(store.apply(ConfigMap::default()).is_none());
        assert!(store.relist_apply(ConfigMap::default()).is_none());
        assert!(matches!(
            store.delete(ConfigMap::default()),
            InformerEvent::Deleted(_)
        ));
        assert!(store.is_empty());
    }

    #[test]
    fn applied_events_carry_the_replaced_version() {
        let store = store::<ConfigMap>();
        let Some(InformerEvent::Applied { old: None, new }) = store.apply(config_map("a", "one", "1", "web"))
        else {
            panic!("expected a creation");
        };
        let Some(InformerEvent::Applied { old: Some(old), .. }) =
            store.apply(config_map("a", "one", "2", "web"))
        else {
            panic!("expected an update");
        };
        assert!(Arc::ptr_eq(&old, &new));
    }

    #[test]
    fn index_added_before_objects_follows_changes() {
        let store = store::<ConfigMap>();
        store.add_index("app", by_app()).unwrap();
        store.apply(config_map("a", "one", "1", "web"));
        store.apply(config_map("b", "two", "1", "web"));
        store.apply(config_map("b", "three", "1", "db"));
        assert_eq!(names(store.by_index("app", "web").unwrap()), ["a/one", "b/two"]);

        // A changed label moves the object; a deletion removes it.
        store.apply(config_map("b", "two", "2", "db"));
        assert_eq!(names(store.by_index("app", "web").unwrap()), ["a/one"]);
        assert_eq!(names(store.by_index("app", "db").unwrap()), ["b/three", "b/two"]);
        store.delete(config_map("b", "three", "3", "db"));
        assert_eq!(names(store.by_index("app", "db").unwrap()), ["b/two"]);
        assert!(store.by_index("app", "nothing").unwrap().is_empty());
    }

    #[test]
    fn index_added_after_objects_covers_them_at_once() {
        let store = store::<ConfigMap>();
        store.apply(config_map("a", "one", "1", "web"));
        store.apply(config_map("a", "two", "1", "db"));
        store.add_index("app", by_app()).unwrap();
        assert!(store.has_index("app"));
        assert_eq!(names(store.by_index("app", "web").unwrap()), ["a/one"]);
        assert_eq!(names(store.by_index("app", "db").unwrap()), ["a/two"]);
    }

    #[test]
    fn index_errors_name_cluster_type_and_index() {
        let store = store::<ConfigMap>();
        store.add_index("app", by_app()).unwrap();
        let error = store.add_index("app", by_app()).unwrap_err();
        assert!(matches!(error, CacheError::IndexExists { .. }));
        assert_eq!(
            error.to_string(),
            "an index named \"app\" already exists in the cache of ConfigMap (v1) in cluster test"
        );
        let error = store.by_index("owner", "x").unwrap_err();
        assert!(matches!(error, CacheError::UnknownIndex { .. }));
        assert_eq!(
            error.to_string(),
            "no index named \"owner\" in the cache of ConfigMap (v1) in cluster test"
        );
    }

    #[test]
    fn relist_reports_only_changes_and_removes_what_vanished() {
        let store = store::<ConfigMap>();
        store.add_index("app", by_app()).unwrap();
        store.begin_relist();
        for name in ["same", "changed", "gone"] {
            assert!(store.relist_apply(config_map("a", name, "1", "web")).is_some());
        }
        assert!(store.finish_relist().is_empty());

        // The watch broke; meanwhile "changed" changed, "gone" was deleted, "new" created.
        store.begin_relist();
        assert!(store.relist_apply(config_map("a", "same", "1", "web")).is_none());
        match store.relist_apply(config_map("a", "changed", "2", "web")) {
            Some(InformerEvent::Applied { old: Some(old), new }) => {
                assert_eq!(old.metadata.resource_version.as_deref(), Some("1"));
                assert_eq!(new.metadata.resource_version.as_deref(), Some("2"));
            }
            other => panic!("expected an update, got {other:?}"),
        }
        assert!(matches!(
            store.relist_apply(config_map("b", "new", "3", "web")),
            Some(InformerEvent::Applied { old: None, .. })
        ));
        let deleted = store.finish_relist();
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].object().metadata.name.as_deref(), Some("gone"));
        assert!(matches!(deleted[0], InformerEvent::Deleted(_)));
        assert_eq!(names(store.list()), ["a/changed", "a/same", "b/new"]);
        assert_eq!(
            names(store.by_index("app", "web").unwrap()),
            ["a/changed", "a/same", "b/new"]
        );
    }

    #[test]
    fn relist_that_starts_over_only_trusts_the_last_listing() {
        let store = store::<ConfigMap>();
        store.apply(config_map("a", "one", "1", "web"));
        store.apply(config_map("a", "two", "1", "web"));
        // A relist lists "one", then fails; the next one lists only "two".
        store.begin_relist();
        store.relist_apply(config_map("a", "one", "1", "web"));
        store.begin_relist();
        store.relist_apply(config_map("a", "two", "1", "web"));
        let deleted = store.finish_relist();
        assert_eq!(
            names(deleted.iter().map(|e| e.object().clone()).collect()),
            ["a/one"]
        );
        assert_eq!(names(store.list()), ["a/two"]);
    }

    #[test]
    fn objects_applied_between_relists_survive_the_next_one_only_if_listed() {
        let store = store::<ConfigMap>();
        store.begin_relist();
        assert!(store.finish_relist().is_empty());
        store.apply(config_map("a", "watched", "5", "web"));
        store.begin_relist();
        store.relist_apply(config_map("a", "watched", "5", "web"));
        assert!(store.finish_relist().is_empty());
        store.begin_relist();
        assert_eq!(store.finish_relist().len(), 1);
        assert!(store.is_empty());
    }
}
