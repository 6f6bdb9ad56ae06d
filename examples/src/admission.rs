//! The admission handlers of the webhook examples (`fleet_webhook`, `operator`):
//! one validating, one mutating, each serving every member of the fleet.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use multicluster_runtime::webhook::{AdmissionContext, Verdict};

/// The data key the validating webhook refuses.
pub const FORBIDDEN_KEY: &str = "forbidden";
/// The label the mutating webhook sets to the object's cluster.
pub const CLUSTER_LABEL: &str = "example.com/cluster";

/// Refuses a ConfigMap with the key [`FORBIDDEN_KEY`], naming its cluster.
pub async fn no_forbidden_key(req: AdmissionContext<ConfigMap>, _: Arc<()>) -> Verdict {
    let forbidden = req
        .request
        .object
        .as_ref()
        .and_then(|cm| cm.data.as_ref())
        .is_some_and(|data| data.contains_key(FORBIDDEN_KEY));
    if forbidden {
        return Verdict::deny(format!(
            "the key `{FORBIDDEN_KEY}` is not allowed in cluster {}",
            req.cluster_name
        ));
    }
    Verdict::allow()
}

/// Labels every ConfigMap with its cluster's name.
pub async fn label_with_cluster(req: AdmissionContext<ConfigMap>, _: Arc<()>) -> Verdict {
    let Some(mut config_map) = req.request.object.clone() else {
        return Verdict::allow();
    };
    config_map
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CLUSTER_LABEL.into(), req.cluster_name.to_string());
    Verdict::mutate(&config_map)
}
