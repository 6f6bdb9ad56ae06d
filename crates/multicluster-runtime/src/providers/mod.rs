//! Providers: where clusters come from.
//!
//! | provider | feature | clusters |
//! |---|---|---|
//! | [`clusters::Clusters`] | always | added, replaced and removed by code at runtime; the base of the others |
//! | [`single::Single`] | always | exactly one, given at construction |
//! | `file::Files` | `file` | one per context of kubeconfig files, directories and globs, watched for changes |
//! | `secret::Secrets` | `secret` | one per labelled kubeconfig Secret in a namespace |
//! | `namespace::Namespaces` | `namespace` | one per namespace of a host cluster, sharing one host cache |
//! | `capi::ClusterApi` | `capi` | one per Cluster API `Cluster` whose control plane is initialized |
//! | `profile::ClusterProfiles` | `profile` | one per healthy `ClusterProfile` of a cluster inventory |
//! | `multi::Multi` | `multi` | the clusters of several providers, under `<provider>#<cluster>` |
//! | `nop::Nop` | `nop` | none |
//!
//! Kubeconfigs from outside the program go through [`kubeconfig`], which refuses exec
//! plugins and local files unless the operator allows them.

#[cfg(feature = "capi")]
pub mod capi;
pub mod clusters;
#[cfg(feature = "file")]
pub mod file;
#[cfg(test)]
pub(crate) mod fuzz;
/// Kubeconfigs from outside the program, vetted before they are used: lives in
/// [`cluster::kubeconfig`](crate::cluster::kubeconfig) (how a cluster is connected
/// to), named here too because the providers that read kubeconfigs use it.
pub use crate::cluster::kubeconfig;
#[cfg(feature = "multi")]
pub mod multi;
#[cfg(feature = "namespace")]
pub mod namespace;
#[cfg(feature = "nop")]
pub mod nop;
#[cfg(any(feature = "capi", feature = "profile"))]
mod object_clusters;
#[cfg(feature = "profile")]
pub mod profile;
#[cfg(feature = "secret")]
pub mod secret;
pub mod single;
