//! Sync local → fleet: ConfigMaps of the manager's own cluster copied into every
//! fleet cluster.
//!
//! A ConfigMap labelled `example.com/sync=true` in the local cluster is copied, same
//! namespace and name, into each fleet cluster, labelled
//! `example.com/copied-from=local`. The controller's primary objects are the copies,
//! so an edit of a copy (drift) is reconciled and reverted; deleting the local
//! original deletes the copies.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use multicluster_runtime::Manager;
use multicluster_runtime::cache::WatchSpec;
use multicluster_runtime::controller::{
    Action, Controller, ControllerBuilder, MapContext, ReconcileRequest, Request,
};

/// The label that marks a local ConfigMap for copying.
pub const SYNC: &str = "example.com/sync";
/// The label on every copy.
pub const COPIED_FROM: &str = "example.com/copied-from";
const FIELD_MANAGER: &str = "sync-to-fleet";

/// Builds the controller: copies in fleet clusters, fed by local originals.
pub fn controller(manager: &Manager) -> ControllerBuilder<ConfigMap> {
    Controller::builder::<ConfigMap>(manager)
        .named("sync-to-fleet")
        .watch_spec(WatchSpec::default().labels(&format!("{COPIED_FROM}=local")))
        .watches_local(fan_out)
        .concurrency(4)
}

/// A local original maps to its copy in every fleet cluster.
fn fan_out(context: &MapContext, original: &ConfigMap) -> Vec<Request> {
    if original.labels().get(SYNC).map(String::as_str) != Some("true") {
        return Vec::new();
    }
    let namespace = original.namespace();
    let requests = context.clusters.iter().filter(|cluster| !cluster.is_local());
    requests
        .map(|cluster| Request::new(cluster.clone(), namespace.as_deref(), original.name_any()))
        .collect()
}

/// Why a sync failed: the local cache could not be read, or the fleet cluster refused.
#[derive(Debug)]
pub enum SyncError {
    /// Reading the local original from the cache failed.
    Local(multicluster_runtime::cache::CacheError),
    /// Writing or deleting the copy failed.
    Copy(kube::Error),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Local(_) => f.write_str("cannot read the local original"),
            SyncError::Copy(_) => f.write_str("cannot write the copy"),
        }
    }
}

impl std::error::Error for SyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncError::Local(error) => Some(error),
            SyncError::Copy(error) => Some(error),
        }
    }
}

/// Makes the copy in the request's cluster match the local original, or removes it.
pub async fn reconcile(req: ReconcileRequest<ConfigMap>, manager: Arc<Manager>) -> Result<Action, SyncError> {
    let namespace = req.namespace().unwrap_or("default");
    let local = manager
        .local_cluster()
        .cache()
        .get::<ConfigMap>(Some(namespace), req.name())
        .await
        .map_err(SyncError::Local)?;
    let api: Api<ConfigMap> = req.namespaced_api();
    let wanted = local.filter(|o| o.labels().get(SYNC).map(String::as_str) == Some("true"));
    match wanted {
        Some(original) => {
            let copy = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": original.name_any(), "labels": { COPIED_FROM: "local" } },
                "data": original.data,
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(req.name(), &params, &Patch::Apply(&copy))
                .await
                .map_err(SyncError::Copy)?;
            println!("synced      {}", req.request);
        }
        None if req.object.is_some() => {
            api.delete(req.name(), &DeleteParams::default())
                .await
                .map_err(SyncError::Copy)?;
            println!("removed     {}", req.request);
        }
        None => {}
    }
    Ok(Action::await_change())
}

/// Retries a failed sync with exponential backoff.
pub fn error_policy(request: &Request, error: &SyncError, _: Arc<Manager>) -> Action {
    tracing::warn!(%request, error = %error, "sync failed; backing off");
    Action::backoff()
}
