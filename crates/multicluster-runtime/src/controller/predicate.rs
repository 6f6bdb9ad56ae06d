//! Filters that decide which changes are worth a reconcile.

use std::sync::Arc;

use kube::ResourceExt;

/// Decides whether a change of an object (`old` is `None` for a new one) should
/// enqueue a request. Deletions always pass: a reconciler must see them.
pub type Predicate<K> = Arc<dyn Fn(Option<&K>, &K) -> bool + Send + Sync>;

/// Passes new objects and changes of `metadata.generation`, i.e. spec changes, not
/// status-only updates.
pub fn generation_changed<K: ResourceExt>() -> Predicate<K> {
    Arc::new(|old: Option<&K>, new: &K| old.is_none_or(|old| old.meta().generation != new.meta().generation))
}

/// Passes new objects and changes of labels.
pub fn labels_changed<K: ResourceExt>() -> Predicate<K> {
    Arc::new(|old: Option<&K>, new: &K| old.is_none_or(|old| old.labels() != new.labels()))
}

/// Passes new objects and changes of annotations.
pub fn annotations_changed<K: ResourceExt>() -> Predicate<K> {
    Arc::new(|old: Option<&K>, new: &K| old.is_none_or(|old| old.annotations() != new.annotations()))
}

/// Passes objects carrying label `key` with value `value`, now or before the change
/// (so removing the label still reaches the reconciler).
pub fn has_label<K: ResourceExt>(key: impl Into<String>, value: impl Into<String>) -> Predicate<K> {
    let (key, value) = (key.into(), value.into());
    Arc::new(move |old: Option<&K>, new: &K| {
        let matches = |o: &K| o.labels().get(&key) == Some(&value);
        matches(new) || old.is_some_and(matches)
    })
}

/// Passes what `predicate` passes, for closures written in place.
pub fn custom<K>(predicate: impl Fn(Option<&K>, &K) -> bool + Send + Sync + 'static) -> Predicate<K> {
    Arc::new(predicate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(generation: i64, label: Option<&str>) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.generation = Some(generation);
        if let Some(value) = label {
            cm.metadata.labels = Some([("team".to_owned(), value.to_owned())].into());
        }
        cm
    }

    #[test]
    fn generation_changed_ignores_status_only_updates() {
        let p = generation_changed::<ConfigMap>();
        assert!(p(None, &cm(1, None)));
        assert!(!p(Some(&cm(1, None)), &cm(1, Some("a"))));
        assert!(p(Some(&cm(1, None)), &cm(2, None)));
    }

    #[test]
    fn has_label_sees_removal() {
        let p = has_label::<ConfigMap>("team", "a");
        assert!(p(None, &cm(1, Some("a"))));
        assert!(!p(None, &cm(1, Some("b"))));
        assert!(p(Some(&cm(1, Some("a"))), &cm(1, None)));
    }

    #[test]
    fn labels_and_annotations() {
        assert!(labels_changed::<ConfigMap>()(
            Some(&cm(1, None)),
            &cm(1, Some("a"))
        ));
        assert!(!annotations_changed::<ConfigMap>()(
            Some(&cm(1, None)),
            &cm(1, Some("a"))
        ));
    }
}
