//! A member's webhook configurations: what the server applies when a cluster is
//! engaged (server-side apply, its own field manager) and deletes when it leaves.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use super::handler::{Hook, Kind};
use super::route::Key;
use crate::cluster::ClusterName;

/// The label on every configuration the server writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "multicluster-runtime");

/// What the configurations of every cluster share.
pub(crate) struct Wiring<'a> {
    /// The name of both configurations.
    pub name: &'a str,
    /// The server's URL as members reach it, without a trailing `/`.
    pub url: &'a str,
    pub ca_bundle: &'a [u8],
    pub key: &'a Key,
    pub hooks: &'a [Hook],
    pub field_manager: &'a str,
}

impl Wiring<'_> {
    fn metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            ..ObjectMeta::default()
        }
    }

    fn client_config(&self, cluster: &ClusterName, hook: &Hook) -> WebhookClientConfig {
        WebhookClientConfig {
            url: Some(format!(
                "{}{}",
                self.url,
                self.key.path(cluster, &hook.webhook.name)
            )),
            ca_bundle: Some(ByteString(self.ca_bundle.to_vec())),
            service: None,
        }
    }

    fn rule(hook: &Hook) -> RuleWithOperations {
        let (group, version, plural) = hook.resource.clone();
        RuleWithOperations {
            api_groups: Some(vec![group]),
            api_versions: Some(vec![version]),
            resources: Some(vec![plural]),
            operations: Some(hook.webhook.operations.clone()),
            scope: Some("*".into()),
        }
    }

    fn hooks(&self, kind: Kind) -> impl Iterator<Item = &Hook> {
        self.hooks.iter().filter(move |hook| hook.kind == kind)
    }

    pub fn validating(&self, cluster: &ClusterName) -> Option<ValidatingWebhookConfiguration> {
        let webhooks: Vec<_> = self
            .hooks(Kind::Validating)
            .map(|hook| {
                let webhook = &hook.webhook;
                ValidatingWebhook {
                    name: webhook.name.clone(),
                    client_config: self.client_config(cluster, hook),
                    rules: Some(vec![Self::rule(hook)]),
                    failure_policy: Some(webhook.failure_policy.as_str().into()),
                    side_effects: "None".into(),
                    admission_review_versions: vec!["v1".into()],
                    timeout_seconds: Some(webhook.timeout_seconds()),
                    namespace_selector: webhook.namespace_selector.clone(),
                    object_selector: webhook.object_selector.clone(),
                    match_policy: Some("Equivalent".into()),
                    match_conditions: None,
                }
            })
            .collect();
        (!webhooks.is_empty()).then(|| ValidatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(webhooks),
        })
    }

    pub fn mutating(&self, cluster: &ClusterName) -> Option<MutatingWebhookConfiguration> {
        let webhooks: Vec<_> = self
            .hooks(Kind::Mutating)
            .map(|hook| {
                let webhook = &hook.webhook;
                MutatingWebhook {
                    name: webhook.name.clone(),
                    client_config: self.client_config(cluster, hook),
                    rules: Some(vec![Self::rule(hook)]),
                    failure_policy: Some(webhook.failure_policy.as_str().into()),
                    side_effects: "None".into(),
                    admission_review_versions: vec!["v1".into()],
                    timeout_seconds: Some(webhook.timeout_seconds()),
                    namespace_selector: webhook.namespace_selector.clone(),
                    object_selector: webhook.object_selector.clone(),
                    match_policy: Some("Equivalent".into()),
                    match_conditions: None,
                    reinvocation_policy: Some("IfNeeded".into()),
                }
            })
            .collect();
        (!webhooks.is_empty()).then(|| MutatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(webhooks),
        })
    }

    /// Applies both configurations to `client`'s cluster.
    pub async fn apply(&self, cluster: &ClusterName, client: &kube::Client) -> Result<(), kube::Error> {
        let params = PatchParams::apply(self.field_manager).force();
        if let Some(config) = self.validating(cluster) {
            let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
            api.patch(self.name, &params, &Patch::Apply(&typed(config)?))
                .await?;
        }
        if let Some(config) = self.mutating(cluster) {
            let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
            api.patch(self.name, &params, &Patch::Apply(&typed(config)?))
                .await?;
        }
        Ok(())
    }

    /// Deletes both configurations from `client`'s cluster; absent ones are fine.
    pub async fn remove(&self, client: &kube::Client) -> Result<(), kube::Error> {
        if self.hooks(Kind::Validating).next().is_some() {
            let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
            absent_is_fine(api.delete(self.name, &DeleteParams::default()).await)?;
        }
        if self.hooks(Kind::Mutating).next().is_some() {
            let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
            absent_is_fine(api.delete(self.name, &DeleteParams::default()).await)?;
        }
        Ok(())
    }
}

/// The object with its `apiVersion` and `kind`, which server-side apply needs and
/// k8s-openapi's serialization of a bare struct has.
fn typed<K: serde::Serialize>(object: K) -> Result<serde_json::Value, kube::Error> {
    serde_json::to_value(object).map_err(kube::Error::SerdeError)
}

fn absent_is_fine<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err),
    }
}
