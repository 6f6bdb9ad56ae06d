//! Acceptance tests of the envtest crate against real etcd and kube-apiserver
//! processes. They need the binaries that `kube_envtest::Binaries::build_command()`
//! builds (`tools/controlplane/build.sh` in this repository) and fail (never skip)
//! without them; the c08 tests also need kube-controller-manager, built with them.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, CustomResource};
use kube_envtest::{Error, Fleet, UserSpec};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

async fn create_configmap(client: Client, namespace: &str, name: &str) -> Result<ConfigMap, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.data = Some([("owner".to_owned(), name.to_owned())].into());
    api.create(&PostParams::default(), &cm).await
}

async fn configmap_names(client: Client) -> Vec<String> {
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let list = api.list(&ListParams::default()).await.expect("list configmaps");
    let mut names: Vec<String> = list.items.into_iter().filter_map(|cm| cm.metadata.name).collect();
    names.retain(|n| n != "kube-root-ca.crt");
    names
}

async fn create_namespace(client: Client, name: &str) {
    let api: Api<Namespace> = Api::all(client);
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

#[tokio::test]
async fn e01_fleet_of_three_is_isolated() {
    let fleet = Fleet::start(3).await.expect("start fleet");
    assert_eq!(fleet.clusters().len(), 3);
    for cluster in fleet.clusters() {
        let client = cluster.client().expect("client");
        let created = create_configmap(client, "default", &format!("cm-{}", cluster.name()))
            .await
            .expect("create");
        assert_eq!(
            created.metadata.name.as_deref(),
            Some(format!("cm-{}", cluster.name()).as_str())
        );
        assert!(cluster.kubeconfig_path().exists());
    }
    for cluster in fleet.clusters() {
        let names = configmap_names(cluster.client().expect("client")).await;
        assert_eq!(
            names,
            vec![format!("cm-{}", cluster.name())],
            "{} sees exactly its own object",
            cluster.name()
        );
    }
    // The kubeconfig files written for other tools work on their own.
    for (cluster, path) in fleet
        .clusters()
        .iter()
        .zip(fleet.write_kubeconfigs(fleet.dir().join("out")).expect("write"))
    {
        let kubeconfig = Kubeconfig::read_from(&path).expect("read kubeconfig");
        assert_eq!(kubeconfig.current_context.as_deref(), Some(cluster.name()));
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("config");
        let names = configmap_names(Client::try_from(config).expect("client")).await;
        assert_eq!(names, vec![format!("cm-{}", cluster.name())]);
    }
    // Each cluster has its own certificate authority: one cluster's admin is nobody
    // to another.
    let mut foreign = fleet.cluster(1).config();
    foreign.cluster_url = fleet.cluster(0).server_url().parse().expect("url");
    let err = Api::<ConfigMap>::namespaced(Client::try_from(foreign).expect("client"), "default")
        .list(&ListParams::default())
        .await
        .expect_err("a foreign CA is not trusted");
    assert!(!err.to_string().is_empty());
}

#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(group = "envtest.example.com", version = "v1", kind = "Widget", namespaced)]
struct WidgetSpec {
    size: u32,
}

const GADGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.envtest.example.com
spec:
  group: envtest.example.com
  names: { kind: Gadget, plural: gadgets, singular: gadget, listKind: GadgetList }
  scope: Namespaced
  versions:
    - name: v1alpha1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                colour: { type: string }
"#;

#[tokio::test]
async fn e02_crds_from_rust_type_and_yaml() {
    let fleet = Fleet::start(1).await.expect("start fleet");
    let cluster = fleet.cluster(0);
    cluster.install_crd::<Widget>().await.expect("install Widget CRD");
    let manifest = fleet.dir().join("gadget-crd.yaml");
    std::fs::write(&manifest, GADGET_CRD).expect("write manifest");
    let names = cluster
        .install_crds_from_path(&manifest)
        .await
        .expect("install Gadget CRD");
    assert_eq!(names, vec!["gadgets.envtest.example.com".to_owned()]);

    let client = cluster.client().expect("client");
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    widgets
        .create(&PostParams::default(), &Widget::new("w1", WidgetSpec { size: 3 }))
        .await
        .expect("create widget");
    let listed = widgets.list(&ListParams::default()).await.expect("list widgets");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].spec.size, 3);

    let resource = ApiResource {
        group: "envtest.example.com".into(),
        version: "v1alpha1".into(),
        api_version: "envtest.example.com/v1alpha1".into(),
        kind: "Gadget".into(),
        plural: "gadgets".into(),
    };
    let gadgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let mut gadget = DynamicObject::new("g1", &resource);
    gadget.data = serde_json::json!({ "spec": { "colour": "blue" } });
    gadgets
        .create(&PostParams::default(), &gadget)
        .await
        .expect("create gadget");
    let listed = gadgets.list(&ListParams::default()).await.expect("list gadgets");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].data["spec"]["colour"], "blue");

    let bad = fleet.dir().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x }\n").expect("write manifest");
    let err = cluster
        .install_crds_from_path(&bad)
        .await
        .expect_err("a ConfigMap is no CRD");
    assert!(
        err.to_string().contains("bad.yaml") && err.to_string().contains("ConfigMap"),
        "{err}"
    );
}

#[tokio::test]
async fn e03_stopped_cluster_does_not_affect_others_and_comes_back() {
    let fleet = Fleet::start(3).await.expect("start fleet");
    let victim = fleet.cluster(1);
    let victim_client = victim.client().expect("client");
    create_configmap(victim_client.clone(), "default", "before-stop")
        .await
        .expect("create");

    let old_pid = victim.apiserver_pid().expect("running");
    victim.stop().await;
    assert!(!victim.is_running());
    assert!(!process_exists(old_pid), "the apiserver process is gone");
    for other in [fleet.cluster(0), fleet.cluster(2)] {
        let client = other.client().expect("client");
        create_configmap(client, "default", "while-other-down")
            .await
            .expect("other clusters keep serving");
    }
    let err = tokio::time::timeout(Duration::from_secs(10), configmap_list(victim_client.clone()))
        .await
        .expect("a stopped server refuses at once")
        .expect_err("the stopped cluster does not answer");
    assert!(!err.to_string().is_empty());

    victim.start().await.expect("restart");
    assert!(victim.is_running());
    let names = eventually(|| configmap_list(victim_client.clone())).await;
    assert_eq!(
        names,
        vec!["before-stop".to_owned()],
        "objects survive the restart"
    );
}

#[tokio::test]
async fn e04_paused_cluster_times_out_while_others_answer() {
    let fleet = Fleet::start(3).await.expect("start fleet");
    let clients: Vec<Client> = fleet
        .clusters()
        .iter()
        .map(|c| c.client().expect("client"))
        .collect();
    fleet.cluster(2).pause();
    let paused = tokio::time::timeout(Duration::from_secs(3), configmap_list(clients[2].clone())).await;
    assert!(paused.is_err(), "a paused apiserver must not answer: {paused:?}");
    for client in &clients[..2] {
        let answered = tokio::time::timeout(Duration::from_secs(3), configmap_list(client.clone())).await;
        assert!(matches!(answered, Ok(Ok(_))), "the others answer: {answered:?}");
    }
    fleet.cluster(2).resume();
    let names = eventually(|| configmap_list(clients[2].clone())).await;
    assert!(names.is_empty());
}

#[tokio::test]
async fn e05_limited_user_gets_forbidden_elsewhere() {
    let fleet = Fleet::start(1).await.expect("start fleet");
    let cluster = fleet.cluster(0);
    let admin = cluster.client().expect("client");
    create_namespace(admin.clone(), "team-a").await;
    create_configmap(admin.clone(), "team-a", "visible")
        .await
        .expect("create");
    create_configmap(admin, "default", "hidden")
        .await
        .expect("create");

    let read_configmaps = PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".into()]),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..PolicyRule::default()
    };
    let user = cluster
        .create_user(UserSpec::new("reader").allow_in("team-a", vec![read_configmaps]))
        .await
        .expect("create user");
    let client = user.client().expect("client");

    let team_a: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    let visible = team_a.get("visible").await.expect("allowed to read in team-a");
    assert_eq!(visible.metadata.name.as_deref(), Some("visible"));
    assert_forbidden(
        team_a
            .create(&PostParams::default(), &ConfigMap::default())
            .await
            .map(drop),
        "create in team-a",
    );
    let default: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert_forbidden(default.get("hidden").await.map(drop), "get in default");
    let namespaces: Api<Namespace> = Api::all(client);
    assert_forbidden(
        namespaces.list(&ListParams::default()).await.map(drop),
        "list namespaces",
    );
}

#[tokio::test]
async fn e06_drop_leaves_no_process_and_no_directory() {
    let fleet = Fleet::start(2).await.expect("start fleet");
    let pids = fleet.pids();
    let dir = fleet.dir().to_path_buf();
    assert_eq!(pids.len(), 3, "one shared etcd and two apiservers");
    assert!(pids.iter().all(|pid| process_exists(*pid)));
    assert!(dir.exists());
    drop(fleet);
    assert_gone(&pids, &dir);

    // The same when the test body panics while the fleet is alive.
    let fleet = Fleet::start(1).await.expect("start fleet");
    let pids = fleet.pids();
    let dir = fleet.dir().to_path_buf();
    let logs = fleet.log_dir().to_path_buf();
    let outcome = tokio::spawn(async move {
        let _fleet = fleet;
        panic!("a test body fails while its fleet runs");
    })
    .await;
    assert!(outcome.expect_err("the body panicked").is_panic());
    assert_gone(&pids, &dir);
    assert!(
        logs.join("cluster-0-apiserver.log").exists(),
        "logs are kept after a panic"
    );
    std::fs::remove_dir_all(&logs).expect("clean up kept logs");
}

#[tokio::test]
async fn e07_missing_binaries_name_the_build_command() {
    let empty = tempfile::tempdir().expect("temp dir");
    let err = Fleet::builder()
        .binary_dir(empty.path())
        .start()
        .await
        .expect_err("no binaries there");
    assert!(
        matches!(
            err,
            Error::BinaryMissing {
                binary: "kube-apiserver",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&kube_envtest::Binaries::build_command()),
        "{message}"
    );
    assert!(message.contains(&empty.path().display().to_string()), "{message}");

    // Only etcd missing: the message names etcd.
    std::os::unix::fs::symlink(
        kube_envtest::Binaries::find()
            .expect("built binaries")
            .kube_apiserver,
        empty.path().join("kube-apiserver"),
    )
    .expect("link apiserver");
    let err = Fleet::builder()
        .binary_dir(empty.path())
        .start()
        .await
        .expect_err("no etcd there");
    assert!(err.to_string().starts_with("etcd not found at"), "{err}");
}

/// c08: with the controller manager on, a deleted namespace is emptied and goes
/// away (without it, it stays `Terminating` for ever), and a ConfigMap whose owner
/// is deleted is garbage-collected; the namespace also gets its `default`
/// ServiceAccount and `kube-root-ca.crt`, as in a real cluster.
#[tokio::test]
async fn c08_controller_manager_deletes_namespaces_and_collects_garbage() {
    let fleet = Fleet::builder()
        .controller_manager(true)
        .start()
        .await
        .expect("start a cluster with a controller manager");
    let cluster = fleet.cluster(0);
    let manager = cluster
        .controller_manager_pid()
        .expect("a controller manager runs");
    assert!(
        fleet.pids().contains(&manager),
        "the fleet counts it among its processes"
    );
    let client = cluster.client().expect("client");

    create_namespace(client.clone(), "doomed").await;
    create_configmap(client.clone(), "doomed", "content")
        .await
        .expect("create content");
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), "doomed");
    let root_ca: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    until(
        || async { Ok(sa.get_opt("default").await?.is_some()) },
        "the default ServiceAccount",
    )
    .await;
    until(
        || async { Ok(root_ca.get_opt("kube-root-ca.crt").await?.is_some()) },
        "kube-root-ca.crt",
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete("doomed", &Default::default())
        .await
        .expect("delete the namespace");
    until_gone(&namespaces, "doomed").await;

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = create_configmap(client.clone(), "default", "owner")
        .await
        .expect("owner");
    let mut dependent = ConfigMap::default();
    dependent.metadata.name = Some("dependent".into());
    dependent.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().expect("uid"),
            ..Default::default()
        },
    ]);
    configmaps
        .create(&PostParams::default(), &dependent)
        .await
        .expect("create the dependent");
    configmaps
        .delete("owner", &Default::default())
        .await
        .expect("delete the owner");
    until_gone(&configmaps, "dependent").await;
}

/// c08: kube-controller-manager is optional: a directory without it starts a fleet,
/// and only a fleet that asks for one fails, naming how to provide it.
#[tokio::test]
async fn c08_missing_controller_manager_is_an_error_only_when_asked_for() {
    let found = kube_envtest::Binaries::find().expect("built binaries");
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, target) in [("kube-apiserver", &found.kube_apiserver), ("etcd", &found.etcd)] {
        std::os::unix::fs::symlink(target, dir.path().join(name)).expect("link");
    }
    let fleet = Fleet::builder()
        .binary_dir(dir.path())
        .start()
        .await
        .expect("no controller manager needed");
    assert_eq!(fleet.cluster(0).controller_manager_pid(), None);
    drop(fleet);

    let (err, message) = start_fails(
        Fleet::builder().binary_dir(dir.path()).controller_manager(true),
        "asked for a controller manager that is not there",
    )
    .await;
    assert!(
        matches!(
            err,
            Error::BinaryMissing {
                binary: "kube-controller-manager",
                ..
            }
        ),
        "{err:?}"
    );
    for named in [
        kube_envtest::CONTROLLER_MANAGER_ENV,
        kube_envtest::BIN_DIR_ENV,
        &kube_envtest::Binaries::build_command(),
    ] {
        assert!(message.contains(named), "names {named}: {message}");
    }
}

/// Waits until the object `name` no longer exists.
async fn until_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    until(
        || async { Ok(api.get_opt(name).await?.is_none()) },
        &format!("{name} gone"),
    )
    .await;
}

/// Polls `check` until it holds, for up to 90 s (the controllers work in the
/// background; a busy 2-core CI machine is slow to start them).
async fn until<F, Fut>(mut check: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, kube::Error>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match check().await {
            Ok(true) => return,
            Ok(false) => last = None,
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not within 90 s (last error: {last:?})");
}

/// c05: a binary for another system or CPU (a directory copied from a Mac, say) is
/// refused with an error that says so and names the build command, instead of
/// etcd exiting with status 127 and an empty log (glibc hands a file it cannot
/// execute to `/bin/sh`).
#[tokio::test]
async fn c05_a_binary_for_another_machine_is_refused_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["kube-apiserver", "etcd"] {
        let path = dir.path().join(name);
        // Mach-O's magic number: what a macOS build of etcd starts with.
        std::fs::write(&path, [0xcf, 0xfa, 0xed, 0xfe, 0x07, 0, 0, 0x01]).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let (err, message) = start_fails(Fleet::builder().binary_dir(dir.path()), "not a Linux program").await;
    assert!(
        matches!(
            err,
            Error::BinaryForAnotherPlatform {
                binary: "kube-apiserver",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        message.contains("is a macOS program, not a Linux program for"),
        "{message}"
    );
    assert!(
        message.contains(&kube_envtest::Binaries::build_command()),
        "{message}"
    );
}

/// Starts `builder`, which must fail (`why`), and returns the error and its message.
async fn start_fails(builder: kube_envtest::FleetBuilder, why: &str) -> (Error, String) {
    let err = builder.start().await.expect_err(why);
    let message = err.to_string();
    (err, message)
}

async fn configmap_list(client: Client) -> Result<Vec<String>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|cm| cm.metadata.name)
        .filter(|n| n != "kube-root-ca.crt")
        .collect())
}

/// Retries for a few seconds: a client's pooled connection to a restarted or thawed
/// server may fail once before a fresh one is made.
async fn eventually<F, Fut, T>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut last = None;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_secs(5), call()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => last = Some("timed out".into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no success within the retries; last error: {last:?}");
}

fn assert_forbidden(result: Result<(), kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn assert_gone(pids: &[u32], dir: &Path) {
    for pid in pids {
        assert!(!process_exists(*pid), "process {pid} still exists");
    }
    assert!(!dir.exists(), "{} still exists", dir.display());
}
