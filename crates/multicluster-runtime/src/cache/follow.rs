//! Following an informer: the one loop behind the controllers' watches, the
//! Secrets provider and the namespace provider. The providers that discover
//! clusters from two informers at once (Cluster API, ClusterProfile) multiplex them
//! with timers in one loop of their own, and share the wait for the first list.
//!
//! Three rules, written once here:
//!
//! 1. **Wait for the first list**, logging an error each time the sync timeout
//!    passes without it (the informer keeps retrying underneath).
//! 2. **Subscribe, then read the store.** The informer stores a change before it
//!    announces it, so every change is in the listing or among the events (or
//!    both; handlers are idempotent). Subscribing before the sync would deliver the
//!    first list twice.
//! 3. **After a gap, read the store again.** A subscriber that fell behind lost
//!    events, deletions among them: it is told to resync, as at the start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use super::{CacheError, Informer, InformerEvent};
use crate::redact;

/// What a follower is told.
pub(crate) enum Step<K> {
    /// Read the whole store: at the start, and after events were lost (`missed` of
    /// them; zero at the start).
    Resync {
        /// Events lost before this resync.
        #[cfg_attr(not(feature = "secret"), allow(dead_code))]
        missed: u64,
    },
    /// An object was created or changed.
    Applied {
        /// The previous version, if the informer had one.
        old: Option<Arc<K>>,
        /// The new version.
        new: Arc<K>,
    },
    /// An object was deleted.
    Deleted(Arc<K>),
}

/// What an informer says, one [`Step`] at a time, in the order of the
/// [module docs](self): a follower loops on [`next`](Self::next) and handles each
/// step, awaiting what it must in between.
pub(crate) struct Steps<K> {
    informer: Arc<Informer<K>>,
    sync_timeout: Duration,
    /// Names the follower in logs.
    what: String,
    /// Subscribed once the informer has synced.
    events: Option<broadcast::Receiver<InformerEvent<K>>>,
}

impl<K: Clone> Steps<K> {
    /// The steps of `informer`; `sync_timeout` paces the logs while it has not synced.
    pub(crate) fn new(informer: Arc<Informer<K>>, sync_timeout: Duration, what: impl Into<String>) -> Self {
        Steps {
            informer,
            sync_timeout,
            what: what.into(),
            events: None,
        }
    }

    /// The informer followed.
    #[cfg_attr(not(any(feature = "secret", feature = "namespace")), allow(dead_code))]
    pub(crate) fn informer(&self) -> &Arc<Informer<K>> {
        &self.informer
    }

    /// The next step; `None` once the informer has stopped (its cache was stopped:
    /// the cluster left).
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call loses no event (waiting for the sync and
    /// receiving from the informer's channel both are).
    pub(crate) async fn next(&mut self) -> Option<Step<K>> {
        let Some(events) = &mut self.events else {
            if !wait_synced_logged(&self.informer, self.sync_timeout, &self.what).await {
                return None;
            }
            self.events = Some(self.informer.subscribe());
            return Some(Step::Resync { missed: 0 });
        };
        match events.recv().await {
            Ok(InformerEvent::Applied { old, new }) => Some(Step::Applied { old, new }),
            Ok(InformerEvent::Deleted(object)) => Some(Step::Deleted(object)),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    cluster = %self.informer.cluster(),
                    resource = self.informer.resource(),
                    missed,
                    follower = %self.what,
                    "fell behind the cache's events; reading the whole store again"
                );
                Some(Step::Resync { missed })
            }
            Err(RecvError::Closed) => None,
        }
    }
}

/// Waits until `informer` has synced, logging an error each time `timeout` passes
/// without (the informer keeps retrying underneath, and only its cluster waits).
/// `false` if the informer stopped first: its cluster was removed or replaced, which
/// is no error.
pub(crate) async fn wait_synced_logged<K>(informer: &Informer<K>, timeout: Duration, what: &str) -> bool {
    loop {
        match informer.wait_synced(timeout).await {
            Ok(()) => return true,
            Err(CacheError::Stopped { .. }) => {
                tracing::debug!(cluster = %informer.cluster(), resource = informer.resource(), follower = what, "cache stopped before it synced");
                return false;
            }
            Err(error) => {
                tracing::error!(
                    cluster = %informer.cluster(),
                    follower = what,
                    error = %redact::describe(&error),
                    "cache not synced; still waiting"
                );
            }
        }
    }
}
