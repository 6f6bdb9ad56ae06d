//! Settings of a cache and of one watch.

use std::time::Duration;

use kube::runtime::watcher;

/// Settings shared by every informer of a [`Cache`](super::Cache).
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::cache::CacheOptions;
///
/// let options = CacheOptions::default()
///     .sync_timeout(Duration::from_secs(10))
///     .strip_managed_fields(false);
/// assert_eq!(options.event_capacity, 1024);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheOptions {
    /// How long the cache's reading shortcuts ([`Cache::get`](super::Cache::get),
    /// [`list`](super::Cache::list), [`list_by_index`](super::Cache::list_by_index))
    /// wait for an informer's first sync before failing with
    /// [`CacheError::SyncTimeout`](super::CacheError::SyncTimeout). Default: 30 s.
    pub sync_timeout: Duration,
    /// Whether to drop `metadata.managedFields` from every object before storing it.
    /// Controllers rarely read them, and they take more than half the memory of a
    /// small object. Default: `true`.
    pub strip_managed_fields: bool,
    /// How many events each informer buffers for subscribers that fall behind; a
    /// subscriber further behind gets
    /// [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged) (see
    /// [`Informer::subscribe`](super::Informer::subscribe)). Clamped to
    /// `1..=`[`MAX_EVENT_CAPACITY`](Self::MAX_EVENT_CAPACITY). Default: 1024.
    pub event_capacity: usize,
    /// How many events each per-namespace channel of an informer buffers: the
    /// channels that subscribers through a [namespace-scoped view](super::Cache::scoped)
    /// read (see [`Informer::subscribe`](super::Informer::subscribe)). A namespace
    /// sees a fraction of a cluster's events and there may be thousands of views, so
    /// this is smaller than [`event_capacity`](Self::event_capacity); a subscriber
    /// further behind gets `Lagged` and re-reads its namespace. Clamped like
    /// `event_capacity`. Default: 128.
    pub namespace_event_capacity: usize,
}

impl CacheOptions {
    /// The largest [`event_capacity`](Self::event_capacity) used; larger values are
    /// lowered to it, since the buffer is allocated up front.
    pub const MAX_EVENT_CAPACITY: usize = 1 << 20;

    /// Sets [`sync_timeout`](Self::sync_timeout).
    #[must_use]
    pub fn sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// Sets [`strip_managed_fields`](Self::strip_managed_fields).
    #[must_use]
    pub fn strip_managed_fields(mut self, strip: bool) -> Self {
        self.strip_managed_fields = strip;
        self
    }

    /// Sets [`event_capacity`](Self::event_capacity).
    #[must_use]
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Sets [`namespace_event_capacity`](Self::namespace_event_capacity).
    #[must_use]
    pub fn namespace_event_capacity(mut self, capacity: usize) -> Self {
        self.namespace_event_capacity = capacity;
        self
    }

    /// The capacity actually used: never zero (the channel would panic), never huge.
    pub(crate) fn effective_event_capacity(&self) -> usize {
        self.event_capacity.clamp(1, Self::MAX_EVENT_CAPACITY)
    }

    /// The per-namespace capacity actually used, clamped likewise.
    pub(crate) fn effective_namespace_event_capacity(&self) -> usize {
        self.namespace_event_capacity.clamp(1, Self::MAX_EVENT_CAPACITY)
    }
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            sync_timeout: Duration::from_secs(30),
            strip_managed_fields: true,
            event_capacity: 1024,
            namespace_event_capacity: 128,
        }
    }
}

/// Which objects of a type one watch covers. The default covers all of them, in all
/// namespaces.
///
/// Informers are shared per type *and* spec: requests with equal specs share one
/// watch; different specs get separate watches and separate stores.
///
/// ```
/// use multicluster_runtime::cache::WatchSpec;
///
/// let spec = WatchSpec::default().labels("app=web").fields("metadata.namespace=prod");
/// assert_eq!(spec.label_selector.as_deref(), Some("app=web"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WatchSpec {
    /// A label selector, e.g. `app=web,tier!=db`.
    pub label_selector: Option<String>,
    /// A field selector, e.g. `metadata.namespace=prod`.
    pub field_selector: Option<String>,
}

impl WatchSpec {
    /// Sets the label selector.
    #[must_use]
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_owned());
        self
    }

    /// Sets the field selector.
    #[must_use]
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_owned());
        self
    }

    /// The same selection with empty selectors written as `None`, so that specs that
    /// select the same objects share one watch.
    pub(crate) fn normalized(self) -> Self {
        let keep = |selector: Option<String>| selector.filter(|s| !s.trim().is_empty());
        WatchSpec {
            label_selector: keep(self.label_selector),
            field_selector: keep(self.field_selector),
        }
    }

    pub(crate) fn watcher_config(&self) -> watcher::Config {
        let mut config = watcher::Config::default();
        if let Some(labels) = &self.label_selector {
            config = config.labels(labels);
        }
        if let Some(fields) = &self.field_selector {
            config = config.fields(fields);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_selectors_normalize_to_none() {
        let spec = WatchSpec::default().labels(" ").fields("").normalized();
        assert_eq!(spec, WatchSpec::default());
    }

    #[test]
    fn event_capacity_is_clamped() {
        assert_eq!(
            CacheOptions::default()
                .event_capacity(0)
                .effective_event_capacity(),
            1
        );
        assert_eq!(
            CacheOptions::default()
                .event_capacity(usize::MAX)
                .effective_event_capacity(),
            CacheOptions::MAX_EVENT_CAPACITY
        );
    }
}
