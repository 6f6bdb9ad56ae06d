//! The store of one informer: objects by namespace and name, plus field indexes.

use crate::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use kube::Resource;

use super::compact::Codec;
use super::index::{Extractor, Index};
use super::{CacheError, InformerEvent, ObjectKey};
use crate::ClusterName;

/// What a namespace-scoped view of a cache sees: one namespace of the host cluster,
/// presented as the cluster `cluster`. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    /// The name of the cluster the view stands for.
    pub(crate) cluster: ClusterName,
    /// The namespace it sees.
    pub(crate) namespace: Arc<str>,
}

impl Scope {
    /// Whether objects filed under `namespace` (`""`: cluster-scoped) are visible.
    /// Cluster-scoped objects are: they belong to no namespace, and the view's client
    /// reads them too.
    pub(crate) fn sees(&self, namespace: &str) -> bool {
        namespace.is_empty() || namespace == &*self.namespace
    }
}

/// The objects of one informer, readable by anyone, written only by the informer.
///
/// Unlike kube's `reflector::Store`, it files objects by namespace, so listing one
/// namespace reads only that namespace's objects, and it keeps named field indexes
/// (see [`Cache::index_field`](super::Cache::index_field)).
///
/// Reads take a short read lock and never wait for the network; objects are returned
/// as `Arc`s shared with the store, never copied. An object read may be replaced by
/// the informer a moment later: the store is a recent view, not a transaction.
///
/// # The compact stored form
///
/// A store of a type listed in [`CacheOptions::compact`](super::CacheOptions::compact)
/// keeps each object as its JSON (about a fifth of the memory of a small object as
/// k8s-openapi decodes it) and decodes it on every read, outside the lock. The read
/// methods are the same and return equal objects, with these differences:
///
/// - each read decodes: a new `Arc` per object per read (≈ 2 µs for a small
///   ConfigMap; a [`list`](Self::list) of 1,000 objects decodes 1,000 and holds
///   them all at once; [`for_each`](Self::for_each) holds one at a time), so two
///   reads of one object are equal but not [`Arc::ptr_eq`];
/// - events still carry decoded objects: the `new` one is the object as it was
///   stored, the `old` one is decoded from the stored form when it is replaced;
/// - field indexes are computed when an object is stored, from the object in hand,
///   so [`by_index`](Self::by_index) decodes only what it returns.
///
/// An object that cannot be encoded is kept decoded; one that cannot be decoded
/// (a type whose JSON does not read back) is logged as an ERROR with its namespace and
/// name and left out of reads. A store checks this with its first object: if that
/// one does not read back, it logs a warning and keeps all objects decoded.
///
/// # Before the first list
///
/// A store answers at once, whatever its informer is doing. Until the informer
/// [is synced](super::Informer::is_synced) it holds part of the first list or
/// nothing, and [`get`](Self::get) returns `None` for objects that exist. Read
/// through [`Cache::get`](super::Cache::get), [`list`](super::Cache::list) or
/// [`list_by_index`](super::Cache::list_by_index), which wait for the sync, or
/// wait with [`Informer::wait_synced`](super::Informer::wait_synced) first. A
/// controller's reconciler may read the stores of the controller's own watches
/// directly: its requests are held until those have synced (see
/// [`ReconcileRequest`](crate::controller::ReconcileRequest#reading-caches)).
///
/// # Namespace-scoped stores
///
/// The store of an informer obtained from a [scoped cache](super::Cache::scoped) is a
/// view of the host's store: the same objects, the same memory, but every read sees
/// only the view's namespace, plus cluster-scoped objects (filed under no namespace),
/// which belong to every view. Reads of a view never look at other namespaces'
/// objects: [`list`](Self::list), [`len`](Self::len) and
/// [`by_index`](Self::by_index) cost what they would in a cluster holding only that
/// namespace.
pub struct Store<K> {
    shared: Arc<Shared<K>>,
    scope: Option<Scope>,
}

struct Shared<K> {
    cluster: ClusterName,
    resource: Arc<str>,
    state: RwLock<State<K>>,
}

struct State<K> {
    /// Objects by namespace (`""` for cluster-scoped ones), then by name.
    namespaces: HashMap<String, HashMap<String, Entry<K>>>,
    len: usize,
    /// A type has few indexes: a list, searched by name, whose fixed order lets a
    /// write compute every index's values first and apply them after.
    indexes: Vec<Index<K>>,
    /// The number of the current, or last, relist. Entries the relist does not stamp
    /// with it were not listed: they are gone from the cluster.
    relist: u64,
    /// Present for a store that keeps the compact form.
    codec: Option<Codec<K>>,
    /// The cluster and resource, for the log line of an object that cannot be
    /// decoded while the store is written.
    origin: (ClusterName, Arc<str>),
    /// Whether the codec was checked on a first object (see `set_codec`).
    codec_checked: bool,
}

struct Entry<K> {
    stored: Stored<K>,
    relist: u64,
}

/// An object as a store keeps it. Cloning is cheap in both forms, so readers take
/// clones under the lock and decode after releasing it.
enum Stored<K> {
    /// As decoded, shared with readers and events.
    Object(Arc<K>),
    /// Encoded by the store's codec (the compact form).
    Encoded(Arc<[u8]>),
}

// By hand: a derive would require `K: Clone`.
impl<K> Clone for Stored<K> {
    fn clone(&self) -> Self {
        match self {
            Stored::Object(object) => Stored::Object(object.clone()),
            Stored::Encoded(bytes) => Stored::Encoded(bytes.clone()),
        }
    }
}

impl<K> Stored<K> {
    /// The object, decoded by `codec` if needed; `None` if it cannot be (the read
    /// paths log that, see `Store::undecodable`).
    fn decoded(&self, codec: Option<&Codec<K>>) -> Option<Arc<K>> {
        match self {
            Stored::Object(object) => Some(object.clone()),
            Stored::Encoded(bytes) => codec?.decode(bytes).ok().map(Arc::new),
        }
    }

    /// Whether both are the same stored version (the same allocation).
    fn same(&self, other: &Stored<K>) -> bool {
        match (self, other) {
            (Stored::Object(a), Stored::Object(b)) => Arc::ptr_eq(a, b),
            (Stored::Encoded(a), Stored::Encoded(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl<K> Store<K> {
    pub(crate) fn new(cluster: ClusterName, resource: Arc<str>) -> Self {
        Store {
            shared: Arc::new(Shared {
                cluster: cluster.clone(),
                resource: resource.clone(),
                state: RwLock::new(State {
                    origin: (cluster, resource),
                    namespaces: HashMap::default(),
                    len: 0,
                    indexes: Vec::new(),
                    relist: 0,
                    codec: None,
                    codec_checked: false,
                }),
            }),
            scope: None,
        }
    }

    /// Another handle on the same objects, with the same scope.
    pub(crate) fn share(&self) -> Self {
        Store {
            shared: self.shared.clone(),
            scope: self.scope.clone(),
        }
    }

    /// A view of the same objects that sees only `scope`'s namespace.
    pub(crate) fn scoped(&self, scope: Scope) -> Self {
        Store {
            shared: self.shared.clone(),
            scope: Some(scope),
        }
    }

    // Extractor panics are caught before they reach the lock, so it is poisoned only
    // by a bug of the store itself; a cache that refuses all reads forever would be
    // worse than serving what is there.
    fn read(&self) -> RwLockReadGuard<'_, State<K>> {
        self.shared.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State<K>> {
        self.shared.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cluster the objects come from: for a namespace-scoped store, the cluster
    /// the view stands for.
    pub fn cluster(&self) -> &ClusterName {
        match &self.scope {
            Some(scope) => &scope.cluster,
            None => &self.shared.cluster,
        }
    }

    /// The namespace this store is scoped to, `None` for a whole cluster's store.
    pub fn namespace_scope(&self) -> Option<&str> {
        self.scope.as_ref().map(|scope| &*scope.namespace)
    }

    /// The resource type stored, e.g. `ConfigMap (v1)`.
    pub fn resource(&self) -> &str {
        &self.shared.resource
    }

    /// Whether the store shows objects filed under `namespace`.
    fn sees(&self, namespace: &str) -> bool {
        self.scope.as_ref().is_none_or(|scope| scope.sees(namespace))
    }

    /// The object `name` in `namespace` (`None` for cluster-scoped objects).
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let namespace = namespace.unwrap_or("");
        if !self.sees(namespace) {
            return None;
        }
        let state = self.read();
        let stored = state.namespaces.get(namespace)?.get(name)?.stored.clone();
        self.load_all(state, vec![stored]).pop()
    }

    /// Every object, in no particular order.
    pub fn list(&self) -> Vec<Arc<K>> {
        let (found, codec) = self.snapshot();
        self.loaded(found, codec).collect()
    }

    /// Calls `f` with every object, one at a time, in no particular order: what
    /// [`list`](Self::list) returns, without holding them all at once. For a store
    /// in the [compact form](Self#the-compact-stored-form), each object is decoded
    /// just before its call and freed after it unless `f` keeps it, so a pass over
    /// a large store holds one decoded object, not all of them.
    pub fn for_each(&self, f: impl FnMut(Arc<K>)) {
        let (found, codec) = self.snapshot();
        self.loaded(found, codec).for_each(f);
    }

    /// Every entry the store shows (cheap clones), and its codec, taken under the
    /// read lock and released.
    fn snapshot(&self) -> (Vec<Stored<K>>, Option<Codec<K>>) {
        let state = self.read();
        let found = match &self.scope {
            None => {
                let mut found = Vec::with_capacity(state.len);
                found.extend(
                    state
                        .namespaces
                        .values()
                        .flat_map(HashMap::values)
                        .map(|e| e.stored.clone()),
                );
                found
            }
            Some(scope) => [&*scope.namespace, ""]
                .into_iter()
                .filter_map(|ns| state.namespaces.get(ns))
                .flat_map(HashMap::values)
                .map(|e| e.stored.clone())
                .collect(),
        };
        (found, state.codec)
    }

    /// The objects of one namespace, in no particular order, without looking at the
    /// others. Cluster-scoped objects are filed under the empty namespace `""`.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        if !self.sees(namespace) {
            return Vec::new();
        }
        let state = self.read();
        let found = state
            .namespaces
            .get(namespace)
            .map(|names| names.values().map(|e| e.stored.clone()).collect())
            .unwrap_or_default();
        self.load_all(state, found)
    }

    /// The namespaces that hold at least one object, in no particular order
    /// (cluster-scoped objects are not counted).
    pub fn namespaces(&self) -> Vec<String> {
        let state = self.read();
        state
            .namespaces
            .keys()
            .filter(|ns| !ns.is_empty() && self.sees(ns))
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
        let Some(found) = state.index(index) else {
            return Err(CacheError::UnknownIndex {
                cluster: self.cluster().clone(),
                resource: self.shared.resource.to_string(),
                index: index.to_owned(),
            });
        };
        let found = match &self.scope {
            None => found
                .keys(value)
                .filter_map(|(namespace, name)| state.entry(namespace, name))
                .map(|e| e.stored.clone())
                .collect(),
            Some(scope) => [&*scope.namespace, ""]
                .into_iter()
                .flat_map(|namespace| {
                    found
                        .keys_in(value, namespace)
                        .filter_map(|name| state.entry(namespace, name))
                        .map(|e| e.stored.clone())
                        .collect::<Vec<_>>()
                })
                .collect(),
        };
        Ok(self.load_all(state, found))
    }

    /// Whether an index of that name exists.
    pub fn has_index(&self, index: &str) -> bool {
        self.read().index(index).is_some()
    }

    /// How many objects are stored (for a namespace-scoped store: in its namespace,
    /// plus cluster-scoped ones).
    pub fn len(&self) -> usize {
        let state = self.read();
        match &self.scope {
            None => state.len,
            Some(scope) => [&*scope.namespace, ""]
                .into_iter()
                .filter_map(|ns| state.namespaces.get(ns))
                .map(HashMap::len)
                .sum(),
        }
    }

    /// Whether no object is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The objects `found` under `state`, which is released first: decoding runs
    /// without the lock, so a large list of a compact store holds up neither the
    /// informer nor other readers.
    fn load_all(&self, state: RwLockReadGuard<'_, State<K>>, found: Vec<Stored<K>>) -> Vec<Arc<K>> {
        let codec = state.codec;
        drop(state);
        self.loaded(found, codec).collect()
    }

    /// The objects `found`, each decoded when the iterator reaches it; call with
    /// no lock held.
    fn loaded(&self, found: Vec<Stored<K>>, codec: Option<Codec<K>>) -> impl Iterator<Item = Arc<K>> {
        found.into_iter().filter_map(move |stored| match stored {
            Stored::Object(object) => Some(object),
            Stored::Encoded(bytes) => match codec.as_ref()?.decode(&bytes) {
                Ok(object) => Some(Arc::new(object)),
                Err(error) => {
                    self.undecodable(&bytes, &error);
                    None
                }
            },
        })
    }

    /// Logs an object that does not read back, by its namespace and name (found
    /// again under the lock, a rare path).
    #[cold]
    fn undecodable(&self, bytes: &Arc<[u8]>, error: &serde_json::Error) {
        let state = self.read();
        let key = state.namespaces.iter().find_map(|(namespace, names)| {
            names.iter().find_map(|(name, entry)| match &entry.stored {
                Stored::Encoded(stored) if Arc::ptr_eq(stored, bytes) => {
                    Some((namespace.clone(), name.clone()))
                }
                _ => None,
            })
        });
        let (namespace, name) = key.unwrap_or_default();
        log_undecodable(&state.origin, &namespace, &name, error);
    }

    /// Makes the store keep the compact form (see the type's docs) from now on;
    /// objects stored before stay decoded. Set before the informer starts.
    pub(crate) fn set_codec(&self, codec: Codec<K>) {
        let mut state = self.write();
        state.codec = Some(codec);
        state.codec_checked = false;
    }

    /// Whether objects are kept in the compact form.
    pub fn is_compact(&self) -> bool {
        self.read().codec.is_some()
    }

    /// Adds an index and files every stored object in it. Applies to the shared
    /// store, whatever the scope.
    ///
    /// The extractor runs over a snapshot with no lock held, so neither the informer
    /// nor readers wait while a large store is indexed; the index is then installed
    /// under the write lock, where only objects that changed or appeared since the
    /// snapshot are extracted again. A panicking extractor files that object under no
    /// value (logged) and the index is added all the same.
    pub(crate) fn add_index(&self, name: &str, extract: Extractor<K>) -> Result<(), CacheError> {
        let mut index = Index::new(
            name,
            extract,
            self.shared.cluster.clone(),
            self.shared.resource.clone(),
        );
        let (snapshot, codec): (Vec<(ObjectKey, Stored<K>)>, _) = {
            let state = self.read();
            if state.index(name).is_some() {
                return Err(self.index_exists(name));
            }
            let snapshot = state
                .namespaces
                .iter()
                .flat_map(|(namespace, names)| {
                    names.iter().map(|(object_name, entry)| {
                        (
                            ObjectKey::new(Some(namespace), object_name.clone()),
                            entry.stored.clone(),
                        )
                    })
                })
                .collect();
            (snapshot, state.codec)
        };
        let mut computed: HashMap<ObjectKey, (Stored<K>, Vec<String>)> = snapshot
            .into_iter()
            .map(|(key, stored)| {
                let values = stored
                    .decoded(codec.as_ref())
                    .map(|object| index.values(&key, &object))
                    .unwrap_or_default();
                (key, (stored, values))
            })
            .collect();
        let mut state = self.write();
        // Two registrations of one name may have raced past the first check.
        if state.index(name).is_some() {
            return Err(self.index_exists(name));
        }
        for (namespace, names) in &state.namespaces {
            for (object_name, entry) in names {
                let key = ObjectKey::new(Some(namespace), object_name.clone());
                // The snapshot holds its `Arc`s, so an equal pointer is the same
                // version, never a new object at a reused address.
                let values = match computed.remove(&key) {
                    Some((seen, values)) if seen.same(&entry.stored) => values,
                    _ => entry
                        .stored
                        .decoded(state.codec.as_ref())
                        .map(|object| index.values(&key, &object))
                        .unwrap_or_default(),
                };
                index.refile(&key, Vec::new(), values);
            }
        }
        state.indexes.push(index);
        Ok(())
    }

    fn index_exists(&self, name: &str) -> CacheError {
        CacheError::IndexExists {
            cluster: self.cluster().clone(),
            resource: self.shared.resource.to_string(),
            index: name.to_owned(),
        }
    }
}

// Writes go to the shared store whatever the scope; only the informer writes, through
// its unscoped handle.
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
        let codec = state.codec;
        if let Some(entry) = state.get_mut(&key)
            && entry
                .stored
                .decoded(codec.as_ref())
                .is_some_and(|stored| same_version(&*stored, &object))
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
            stored: self.stored_form(&new),
            relist: self.relist,
        };
        let old = self.insert(key, entry, &new);
        InformerEvent::Applied { old, new }
    }

    /// How `object` is kept: encoded by the codec if there is one, else shared.
    fn stored_form(&mut self, object: &Arc<K>) -> Stored<K> {
        let Some(codec) = self.codec else {
            return Stored::Object(object.clone());
        };
        let bytes = match codec.encode(object) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(
                    cluster = %self.origin.0,
                    resource = %self.origin.1,
                    error = ?error.classify(),
                    "an object could not be encoded for the compact form; it is kept decoded"
                );
                return Stored::Object(object.clone());
            }
        };
        if !self.codec_checked {
            // The first object tells whether the type reads back from its JSON; a
            // type that does not would lose objects from every read.
            self.codec_checked = true;
            if let Err(error) = codec.decode(&bytes) {
                tracing::warn!(
                    cluster = %self.origin.0,
                    resource = %self.origin.1,
                    error = ?error.classify(),
                    line = error.line(),
                    column = error.column(),
                    "objects of this type do not read back from their JSON; the store keeps them decoded instead of in the compact form"
                );
                self.codec = None;
                return Stored::Object(object.clone());
            }
        }
        Stored::Encoded(bytes)
    }

    /// The object stored as `key` in the form `stored`, decoded; logged if it
    /// cannot be.
    fn decode(&self, key: &ObjectKey, stored: &Stored<K>) -> Option<Arc<K>> {
        match stored {
            Stored::Object(object) => Some(object.clone()),
            Stored::Encoded(bytes) => {
                let decoded = self.codec.as_ref().map(|codec| codec.decode(bytes));
                match decoded {
                    Some(Ok(object)) => Some(Arc::new(object)),
                    Some(Err(error)) => {
                        log_undecodable(&self.origin, key.namespace_or_empty(), &key.name, &error);
                        None
                    }
                    None => None,
                }
            }
        }
    }

    /// The index named `name`.
    fn index(&self, name: &str) -> Option<&Index<K>> {
        self.indexes.iter().find(|index| index.name() == name)
    }

    /// The entry `name` of `namespace` (`""` for cluster-scoped objects).
    fn entry(&self, namespace: &str, name: &str) -> Option<&Entry<K>> {
        self.namespaces.get(namespace)?.get(name)
    }

    fn get_mut(&mut self, key: &ObjectKey) -> Option<&mut Entry<K>> {
        self.namespaces
            .get_mut(key.namespace_or_empty())?
            .get_mut(&key.name)
    }

    /// Inserts or replaces `new`, stored as `entry`, keeping the count and the
    /// indexes right; returns the replaced object, decoded.
    fn insert(&mut self, key: ObjectKey, entry: Entry<K>, new: &K) -> Option<Arc<K>> {
        let replaced = self
            .entry(key.namespace_or_empty(), &key.name)
            .map(|old| old.stored.clone());
        let old = replaced.as_ref().and_then(|stored| self.decode(&key, stored));
        // User code first: whatever the extractors do, nothing is half-changed.
        let refiling = self.refiling(&key, replaced.is_some().then_some(old.as_deref()), Some(new));
        self.namespaces
            .entry(key.namespace_or_empty().to_owned())
            .or_default()
            .insert(key.name.clone(), entry);
        if replaced.is_none() {
            self.len += 1;
        }
        self.refile(&key, refiling);
        old
    }

    /// Removes, keeping the count and the indexes right, and dropping namespaces that
    /// become empty so that namespaces coming and going do not leak. Returns the
    /// removed object, decoded (`None` if absent, or if it could not be decoded).
    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let namespace = key.namespace_or_empty();
        let stored = self.entry(namespace, &key.name)?.stored.clone();
        let object = self.decode(key, &stored);
        let refiling = self.refiling(key, Some(object.as_deref()), None);
        if let Some(names) = self.namespaces.get_mut(namespace) {
            names.remove(&key.name);
            if names.is_empty() {
                self.namespaces.remove(namespace);
            }
        }
        self.len -= 1;
        self.refile(key, refiling);
        object
    }

    /// The old and new values of `key` in each index, in the order of
    /// `self.indexes`, for an object changing from `old` to `new` (`None`: absent).
    /// An old object that is stored but could not be decoded (`Some(None)`) is
    /// unfiled from whatever values the index has for it. Only reads the store.
    fn refiling(
        &self,
        key: &ObjectKey,
        old: Option<Option<&K>>,
        new: Option<&K>,
    ) -> Vec<(Vec<String>, Vec<String>)> {
        let values = |index: &Index<K>, object: Option<&K>| {
            object.map(|object| index.values(key, object)).unwrap_or_default()
        };
        self.indexes
            .iter()
            .map(|index| {
                let old = match old {
                    None => Vec::new(),
                    Some(Some(old)) => index.values(key, old),
                    Some(None) => index.filed_values(key),
                };
                (old, values(index, new))
            })
            .collect()
    }

    /// Applies what [`refiling`](Self::refiling) computed; no index was added in
    /// between (`&mut self` throughout).
    fn refile(&mut self, key: &ObjectKey, refiling: Vec<(Vec<String>, Vec<String>)>) {
        debug_assert_eq!(refiling.len(), self.indexes.len());
        for (index, (old, new)) in self.indexes.iter_mut().zip(refiling) {
            index.refile(key, old, new);
        }
    }
}

/// Logs an object of the compact form that does not read back, by where it is,
/// never its content: only the kind of error and its place in the JSON, since
/// serde_json's message may quote a value.
#[cold]
fn log_undecodable(origin: &(ClusterName, Arc<str>), namespace: &str, name: &str, error: &serde_json::Error) {
    tracing::error!(
        cluster = %origin.0,
        resource = %origin.1,
        namespace,
        name,
        error = ?error.classify(),
        line = error.line(),
        column = error.column(),
        "a cached object in the compact form could not be decoded; it is left out of reads and events"
    );
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
        let len = self.len();
        let state = self.read();
        f.debug_struct("Store")
            .field("cluster", self.cluster())
            .field("namespace_scope", &self.namespace_scope())
            .field("resource", &self.shared.resource)
            .field("len", &len)
            .field(
                "indexes",
                &state.indexes.iter().map(Index::name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::cache::testing::Logs;

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
    fn scoped_views_read_one_namespace_and_cluster_scoped_objects() {
        let store = store::<ConfigMap>();
        store.add_index("app", by_app()).unwrap();
        store.apply(config_map("a", "one", "1", "web"));
        store.apply(config_map("a", "two", "1", "db"));
        store.apply(config_map("b", "one", "1", "web"));
        let mut global = config_map("", "global", "1", "web");
        global.metadata.namespace = None;
        store.apply(global);
        let view = store.scoped(Scope {
            cluster: ClusterName::from("cluster-a"),
            namespace: Arc::from("a"),
        });
        assert_eq!(view.cluster(), "cluster-a");
        assert_eq!(view.namespace_scope(), Some("a"));
        assert_eq!(store.namespace_scope(), None);
        assert!(view.get(Some("a"), "one").is_some());
        assert!(view.get(Some("b"), "one").is_none());
        assert!(view.get(None, "global").is_some());
        assert_eq!(names(view.list()), ["/global", "a/one", "a/two"]);
        assert!(view.list_namespace("b").is_empty());
        assert_eq!(names(view.list_namespace("a")), ["a/one", "a/two"]);
        assert_eq!(view.namespaces(), ["a"]);
        assert_eq!(view.len(), 3);
        assert_eq!(store.len(), 4);
        assert_eq!(names(view.by_index("app", "web").unwrap()), ["/global", "a/one"]);
        assert_eq!(
            names(store.by_index("app", "web").unwrap()),
            ["/global", "a/one", "b/one"]
        );
        // Writes through the host show in the view at once.
        store.delete(config_map("a", "one", "2", "web"));
        assert_eq!(names(view.by_index("app", "web").unwrap()), ["/global"]);
        let error = view.by_index("owner", "x").unwrap_err();
        assert_eq!(
            error.to_string(),
            "no index named \"owner\" in the cache of ConfigMap (v1) in cluster cluster-a"
        );
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

    fn poisoned(mut cm: ConfigMap) -> ConfigMap {
        cm.metadata
            .labels
            .get_or_insert_default()
            .insert("poison".into(), "true".into());
        cm
    }

    /// Files by `app`, and panics for objects labelled `poison`.
    fn fragile() -> Extractor<ConfigMap> {
        let by_app = by_app();
        Arc::new(move |cm: &ConfigMap| {
            if cm.metadata.labels.iter().flatten().any(|(k, _)| k == "poison") {
                panic!("poisoned");
            }
            by_app(cm)
        })
    }

    #[test]
    fn a_panicking_extractor_files_the_object_under_no_value_and_leaves_the_rest_right() {
        let store = store::<ConfigMap>();
        store.add_index("app", by_app()).unwrap();
        store.add_index("fragile", fragile()).unwrap();
        store.apply(config_map("a", "one", "1", "web"));
        // Stored, and filed by the other index, though this one's extractor panics.
        assert!(
            store
                .apply(poisoned(config_map("a", "two", "1", "web")))
                .is_some()
        );
        assert_eq!(store.len(), 2);
        assert!(store.get(Some("a"), "two").is_some());
        assert_eq!(names(store.by_index("app", "web").unwrap()), ["a/one", "a/two"]);
        assert_eq!(names(store.by_index("fragile", "web").unwrap()), ["a/one"]);

        // Fixed: filed from then on. Poisoned: unfiled, from the value it had.
        store.apply(config_map("a", "two", "2", "db"));
        assert_eq!(names(store.by_index("fragile", "db").unwrap()), ["a/two"]);
        store.apply(poisoned(config_map("a", "one", "2", "web")));
        assert!(store.by_index("fragile", "web").unwrap().is_empty());
        assert_eq!(names(store.by_index("app", "web").unwrap()), ["a/one"]);

        // Deleting a poisoned object removes it from every index, by a relist too.
        store.delete(config_map("a", "one", "3", "web"));
        assert!(store.by_index("app", "web").unwrap().is_empty());
        store.apply(poisoned(config_map("b", "three", "1", "web")));
        store.begin_relist();
        store.relist_apply(config_map("a", "two", "2", "db"));
        assert_eq!(store.finish_relist().len(), 1);
        assert_eq!(names(store.list()), ["a/two"]);
        assert!(store.by_index("app", "web").unwrap().is_empty());
        assert_eq!(names(store.by_index("fragile", "db").unwrap()), ["a/two"]);
        assert!(!store.shared.state.is_poisoned());
    }

    #[test]
    fn a_panicking_extractor_is_logged_with_where_it_happened_and_no_content() {
        let logs = Logs::capture();
        let store = store::<ConfigMap>();
        store.add_index("fragile", fragile()).unwrap();
        let mut secret = poisoned(config_map("a", "one", "1", "web"));
        secret.data = Some(BTreeMap::from([("password".to_owned(), "hunter2".to_owned())]));
        store.apply(secret);
        logs.assert_one_error(
            &[
                "ERROR",
                "cluster=test",
                "resource=ConfigMap (v1)",
                "callback=\"index extractor\"",
                "index=fragile",
                "namespace=\"a\"",
                "name=one",
            ],
            &["hunter2", "poisoned"],
        );
    }

    #[test]
    fn backfill_runs_without_the_lock_and_catches_up_with_changes_made_meanwhile() {
        let store = store::<ConfigMap>();
        store.apply(poisoned(config_map("a", "one", "1", "web")));
        store.apply(config_map("a", "two", "1", "web"));
        store.apply(config_map("a", "three", "1", "db"));
        // At its first call, the extractor reads the store and changes it, as the
        // informer could meanwhile: under the write lock, both would deadlock.
        let writer = Mutex::new(Some(store.share()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fragile = fragile();
        let seen = calls.clone();
        let extractor: Extractor<ConfigMap> = Arc::new(move |cm: &ConfigMap| {
            if let Some(store) = writer.lock().unwrap().take() {
                assert_eq!(store.len(), 3);
                store.apply(config_map("a", "two", "2", "db"));
                store.delete(config_map("a", "three", "2", "db"));
                store.apply(config_map("a", "four", "1", "web"));
            }
            seen.lock()
                .unwrap()
                .push(cm.metadata.name.clone().unwrap_or_default());
            fragile(cm)
        });
        store.add_index("fragile", extractor).unwrap();

        assert_eq!(names(store.by_index("fragile", "web").unwrap()), ["a/four"]);
        assert_eq!(names(store.by_index("fragile", "db").unwrap()), ["a/two"]);
        assert_eq!(store.len(), 3);
        // The snapshot's three, then only what changed or appeared.
        let mut calls = calls.lock().unwrap().clone();
        calls.sort();
        assert_eq!(calls, ["four", "one", "three", "two", "two"]);
        // Once installed, the index follows changes.
        store.apply(config_map("a", "one", "2", "web"));
        assert_eq!(
            names(store.by_index("fragile", "web").unwrap()),
            ["a/four", "a/one"]
        );
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
