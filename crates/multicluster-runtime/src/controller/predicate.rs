//! Filters that decide which changes are worth a reconcile.
//!
//! A [`Predicate`] sees the object before and after a change. Predicates given to
//! [`with_predicate`](super::ControllerBuilder::with_predicate) several times must
//! all pass (AND); [`all`], [`any`] and [`not`] combine them in any other way
//! (controller-runtime's `predicate.And`, `Or` and `Not`).
//!
//! ```
//! use k8s_openapi::api::apps::v1::Deployment;
//! use multicluster_runtime::controller::predicate::{self, any, not};
//!
//! // Spec changes, or label changes, but never of objects labelled `paused=true`.
//! let interesting = predicate::all([
//!     any([predicate::generation_changed(), predicate::labels_changed()]),
//!     not(predicate::has_label("paused", "true")),
//! ]);
//!
//! let mut old = Deployment::default();
//! old.metadata.generation = Some(1);
//! let mut new = old.clone();
//! new.metadata.generation = Some(2);
//! assert!(interesting(Some(&old), &new));
//! new.metadata.labels = Some([("paused".to_owned(), "true".to_owned())].into());
//! assert!(!interesting(Some(&old), &new));
//! ```
//!
//! A source that (re)lists, at start and after falling behind, treats every object
//! as new (`old` is `None`). Deletions are never filtered.

use std::sync::Arc;

use kube::ResourceExt;

/// Decides whether a change of an object (`old` is `None` for a new one) should
/// enqueue a request. Deletions always pass: a reconciler must see them.
pub type Predicate<K> = Arc<dyn Fn(Option<&K>, &K) -> bool + Send + Sync>;

/// Passes a change only if every one of `predicates` passes it (controller-runtime's
/// `predicate.And`); with none, passes everything.
///
/// The predicates are asked in order and the first that refuses ends the check.
///
/// ```
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use multicluster_runtime::controller::predicate::{self, custom};
///
/// let both = predicate::all([custom(|_, _: &ConfigMap| true), custom(|_, _| false)]);
/// assert!(!both(None, &ConfigMap::default()));
/// assert!(predicate::all::<ConfigMap>([])(None, &ConfigMap::default()));
/// ```
pub fn all<K: 'static>(predicates: impl IntoIterator<Item = Predicate<K>>) -> Predicate<K> {
    let predicates: Vec<Predicate<K>> = predicates.into_iter().collect();
    Arc::new(move |old: Option<&K>, new: &K| predicates.iter().all(|p| p(old, new)))
}

/// Passes a change if at least one of `predicates` passes it (controller-runtime's
/// `predicate.Or`); with none, passes nothing.
///
/// The predicates are asked in order and the first that passes ends the check.
///
/// ```
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use multicluster_runtime::controller::predicate::{self, custom};
///
/// let either = predicate::any([custom(|_, _: &ConfigMap| false), custom(|_, _| true)]);
/// assert!(either(None, &ConfigMap::default()));
/// assert!(!predicate::any::<ConfigMap>([])(None, &ConfigMap::default()));
/// ```
pub fn any<K: 'static>(predicates: impl IntoIterator<Item = Predicate<K>>) -> Predicate<K> {
    let predicates: Vec<Predicate<K>> = predicates.into_iter().collect();
    Arc::new(move |old: Option<&K>, new: &K| predicates.iter().any(|p| p(old, new)))
}

/// Passes exactly the changes `predicate` refuses (controller-runtime's
/// `predicate.Not`). Deletions still pass: they never reach a predicate.
///
/// ```
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use multicluster_runtime::controller::predicate::{self, has_label};
///
/// let unlabelled = predicate::not(has_label::<ConfigMap>("team", "a"));
/// assert!(unlabelled(None, &ConfigMap::default()));
/// ```
pub fn not<K: 'static>(predicate: Predicate<K>) -> Predicate<K> {
    Arc::new(move |old: Option<&K>, new: &K| !predicate(old, new))
}

/// Passes new objects and changes of `metadata.generation`, i.e. spec changes, not
/// status-only updates (controller-runtime's `GenerationChangedPredicate`).
///
/// # Caveats
///
/// - The API server bumps `metadata.generation` only for changes of what it
///   counts as the spec. A custom resource whose definition does not enable the
///   `status` subresource bumps it on status changes too, so those pass.
/// - Changes of metadata only (labels, annotations, finalizers, owner references)
///   do not bump it, so they are filtered out. Combine with [`any`] and
///   [`labels_changed`] or [`annotations_changed`] if the reconciler reads them.
/// - Objects without a spec, such as `ConfigMap` and `Secret`, have no generation:
///   no update of them ever passes, only their creation (and, as always, deletion).
/// - A reconciler that writes status and expects to be called again for it will not
///   be: request a requeue with [`Action::requeue`](super::Action::requeue) instead.
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

    fn constant(pass: bool) -> Predicate<ConfigMap> {
        custom(move |_, _| pass)
    }

    #[test]
    fn all_is_true_only_when_every_predicate_is() {
        let table = [
            (vec![], true),
            (vec![false], false),
            (vec![true], true),
            (vec![false, false], false),
            (vec![false, true], false),
            (vec![true, false], false),
            (vec![true, true], true),
        ];
        for (inputs, expected) in table {
            let p = all(inputs.iter().map(|&b| constant(b)));
            assert_eq!(p(None, &cm(1, None)), expected, "all{inputs:?}");
        }
    }

    #[test]
    fn any_is_true_when_at_least_one_predicate_is() {
        let table = [
            (vec![], false),
            (vec![false], false),
            (vec![true], true),
            (vec![false, false], false),
            (vec![false, true], true),
            (vec![true, false], true),
            (vec![true, true], true),
        ];
        for (inputs, expected) in table {
            let p = any(inputs.iter().map(|&b| constant(b)));
            assert_eq!(p(None, &cm(1, None)), expected, "any{inputs:?}");
        }
    }

    #[test]
    fn not_inverts() {
        assert!(!not(constant(true))(None, &cm(1, None)));
        assert!(not(constant(false))(None, &cm(1, None)));
    }

    #[test]
    fn combinators_pass_old_and_new_through() {
        // Changed labels at the same generation: only the label predicate sees it.
        let (old, new) = (cm(1, None), cm(1, Some("a")));
        let spec_or_labels = any([generation_changed(), labels_changed()]);
        assert!(spec_or_labels(Some(&old), &new));
        let spec_and_labels = all([generation_changed(), labels_changed()]);
        assert!(!spec_and_labels(Some(&old), &new));
        assert!(not(generation_changed())(Some(&old), &new));
    }

    #[test]
    fn all_stops_at_the_first_refusal_and_any_at_the_first_pass() {
        let boom = custom::<ConfigMap>(|_, _| panic!("not asked"));
        assert!(!all([constant(false), boom.clone()])(None, &cm(1, None)));
        assert!(any([constant(true), boom])(None, &cm(1, None)));
    }

    #[test]
    fn generation_changed_never_passes_updates_of_objects_without_generation() {
        let old = ConfigMap {
            data: Some([("a".to_owned(), "1".to_owned())].into()),
            ..ConfigMap::default()
        };
        let mut new = old.clone();
        new.data = Some([("a".to_owned(), "2".to_owned())].into());
        assert!(!generation_changed::<ConfigMap>()(Some(&old), &new));
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
