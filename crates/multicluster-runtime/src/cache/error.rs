//! Errors of the cache.

use std::sync::Arc;
use std::time::Duration;

use crate::ClusterName;

/// An error of a [`Cache`](super::Cache), an [`Informer`](super::Informer) or a
/// [`Store`](super::Store). Every message names the cluster and the resource type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The informer did not finish its first list in time. It keeps trying; a later
    /// wait may succeed.
    #[error(
        "cache of {resource} in cluster {cluster} not synced after {waited:?}{}",
        last_error_suffix(.last_error.as_deref())
    )]
    SyncTimeout {
        /// The cluster of the cache.
        cluster: ClusterName,
        /// The resource type, e.g. `ConfigMap (v1)`.
        resource: String,
        /// How long the caller waited.
        waited: Duration,
        /// The informer's most recent watch error, if any: usually why it is not synced.
        /// Described by [`redact::describe`](crate::redact::describe): never a credential.
        last_error: Option<Arc<str>>,
    },

    /// No index of that name is registered for the resource type.
    #[error("no index named {index:?} in the cache of {resource} in cluster {cluster}")]
    UnknownIndex {
        /// The cluster of the cache.
        cluster: ClusterName,
        /// The resource type, e.g. `ConfigMap (v1)`.
        resource: String,
        /// The index asked for.
        index: String,
    },

    /// An index of that name is already registered for the resource type.
    #[error("an index named {index:?} already exists in the cache of {resource} in cluster {cluster}")]
    IndexExists {
        /// The cluster of the cache.
        cluster: ClusterName,
        /// The resource type, e.g. `ConfigMap (v1)`.
        resource: String,
        /// The index registered twice.
        index: String,
    },

    /// A read names a namespace that the informer does not watch: it watches only
    /// some namespaces (see [`WatchNamespaces`](super::WatchNamespaces)), so it cannot tell
    /// whether the object exists. Watch that namespace too, or read through a
    /// client.
    #[error(
        "namespace {namespace:?} is not watched by the cache of {resource} in cluster {cluster} \
         (it watches {})",
        watched.join(", ")
    )]
    NamespaceNotWatched {
        /// The cluster of the cache.
        cluster: ClusterName,
        /// The resource type, e.g. `ConfigMap (v1)`.
        resource: String,
        /// The namespace asked for.
        namespace: String,
        /// The namespaces watched.
        watched: Vec<String>,
    },

    /// The cache was stopped (its cancellation token was cancelled, usually because
    /// the cluster left the fleet): its informers no longer follow the cluster.
    #[error("cache of {resource} in cluster {cluster} is stopped")]
    Stopped {
        /// The cluster of the cache.
        cluster: ClusterName,
        /// The resource type, e.g. `ConfigMap (v1)`.
        resource: String,
    },
}

fn last_error_suffix(error: Option<&str>) -> String {
    match error {
        Some(error) => format!("; last watch error: {error}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher;

    use super::*;

    #[test]
    fn sync_timeout_names_cluster_type_wait_and_cause() {
        let error = CacheError::SyncTimeout {
            cluster: ClusterName::from("eu-1"),
            resource: "ConfigMap (v1)".into(),
            waited: Duration::from_secs(10),
            last_error: Some(crate::redact::describe(&watcher::Error::NoResourceVersion).into()),
        };
        assert_eq!(
            error.to_string(),
            "cache of ConfigMap (v1) in cluster eu-1 not synced after 10s; last watch error: \
             no metadata.resourceVersion in watch result (does resource support watch?)"
        );
        let error = CacheError::SyncTimeout {
            cluster: ClusterName::local(),
            resource: "ConfigMap (v1)".into(),
            waited: Duration::from_millis(1500),
            last_error: None,
        };
        assert_eq!(
            error.to_string(),
            "cache of ConfigMap (v1) in cluster <local> not synced after 1.5s"
        );
    }

    #[test]
    fn namespace_not_watched_names_the_watched_namespaces() {
        let error = CacheError::NamespaceNotWatched {
            cluster: ClusterName::from("eu-1"),
            resource: "ConfigMap (v1)".into(),
            namespace: "team-c".into(),
            watched: vec!["team-a".into(), "team-b".into()],
        };
        assert_eq!(
            error.to_string(),
            "namespace \"team-c\" is not watched by the cache of ConfigMap (v1) in cluster eu-1 \
             (it watches team-a, team-b)"
        );
    }
}
