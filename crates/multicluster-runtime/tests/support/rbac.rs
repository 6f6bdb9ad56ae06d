//! The RBAC of `deploy/rbac/`, read from the files, so that tests run with exactly
//! what the documentation tells operators to grant.

use std::path::{Path, PathBuf};

use k8s_openapi::api::rbac::v1::PolicyRule;
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

#[test]
fn every_rbac_file_parses() {
    for file in [
        "namespaced-controller.yaml",
        "secret-provider.yaml",
        "capi-provider.yaml",
        "profile-provider.yaml",
        "namespace-provider.yaml",
        "sharding.yaml",
    ] {
        let (rules, _) = rules(file);
        assert!(!rules.is_empty(), "{file}");
    }
    for file in ["operator/rbac.yaml", "operator/fleet-member-rbac.yaml"] {
        let (rules, _) = deploy_rules(file);
        assert!(!rules.is_empty(), "{file}");
    }
}
