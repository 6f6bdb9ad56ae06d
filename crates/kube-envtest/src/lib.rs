//! Real local Kubernetes control planes for tests: one cluster or a whole fleet.
//!
//! `kube-envtest` starts etcd and one or more `kube-apiserver` processes on the
//! loopback interface, each cluster with its own certificate authority, admin user
//! and kubeconfig, and tears everything down when the [`Fleet`] is dropped, also
//! when a test panics. It is the Rust counterpart of controller-runtime's envtest,
//! built for testing controllers that span several clusters: clusters can be
//! stopped, restarted and paused to test how a controller copes with a broken one.
//!
//! The binaries are built from the Go module proxy by the build module this package
//! ships in `controlplane/` (`controlplane/build.sh`; `tools/controlplane/build.sh` in
//! the multicluster-runtime repository runs it; see [`Binaries::find`] for where they
//! are looked up and how to point elsewhere).
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let fleet = kube_envtest::Fleet::start(3).await?;
//! for cluster in fleet.clusters() {
//!     let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client()?, "default");
//!     let mut cm = ConfigMap::default();
//!     cm.metadata.name = Some(format!("hello-{}", cluster.name()));
//!     configmaps.create(&PostParams::default(), &cm).await?;
//!     println!("{} at {}: {}", cluster.name(), cluster.server_url(), cluster.kubeconfig_path().display());
//! }
//!
//! // Fault injection: the other clusters keep serving.
//! fleet.cluster(1).pause();
//! fleet.cluster(1).resume();
//! fleet.cluster(2).stop().await;
//! fleet.cluster(2).start().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Processes cannot outlive the test process: they are killed when the fleet is
//! dropped and, should the test process itself be killed, by the kernel
//! (`PR_SET_PDEATHSIG`). This crate is therefore Linux-only.
#![warn(missing_docs)]

mod binaries;
mod certs;
mod cluster;
mod crds;
mod error;
mod etcd;
mod fleet;
mod kubeconfig;
mod logs;
mod ports;
mod process;
mod users;

pub use binaries::{BIN_DIR_ENV, Binaries, KUBERNETES_VERSION};
pub use cluster::{ADMIN_USER, LocalCluster};
pub use error::{BUILD_COMMAND, Error, Result};
pub use fleet::{EtcdTopology, Fleet, FleetBuilder};
pub use users::{LocalUser, UserSpec};

/// The package's README (its registry page): its code is compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
