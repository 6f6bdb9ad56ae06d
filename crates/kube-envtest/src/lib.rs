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
//! ships in `controlplane/`: [`Binaries::build_command`] is the exact command (`bash
//! <this package>/controlplane/build.sh`), for a checkout as for the package in
//! Cargo's registry cache. See [`Binaries::find`] for where they are looked up and how
//! to point elsewhere (`KUBE_ENVTEST_BIN_DIR`, `TEST_ASSET_KUBE_APISERVER`,
//! `TEST_ASSET_ETCD`).
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
//! With [`FleetBuilder::controller_manager`], each cluster also runs a
//! kube-controller-manager with the namespace, garbage-collector and service-account
//! controllers, so that a deleted namespace goes away and dependents of a deleted
//! owner are collected, as in a real cluster.
//!
//! # Platforms
//!
//! Linux only. Processes cannot outlive the test process: they are killed when the
//! fleet is dropped and, should the test process itself be killed, by the kernel
//! (`PR_SET_PDEATHSIG`, which only Linux has). On any other target this crate does
//! not compile, and says so in one sentence; at run time, a binary built for another
//! system or CPU is refused with [`Error::BinaryForAnotherPlatform`].
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "kube-envtest runs only on Linux: it ties the lifetime of the etcd and kube-apiserver \
     processes it starts to the test process with PR_SET_PDEATHSIG, which other systems \
     lack; run the tests in a Linux machine, VM or container"
);

mod binaries;
mod certs;
mod cluster;
mod controller_manager;
mod crds;
mod error;
mod etcd;
mod fleet;
mod kubeconfig;
mod logs;
mod ports;
mod process;
mod users;

pub use binaries::{
    APISERVER_ENV, BIN_DIR_ENV, Binaries, CONTROLLER_MANAGER_ENV, ETCD_ENV, KUBERNETES_VERSION,
};
pub use cluster::{ADMIN_USER, LocalCluster};
pub use controller_manager::CONTROLLERS;
pub use error::{Error, Result};
pub use fleet::{EtcdTopology, Fleet, FleetBuilder};
pub use users::{LocalUser, UserSpec};

/// The package's README (its registry page): its code is compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
