//! Which clusters a controller works on.

use std::fmt;
use std::sync::Arc;

use crate::cluster::ClusterName;

/// Decides by name whether a controller works on a cluster.
pub type ClusterFilter = Arc<dyn Fn(&ClusterName) -> bool + Send + Sync>;

/// Which engaged clusters a controller accepts.
///
/// By default a controller works on every provider cluster, and on the local
/// cluster only when the manager has no provider (as in Go's multicluster-runtime).
#[derive(Clone)]
pub struct EngageOptions {
    pub(crate) local: Option<bool>,
    pub(crate) providers: bool,
    pub(crate) filter: Option<ClusterFilter>,
}

impl Default for EngageOptions {
    fn default() -> Self {
        EngageOptions {
            local: None,
            providers: true,
            filter: None,
        }
    }
}

impl fmt::Debug for EngageOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngageOptions")
            .field("local", &self.local)
            .field("providers", &self.providers)
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

impl EngageOptions {
    /// Whether a cluster of this name is worked on; `has_provider` decides the default
    /// for the local cluster.
    pub(crate) fn accepts(&self, name: &ClusterName, has_provider: bool) -> bool {
        let by_kind = if name.is_local() {
            self.local.unwrap_or(!has_provider)
        } else {
            self.providers
        };
        by_kind && self.filter.as_ref().is_none_or(|accept| accept(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_cluster_defaults_to_the_absence_of_a_provider() {
        let options = EngageOptions::default();
        assert!(options.accepts(&ClusterName::local(), false));
        assert!(!options.accepts(&ClusterName::local(), true));
        assert!(options.accepts(&"a".into(), true));
    }

    #[test]
    fn filter_applies_to_every_cluster() {
        let options = EngageOptions {
            local: Some(true),
            providers: true,
            filter: Some(Arc::new(|name: &ClusterName| name.as_str() != "b")),
        };
        assert!(options.accepts(&"a".into(), true));
        assert!(!options.accepts(&"b".into(), true));
        assert!(options.accepts(&ClusterName::local(), true));
    }
}
