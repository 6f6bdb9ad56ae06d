//! w05: what a validating webhook served by this library adds to a create.
//!
//! The driver runs a manager with a [`WebhookServer`] (in its own process, on
//! 127.0.0.1) over every apiserver of the fleet, waits until each apiserver
//! enforces the webhook, then sends creates of ConfigMaps through the apiservers at
//! a fixed rate, round-robin over the clusters, in two phases that differ only in
//! one label value: `webhook` objects match the webhook's object selector (the
//! apiserver calls the server), `plain` objects do not (the apiserver's own latency
//! for the same request). Phases alternate, their order rotating each round. Every
//! create must succeed and the handler must have been called exactly once per
//! `webhook` create and never for a `plain` one; anything else fails the run.
//!
//! Go's multicluster-runtime has no fleet webhook server (its builder is
//! controller-runtime's, for its own cluster), so there is no Go peer here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::webhook::{AdmissionContext, Verdict, Webhook, WebhookServer};
use multicluster_runtime::{Cluster, Manager};
use tokio_util::sync::CancellationToken;

use super::{Args, NAMESPACE, create_namespace, load_average, median, publish, report_header, start_fleet};

/// The label whose value decides whether the apiserver calls the webhook: `on`
/// matches its object selector, `no` does not (same length, so the two requests
/// are the same size).
const HOOK_LABEL: &str = "bench.multicluster-runtime.rs/w05-webhook";
/// The webhook's name.
const WEBHOOK: &str = "w05.bench.multicluster-runtime.rs";
/// The data key the handler refuses (the probe that shows a cluster enforces it).
const FORBIDDEN: &str = "forbidden";

/// One phase of one round.
pub(super) struct PhaseRun {
    round: usize,
    hooked: bool,
    requests: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Creates answered per second, first sent → last answered.
    throughput: f64,
    /// The handler's calls during the phase.
    calls: usize,
    load: (String, String),
}

impl PhaseRun {
    fn label(&self) -> &'static str {
        if self.hooked { "webhook" } else { "plain" }
    }

    /// The run as a row of the table of every run (also its progress line).
    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {}→{} |",
            self.round,
            self.label(),
            self.requests,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.throughput,
            self.calls,
            self.load.0,
            self.load.1
        )
    }
}

/// The handler: counts its calls and refuses a ConfigMap with the key
/// [`FORBIDDEN`], naming the cluster.
async fn validate(req: AdmissionContext<ConfigMap>, calls: Arc<AtomicUsize>) -> Verdict {
    calls.fetch_add(1, Ordering::Relaxed);
    let forbidden = req
        .request
        .object
        .as_ref()
        .and_then(|cm| cm.data.as_ref())
        .is_some_and(|data| data.contains_key(FORBIDDEN));
    if forbidden {
        return Verdict::deny(format!(
            "the key `{FORBIDDEN}` is not allowed in cluster {}",
            req.cluster_name
        ));
    }
    Verdict::allow()
}

/// The mode on its own (`--webhook-rate`): starts `--clusters` apiservers, runs the
/// rounds and writes the results.
pub(super) async fn webhook_latency(args: &Args, rate: u32) -> Result<(), String> {
    eprintln!("starting {} clusters ...", args.clusters);
    let (fleet, _) = start_fleet(args.clusters.max(1)).await?;
    let runs = webhook_rounds(args, &fleet, rate, args.webhook_secs).await?;
    drop(fleet);
    let md =
        report_header(args) + &render_webhook(args, args.clusters.max(1), rate, args.webhook_secs, &runs);
    publish(args, &md)
}

/// The w05 rounds on `fleet`, every apiserver a member: `rate` creates a second for
/// `secs` seconds per phase, after a warm-up second of each phase (not recorded).
pub(super) async fn webhook_rounds(
    args: &Args,
    fleet: &kube_envtest::Fleet,
    rate: u32,
    secs: u64,
) -> Result<Vec<PhaseRun>, String> {
    let clients: Vec<kube::Client> = fleet
        .clusters()
        .iter()
        .map(|c| c.client().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    for client in &clients {
        create_namespace(client.clone(), NAMESPACE).await?;
    }
    let provider = Arc::new(Clusters::new());
    for (index, client) in clients.iter().enumerate() {
        let cluster = Cluster::new(cluster_name(index), client.clone());
        provider.add(Arc::new(cluster)).await.map_err(|e| e.to_string())?;
    }
    let local = Arc::new(Cluster::new("", clients[0].clone()));
    let manager = Manager::with_provider(local, provider);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for the webhook server: {e}"))?
        .port();
    let calls = Arc::new(AtomicUsize::new(0));
    let selector = LabelSelector {
        match_labels: Some([(HOOK_LABEL.to_owned(), "on".to_owned())].into()),
        ..LabelSelector::default()
    };
    let server = WebhookServer::builder(([127, 0, 0, 1], port).into(), format!("https://127.0.0.1:{port}"))
        .validating(
            Webhook::new(WEBHOOK)
                .operations(["CREATE"])
                .object_selector(selector),
            validate,
            calls.clone(),
        )
        .build()
        .map_err(|e| e.to_string())?;
    manager
        .add_cluster_runnable(Arc::new(server))
        .await
        .map_err(|e| e.to_string())?;
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });
    let measured = async {
        let started = Instant::now();
        for (index, client) in clients.iter().enumerate() {
            wait_enforced(client, &cluster_name(index)).await?;
        }
        eprintln!(
            "w05: the webhook is enforced in {} clusters after {:.1} s",
            clients.len(),
            started.elapsed().as_secs_f64()
        );
        let apis: Vec<Api<ConfigMap>> = clients
            .iter()
            .map(|c| Api::namespaced(c.clone(), NAMESPACE))
            .collect();
        // Warm-up: the apiservers open their connections to the server, both paths
        // are exercised once; checked like the rest, not recorded.
        for hooked in [false, true] {
            phase(&apis, &calls, hooked, "warm", rate, 1).await?;
        }
        let mut runs = Vec::new();
        for round in 1..=args.rounds {
            let order = if round % 2 == 1 {
                [false, true]
            } else {
                [true, false]
            };
            for hooked in order {
                let load_before = load_average();
                let measured = phase(&apis, &calls, hooked, &format!("r{round}"), rate, secs).await?;
                let load_after = load_average();
                let run = PhaseRun {
                    round,
                    hooked,
                    load: (load_before, load_after),
                    ..measured
                };
                eprintln!("w05 {}", run.row());
                runs.push(run);
            }
        }
        Ok::<_, String>(runs)
    };
    let result = measured.await;
    token.cancel();
    let stopped = running
        .await
        .map_err(|e| format!("the manager's task failed: {e}"))?;
    let runs = result?;
    stopped.map_err(|e| format!("the manager failed: {e}"))?;
    Ok(runs)
}

fn cluster_name(index: usize) -> String {
    format!("cluster-{index}")
}

/// Waits until `client`'s apiserver calls the webhook: a dry-run create of a
/// forbidden, matching ConfigMap is refused with a message naming `cluster` (a dry
/// run stores nothing, and the webhook has no side effects, so it is called).
async fn wait_enforced(client: &kube::Client, cluster: &str) -> Result<(), String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let mut probe = config_map("w05-probe", true);
    probe.data = Some([(FORBIDDEN.to_owned(), "x".to_owned())].into());
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let expected = format!("not allowed in cluster {cluster}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match api.create(&params, &probe).await {
            Err(kube::Error::Api(status)) if status.message.contains(&expected) => return Ok(()),
            Err(error) => error.to_string(),
            Ok(_) => "admitted".to_owned(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "{cluster} did not enforce the webhook within 60 s (last probe: {last})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config_map(name: &str, hooked: bool) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    let value = if hooked { "on" } else { "no" };
    cm.metadata.labels = Some([(HOOK_LABEL.to_owned(), value.to_owned())].into());
    cm.data = Some([("index".to_owned(), name.to_owned())].into());
    cm
}

/// One phase: `rate` creates a second for `secs` seconds, round-robin over `apis`,
/// sent on a clock (open loop: a slow answer does not delay the next create). Fails
/// on any refused or failed create, or when the handler's calls differ from the
/// creates it should have seen; then deletes the phase's objects.
async fn phase(
    apis: &[Api<ConfigMap>],
    calls: &AtomicUsize,
    hooked: bool,
    prefix: &str,
    rate: u32,
    secs: u64,
) -> Result<PhaseRun, String> {
    let total = rate as usize * secs as usize;
    let label = if hooked { "webhook" } else { "plain" };
    let calls_before = calls.load(Ordering::Relaxed);
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for index in 0..total {
        ticks.tick().await;
        let api = apis[index % apis.len()].clone();
        let cm = config_map(&format!("w05-{prefix}-{label}-{index:06}"), hooked);
        tasks.spawn(async move {
            let sent = Instant::now();
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok((sent.elapsed(), Instant::now())),
                Err(error) => Err(format!(
                    "w05 {label}: creating {}: {error}",
                    cm.metadata.name.unwrap_or_default()
                )),
            }
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut last = started;
    while let Some(done) = tasks.join_next().await {
        let (latency, answered) = done.map_err(|e| e.to_string())??;
        latencies.push(latency);
        last = last.max(answered);
    }
    let calls = calls.load(Ordering::Relaxed) - calls_before;
    let expected = if hooked { total } else { 0 };
    if calls != expected {
        return Err(format!(
            "w05 {label}: the handler was called {calls} times for {total} creates (expected {expected})"
        ));
    }
    for api in apis {
        api.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(HOOK_LABEL),
        )
        .await
        .map_err(|e| format!("w05: deleting the phase's ConfigMaps: {e}"))?;
    }
    let (p50_ms, p99_ms, max_ms) = mcr_bench::percentiles(&mut latencies);
    let elapsed = last.duration_since(started).as_secs_f64();
    Ok(PhaseRun {
        round: 0,
        hooked,
        requests: total,
        p50_ms,
        p99_ms,
        max_ms,
        throughput: if elapsed > 0.0 {
            total as f64 / elapsed
        } else {
            0.0
        },
        calls,
        load: Default::default(),
    })
}

/// The w05 results as Markdown (without the command, date and machine lines).
pub(super) fn render_webhook(
    args: &Args,
    clusters: usize,
    rate: u32,
    secs: u64,
    runs: &[PhaseRun],
) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "- w05: {clusters} apiservers, every one a member; one validating webhook for ConfigMaps (`CREATE`, object selector `{HOOK_LABEL}=on`, failure policy `Fail`) served by this library's `WebhookServer` in the driver's process on 127.0.0.1 (self-signed authority); each apiserver calls it over HTTPS"
    );
    let _ = writeln!(
        md,
        "- each phase: {rate} creates/s for {secs} s = {} ConfigMaps, round-robin over the clusters, sent on a clock (open loop), each through its cluster's apiserver; `webhook` objects are labelled `on` (the apiserver calls the webhook), `plain` ones `no` (it does not: the apiserver's own latency); {} round(s), the two phases alternating, order rotating; a warm-up second of each first",
        rate as usize * secs as usize,
        args.rounds
    );
    let _ = writeln!(
        md,
        "- latency = the driver sends the create → the apiserver answers; throughput = creates answered ÷ (first sent → last answered); every create must succeed and the handler must be called once per `webhook` create, never for a `plain` one"
    );
    let _ = writeln!(
        md,
        "- no Go peer: Go's multicluster-runtime has no fleet webhook server (its webhook builder is controller-runtime's, for its own cluster)"
    );
    type Metric = (&'static str, fn(&PhaseRun) -> f64);
    let metrics: [Metric; 4] = [
        ("admission latency p50 (ms)", |r| r.p50_ms),
        ("admission latency p99 (ms)", |r| r.p99_ms),
        ("admission latency max (ms)", |r| r.max_ms),
        ("throughput (creates/s)", |r| r.throughput),
    ];
    let med = |hooked: bool, f: fn(&PhaseRun) -> f64| {
        median(runs.iter().filter(|r| r.hooked == hooked).map(f).collect())
    };
    let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}"));
    let _ = writeln!(md, "\nMedians over the rounds:\n");
    let _ = writeln!(md, "| metric | without webhook | with webhook | with − without |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (name, f) in metrics {
        let (plain, hooked) = (med(false, f), med(true, f));
        let difference = match (plain, hooked) {
            (Some(plain), Some(hooked)) => format!("{:+.2}", hooked - plain),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {difference} |",
            cell(plain),
            cell(hooked)
        );
    }
    let _ = writeln!(md, "\nEvery run:\n");
    let _ = writeln!(
        md,
        "| round | phase | creates | p50 ms | p99 ms | max ms | creates/s | handler calls | load before→after |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for run in runs {
        let _ = writeln!(md, "{}", run.row());
    }
    md
}
