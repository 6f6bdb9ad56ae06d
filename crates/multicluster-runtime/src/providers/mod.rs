//! Providers: where clusters come from.
//!
//! | provider | clusters |
//! |---|---|
//! | [`clusters::Clusters`] | added, replaced and removed by code at runtime; the base of tests and of other providers |
//! | [`single::Single`] | exactly one, given at construction |

pub mod clusters;
pub mod kubeconfig;
pub mod single;
