//! Keys: of objects within a store, and of the resource types a cache watches.

use std::any::TypeId;
use std::fmt;

use kube::Resource;

use super::WatchSpec;

/// Identifies an object within the store of one resource type: its namespace (`None`
/// for cluster-scoped objects) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace, `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of the object `name` in `namespace`. An empty namespace is the same as
    /// `None`, as in the Kubernetes API.
    pub fn new(namespace: Option<&str>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.filter(|ns| !ns.is_empty()).map(str::to_owned),
            name: name.into(),
        }
    }

    /// The key of `object`, or `None` if it has no name (the apiserver never sends
    /// such objects, but a transform could remove the name).
    pub fn of<K: Resource>(object: &K) -> Option<Self> {
        let meta = object.meta();
        let name = meta.name.as_deref().filter(|name| !name.is_empty())?;
        Some(ObjectKey::new(meta.namespace.as_deref(), name))
    }

    /// The namespace as the store files it: cluster-scoped objects under `""`.
    pub(crate) fn namespace_or_empty(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

impl fmt::Display for ObjectKey {
    /// `namespace/name`, or `name` for cluster-scoped objects.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The resource type an informer watches, as the apiserver knows it.
///
/// Taken from the dynamic type rather than from the Rust type alone, so that two
/// `DynamicObject` informers of different kinds stay apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ResourceId {
    api_version: String,
    kind: String,
    plural: String,
    metadata_only: bool,
}

impl ResourceId {
    pub(crate) fn of<K: Resource>(dyntype: &K::DynamicType) -> Self {
        ResourceId {
            api_version: K::api_version(dyntype).into_owned(),
            kind: K::kind(dyntype).into_owned(),
            plural: K::plural(dyntype).into_owned(),
            metadata_only: K::metadata_api(),
        }
    }
}

impl fmt::Display for ResourceId {
    /// `ConfigMap (v1)`, or `ConfigMap (v1, metadata only)`: the form used in errors
    /// and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let only = if self.metadata_only { ", metadata only" } else { "" };
        write!(f, "{} ({}{only})", self.kind, self.api_version)
    }
}

/// What indexes and transforms are registered for: one Rust type viewing one resource
/// type. Every informer of it shares them, whatever its selectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TypeKey {
    type_id: TypeId,
    pub(crate) resource: ResourceId,
}

impl TypeKey {
    pub(crate) fn of<K: Resource + 'static>(dyntype: &K::DynamicType) -> Self {
        TypeKey {
            type_id: TypeId::of::<K>(),
            resource: ResourceId::of::<K>(dyntype),
        }
    }
}

/// What a watch is shared by: the type and the selectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct InformerKey {
    pub(crate) ty: TypeKey,
    pub(crate) spec: WatchSpec,
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::core::{ApiResource, DynamicObject, PartialObjectMeta};

    use super::*;

    #[test]
    fn object_keys_treat_empty_namespace_as_cluster_scoped() {
        assert_eq!(ObjectKey::new(Some(""), "a"), ObjectKey::new(None, "a"));
        assert_eq!(ObjectKey::new(Some("ns"), "a").to_string(), "ns/a");
        assert_eq!(ObjectKey::new(None, "a").to_string(), "a");

        assert_eq!(ObjectKey::of(&ConfigMap::default()), None);
        let named = ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        assert_eq!(ObjectKey::of(&named), Some(ObjectKey::new(Some("ns"), "a")));
    }

    #[test]
    fn resource_ids_describe_and_separate_types() {
        let erased = ApiResource::erase::<ConfigMap>(&());
        let typed = ResourceId::of::<ConfigMap>(&());
        let meta = ResourceId::of::<PartialObjectMeta<ConfigMap>>(&());
        let dynamic = ResourceId::of::<DynamicObject>(&erased);
        assert_eq!(typed.to_string(), "ConfigMap (v1)");
        assert_eq!(meta.to_string(), "ConfigMap (v1, metadata only)");
        assert_ne!(typed, meta);
        assert_eq!(typed, dynamic);
        // Same resource, different Rust types: separate informers.
        assert_ne!(
            TypeKey::of::<ConfigMap>(&()),
            TypeKey::of::<DynamicObject>(&erased)
        );
    }
}
