//! Users with limited permissions, for least-privilege tests.

use std::path::Path;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::config::Kubeconfig;
use kube::{Api, Client};
use serde::Serialize;

use crate::cluster::{LocalCluster, client_for};
use crate::error::{Error, Result};
use crate::kubeconfig;

/// Who a new user is and what it may do; see [`LocalCluster::create_user`].
///
/// ```
/// use k8s_openapi::api::rbac::v1::PolicyRule;
/// use kube_envtest::UserSpec;
///
/// let reader = UserSpec::new("reader").allow_in(
///     "team-a",
///     vec![PolicyRule {
///         api_groups: Some(vec!["".into()]),
///         resources: Some(vec!["configmaps".into()]),
///         verbs: vec!["get".into(), "list".into(), "watch".into()],
///         ..PolicyRule::default()
///     }],
/// );
/// ```
#[derive(Debug, Clone)]
pub struct UserSpec {
    name: String,
    groups: Vec<String>,
    cluster_rules: Vec<PolicyRule>,
    namespace_rules: Vec<(String, Vec<PolicyRule>)>,
}

impl UserSpec {
    /// A user with this name, in no group and with no permission.
    pub fn new(name: impl Into<String>) -> Self {
        UserSpec {
            name: name.into(),
            groups: Vec::new(),
            cluster_rules: Vec::new(),
            namespace_rules: Vec::new(),
        }
    }

    /// Adds the user to a group (the certificate's organization).
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Grants `rules` across the cluster (a ClusterRole and ClusterRoleBinding).
    #[must_use]
    pub fn allow(mut self, rules: Vec<PolicyRule>) -> Self {
        self.cluster_rules.extend(rules);
        self
    }

    /// Grants `rules` in one namespace (a Role and RoleBinding there; the namespace
    /// must exist when the user is created).
    #[must_use]
    pub fn allow_in(mut self, namespace: impl Into<String>, rules: Vec<PolicyRule>) -> Self {
        self.namespace_rules.push((namespace.into(), rules));
        self
    }
}

/// A user of one local cluster, authenticated by a client certificate signed by the
/// cluster's certificate authority.
#[derive(Debug, Clone)]
pub struct LocalUser {
    name: String,
    cluster: String,
    kubeconfig: Kubeconfig,
    config: kube::Config,
}

impl LocalUser {
    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A kubeconfig with this user's credentials.
    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.kubeconfig
    }

    /// The client configuration of this user.
    pub fn config(&self) -> kube::Config {
        self.config.clone()
    }

    /// A new client acting as this user.
    ///
    /// # Errors
    /// [`Error::Client`] if the TLS configuration cannot be built.
    pub fn client(&self) -> Result<Client> {
        client_for(&self.cluster, self.config.clone())
    }

    /// Writes this user's kubeconfig to `path` (mode 0600).
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be written.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> Result<()> {
        kubeconfig::write(path.as_ref(), &self.kubeconfig)
    }
}

impl LocalCluster {
    /// Creates a user with a client certificate and grants it the rules of `spec`
    /// through RBAC objects named `kube-envtest:<user>`.
    ///
    /// # Errors
    /// [`Error::Certificate`] if its certificate cannot be made, [`Error::Api`] if an
    /// RBAC object cannot be applied (e.g. the namespace does not exist).
    pub async fn create_user(&self, spec: UserSpec) -> Result<LocalUser> {
        let groups: Vec<&str> = spec.groups.iter().map(String::as_str).collect();
        let credentials = self.authority().client(&spec.name, &groups)?;
        let kubeconfig = kubeconfig::for_user(
            self.name(),
            &self.server_url(),
            &self.authority().ca_pem(),
            &spec.name,
            &credentials,
        );
        let config = kubeconfig::to_config(self.name(), &kubeconfig).await?;
        self.grant(&spec).await?;
        Ok(LocalUser {
            name: spec.name,
            cluster: self.name().to_owned(),
            kubeconfig,
            config,
        })
    }

    async fn grant(&self, spec: &UserSpec) -> Result<()> {
        let client = self.client()?;
        let object_name = format!("kube-envtest:{}", spec.name);
        let subject = Subject {
            kind: "User".into(),
            name: spec.name.clone(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            namespace: None,
        };
        let meta = |namespace: Option<&str>| ObjectMeta {
            name: Some(object_name.clone()),
            namespace: namespace.map(str::to_owned),
            ..ObjectMeta::default()
        };
        let role_ref = |kind: &str| RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: kind.into(),
            name: object_name.clone(),
        };
        if !spec.cluster_rules.is_empty() {
            let role = ClusterRole {
                metadata: meta(None),
                rules: Some(spec.cluster_rules.clone()),
                ..ClusterRole::default()
            };
            let binding = ClusterRoleBinding {
                metadata: meta(None),
                role_ref: role_ref("ClusterRole"),
                subjects: Some(vec![subject.clone()]),
            };
            self.apply(Api::all(client.clone()), &object_name, &role).await?;
            self.apply(Api::all(client.clone()), &object_name, &binding)
                .await?;
        }
        for (namespace, rules) in &spec.namespace_rules {
            let ns = Some(namespace.as_str());
            let role = Role {
                metadata: meta(ns),
                rules: Some(rules.clone()),
            };
            let binding = RoleBinding {
                metadata: meta(ns),
                role_ref: role_ref("Role"),
                subjects: Some(vec![subject.clone()]),
            };
            self.apply(Api::namespaced(client.clone(), namespace), &object_name, &role)
                .await?;
            self.apply(Api::namespaced(client.clone(), namespace), &object_name, &binding)
                .await?;
        }
        Ok(())
    }

    async fn apply<K>(&self, api: Api<K>, name: &str, object: &K) -> Result<()>
    where
        K: kube::Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).into_owned();
        api.patch(
            name,
            &PatchParams::apply("kube-envtest").force(),
            &Patch::Apply(object),
        )
        .await
        .map(drop)
        .map_err(|source| Error::Api {
            action: format!("cannot apply {kind} {name}"),
            cluster: self.name().to_owned(),
            source,
        })
    }
}
