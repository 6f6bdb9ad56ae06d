//! The RBAC of `deploy/rbac/`, read from the files, so that tests run with exactly
//! what the documentation tells operators to grant.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Api, PostParams};
use kube_envtest::UserSpec;
use serde_json::Value;

/// The path of `deploy/rbac/<file>`.
pub fn path(file: &str) -> PathBuf {
    repository_root().join("deploy/rbac").join(file)
}

/// The repository's root: the first directory above this crate with `deploy/`
/// (this file also serves the examples' tests, from another crate).
fn repository_root() -> PathBuf {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .ancestors()
        .find(|dir| dir.join("deploy").is_dir())
        .expect("the repository's deploy/ directory")
        .to_path_buf()
}

/// The rules of the Role or ClusterRole in `deploy/rbac/<file>`, and whether it is a
/// (namespaced) Role.
pub fn rules(file: &str) -> (Vec<PolicyRule>, bool) {
    rules_at(&path(file))
}

/// The rules of the Role or ClusterRole in `deploy/<relative>`, and whether it is a
/// (namespaced) Role.
pub fn deploy_rules(relative: &str) -> (Vec<PolicyRule>, bool) {
    rules_at(&repository_root().join("deploy").join(relative))
}

fn rules_at(path: &Path) -> (Vec<PolicyRule>, bool) {
    let text = std::fs::read_to_string(path).expect("read the RBAC file");
    let documents: Vec<Value> = serde_saphyr::from_str_multiple(&text).expect("RBAC YAML");
    let role = documents
        .into_iter()
        .find(|doc| matches!(doc["kind"].as_str(), Some("Role" | "ClusterRole")))
        .expect("a Role or ClusterRole");
    let namespaced = role["kind"] == "Role";
    let rules = serde_json::from_value(role["rules"].clone()).expect("PolicyRules");
    (rules, namespaced)
}

/// A user named `user` holding exactly the rules of `deploy/rbac/<file>`: in
/// `namespace` for a Role (in place of the file's example namespace), cluster-wide
/// for a ClusterRole.
pub fn user(user: &str, file: &str, namespace: &str) -> UserSpec {
    let (rules, namespaced) = rules(file);
    let spec = UserSpec::new(user);
    if namespaced {
        spec.allow_in(namespace, rules)
    } else {
        spec.allow(rules)
    }
}

/// A bearer token of a new ServiceAccount `namespace/name` (the namespace must
/// exist), from the TokenRequest API, valid for 10 minutes.
pub async fn service_account_token(admin: &kube::Client, namespace: &str, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let mut account = ServiceAccount::default();
    account.metadata.name = Some(name.to_owned());
    accounts
        .create(&PostParams::default(), &account)
        .await
        .expect("create ServiceAccount");
    token_of(admin, namespace, name).await
}

/// A bearer token of the existing ServiceAccount `namespace/name`, from the
/// TokenRequest API, valid for 10 minutes.
pub async fn token_of(admin: &kube::Client, namespace: &str, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    issued.status.and_then(|s| s.token).expect("a token")
}

/// A ClusterRole `role` with `rules`, bound to the ServiceAccount
/// `namespace/account`.
pub async fn bind_service_account(
    admin: &kube::Client,
    role: &str,
    rules: Vec<PolicyRule>,
    namespace: &str,
    account: &str,
) {
    let mut cluster_role = ClusterRole::default();
    cluster_role.metadata.name = Some(role.to_owned());
    cluster_role.rules = Some(rules);
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &cluster_role)
        .await
        .expect("create ClusterRole");
    let mut binding = ClusterRoleBinding::default();
    binding.metadata.name = Some(role.to_owned());
    binding.role_ref = RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: role.to_owned(),
    };
    binding.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: account.to_owned(),
        namespace: Some(namespace.to_owned()),
        ..Subject::default()
    }]);
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("create ClusterRoleBinding");
}

#[test]
fn every_rbac_file_parses() {
    for file in [
        "namespaced-controller.yaml",
        "secret-provider.yaml",
        "capi-provider.yaml",
        "profile-provider.yaml",
        "namespace-provider.yaml",
        "metrics-auth.yaml",
        "metrics-reader.yaml",
        "sharding.yaml",
    ] {
        let (rules, _) = rules(file);
        assert!(!rules.is_empty(), "{file}");
    }
    for file in [
        "operator/base/rbac.yaml",
        "operator/base/metrics-auth-rbac.yaml",
        "operator/base/metrics-reader-rbac.yaml",
        "operator/overlays/leader-election/leader-election-rbac.yaml",
        "operator/overlays/sharding/sharding-rbac.yaml",
        "operator/member/member-rbac.yaml",
    ] {
        let (rules, _) = deploy_rules(file);
        assert!(!rules.is_empty(), "{file}");
    }
}
