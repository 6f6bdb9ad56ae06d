//! What an informer tells its subscribers.

use std::fmt;
use std::sync::Arc;

/// A change an [`Informer`](super::Informer) applied to its store.
///
/// Objects are shared with the store (`Arc`): an event costs no copy of the object.
/// A store that keeps the [compact form](super::CacheOptions::compact) shares
/// nothing: `new` is the object as it was stored, `old` is decoded from the stored
/// form when the object is replaced or removed.
#[non_exhaustive]
pub enum InformerEvent<K> {
    /// An object was created or changed.
    Applied {
        /// The version stored before, `None` for an object new to the store. Lets
        /// handlers compare, e.g. "did `metadata.generation` change?".
        old: Option<Arc<K>>,
        /// The version stored now.
        new: Arc<K>,
    },
    /// An object was deleted, or vanished while the watch was interrupted (noticed
    /// when the informer listed again). Carries the last version known.
    Deleted(Arc<K>),
}

impl<K> InformerEvent<K> {
    /// The object the event is about: the new version, or the deleted one.
    pub fn object(&self) -> &Arc<K> {
        match self {
            InformerEvent::Applied { new, .. } => new,
            InformerEvent::Deleted(object) => object,
        }
    }
}

// By hand: a derive would require `K: Clone`, but only the `Arc`s are cloned.
impl<K> Clone for InformerEvent<K> {
    fn clone(&self) -> Self {
        match self {
            InformerEvent::Applied { old, new } => InformerEvent::Applied {
                old: old.clone(),
                new: new.clone(),
            },
            InformerEvent::Deleted(object) => InformerEvent::Deleted(object.clone()),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for InformerEvent<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InformerEvent::Applied { old, new } => f
                .debug_struct("Applied")
                .field("old", old)
                .field("new", new)
                .finish(),
            InformerEvent::Deleted(object) => f.debug_tuple("Deleted").field(object).finish(),
        }
    }
}
