//! The operator's manifests as kustomize renders them, applied to real apiservers
//! (c07, issue 19).

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::Scope;
use serde_json::Value;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every kustomization under `deploy/operator/` (the base, each overlay, the
/// member's), relative to it.
pub const KUSTOMIZATIONS: [&str; 7] = [
    "base",
    "overlays/leader-election",
    "overlays/sharding",
    "overlays/monitored",
    "overlays/webhook",
    "member",
    "member-webhook",
];

/// The directory of kustomize, the ServiceMonitor CRD and cert-manager's CRDs, from
/// `tools/kustomize/build.sh` (which builds them the first time, and otherwise only
/// prints where they are).
pub fn tools() -> PathBuf {
    let script = root().join("tools/kustomize/build.sh");
    PathBuf::from(stdout_of(Command::new(script), "tools/kustomize/build.sh").trim())
}

/// The objects of `deploy/operator/<kustomization>`, rendered by `kustomize build`.
pub fn render(tools: &Path, kustomization: &str) -> Vec<Value> {
    let mut command = Command::new(tools.join("kustomize"));
    command
        .arg("build")
        .arg(root().join("deploy/operator").join(kustomization));
    let text = stdout_of(command, &format!("kustomize build {kustomization}"));
    serde_saphyr::from_str_multiple(&text).expect("rendered YAML")
}

/// What `command` (`what`) prints, or a failure with its standard error.
fn stdout_of(mut command: Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The YAML documents of a file, e.g. the ServiceMonitor CRD.
pub fn read_objects(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read YAML");
    serde_saphyr::from_str_multiple(&text).expect("YAML")
}

/// The rendered object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {objects:#?}"))
}

/// Applies `object` (server-side apply, a PATCH) as the field manager `c07`;
/// with `dry_run`, through admission and validation but not stored
/// (`dryRun=All`).
///
/// # Errors
/// The apiserver's answer, e.g. a schema or admission error.
pub async fn apply(client: &kube::Client, object: &Value, dry_run: bool) -> Result<(), kube::Error> {
    let (group, version) = match object["apiVersion"].as_str().expect("apiVersion").split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", object["apiVersion"].as_str().expect("apiVersion")),
    };
    let kind = object["kind"].as_str().expect("kind");
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk).await?;
    let name = object["metadata"]["name"].as_str().expect("name");
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => {
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_else(|| panic!("{kind} {name} has no namespace"));
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply("c07").force();
    params.dry_run = dry_run;
    api.patch(name, &params, &Patch::Apply(object)).await?;
    Ok(())
}

/// Applies every object, Namespaces first (a namespaced object's dry run needs
/// its namespace to exist).
pub async fn apply_all(client: &kube::Client, objects: &[Value], dry_run: bool) {
    let (namespaces, others): (Vec<_>, Vec<_>) = objects.iter().partition(|o| o["kind"] == "Namespace");
    for object in namespaces.into_iter().chain(others) {
        if let Err(error) = apply(client, object, dry_run).await {
            panic!(
                "applying {} {} (dry run: {dry_run}): {error}",
                object["kind"], object["metadata"]["name"]
            );
        }
    }
}

/// The container `name`'s arguments in the rendered Deployment, with `$(POD_NAME)`
/// expanded to `pod` as the kubelet would.
pub fn container_args(deployment: &Value, pod: &str) -> Vec<String> {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers[0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("an argument").replace("$(POD_NAME)", pod))
        .collect()
}
