//! Field indexes: find objects by a value derived from them, without a scan.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::key::ResourceId;
use super::{Cache, CacheError, CacheObject, ObjectKey};

/// Computes the values under which an object is filed in an index.
pub(crate) type Extractor<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// One named index of a store: value → namespace (`""` for cluster-scoped objects) →
/// names of the objects that produce it. Filed by namespace so that a
/// namespace-scoped view reads its matches without looking at other namespaces'.
pub(crate) struct Index<K> {
    extract: Extractor<K>,
    keys_by_value: HashMap<String, HashMap<String, HashSet<String>>>,
}

impl<K> Index<K> {
    pub(crate) fn new(extract: Extractor<K>) -> Self {
        Index {
            extract,
            keys_by_value: HashMap::new(),
        }
    }

    /// Refiles `key` after its object changed from `old` to `new`; `None` stands for
    /// "absent" (creation, deletion).
    pub(crate) fn update(&mut self, key: &ObjectKey, old: Option<&K>, new: Option<&K>) {
        let old_values = old.map(|object| (self.extract)(object)).unwrap_or_default();
        let new_values = new.map(|object| (self.extract)(object)).unwrap_or_default();
        if old_values == new_values {
            // The common update: the status changed, the indexed fields did not.
            return;
        }
        let namespace = key.namespace_or_empty();
        for value in old_values {
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
        for value in new_values {
            self.keys_by_value
                .entry(value)
                .or_default()
                .entry(namespace.to_owned())
                .or_default()
                .insert(key.name.clone());
        }
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
