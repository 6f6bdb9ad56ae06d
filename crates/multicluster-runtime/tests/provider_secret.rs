//! The kubeconfig Secrets provider against real apiservers: fleet cluster 0 is the
//! host holding the Secrets (namespace `fleet`), clusters 1.. are their targets.
//! Each target holds a namespace `marker-<index>`, so a test can tell which
//! apiserver an engaged cluster's client reaches.
#![cfg(feature = "secret")]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_envtest::{ADMIN_USER, Fleet, UserSpec};
use multicluster_runtime::providers::kubeconfig::{EndpointPolicy, KubeconfigPolicy};
use multicluster_runtime::providers::secret::{
    DEFAULT_DATA_KEY, DEFAULT_LABEL_KEY, REASON_INVALID, REASON_MISSING, REASON_REFUSED, Secrets,
    SecretsOptions, kubeconfig_secret,
};
use multicluster_runtime::{ClusterName, Provider, ProviderRunnable};
use serde_json::{Value, json};
use support::objects::create_namespace;
use support::{EngagementLog, eventually};
use tokio_util::sync::CancellationToken;

const NS: &str = "fleet";

/// A fleet with the host namespace and the marker namespaces created.
struct Env {
    fleet: Fleet,
    host: Client,
    secrets: Api<Secret>,
    token: CancellationToken,
    runs: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Env {
    async fn new(clusters: usize) -> Self {
        let fleet = Fleet::start(clusters).await.expect("start fleet");
        let host = fleet.cluster(0).client().expect("client");
        create_namespace(&host, NS).await;
        for index in 1..clusters {
            let client = fleet.cluster(index).client().expect("client");
            create_namespace(&client, &format!("marker-{index}")).await;
        }
        Env {
            fleet,
            secrets: Api::namespaced(host.clone(), NS),
            host,
            token: CancellationToken::new(),
            runs: Mutex::default(),
        }
    }

    /// Starts a provider recording its engagements; it stops with the returned token.
    fn start(&self, options: SecretsOptions) -> (Arc<Secrets>, Arc<EngagementLog>, CancellationToken) {
        let provider = Arc::new(Secrets::new(self.host.clone(), options));
        let (log, token) = self.run(&provider);
        (provider, log, token)
    }

    /// Runs `provider` into a new engagement log until the returned token is
    /// cancelled.
    fn run(&self, provider: &Arc<Secrets>) -> (Arc<EngagementLog>, CancellationToken) {
        let log = EngagementLog::new();
        let token = self.token.child_token();
        let (runs, aware, stop) = (provider.clone(), log.clone(), token.clone());
        let handle = tokio::spawn(async move { runs.start(stop, aware).await.expect("provider runs") });
        self.runs.lock().unwrap().push(handle);
        (log, token)
    }

    /// Waits until every provider started so far has returned.
    async fn stopped(&self) {
        let handles: Vec<_> = self.runs.lock().unwrap().drain(..).collect();
        for handle in handles {
            handle.await.expect("provider task");
        }
    }

    /// The admin kubeconfig of fleet cluster `index`, as JSON to edit.
    fn kubeconfig(&self, index: usize) -> Value {
        serde_json::to_value(self.fleet.cluster(index).kubeconfig()).expect("kubeconfig as JSON")
    }

    /// Creates or updates the labelled Secret `name` with exactly `data`.
    async fn put_data(&self, name: &str, data: BTreeMap<String, Vec<u8>>) {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(DEFAULT_LABEL_KEY.into(), "true".into())])),
                ..ObjectMeta::default()
            },
            data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
            ..Secret::default()
        };
        let params = PatchParams::apply("psecret-test").force();
        self.secrets
            .patch(name, &params, &Patch::Apply(&secret))
            .await
            .expect("apply Secret");
    }

    /// Creates or updates the labelled Secret `name` with `bytes` under the data key.
    async fn put(&self, name: &str, bytes: impl Into<Vec<u8>>) {
        let data = BTreeMap::from([(DEFAULT_DATA_KEY.to_owned(), bytes.into())]);
        self.put_data(name, data).await;
    }

    async fn put_json(&self, name: &str, kubeconfig: &Value) {
        self.put(name, serde_json::to_vec(kubeconfig).expect("JSON"))
            .await;
    }

    async fn delete(&self, name: &str) {
        self.secrets
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete Secret");
    }

    /// Warning Events (events.k8s.io/v1) regarding Secret `name`.
    async fn warnings(&self, name: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.host.clone(), NS);
        let list = events.list(&ListParams::default()).await.expect("list Events");
        list.items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("Secret") && r.name.as_deref() == Some(name))
            })
            .collect()
    }

    /// Waits for a Warning Event with `reason` on Secret `name`; returns its note.
    async fn wait_warning(&self, name: &str, reason: &str) -> String {
        let what = format!("a {reason} Warning Event on Secret {name}");
        eventually(&what, || async {
            let events = self.warnings(name).await;
            events
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
                .map(|e| e.note.unwrap_or_default())
        })
        .await
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Whether `client` sees namespace `name`, i.e. which apiserver it reaches.
async fn sees(client: Client, name: &str) -> bool {
    Api::<Namespace>::all(client)
        .get_opt(name)
        .await
        .expect("get namespace")
        .is_some()
}

/// The user `client` authenticates as.
async fn whoami(client: Client) -> String {
    let review = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("self subject review");
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .expect("username")
}

/// `kubeconfig` with its (only) user replaced by `user`.
fn with_user(mut kubeconfig: Value, user: Value) -> Value {
    kubeconfig["users"][0]["user"] = user;
    kubeconfig
}

/// An exec user running `sh -c script` with `env`.
fn exec_user(script: &str, env: Value) -> Value {
    json!({ "exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "/bin/sh",
        "args": ["-c", script],
        "env": env,
        "interactiveMode": "Never",
    }})
}

/// A shell command printing an ExecCredential with `token`.
fn print_credential(token: &str) -> String {
    let credential = json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": { "token": token },
    });
    format!("printf '%s' '{credential}'")
}

fn exec_allowed() -> KubeconfigPolicy {
    KubeconfigPolicy::untrusted().allow_exec(true)
}

/// Secrets present at start and added later are engaged under their names with
/// clients that reach their apiservers; deleting a Secret or removing its label
/// disengages its cluster; unlabelled Secrets are ignored.
#[tokio::test]
async fn psecret_lifecycle() {
    let env = Env::new(3).await;
    env.put_json("c1", &env.kubeconfig(1)).await;
    env.put_json("c2", &env.kubeconfig(2)).await;
    let mut unlabelled = kubeconfig_secret("unlabelled", NS, env.fleet.cluster(1).kubeconfig());
    unlabelled.metadata.labels = None;
    env.secrets
        .create(&PostParams::default(), &unlabelled)
        .await
        .expect("create unlabelled Secret");

    let (provider, log, token) = env.start(SecretsOptions::new(NS));
    log.wait_live(&["c1", "c2"]).await;
    support::wait_until("initial list", || provider.is_synced()).await;
    let again = provider.start(token.clone(), log.clone()).await;
    assert!(again.is_err(), "a second start while running is refused");

    let c1 = log.current("c1").expect("c1 engaged");
    let c2 = log.current("c2").expect("c2 engaged");
    assert!(sees(c1.cluster.client(), "marker-1").await);
    assert!(!sees(c1.cluster.client(), "marker-2").await);
    assert!(sees(c2.cluster.client(), "marker-2").await);
    assert_eq!(whoami(c1.cluster.client()).await, ADMIN_USER);
    let got = provider.get(&ClusterName::from("c1")).await.expect("get c1");
    assert!(Arc::ptr_eq(&got, &c1.cluster));

    // Added at runtime; the helper's Secret is what the provider expects.
    let c3 = kubeconfig_secret("c3", NS, env.fleet.cluster(2).kubeconfig());
    env.secrets
        .create(&PostParams::default(), &c3)
        .await
        .expect("create c3");
    log.wait_live(&["c1", "c2", "c3"]).await;
    let c3 = log.current("c3").expect("c3 engaged");
    assert!(sees(c3.cluster.client(), "marker-2").await);

    // Deleted: token cancelled, cache stopped, unknown to the provider.
    env.delete("c2").await;
    log.wait_live(&["c1", "c3"]).await;
    assert!(c2.token.is_cancelled() && c2.cluster.is_stopped());
    let err = provider
        .get(&ClusterName::from("c2"))
        .await
        .expect_err("c2 is gone");
    assert!(err.is_cluster_not_found(), "{err}");

    // Label removed: no longer selected, so disengaged.
    let unlabel = json!({ "metadata": { "labels": { DEFAULT_LABEL_KEY: "false" } } });
    env.secrets
        .patch("c3", &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .expect("unlabel c3");
    log.wait_live(&["c1"]).await;
    assert!(c3.token.is_cancelled());

    assert_eq!(log.count("unlabelled"), 0);
    assert_eq!(log.count("c1"), 1, "c1 was engaged once and left alone");
    assert!(!c1.token.is_cancelled());
    let mut names = provider.names();
    names.sort();
    assert_eq!(names, vec![ClusterName::from("c1")]);

    // Stopping the provider ends its engagements. A restart engages the Secrets as
    // they are then: c1, deleted meanwhile, is dropped; c5, added meanwhile, comes.
    token.cancel();
    env.stopped().await;
    assert!(c1.token.is_cancelled(), "c1 disengaged on stop");
    env.delete("c1").await;
    env.put_json("c5", &env.kubeconfig(1)).await;
    let (log, _token) = env.run(&provider);
    log.wait_live(&["c5"]).await;
    let err = provider
        .get(&ClusterName::from("c1"))
        .await
        .expect_err("c1 is gone");
    assert!(err.is_cluster_not_found(), "{err}");
}

/// r02: a provider stopped and started again (a new manager after a lost
/// leadership, a `Multi` member removed and added back) engages its clusters again,
/// the unchanged ones included, as new instances: the old ones were retired on stop.
#[tokio::test]
async fn r02_a_restarted_provider_engages_its_unchanged_clusters() {
    let env = Env::new(2).await;
    env.put_json("c1", &env.kubeconfig(1)).await;
    let (provider, log, token) = env.start(SecretsOptions::new(NS));
    log.wait_live(&["c1"]).await;
    let first = log.current("c1").expect("c1 engaged");
    token.cancel();
    env.stopped().await;
    assert!(first.token.is_cancelled() && first.cluster.is_stopped());
    assert!(
        provider.names().is_empty(),
        "a stopped provider forgets its clusters"
    );

    let (log, _token) = env.run(&provider);
    log.wait_live(&["c1"]).await;
    let again = log.current("c1").expect("c1 engaged again");
    assert!(!Arc::ptr_eq(&again.cluster, &first.cluster), "a new instance");
    assert!(sees(again.cluster.client(), "marker-1").await);
    let got = provider.get(&ClusterName::from("c1")).await.expect("get c1");
    assert!(Arc::ptr_eq(&got, &again.cluster));
}

/// r04: a controller whose cluster filter panics on one cluster costs only that
/// cluster: the panic fails its engagement (logged with the callback kind) instead of
/// killing the provider's worker for its Secret, so the Secret's deletion still
/// disengages it, and clusters added later are reconciled.
#[tokio::test]
async fn r04_a_panicking_cluster_filter_costs_only_its_cluster() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
    use multicluster_runtime::{Cluster, Manager};

    let env = Env::new(3).await;
    env.put_json("bad", &env.kubeconfig(1)).await;
    let provider = Arc::new(Secrets::new(env.host.clone(), SecretsOptions::new(NS)));
    let local = Arc::new(Cluster::new("", env.host.clone()));
    let manager = Manager::with_provider(local, provider).without_health_probes();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    Controller::builder::<ConfigMap>(&manager)
        .named("r04")
        .cluster_filter(|name| {
            assert_ne!(name.as_str(), "bad", "r04: this filter panics on cluster bad");
            true
        })
        .register(
            |req: ReconcileRequest<ConfigMap>, seen: Arc<Mutex<Vec<String>>>| async move {
                seen.lock().unwrap().push(req.cluster_name().as_str().to_owned());
                Ok::<_, std::convert::Infallible>(Action::await_change())
            },
            |_: &Request, _: &std::convert::Infallible, _| Action::await_change(),
            seen.clone(),
        )
        .await
        .expect("register");
    let token = env.token.child_token();
    let (runs, stop) = (manager.clone(), token.clone());
    let running = tokio::spawn(async move { runs.start(stop).await });
    let engaged = |name: &str| manager.engaged_clusters().iter().any(|n| n.as_str() == name);
    support::wait_until("bad engaged into the manager", || engaged("bad")).await;

    env.delete("bad").await;
    support::wait_until("bad disengaged after its Secret's deletion", || !engaged("bad")).await;
    let configmaps: Api<ConfigMap> =
        Api::namespaced(env.fleet.cluster(2).client().expect("client"), "marker-2");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("r04".into());
    configmaps
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    env.put_json("good", &env.kubeconfig(2)).await;
    support::wait_until("good reconciled", || {
        seen.lock().unwrap().iter().any(|c| c == "good")
    })
    .await;
    assert!(!seen.lock().unwrap().iter().any(|c| c == "bad"));
    token.cancel();
    running.await.expect("joined").expect("manager ran");
}

/// A change of what a Secret's kubeconfig connects with re-engages only that
/// cluster; changes that do not (metadata, unrelated contexts, formatting) do not.
#[tokio::test]
async fn psecret_rotation() {
    let env = Env::new(3).await;
    env.put_json("a", &env.kubeconfig(1)).await;
    env.put_json("b", &env.kubeconfig(2)).await;
    let (provider, log, _token) = env.start(SecretsOptions::new(NS));
    log.wait_live(&["a", "b"]).await;
    let a1 = log.current("a").expect("a engaged");
    let b1 = log.current("b").expect("b engaged");

    // No-op updates: an annotation, then the same connection settings with an extra
    // unrelated context, pretty-printed.
    let annotate = json!({ "metadata": { "annotations": { "example.com/touched": "yes" } } });
    env.secrets
        .patch("a", &PatchParams::default(), &Patch::Merge(&annotate))
        .await
        .expect("annotate a");
    let mut extended = env.kubeconfig(1);
    let context = extended["contexts"][0]["context"].clone();
    let mut unused = context.clone();
    unused["namespace"] = json!("elsewhere");
    extended["contexts"]
        .as_array_mut()
        .expect("contexts")
        .push(json!({ "name": "unused", "context": unused }));
    let pretty = serde_json::to_vec_pretty(&extended).expect("JSON");
    env.put("a", pretty).await;

    // New credentials for the same server: re-engaged as a new instance.
    let spec = UserSpec::new("rotated").group("system:masters");
    let rotated = env.fleet.cluster(1).create_user(spec).await.expect("user");
    let rotated = serde_json::to_value(rotated.kubeconfig()).expect("JSON");
    env.put_json("a", &rotated).await;
    log.wait_count("a", 2).await;
    let a2 = log.current("a").expect("a re-engaged");
    assert!(!Arc::ptr_eq(&a1.cluster, &a2.cluster));
    assert!(a1.token.is_cancelled() && a1.cluster.is_stopped());
    assert_eq!(log.count("a"), 2, "the no-op updates before did not re-engage a");
    assert_eq!(whoami(a2.cluster.client()).await, "rotated");

    // Another server: re-engaged again.
    env.put_json("a", &env.kubeconfig(2)).await;
    log.wait_count("a", 3).await;
    let a3 = log.current("a").expect("a re-engaged");
    assert!(a2.token.is_cancelled());
    assert!(sees(a3.cluster.client(), "marker-2").await);
    let got = provider.get(&ClusterName::from("a")).await.expect("get a");
    assert!(Arc::ptr_eq(&got, &a3.cluster));

    // b was never touched.
    assert_eq!(log.count("b"), 1);
    assert!(!b1.token.is_cancelled());
    let current_b = log.current("b").expect("b live");
    assert!(Arc::ptr_eq(&current_b.cluster, &b1.cluster));
    log.wait_live(&["a", "b"]).await;
}

/// Missing, empty and malformed kubeconfigs give a Warning Event and no cluster,
/// without disturbing the good Secrets; a Secret that turns bad loses its cluster and
/// gets it back when fixed.
#[tokio::test]
async fn psecret_bad_input() {
    const CANARY: &str = "bad-input-canary-7f3a";
    let env = Env::new(2).await;
    env.put_json("good", &env.kubeconfig(1)).await;
    let other_key = BTreeMap::from([("config".to_owned(), b"irrelevant".to_vec())]);
    env.put_data("no-key", other_key).await;
    env.put("empty", "").await;
    let malformed = format!("apiVersion: v1\nusers: [ {{ name: u, user: {{ token: {CANARY} ");
    env.put("malformed", malformed.clone()).await;

    let (provider, log, _token) = env.start(SecretsOptions::new(NS));
    log.wait_live(&["good"]).await;
    let note = env.wait_warning("no-key", REASON_MISSING).await;
    assert!(
        note.contains("fleet/no-key") && note.contains("has no key \"kubeconfig\""),
        "{note}"
    );
    let note = env.wait_warning("empty", REASON_MISSING).await;
    assert!(note.contains("is empty"), "{note}");
    let note = env.wait_warning("malformed", REASON_INVALID).await;
    assert!(note.contains("not a valid kubeconfig"), "{note}");
    assert!(!note.contains(CANARY), "the content is never quoted: {note}");
    for bad in ["no-key", "empty", "malformed"] {
        assert_eq!(log.count(bad), 0, "{bad} gives no cluster");
        let err = provider
            .get(&ClusterName::from(bad))
            .await
            .expect_err("no cluster");
        assert!(err.is_cluster_not_found());
    }

    // Good Secrets added afterwards are still engaged.
    env.put_json("later", &env.kubeconfig(1)).await;
    log.wait_live(&["good", "later"]).await;

    // A good Secret turning bad loses its cluster ...
    let later = log.current("later").expect("later engaged");
    env.put("later", "{ not: [ yaml").await;
    support::wait_until("later disengaged", || later.token.is_cancelled()).await;
    env.wait_warning("later", REASON_INVALID).await;
    log.wait_live(&["good"]).await;
    let err = provider
        .get(&ClusterName::from("later"))
        .await
        .expect_err("later has no cluster");
    assert!(err.is_cluster_not_found());

    // ... and gets it back when fixed; a bad one fixed gets its first.
    env.put_json("later", &env.kubeconfig(1)).await;
    env.put_json("empty", &env.kubeconfig(1)).await;
    log.wait_live(&["empty", "good", "later"]).await;
    assert_eq!(log.count("later"), 2);

    let good = log.current("good").expect("good engaged");
    assert_eq!(log.count("good"), 1, "the good Secret was never disturbed");
    assert!(sees(good.cluster.client(), "marker-1").await);
}

/// A kubeconfig asking for an exec plugin is refused by default, without running
/// it, and engaged when the operator allows exec plugins; local files stay refused.
#[tokio::test]
async fn psecret_exec_refused() {
    let env = Env::new(1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("plugin-ran");
    let script = format!("touch '{}'; {}", marker.display(), print_credential("exec-token"));
    env.put_json(
        "exec",
        &with_user(env.kubeconfig(0), exec_user(&script, json!([]))),
    )
    .await;
    let token_file = with_user(env.kubeconfig(0), json!({ "tokenFile": "/etc/hostname" }));
    env.put_json("token-file", &token_file).await;
    env.put_json("self", &env.kubeconfig(0)).await;

    let (_, log, token) = env.start(SecretsOptions::new(NS));
    log.wait_live(&["self"]).await;
    let note = env.wait_warning("exec", REASON_REFUSED).await;
    assert!(
        note.contains("asks to run an exec credential plugin") && note.contains("refused"),
        "{note}"
    );
    assert!(!note.contains("/bin/sh"), "{note}");
    let note = env.wait_warning("token-file", REASON_REFUSED).await;
    assert!(
        note.contains("tokenFile") && !note.contains("/etc/hostname"),
        "{note}"
    );
    assert!(!marker.exists(), "a refused plugin never runs");
    assert_eq!(log.count("exec"), 0);
    token.cancel();

    let (provider, log, _token) = env.start(SecretsOptions::new(NS).policy(exec_allowed()));
    log.wait_live(&["exec", "self"]).await;
    assert!(
        marker.exists(),
        "the allowed plugin ran when the client was built"
    );
    provider
        .get(&ClusterName::from("exec"))
        .await
        .expect("exec cluster");
    assert_eq!(log.count("token-file"), 0, "local files stay refused");
}

/// A provider that cannot list its Secrets logs an error naming the namespace after
/// the sync timeout, keeps retrying without holding anything up, and syncs once it
/// may; the documented namespaced Role is all it needs, Events included.
#[tokio::test(flavor = "current_thread")]
async fn psecret_sync_timeout() {
    let env = Env::new(1).await;
    env.put_json("self", &env.kubeconfig(0)).await;
    env.put("broken", "").await;
    let host = env.fleet.cluster(0);
    let late = host.create_user(UserSpec::new("late")).await.expect("user");

    let capture = support::logs::Capture::default();
    let _guard = capture.set_default("multicluster_runtime=debug");
    let provider = Arc::new(Secrets::new(
        late.client().expect("client"),
        SecretsOptions::new(NS).sync_timeout(std::time::Duration::from_millis(300)),
    ));
    let log = EngagementLog::new();
    let (runs, aware, token) = (provider.clone(), log.clone(), env.token.child_token());
    tokio::spawn(async move { runs.start(token, aware).await.expect("provider runs") });

    support::wait_until("the sync timeout error", || {
        capture.text().lines().any(|line| {
            line.contains("ERROR")
                && line.contains("cache not synced; still waiting")
                && line.contains("kubeconfig Secrets of namespace fleet")
        })
    })
    .await;
    let text = capture.text();
    assert!(text.contains("watch failed, retrying with backoff"), "{text}");
    let reason = text
        .lines()
        .find(|line| line.contains("cache not synced; still waiting"))
        .expect("the error line");
    assert!(
        reason.contains("forbidden"),
        "the error names the reason: {reason}"
    );
    assert!(!provider.is_synced());
    let err = provider
        .get(&ClusterName::from("self"))
        .await
        .expect_err("nothing yet");
    assert!(err.is_cluster_not_found());

    // The documented Role, for the same user: the retrying watch syncs.
    let spec = support::rbac::user("late", "secret-provider.yaml", NS);
    host.create_user(spec).await.expect("grant");
    log.wait_live(&["self"]).await;
    support::wait_until("synced", || provider.is_synced()).await;
    let note = env.wait_warning("broken", REASON_MISSING).await;
    assert!(note.contains("fleet/broken"), "{note}");
}

/// The base64 text of `bytes`, as Kubernetes writes Secret data.
fn base64(bytes: &[u8]) -> String {
    serde_json::to_value(ByteString(bytes.to_vec()))
        .expect("base64")
        .as_str()
        .expect("string")
        .to_owned()
}

/// The bytes of base64 `text`.
fn unbase64(text: &str) -> Vec<u8> {
    serde_json::from_value::<ByteString>(json!(text))
        .expect("base64")
        .0
}

/// Pieces of `secret` that must never be logged: the value, its base64, and for PEM
/// data each line of the body.
fn fragments(secret: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(secret).into_owned();
    let mut pieces = vec![text.clone(), base64(secret)];
    pieces.extend(
        text.lines()
            .filter(|line| line.len() >= 32 && !line.starts_with("-----"))
            .map(str::to_owned),
    );
    let encoded = base64(secret);
    if encoded.len() > 48 {
        pieces.push(encoded[8..48].to_owned());
    }
    pieces
}

/// Runs valid, rotated, malformed, exec and refused Secrets through the provider
/// with every log level on, and finds no credential in the output. A current-thread
/// runtime keeps the provider's tasks on this thread, under the scoped subscriber;
/// the provider carries it onto the blocking thread where it builds clients.
#[tokio::test(flavor = "current_thread")]
async fn psecret_no_secret_leak() {
    const TOKEN: &str = "leak-canary-token-1b7e0c";
    const ROTATED: &str = "leak-canary-rotated-92df";
    const MALFORMED: &str = "leak-canary-malformed-5e21";
    const EXEC_TOKEN: &str = "leak-canary-exec-token-a0c4";
    const EXEC_ENV: &str = "leak-canary-exec-env-33b8";
    const FAIL_ENV: &str = "leak-canary-fail-env-7d10";
    const FAIL_ARG: &str = "leak-canary-fail-arg-c9e2";
    const FAIL_OUT: &str = "leak-canary-fail-stdout-41f6";
    const FAIL_ERR: &str = "leak-canary-fail-stderr-e85a";
    let env = Env::new(2).await;

    let capture = support::logs::Capture::default();
    let filter = "debug,multicluster_runtime=trace,kube=trace,kube_client=trace,kube_runtime=trace";
    let guard = capture.set_default(filter);

    let certs = env.kubeconfig(1);
    let token = with_user(env.kubeconfig(1), json!({ "token": TOKEN }));
    let rotated = with_user(env.kubeconfig(1), json!({ "token": ROTATED }));
    let malformed = format!("users: [ {{ name: u, user: {{ token: {MALFORMED} ");
    let exec_ok = with_user(
        env.kubeconfig(1),
        exec_user(
            &print_credential(EXEC_TOKEN),
            json!([{ "name": "CANARY", "value": EXEC_ENV }]),
        ),
    );
    let script = format!("echo {FAIL_OUT}; echo {FAIL_ERR} >&2; exit 3 # {FAIL_ARG}");
    let exec_fail = with_user(
        env.kubeconfig(1),
        exec_user(&script, json!([{ "name": "CANARY", "value": FAIL_ENV }])),
    );
    let token_file = with_user(
        env.kubeconfig(1),
        json!({ "tokenFile": "/etc/hostname", "token": TOKEN }),
    );
    let contents: Vec<(&str, Vec<u8>)> = vec![
        ("certs", serde_json::to_vec(&certs).expect("JSON")),
        ("token", serde_json::to_vec(&token).expect("JSON")),
        ("malformed", malformed.clone().into_bytes()),
        ("exec-ok", serde_json::to_vec(&exec_ok).expect("JSON")),
        ("exec-fail", serde_json::to_vec(&exec_fail).expect("JSON")),
        ("token-file", serde_json::to_vec(&token_file).expect("JSON")),
    ];
    for (name, data) in &contents {
        env.put(name, data.clone()).await;
    }

    let (_, log, _token) = env.start(SecretsOptions::new(NS).policy(exec_allowed()));
    log.wait_live(&["certs", "exec-ok", "token"]).await;
    let note = env.wait_warning("exec-fail", REASON_INVALID).await;
    assert!(note.contains("exec credential plugin failed"), "{note}");
    env.wait_warning("malformed", REASON_INVALID).await;
    env.wait_warning("token-file", REASON_REFUSED).await;

    // Rotation, and requests made with each credential (the fake ones are rejected).
    env.put_json("token", &rotated).await;
    log.wait_count("token", 2).await;
    for name in ["token", "exec-ok", "certs"] {
        let cluster = log.current(name).expect("engaged").cluster;
        let _ = Api::<Namespace>::all(cluster.client())
            .list(&ListParams::default())
            .await;
    }
    env.delete("certs").await;
    log.wait_live(&["exec-ok", "token"]).await;
    drop(guard);

    let output = capture.text();
    assert!(
        output.contains("kubeconfig Secret gives no cluster") && output.contains(REASON_INVALID),
        "the capture works"
    );
    let mut secrets: Vec<String> = [
        TOKEN, ROTATED, MALFORMED, EXEC_TOKEN, EXEC_ENV, FAIL_ENV, FAIL_ARG, FAIL_OUT, FAIL_ERR,
    ]
    .iter()
    .flat_map(|s| fragments(s.as_bytes()))
    .collect();
    let user = &certs["users"][0]["user"];
    for field in ["client-certificate-data", "client-key-data"] {
        let encoded = user[field].as_str().expect("cert data");
        secrets.push(encoded.to_owned());
        secrets.extend(fragments(&unbase64(encoded)));
    }
    for (_, data) in &contents {
        secrets.extend(fragments(data).into_iter().skip(1));
    }
    secrets.extend(
        fragments(&serde_json::to_vec(&rotated).expect("JSON"))
            .into_iter()
            .skip(1),
    );
    for secret in &secrets {
        assert!(
            !output.contains(secret.as_str()),
            "a credential reached the log: {}…",
            &secret[..secret.len().min(12)]
        );
    }
    for name in ["malformed", "exec-fail", "token-file"] {
        for event in env.warnings(name).await {
            let note = event.note.unwrap_or_default();
            assert!(
                secrets.iter().all(|s| !note.contains(s.as_str())),
                "a credential reached an Event on {name}"
            );
        }
    }
}

/// A provider client holding exactly `deploy/rbac/secret-provider.yaml` in the
/// namespace of the Secrets.
async fn rbac_client(env: &Env, user: &str) -> Client {
    let spec = support::rbac::user(user, "secret-provider.yaml", NS);
    let user = env.fleet.cluster(0).create_user(spec).await.expect("user");
    user.client().expect("client")
}

/// The provider with only the documented Role in its namespace engages, replaces
/// and disengages clusters, publishes its Warning Events, and after a restart
/// forgets a cluster whose Secret went away meanwhile. Its source has no watcher
/// of its own: it reads the Secrets through the shared cache's informer.
#[tokio::test]
async fn p03_secret_provider_with_a_role_only() {
    for file in ["mod.rs", "content.rs", "queue.rs"] {
        let path = format!("{}/src/providers/secret/{file}", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(&path).expect("source");
        for needle in ["watcher(", "watcher::Event", "watcher::Config", "WatchStreamExt"] {
            assert!(
                !source.contains(needle),
                "{path} has a watcher of its own: {needle}"
            );
        }
    }

    let env = Env::new(3).await;
    env.put_json("c1", &env.kubeconfig(1)).await;
    env.put_json("c2", &env.kubeconfig(2)).await;
    env.put("broken", "").await;
    let client = rbac_client(&env, "secret-provider").await;
    let provider = Arc::new(Secrets::new(client, SecretsOptions::new(NS)));
    let (log, token) = env.run(&provider);
    log.wait_live(&["c1", "c2"]).await;
    assert!(provider.is_synced());
    let c1 = provider.get(&ClusterName::from("c1")).await.expect("c1");
    assert!(sees(c1.client(), "marker-1").await && !sees(c1.client(), "marker-2").await);
    let note = env.wait_warning("broken", REASON_MISSING).await;
    assert!(note.contains("fleet/broken"), "{note}");

    // A change of credentials replaces the cluster; deletion disengages it.
    env.put_json("c2", &env.kubeconfig(1)).await;
    log.wait_count("c2", 2).await;
    env.delete("c1").await;
    log.wait_live(&["c2"]).await;

    // Stopped, c2 deleted and c1 back: the restarted provider follows the Secrets.
    token.cancel();
    env.stopped().await;
    env.delete("c2").await;
    env.put_json("c1", &env.kubeconfig(1)).await;
    let (log, _token) = env.run(&provider);
    log.wait_live(&["c1"]).await;
    support::wait_until("c2 forgotten", || {
        !provider.names().contains(&ClusterName::from("c2"))
    })
    .await;
}

/// Secrets whose kubeconfig sets a proxy-url, skips TLS verification, or points at a
/// denied address range are each refused with an Event and a log line naming the
/// rule; the other cluster is engaged as usual. Run with the documented Role.
#[tokio::test(flavor = "current_thread")]
async fn p04_endpoint_rules_refuse_and_name_the_rule() {
    let env = Env::new(2).await;
    let with_cluster = |field: &str, value: Value| {
        let mut kubeconfig = env.kubeconfig(1);
        kubeconfig["clusters"][0]["cluster"][field] = value;
        kubeconfig
    };
    env.put_json("c1", &env.kubeconfig(1)).await;
    env.put_json(
        "proxied",
        &with_cluster("proxy-url", json!("http://user:pr0xy-s3cret@proxy.example:3128")),
    )
    .await;
    env.put_json("insecure", &with_cluster("insecure-skip-tls-verify", json!(true)))
        .await;
    env.put_json(
        "metadata",
        &with_cluster("server", json!("https://169.254.169.254:443")),
    )
    .await;

    let capture = support::logs::Capture::default();
    let _guard = capture.set_default("multicluster_runtime=debug");
    let endpoints = EndpointPolicy::any()
        .deny(["169.254.0.0/16", "fd00:ec2::254/128"])
        .unwrap();
    let options = SecretsOptions::new(NS).policy(KubeconfigPolicy::untrusted().endpoints(endpoints));
    let client = rbac_client(&env, "secret-provider").await;
    let provider = Arc::new(Secrets::new(client, options));
    let (log, _token) = env.run(&provider);
    log.wait_live(&["c1"]).await;

    let expected = [
        ("proxied", "proxy-url is set; refused by rule allow_proxy_url"),
        (
            "insecure",
            "insecure-skip-tls-verify is true; refused by rule allow_insecure_skip_tls_verify",
        ),
        (
            "metadata",
            "server host is in the deny-list entry 169.254.0.0/16; refused by rule endpoints",
        ),
    ];
    for (name, rule) in expected {
        let note = env.wait_warning(name, REASON_REFUSED).await;
        assert!(
            note.contains(&format!("Secret fleet/{name}")) && note.contains(rule),
            "{note}"
        );
        assert!(!note.contains("pr0xy-s3cret"), "{note}");
        support::wait_until(&format!("a log line refusing {name}"), || {
            capture.text().lines().any(|line| {
                line.contains("gives no cluster")
                    && line.contains(&format!("secret={name}"))
                    && line.contains(rule)
            })
        })
        .await;
        assert_eq!(log.count(name), 0, "{name} is never engaged");
    }
    assert!(!capture.text().contains("pr0xy-s3cret"));
    let c1 = provider
        .get(&ClusterName::from("c1"))
        .await
        .expect("c1 unaffected");
    assert!(sees(c1.client(), "marker-1").await);
}

/// x06: Secrets whose kubeconfigs are refused for an exec command, an auth
/// provider, a denied server host and a server outside the allow-list, each value
/// holding a marker, run with the documented Role and TRACE logs: each gets its
/// `KubeconfigRefused` Event and its log line, naming the field and the rule, and
/// the marker is in no Event, no log line and no error; neither is the metadata
/// address that a denied server names.
#[tokio::test(flavor = "current_thread")]
async fn x06_refusal_events_and_errors_copy_no_command_provider_name_or_host() {
    const MARKER: &str = "x06-secret-marker";
    let env = Env::new(2).await;
    let with_server = |server: &str| {
        let mut kubeconfig = env.kubeconfig(1);
        kubeconfig["clusters"][0]["cluster"]["server"] = json!(server);
        kubeconfig
    };
    let secrets = [
        (
            "exec",
            with_user(
                env.kubeconfig(1),
                json!({ "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": format!("/usr/bin/{MARKER}-command"),
                }}),
            ),
            "users[0] asks to run an exec credential plugin (user.exec); refused",
        ),
        (
            "auth-provider",
            with_user(
                env.kubeconfig(1),
                json!({ "auth-provider": { "name": format!("{MARKER}-provider") } }),
            ),
            "users[0] uses an auth provider (user.auth-provider); refused",
        ),
        (
            "denied",
            with_server(&format!("https://{MARKER}.internal:6443")),
            "clusters[0]: server host is in the deny-list entry *.internal; refused by rule endpoints",
        ),
        (
            "metadata",
            with_server("https://169.254.169.254"),
            "clusters[0]: server host is in the deny-list entry 169.254.0.0/16; refused by rule endpoints",
        ),
        (
            "elsewhere",
            with_server(&format!("https://{MARKER}.example.org")),
            "clusters[0]: server host is not in the allow-list (2 entries); refused by rule endpoints",
        ),
    ];
    env.put_json("c1", &env.kubeconfig(1)).await;
    for (name, kubeconfig, _) in &secrets {
        env.put_json(name, kubeconfig).await;
    }
    let capture = support::logs::Capture::default();
    let guard = capture.set_default("trace,tower=debug,hyper=debug,h2=debug,rustls=debug");
    // Loopback stays allowed for the test's own apiservers.
    let endpoints = EndpointPolicy::any()
        .deny(["169.254.0.0/16", "*.internal"])
        .and_then(|policy| policy.allow(["127.0.0.0/8", "*.internal"]))
        .expect("rules");
    let options = SecretsOptions::new(NS).policy(KubeconfigPolicy::untrusted().endpoints(endpoints));
    let provider = Arc::new(Secrets::new(rbac_client(&env, "secret-provider").await, options));
    let (log, token) = env.run(&provider);
    log.wait_live(&["c1"]).await;

    let mut texts = Vec::new();
    for (name, _, rule) in &secrets {
        let note = env.wait_warning(name, REASON_REFUSED).await;
        assert!(
            note.starts_with(&format!("Secret fleet/{name}: ")) && note.contains(rule),
            "{note}"
        );
        support::wait_until(&format!("a log line refusing {name}"), || {
            capture.text().lines().any(|line| {
                line.contains("gives no cluster")
                    && line.contains(&format!("secret={name}"))
                    && line.contains(rule)
            })
        })
        .await;
        let error = provider
            .get(&ClusterName::from(*name))
            .await
            .expect_err("no cluster");
        texts.push(format!("{error} {error:?}"));
    }
    token.cancel();
    drop(guard);
    let events: Api<Event> = Api::namespaced(env.host.clone(), NS);
    for event in events
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
    {
        texts.push(format!("{:?} {:?}", event.note, event.reason));
    }
    texts.push(capture.text());
    for text in &texts {
        assert!(!text.contains(MARKER), "Secret content copied: {text}");
        assert!(!text.contains("169.254.169.254"), "a server host copied: {text}");
    }
}

/// Marker strings put where credentials go; none may leave the process's secrets.
const P06_TOKEN: &str = "p06-marker-token-5c1d9e";
const P06_PASSWORD: &str = "p06-marker-password-8a2f71";
const P06_KEY: &str = "p06-marker-client-key-3b7e40";
const P06_PROXY: &str = "p06-marker-proxy-password-e19c";

/// The provider, with the documented Role and every log level on, given Secrets
/// whose kubeconfigs hold markers in a token, a password, a client key and a proxy
/// URL, some giving clusters (that then fail to authenticate) and some refused or
/// failing to build: no marker (nor the real client key of the admin kubeconfig)
/// appears in the logs, in errors, in `Debug` output or in Events.
#[tokio::test(flavor = "current_thread")]
async fn p06_secret_provider_leaks_no_credential() {
    let env = Env::new(2).await;
    let client = rbac_client(&env, "secret-provider").await;
    let capture = support::logs::Capture::default();
    let filter = "trace,tower=debug,hyper=debug,h2=debug,rustls=debug";
    let guard = capture.set_default(filter);

    let good = env.kubeconfig(1);
    let token = with_user(env.kubeconfig(1), json!({ "token": P06_TOKEN }));
    let password = with_user(
        env.kubeconfig(1),
        json!({ "username": "admin", "password": P06_PASSWORD }),
    );
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{P06_KEY}\n-----END PRIVATE KEY-----\n");
    let mut bad_key = env.kubeconfig(1);
    bad_key["users"][0]["user"]["client-key-data"] = json!(base64(pem.as_bytes()));
    let mut proxied = env.kubeconfig(1);
    proxied["clusters"][0]["cluster"]["proxy-url"] =
        json!(format!("http://u:{P06_PROXY}@proxy.example:3128"));
    for (name, kubeconfig) in [
        ("good", &good),
        ("token", &token),
        ("password", &password),
        ("bad-key", &bad_key),
        ("proxied", &proxied),
    ] {
        env.put_json(name, kubeconfig).await;
    }

    let provider = Arc::new(Secrets::new(client, SecretsOptions::new(NS)));
    let (log, _token) = env.run(&provider);
    log.wait_live(&["good", "password", "token"]).await;
    env.wait_warning("bad-key", REASON_INVALID).await;
    env.wait_warning("proxied", REASON_REFUSED).await;
    // Requests with each credential: the marker ones are rejected by the apiserver.
    let mut texts = Vec::new();
    for name in ["good", "token", "password"] {
        let cluster = provider.get(&ClusterName::from(name)).await.expect("engaged");
        texts.push(format!("{cluster:?}"));
        if let Err(error) = Api::<Namespace>::all(cluster.client())
            .list(&ListParams::default())
            .await
        {
            texts.push(error.to_string());
            texts.push(format!("{error:?}"));
        }
    }
    for name in ["bad-key", "proxied", "absent"] {
        let error = provider
            .get(&ClusterName::from(name))
            .await
            .expect_err("no cluster");
        texts.push(error.to_string());
        texts.push(format!("{error:?}"));
    }
    texts.push(format!("{provider:?}"));
    texts.push(format!("{:?}", provider.options()));
    drop(guard);
    texts.push(capture.text());
    for name in ["bad-key", "proxied"] {
        for event in env.warnings(name).await {
            texts.push(format!("{:?} {:?}", event.note, event.reason));
        }
    }

    assert!(
        capture.text().contains("kubeconfig Secret gives no cluster"),
        "the capture works"
    );
    let admin_key = good["users"][0]["user"]["client-key-data"]
        .as_str()
        .expect("the admin key")
        .to_owned();
    let mut markers: Vec<String> = [P06_TOKEN, P06_PASSWORD, P06_KEY, P06_PROXY]
        .iter()
        .flat_map(|m| fragments(m.as_bytes()))
        .collect();
    markers.extend(fragments(&unbase64(&admin_key)));
    markers.push(admin_key);
    markers.push(base64(pem.as_bytes()));
    for text in &texts {
        for marker in &markers {
            assert!(
                !text.contains(marker.as_str()),
                "a credential left the process's secrets: {}…",
                &marker[..marker.len().min(16)]
            );
        }
    }
}
