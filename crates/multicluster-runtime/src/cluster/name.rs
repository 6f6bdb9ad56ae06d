//! The name of a cluster within a fleet.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// The name of a cluster, unique within its provider.
///
/// The empty name stands for the manager's own cluster (the *local* cluster), as in
/// Go's multicluster-runtime. Cloning is cheap: the text is shared.
///
/// ```
/// use multicluster_runtime::ClusterName;
///
/// let name = ClusterName::from("eu-west-1");
/// assert_eq!(name.as_str(), "eu-west-1");
/// assert!(ClusterName::local().is_local());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClusterName(Arc<str>);

impl ClusterName {
    /// A cluster name; the empty string means the local cluster.
    pub fn new(name: impl AsRef<str>) -> Self {
        ClusterName(Arc::from(name.as_ref()))
    }

    /// The name of the manager's own cluster: the empty string.
    pub fn local() -> Self {
        ClusterName::default()
    }

    /// Whether this names the manager's own cluster.
    pub fn is_local(&self) -> bool {
        self.0.is_empty()
    }

    /// The name as text (empty for the local cluster).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    /// The name, or `<local>` for the local cluster, so log lines never show an
    /// empty field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_local() {
            f.write_str("<local>")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for ClusterName {
    fn from(name: &str) -> Self {
        ClusterName::new(name)
    }
}

impl From<String> for ClusterName {
    fn from(name: String) -> Self {
        ClusterName(Arc::from(name))
    }
}

impl From<&String> for ClusterName {
    fn from(name: &String) -> Self {
        ClusterName::new(name)
    }
}

impl AsRef<str> for ClusterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ClusterName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ClusterName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for ClusterName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}
