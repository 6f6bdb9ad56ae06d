//! Field indexes: find objects by a value derived from them, without a scan.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use super::key::ResourceId;
use super::{Cache, CacheError, CacheObject, ObjectKey};
use crate::ClusterName;

/// Computes the values under which an object is filed in an index.
pub(crate) type Extractor<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// One named index of a store: value → namespace (`""` for cluster-scoped objects) →
/// names of the objects that produce it. Filed by namespace so that a
/// namespace-scoped view reads its matches without looking at other namespaces'.
///
/// Calling the user's extractor ([`values`](Self::values)) and changing the maps
/// ([`refile`](Self::refile)) are separate steps, so that a store computes every
/// index's values before it changes anything: a panicking extractor cannot leave a
/// store half-updated.
pub(crate) struct Index<K> {
    extract: Extractor<K>,
    /// Who the index belongs to, for the log line of a panicking extractor.
    name: Arc<str>,
    cluster: ClusterName,
    resource: Arc<str>,
    keys_by_value: HashMap<String, HashMap<String, HashSet<String>>>,
}

impl<K> Index<K> {
    /// The index `name` of the store of `resource` in `cluster`.
    pub(crate) fn new(name: &str, extract: Extractor<K>, cluster: ClusterName, resource: Arc<str>) -> Self {
        Index {
            extract,
            name: Arc::from(name),
            cluster,
            resource,
            keys_by_value: HashMap::new(),
        }
    }

    /// The index's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The values under which `object` (stored as `key`) is filed.
    ///
    /// A panic of the extractor is caught and logged, and files the object under no
    /// value. The outcome is the same at every call for the same object, so
    /// refiling it later removes exactly what was filed.
    pub(crate) fn values(&self, key: &ObjectKey, object: &K) -> Vec<String> {
        // The extractor only reads `object`; whatever state it leaves behind is its own.
        match panic::catch_unwind(AssertUnwindSafe(|| (self.extract)(object))) {
            Ok(values) => values,
            Err(_) => {
                // The payload is not logged: it may quote the object, and the panic
                // hook has already reported it.
                tracing::error!(
                    cluster = %self.cluster,
                    resource = %self.resource,
                    callback = "index extractor",
                    index = %self.name,
                    namespace = key.namespace_or_empty(),
                    name = %key.name,
                    "index extractor panicked; the object is filed under no value of this index"
                );
                Vec::new()
            }
        }
    }

    /// Refiles `key` from the values `old` to the values `new` (empty for "absent":
    /// creation, deletion). Calls no user code.
    pub(crate) fn refile(&mut self, key: &ObjectKey, old: Vec<String>, new: Vec<String>) {
        if old == new {
            // The common update: the status changed, the indexed fields did not.
            return;
        }
        let namespace = key.namespace_or_empty();
        for value in old {
            let Some(namespaces) = self.keys_by_value.get_mut(&value) else {
                continue;
            };
            if let Some(names) = namespaces.get_mut(namespace) {
                names.remove(&key.name);
                if names.is_empty() {
                    namespaces.remove(namespace);
                }
            }
            if namespaces.is_empty() {
                self.keys_by_value.remove(&value);
            }
        }
        for value in new {
            self.keys_by_value
                .entry(value)
                .or_default()
                .entry(namespace.to_owned())
                .or_default()
                .insert(key.name.clone());
        }
    }

    /// Every value `key` is filed under, found by a scan: for an object whose
    /// stored form could not be decoded, so that the values it was filed under by
    /// its extractor are unknown.
    pub(crate) fn filed_values(&self, key: &ObjectKey) -> Vec<String> {
        let namespace = key.namespace_or_empty();
        self.keys_by_value
            .iter()
            .filter(|(_, namespaces)| {
                namespaces
                    .get(namespace)
                    .is_some_and(|names| names.contains(&key.name))
            })
            .map(|(value, _)| value.clone())
            .collect()
    }

    /// `(namespace, name)` of the objects filed under `value`, in every namespace
    /// (`""` for cluster-scoped objects).
    pub(crate) fn keys(&self, value: &str) -> impl Iterator<Item = (&str, &str)> {
        self.keys_by_value
            .get(value)
            .into_iter()
            .flatten()
            .flat_map(|(namespace, names)| names.iter().map(move |name| (namespace.as_str(), name.as_str())))
    }

    /// Names of the objects of `namespace` (`""` for cluster-scoped objects) filed
    /// under `value`.
    pub(crate) fn keys_in(&self, value: &str, namespace: &str) -> impl Iterator<Item = &str> {
        self.keys_by_value
            .get(value)
            .and_then(|namespaces| namespaces.get(namespace))
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

type Register = dyn Fn(&Cache) -> Result<(), CacheError> + Send + Sync;

/// A field index registration that does not name its object type: it can be kept in
/// a list and applied to the cache of every cluster as clusters join, which is what a
/// provider's `index_field` needs.
///
/// Cloning is cheap; clones share the extractor.
///
/// ```
/// use k8s_openapi::api::core::v1::Pod;
/// use multicluster_runtime::cache::FieldIndex;
///
/// let by_node = FieldIndex::new::<Pod>("spec.nodeName", |pod| {
///     pod.spec.as_ref().and_then(|spec| spec.node_name.clone()).into_iter().collect()
/// });
/// assert_eq!(by_node.name(), "spec.nodeName");
/// assert_eq!(by_node.resource(), "Pod (v1)");
/// // Then, for the cache of each cluster: by_node.apply(&cache)?
/// ```
#[derive(Clone)]
pub struct FieldIndex {
    name: Arc<str>,
    resource: Arc<str>,
    register: Arc<Register>,
}

impl FieldIndex {
    /// An index named `name` over objects of `K`, filing each object under the
    /// values `extractor` returns (no values: not in the index).
    pub fn new<K>(name: &str, extractor: impl Fn(&K) -> Vec<String> + Send + Sync + 'static) -> Self
    where
        K: CacheObject,
        K::DynamicType: Default,
    {
        Self::new_with::<K>(&K::DynamicType::default(), name, extractor)
    }

    /// Like [`new`](Self::new), for a type with a dynamic type (e.g. a
    /// `DynamicObject` with its `ApiResource`).
    pub fn new_with<K: CacheObject>(
        dyntype: &K::DynamicType,
        name: &str,
        extractor: impl Fn(&K) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        let extractor: Extractor<K> = Arc::new(extractor);
        let index_name = name.to_owned();
        let dyntype = dyntype.clone();
        FieldIndex {
            name: Arc::from(name),
            resource: Arc::from(ResourceId::of::<K>(&dyntype).to_string()),
            register: Arc::new(move |cache: &Cache| {
                cache.register_index::<K>(&dyntype, &index_name, extractor.clone())
            }),
        }
    }

    /// The index name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The resource type indexed, e.g. `Pod (v1)`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Registers the index with `cache`, as [`Cache::index_field_with`] does.
    ///
    /// # Errors
    /// [`CacheError::IndexExists`] if `cache` already has an index of this name for
    /// the type, including when this same `FieldIndex` was applied to it before.
    pub fn apply(&self, cache: &Cache) -> Result<(), CacheError> {
        (self.register)(cache)
    }
}

impl fmt::Debug for FieldIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldIndex")
            .field("name", &self.name)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}
