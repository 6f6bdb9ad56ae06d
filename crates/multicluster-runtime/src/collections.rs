//! Hash maps of the hot paths: the work queue's and the cache stores', looked up
//! once or more for every object a cluster sends.
//!
//! They hash with foldhash instead of the standard library's SipHash, which took a
//! tenth of a controller's CPU on the first list of a large fleet (issue 21, v02).
//! Their keys (object and cluster names) come from the clusters, so the hasher is
//! still seeded at random, per process and per map: a cluster cannot pick names
//! that collide without seeing the seed.

/// A hash map with foldhash's randomly seeded hasher.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A hash set with foldhash's randomly seeded hasher.
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
