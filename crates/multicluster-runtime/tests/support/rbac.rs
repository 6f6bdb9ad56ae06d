//! The RBAC of `deploy/rbac/`, read from the files, so that tests run with exactly
//! what the documentation tells operators to grant.

use std::path::PathBuf;

use k8s_openapi::api::rbac::v1::PolicyRule;
use kube_envtest::UserSpec;
use serde_json::Value;

/// The path of `deploy/rbac/<file>`.
pub fn path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/rbac")
        .join(file)
}

/// The rules of the Role or ClusterRole in `deploy/rbac/<file>`, and whether it is a
/// (namespaced) Role.
pub fn rules(file: &str) -> (Vec<PolicyRule>, bool) {
    let text = std::fs::read_to_string(path(file)).expect("read the RBAC file");
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

#[test]
fn every_rbac_file_parses() {
    for file in [
        "namespaced-controller.yaml",
        "secret-provider.yaml",
        "capi-provider.yaml",
        "profile-provider.yaml",
        "namespace-provider.yaml",
    ] {
        let (rules, _) = rules(file);
        assert!(!rules.is_empty(), "{file}");
    }
}
