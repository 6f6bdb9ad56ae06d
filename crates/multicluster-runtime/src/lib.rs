//! Kubernetes controllers that reconcile across a dynamic fleet of clusters.
//!
//! This is the Rust counterpart of Go's `sigs.k8s.io/multicluster-runtime`, built on
//! kube-rs:
//!
//! - a [`Provider`] discovers clusters and *engages* each into the [`Manager`]
//!   (see [`providers`]);
//! - the manager engages each cluster into every cluster-aware component, above all
//!   the [`controller::Controller`]s, which start watching it, and cancels the
//!   cluster's token when it goes away, which stops that work;
//! - one reconciler serves the whole fleet: each [`controller::Request`] names its
//!   cluster, and the reconciler gets the [`Cluster`] with its client and cache;
//! - each cluster has one shared [`cache::Cache`]: one watch per type, whatever the
//!   number of controllers;
//! - one queue per controller is fair across clusters, so a cluster with a large
//!   backlog cannot starve the others, and a cluster that is unreachable or slow to
//!   sync only delays its own requests.
//!
//! # Coming from Go's multicluster-runtime or kube-runtime
//!
//! | here | Go multicluster-runtime | kube-runtime |
//! |---|---|---|
//! | [`Cluster`], [`ClusterName`] (`""` = local) | `cluster.Cluster`, `string` | a `Client` |
//! | [`Provider`], [`ProviderRunnable`], [`Aware::engage`] | `multicluster.Provider`, `ProviderRunnable`, `Aware.Engage` | — |
//! | cluster lifetime: a `CancellationToken` | the `ctx` given to `Engage` | — |
//! | [`Error::ClusterNotFound`] | `multicluster.ErrClusterNotFound` | — |
//! | [`Manager`] | `mcmanager.Manager` | — |
//! | [`controller::Controller::builder`] … `.register(reconcile, error_policy, ctx)`, then [`Manager::start`] | `mcbuilder.ControllerManagedBy(mgr)…Complete(r)` | `Controller::new(…).run(…)` |
//! | [`controller::ReconcileRequest`]: request (cluster + key), cached object, cluster; [`api`](controller::ReconcileRequest::api), [`namespaced_api`](controller::ReconcileRequest::namespaced_api) | `mcreconcile.Request` | `Arc<K>`, `Api::namespaced` |
//! | [`reconcile_on`](controller::ControllerBuilder::reconcile_on), [`reconcile_all_on`](controller::ControllerBuilder::reconcile_all_on) | `WatchesRawSource(source.Channel(…))` | `reconcile_on`, `reconcile_all_on` |
//! | [`controller::predicate`]: `all`, `any`, `not`, `generation_changed`, … | `predicate.And`, `Or`, `Not`, `GenerationChangedPredicate` | `predicates::generation`, `WatchStreamExt::predicate_filter` |
//! | [`controller::Action`] | `reconcile.Result` | `Action` |
//! | [`ReconcileRequest::recorder`](controller::ReconcileRequest::recorder), [`Cluster::recorder`] (one per cluster and reporter) | `cluster.GetEventRecorderFor(name)` | `events::Recorder::new(client, reporter)` |
//! | [`ClusterOptions::client`]: [`cluster::ClientOptions`] (timeout, user agent, [`cluster::RateLimit`]) | `rest.Config` `Timeout`, `UserAgent`, `QPS`/`Burst` | `Config`, `ClientBuilder::with_layer` |
//! | [`Error::AlreadyStarted`], [`Error::ClusterExists`], [`Error::ClusterNameMismatch`] | — | — |
//! | one [`cache::Cache`] per cluster, shared | one cache per cluster | one `Store` per controller |
//! | [`Manager::metrics`], [`Manager::with_metrics_endpoint`], [`Manager::with_probe_endpoint`], [`Manager::add_readyz_check`] | `metrics.Registry`, `Metrics: metricsserver.Options{SecureServing, FilterProvider}`, `HealthProbeBindAddress`, `AddReadyzCheck` | — |
//!
//! Providers ([`providers`]): `clusters` and `single` always; `file`, `secret`,
//! `namespace`, `capi`, `profile`, `multi` and `nop` behind cargo features of those
//! names (`providers` enables all). The repository's `docs/` explains the decisions
//! behind queue fairness, cancellation and caching.
//!
//! # Example: the same reconciler in every cluster
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, Patch, PatchParams};
//! use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
//! use multicluster_runtime::providers::clusters::Clusters;
//! use multicluster_runtime::{Cluster, Manager};
//! use tokio_util::sync::CancellationToken;
//!
//! /// Marks every ConfigMap of every cluster with the name of its cluster.
//! async fn reconcile(req: ReconcileRequest<ConfigMap>, _ctx: Arc<()>) -> Result<Action, kube::Error> {
//!     let Some(cm) = &req.object else { return Ok(Action::await_change()) }; // deleted
//!     let api: Api<ConfigMap> = req.namespaced_api(); // the request's cluster and namespace
//!     let patch = serde_json::json!({ "metadata": { "labels": { "example.com/cluster": req.cluster_name().as_str() } } });
//!     api.patch(req.name(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
//!     tracing::info!(cluster = %req.cluster_name(), name = ?cm.metadata.name, "labelled");
//!     Ok(Action::await_change())
//! }
//!
//! fn error_policy(_req: &Request, _err: &kube::Error, _ctx: Arc<()>) -> Action {
//!     Action::backoff()
//! }
//!
//! # async fn run(local: kube::Client, fleet: Vec<(String, kube::Client)>) -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Arc::new(Clusters::new());
//! let manager = Manager::with_provider(Arc::new(Cluster::new("", local)), provider.clone());
//! // Registers the controller; nothing runs yet.
//! Controller::builder::<ConfigMap>(&manager)
//!     .named("label-configmaps")
//!     .concurrency(8)
//!     .register(reconcile, error_policy, Arc::new(()))
//!     .await?;
//! for (name, client) in fleet {
//!     provider.add(Arc::new(Cluster::new(name.as_str(), client))).await?; // named once
//! }
//! // This runs: the provider, every registered controller, until the token is cancelled.
//! manager.start(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
// docs.rs (nightly, `--cfg docsrs`) labels each item with the cargo feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
pub mod cache;
pub mod cluster;
mod collections;
pub mod controller;
mod error;
mod exposition;
pub mod manager;
pub mod multicluster;
pub mod providers;
pub mod redact;
mod runnable;
#[cfg(feature = "endpoint")]
mod serving;
mod term;
#[cfg(feature = "webhook")]
pub mod webhook;

pub use cluster::{Cluster, ClusterName, ClusterOptions};

/// The package's README (its registry page): its code is compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use error::{BoxError, CutShort, Error, Result};
pub use manager::{Manager, Runnable};

/// The attribute the library's async traits ([`Provider`], [`Aware`],
/// [`ProviderRunnable`], [`Runnable`], ...) are written with, re-exported so that an
/// implementation needs no dependency of its own: put
/// `#[multicluster_runtime::async_trait]` on the `impl` block.
pub use async_trait::async_trait;
pub use multicluster::{Aware, Engagement, Provider, ProviderRunnable};
