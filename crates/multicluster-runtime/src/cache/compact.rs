//! The compact stored form: objects kept as JSON bytes and decoded on read.
//!
//! A small object as k8s-openapi decodes it takes several times its JSON (a
//! one-entry `BTreeMap` allocates a whole B-tree leaf of 544 bytes; see
//! `docs/decisions/compact-cache.md`). A store that keeps the JSON instead holds
//! about a fifth of that, and pays for it with a decode on every read.
//!
//! JSON, not a binary format: k8s-openapi's `Deserialize` impls read maps by field
//! name, which formats that do not describe themselves (bincode, postcard) cannot
//! give back; serde_json is already a dependency and round-trips every type the
//! cache can hold (k8s-openapi's, `DynamicObject`, `PartialObjectMeta`, derived
//! custom resources).

use std::any::{Any, TypeId, type_name};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How a compact store turns an object into bytes and back. Two function pointers:
/// the store holds it without a bound on `K`, so its read methods keep theirs.
pub(crate) struct Codec<K> {
    encode: fn(&K) -> serde_json::Result<Vec<u8>>,
    decode: fn(&[u8]) -> serde_json::Result<K>,
}

// By hand: a derive would require `K: Clone`.
impl<K> Clone for Codec<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Codec<K> {}

impl<K: Serialize + DeserializeOwned> Codec<K> {
    /// The JSON codec of `K`.
    pub(crate) fn json() -> Self {
        Codec {
            encode: |object| serde_json::to_vec(object),
            decode: |bytes| serde_json::from_slice(bytes),
        }
    }
}

impl<K> Codec<K> {
    /// `object` as bytes sized to fit (a `Vec`'s spare capacity would be kept for
    /// as long as the object is stored).
    pub(crate) fn encode(&self, object: &K) -> serde_json::Result<Arc<[u8]>> {
        (self.encode)(object).map(Arc::from)
    }

    /// The object `bytes` encode.
    pub(crate) fn decode(&self, bytes: &[u8]) -> serde_json::Result<K> {
        (self.decode)(bytes)
    }
}

/// The types whose informers keep the compact stored form; see
/// [`CacheOptions::compact`](super::CacheOptions::compact). Empty by default.
#[derive(Clone, Default)]
pub struct CompactTypes {
    /// Per type: its name (for `Debug`) and its `Codec<K>`, erased.
    codecs: Vec<(TypeId, &'static str, Arc<dyn Any + Send + Sync>)>,
}

impl CompactTypes {
    /// Adds `K` (no-op if it is there).
    pub(crate) fn insert<K>(&mut self)
    where
        K: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        if !self.contains::<K>() {
            self.codecs
                .push((TypeId::of::<K>(), type_name::<K>(), Arc::new(Codec::<K>::json())));
        }
    }

    /// Whether informers of `K` keep the compact form.
    pub fn contains<K: 'static>(&self) -> bool {
        self.codecs.iter().any(|(id, _, _)| *id == TypeId::of::<K>())
    }

    /// Whether no type keeps the compact form.
    pub fn is_empty(&self) -> bool {
        self.codecs.is_empty()
    }

    /// The codec of `K`, if it is compact.
    pub(crate) fn codec<K: 'static>(&self) -> Option<Codec<K>> {
        self.codecs
            .iter()
            .find(|(id, _, _)| *id == TypeId::of::<K>())
            .and_then(|(_, _, codec)| codec.downcast_ref::<Codec<K>>())
            .copied()
    }
}

impl fmt::Debug for CompactTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.codecs.iter().map(|(_, name, _)| name))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};

    use super::*;

    #[test]
    fn v03_types_are_registered_once_and_found_by_type() {
        let mut types = CompactTypes::default();
        assert!(types.is_empty());
        types.insert::<ConfigMap>();
        types.insert::<ConfigMap>();
        assert!(types.contains::<ConfigMap>());
        assert!(!types.contains::<Secret>());
        assert!(types.codec::<ConfigMap>().is_some());
        assert!(types.codec::<Secret>().is_none());
        assert!(format!("{types:?}").contains("ConfigMap"), "{types:?}");
    }
}

/// The compact form against the decoded one: random ConfigMaps, random writes, and
/// every read and event compared.
#[cfg(test)]
mod proptests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use proptest::prelude::*;

    use super::Codec;
    use crate::ClusterName;
    use crate::cache::InformerEvent;
    use crate::cache::index::Extractor;
    use crate::cache::store::{Scope, Store};

    const NAMESPACES: [&str; 3] = ["", "a", "b"];

    #[derive(Debug, Clone)]
    enum Op {
        Apply(ConfigMap),
        Delete(ConfigMap),
        BeginRelist,
        RelistApply(ConfigMap),
        FinishRelist,
    }

    fn small_map() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
        prop::option::of(prop::collection::btree_map(
            "[a-c]{1,2}",
            "[a-z0-9 \\\"é]{0,6}",
            0..3,
        ))
    }

    fn config_map() -> impl Strategy<Value = ConfigMap> {
        (
            prop::sample::select(NAMESPACES.to_vec()),
            0..4u8,
            prop::option::of(0..3u8),
            small_map(),
            small_map(),
            small_map(),
            prop::option::of(prop::collection::btree_map(
                "[a-c]",
                prop::collection::vec(any::<u8>(), 0..4),
                0..2,
            )),
            prop::option::of(any::<bool>()),
        )
            .prop_map(
                |(namespace, name, version, labels, annotations, data, binary, immutable)| ConfigMap {
                    metadata: ObjectMeta {
                        namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
                        name: Some(format!("cm-{name}")),
                        resource_version: version.map(|v| v.to_string()),
                        labels,
                        annotations,
                        ..ObjectMeta::default()
                    },
                    data,
                    binary_data: binary.map(|b| b.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
                    immutable,
                },
            )
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => config_map().prop_map(Op::Apply),
            2 => config_map().prop_map(Op::Delete),
            1 => Just(Op::BeginRelist),
            3 => config_map().prop_map(Op::RelistApply),
            1 => Just(Op::FinishRelist),
        ]
    }

    /// Files by each label value.
    fn by_label() -> Extractor<ConfigMap> {
        Arc::new(|cm: &ConfigMap| {
            cm.metadata
                .labels
                .iter()
                .flatten()
                .map(|(_, v)| v.clone())
                .collect()
        })
    }

    /// An event with its objects as values, comparable across the two forms.
    #[derive(Debug, PartialEq)]
    #[allow(clippy::large_enum_variant, reason = "a test's comparison value")]
    enum Seen {
        Applied(Option<ConfigMap>, ConfigMap),
        Deleted(ConfigMap),
    }

    fn seen(event: InformerEvent<ConfigMap>) -> Seen {
        match event {
            InformerEvent::Applied { old, new } => Seen::Applied(old.map(|o| (*o).clone()), (*new).clone()),
            InformerEvent::Deleted(object) => Seen::Deleted((*object).clone()),
        }
    }

    fn sorted(objects: Vec<Arc<ConfigMap>>) -> Vec<ConfigMap> {
        let mut objects: Vec<ConfigMap> = objects.iter().map(|o| (**o).clone()).collect();
        objects.sort_by(|x, y| {
            (&x.metadata.namespace, &x.metadata.name).cmp(&(&y.metadata.namespace, &y.metadata.name))
        });
        objects
    }

    fn run(store: &Store<ConfigMap>, op: &Op) -> Vec<Seen> {
        match op.clone() {
            Op::Apply(cm) => store.apply(cm).into_iter().map(seen).collect(),
            Op::Delete(cm) => vec![seen(store.delete(cm))],
            Op::BeginRelist => {
                store.begin_relist();
                Vec::new()
            }
            Op::RelistApply(cm) => store.relist_apply(cm).into_iter().map(seen).collect(),
            Op::FinishRelist => {
                // In no particular order: sorted by key to compare.
                let mut events = store.finish_relist();
                events.sort_by_key(|e| {
                    (
                        e.object().metadata.namespace.clone(),
                        e.object().metadata.name.clone(),
                    )
                });
                events.into_iter().map(seen).collect()
            }
        }
    }

    /// Every read of `store` (and of a view of namespace `a`), as values.
    fn reads(store: &Store<ConfigMap>) -> Vec<Vec<ConfigMap>> {
        let view = store.scoped(Scope {
            cluster: ClusterName::from("view"),
            namespace: Arc::from("a"),
        });
        let mut reads = Vec::new();
        for handle in [store, &view] {
            reads.push(sorted(handle.list()));
            let mut each = Vec::new();
            handle.for_each(|object| each.push(object));
            reads.push(sorted(each));
            for namespace in NAMESPACES {
                reads.push(sorted(handle.list_namespace(namespace)));
                for name in 0..4 {
                    let namespace = (!namespace.is_empty()).then_some(namespace);
                    reads.push(sorted(
                        handle.get(namespace, &format!("cm-{name}")).into_iter().collect(),
                    ));
                }
            }
            for value in ["", "a", "b", "0", "x y"] {
                reads.push(sorted(handle.by_index("label", value).unwrap()));
            }
            let mut namespaces = handle.namespaces();
            namespaces.sort();
            reads.push(vec![ConfigMap {
                data: Some(
                    namespaces
                        .into_iter()
                        .map(|ns| (ns, handle.len().to_string()))
                        .collect(),
                ),
                ..ConfigMap::default()
            }]);
        }
        reads
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn v03_compact_store_reads_and_events_equal_the_decoded_store(
            early in prop::collection::vec(op(), 0..12),
            late in prop::collection::vec(op(), 0..30),
        ) {
            let store = |compact: bool| {
                let store = Store::<ConfigMap>::new(ClusterName::from("test"), Arc::from("ConfigMap (v1)"));
                if compact {
                    store.set_codec(Codec::json());
                }
                store
            };
            let (plain, compact) = (store(false), store(true));
            prop_assert!(compact.is_compact() && !plain.is_compact());
            // An index registered before the first objects, one after some.
            plain.add_index("label", by_label()).unwrap();
            compact.add_index("label", by_label()).unwrap();
            for op in &early {
                prop_assert_eq!(run(&plain, op), run(&compact, op));
            }
            plain.add_index("late", by_label()).unwrap();
            compact.add_index("late", by_label()).unwrap();
            prop_assert_eq!(reads(&plain), reads(&compact));
            for op in &late {
                prop_assert_eq!(run(&plain, op), run(&compact, op), "{:?}", op);
                prop_assert_eq!(reads(&plain), reads(&compact));
                prop_assert_eq!(
                    sorted(plain.by_index("late", "a").unwrap()),
                    sorted(compact.by_index("late", "a").unwrap())
                );
            }
            // Not vacuous: the compact store really holds encoded objects.
            prop_assert_eq!(compact.is_compact(), true);
        }
    }
}
