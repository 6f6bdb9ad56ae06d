//! The benchmark driver behind `bench/run`: starts a local fleet with kube-envtest,
//! seeds it with labelled ConfigMaps, runs the peers one after another for several
//! rounds on that same fleet (the order rotates each round), drives the update
//! workload while each peer runs, and writes a Markdown table of medians and ratios.
//! Other modes run P4 (engage latency, `--engage-secrets`), P5 (fairness,
//! `--fair-backlog`), P6 (namespaces as clusters, `--namespace-clusters`) and w05
//! (admission latency with a fleet webhook, `--webhook-rate`). See
//! `bench/README.md`.

#[path = "driver/webhook.rs"]
mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use mcr_bench::{MEMBER_LABEL, Report, WRITTEN_AT};
use tokio::io::AsyncBufReadExt;

/// The namespace the ConfigMaps live in, in every cluster.
const NAMESPACE: &str = "bench";

#[derive(Parser, Debug, Clone)]
#[command(about = "Runs the Rust, Go and floor peers alternately on one local fleet")]
struct Args {
    /// The quick size: 4 clusters × 250 ConfigMaps, 1 round, 3 s of updates.
    #[arg(long)]
    quick: bool,
    /// Clusters in the fleet.
    #[arg(long, default_value_t = 8)]
    clusters: usize,
    /// ConfigMaps per cluster.
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Rounds; each runs every peer once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Updates per second during each peer's update phase (P3).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long the update phase lasts, in seconds.
    #[arg(long, default_value_t = 30)]
    update_secs: u64,
    /// Concurrent reconciles for the controllers.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Peers to run, in the first round's order.
    #[arg(long, value_delimiter = ',', default_value = "rust,go,floor")]
    peers: Vec<String>,
    /// Directory with the `rust-peer` and `floor-peer` binaries (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The Go peer's binary.
    #[arg(long)]
    go_peer: Option<PathBuf>,
    /// Where to write the Markdown results (default: only print them).
    #[arg(long)]
    out: Option<PathBuf>,
    /// P6 instead of P1–P3: this many namespaces-as-clusters on one apiserver, each
    /// with `--objects` ConfigMaps, for the Rust peer (shared clients) and the Go
    /// peer (its namespace provider).
    #[arg(long)]
    namespace_clusters: Option<usize>,
    /// P6: also run the Rust peer with a client per namespace.
    #[arg(long)]
    per_namespace: bool,
    /// P4 instead of P1–P3: a host apiserver and `--clusters` target apiservers
    /// with `--objects` ConfigMaps each; this many kubeconfig Secrets, one after
    /// another, each naming one target (round-robin), created in the host while a
    /// peer runs its Secret provider.
    #[arg(long)]
    engage_secrets: Option<usize>,
    /// P4: the pause between two Secrets, in milliseconds.
    #[arg(long, default_value_t = 100)]
    engage_interval_ms: u64,
    /// P5 instead of P1–P3: two apiservers, this many ConfigMaps in cluster A (the
    /// backlog) and `--fair-probes` in cluster B; once a twentieth of the backlog is
    /// reconciled, the probes in B are written, one after another, and their wait
    /// (write → reconcile) is measured.
    #[arg(long)]
    fair_backlog: Option<usize>,
    /// P5: probes written in cluster B.
    #[arg(long, default_value_t = 5)]
    fair_probes: usize,
    /// P5: the pause between two probes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    fair_interval_ms: u64,
    /// w05 instead of P1–P3: creates of ConfigMaps at this rate (per second, spread
    /// over `--clusters` apiservers), alternately with and without a validating
    /// webhook served by this library, in `--rounds` rounds; runs no peer.
    #[arg(long)]
    webhook_rate: Option<u32>,
    /// w05: how long each phase sends creates, in seconds.
    #[arg(long, alias = "seconds", default_value_t = 30)]
    webhook_secs: u64,
    /// The artificial cost of each reconcile in both peers, in milliseconds (P5
    /// defaults to 2; other modes to 0).
    #[arg(long)]
    reconcile_sleep_ms: Option<u64>,
    /// Run the Rust peer without the manager's health probes (`--no-health-probes`).
    #[arg(long)]
    no_health_probes: bool,
    /// Run the Rust peer with its ConfigMaps in the compact stored form
    /// (`--compact-cache`: `CacheOptions::compact::<ConfigMap>()`).
    #[arg(long)]
    compact_cache: bool,
    /// P1–P3 under contention: this many threads of the driver spin on the CPUs for
    /// the whole of each peer run (its start, its updates), competing with the peer
    /// and the apiservers. `0`: none.
    #[arg(long, default_value_t = 0)]
    saturate: usize,
    /// How long a peer may take before the run fails, in seconds (plus the update
    /// phase).
    #[arg(long, default_value_t = 240)]
    peer_timeout: u64,
    /// The command line to record in the results.
    #[arg(long, default_value = "bench/run")]
    command: String,
}

impl Args {
    fn apply_quick(&mut self) {
        if self.quick {
            (self.clusters, self.objects, self.rounds, self.update_secs) = (4, 250, 1, 3);
        }
    }

    fn updates(&self) -> usize {
        self.rate as usize * self.update_secs as usize
    }

    /// The peers of a P4, P5 or P6 run: those of `--peers` that have the provider
    /// or the queue the workload measures (not the floor).
    fn controller_peers(&self) -> Vec<String> {
        self.peers.iter().filter(|p| *p != "floor").cloned().collect()
    }

    /// The peer arguments every mode passes: the reconcile cost, if any.
    fn sleep_args(&self, default_ms: u64) -> Vec<String> {
        match self.reconcile_sleep_ms.unwrap_or(default_ms) {
            0 => Vec::new(),
            ms => vec!["--reconcile-sleep".into(), format!("{ms}ms")],
        }
    }
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    args.apply_quick();
    if let Err(message) = run(args).await {
        eprintln!("bench-driver: {message}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(namespaces) = args.namespace_clusters {
        return namespace_scale(&args, namespaces).await;
    }
    if let Some(secrets) = args.engage_secrets {
        return engage_latency(&args, secrets).await;
    }
    if let Some(backlog) = args.fair_backlog {
        return fairness(&args, backlog).await;
    }
    if let Some(rate) = args.webhook_rate {
        return webhook::webhook_latency(&args, rate).await;
    }
    let total = args.clusters * args.objects;
    if args.updates() > total {
        return Err(format!(
            "{} updates would touch some of the {total} objects twice; lower --rate or --update-secs",
            args.updates()
        ));
    }
    let binaries = peer_binaries(&args)?;
    eprintln!("starting {} clusters ...", args.clusters);
    let started = Instant::now();
    let (fleet, kubeconfigs) = start_fleet(args.clusters).await?;
    eprintln!(
        "fleet ready in {:.1} s; seeding {total} ConfigMaps ...",
        started.elapsed().as_secs_f64()
    );
    let clients: Vec<kube::Client> = fleet
        .clusters()
        .iter()
        .map(|c| c.client().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let seeding = Instant::now();
    futures::future::try_join_all(clients.iter().map(|client| seed(client.clone(), args.objects))).await?;
    eprintln!("seeded in {:.1} s", seeding.elapsed().as_secs_f64());

    let mut results: Vec<Run> = Vec::new();
    for round in 0..args.rounds {
        let mut order = args.peers.clone();
        let turn = round % order.len().max(1);
        order.rotate_left(turn);
        for peer in &order {
            let binary = binaries
                .get(peer.as_str())
                .ok_or_else(|| format!("unknown peer {peer:?} (rust, go, floor)"))?;
            let load_before = load_average();
            let burner = Burner::start(args.saturate);
            let report = run_peer(peer, binary, kubeconfigs.path(), &args, &clients).await;
            drop(burner);
            let report = report?;
            let load_after = load_average();
            eprintln!(
                "round {} {peer:<5} all reconciled in {:.2} s, VmHWM {:.1} MiB, p50/p99/max {:.1}/{:.1}/{:.1} ms, load {load_before}→{load_after}",
                round + 1,
                report.time_to_all_s,
                mib(report.vmhwm_synced_kib),
                report.lat_p50_ms,
                report.lat_p99_ms,
                report.lat_max_ms
            );
            results.push(Run {
                round: round + 1,
                report,
                load: (load_before, load_after),
            });
        }
    }
    let mut markdown = render(&args, &results);
    if args.quick && args.clusters > 1 {
        // A smoke test of P4 and P5 on the same fleet (cluster 0 the host or A):
        // one Secret per other cluster; the quick fleet's objects as the backlog.
        let quick = Args {
            rounds: 1,
            fair_probes: 1,
            ..args.clone()
        };
        let peers = Args {
            peers: quick.controller_peers(),
            ..quick.clone()
        };
        let binaries = peer_binaries(&peers)?;
        let engage = engage_rounds(&peers, &binaries, &fleet, args.clusters - 1).await?;
        markdown += &format!(
            "\n## P4 (quick)\n\n{}",
            render_engage(&peers, args.clusters - 1, args.clusters - 1, &engage)
        );
        let fair = fair_rounds(
            &peers,
            &binaries,
            kubeconfigs.path(),
            clients[1].clone(),
            total,
            args.objects,
        )
        .await?;
        let setting = format!(
            "the fleet's {total} ConfigMaps queued at start; the probe is one of cluster 1's (a smoke test: the backlog is spread over all clusters)"
        );
        markdown += &format!(
            "\n## P5 (quick)\n\n{}",
            render_fairness(&peers, &setting, args.objects, 1, &fair)
        );
        // w05 as a smoke test: a low rate for two seconds per phase, one round.
        let (rate, secs) = (20, 2);
        let phases = webhook::webhook_rounds(&quick, &fleet, rate, secs).await?;
        markdown += &format!(
            "\n## w05 (quick)\n\n{}",
            webhook::render_webhook(&quick, args.clusters, rate, secs, &phases)
        );
    }
    drop(fleet);
    publish(&args, &markdown)
}

/// The first lines of every report: the command, the date and the machine.
fn report_header(args: &Args) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    let _ = writeln!(md, "- command: `{}`", args.command);
    let _ = writeln!(md, "- date: {}", date());
    let _ = writeln!(md, "- machine: {}", machine());
    if args.compact_cache {
        let _ = writeln!(
            md,
            "- the Rust peer kept its ConfigMaps in the compact stored form (`--compact-cache`: `CacheOptions::compact::<ConfigMap>()`)"
        );
    }
    md
}

/// Starts `clusters` apiservers (two at a time: the machine may have two cores) and
/// writes one kubeconfig per cluster into a temporary directory, the peers' input.
async fn start_fleet(clusters: usize) -> Result<(kube_envtest::Fleet, tempfile::TempDir), String> {
    let fleet = kube_envtest::Fleet::builder()
        .clusters(clusters)
        .parallelism(2)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let kubeconfigs = tempfile::tempdir().map_err(|e| e.to_string())?;
    fleet
        .write_kubeconfigs(kubeconfigs.path())
        .map_err(|e| e.to_string())?;
    Ok((fleet, kubeconfigs))
}

/// Prints the results and writes them to `--out`, if given.
fn publish(args: &Args, markdown: &str) -> Result<(), String> {
    println!("{markdown}");
    if let Some(out) = &args.out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(out, markdown).map_err(|e| format!("{}: {e}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// One run of a P4, P5 or P6 mode: which peer, how it was set up, its report and
/// the load average around it.
struct ModeRun {
    round: usize,
    /// `rust`, `go`, or `rust per-namespace` (P6).
    label: String,
    report: Report,
    load: (String, String),
}

/// A metric of a mode's report, with its column label.
type Metric = (&'static str, Box<dyn Fn(&Report) -> f64>);

/// Runs `modes` (label, peer, extra arguments) for `args.rounds` rounds, the order
/// rotating each round; `start` runs one of them and returns its report.
async fn run_modes<'a, F, Fut>(
    args: &Args,
    modes: &'a [(String, String, Vec<String>)],
    mut start: F,
) -> Result<Vec<ModeRun>, String>
where
    F: FnMut(&'a str, &'a [String]) -> Fut,
    Fut: std::future::Future<Output = Result<Report, String>>,
{
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        let mut order: Vec<&(String, String, Vec<String>)> = modes.iter().collect();
        let turn = round % order.len().max(1);
        order.rotate_left(turn);
        for (label, peer, extra) in order {
            let load_before = load_average();
            let report = start(peer, extra).await?;
            let load_after = load_average();
            eprintln!(
                "round {} {label:<20} all in {:.2} s, VmHWM {:.1} MiB, wait p50/max {:.1}/{:.1} ms, engage p50/max {:.1}/{:.1} ms, load {load_before}→{load_after}",
                round + 1,
                report.time_to_all_s,
                mib(report.vmhwm_synced_kib),
                report.lat_p50_ms,
                report.lat_max_ms,
                report.engage_p50_ms,
                report.engage_max_ms,
            );
            runs.push(ModeRun {
                round: round + 1,
                label: label.clone(),
                report,
                load: (load_before, load_after),
            });
        }
    }
    Ok(runs)
}

/// A mode's results as Markdown: medians per label with the Rust/Go ratio, then
/// every run with the load average around it.
fn render_modes(header: &str, runs: &[ModeRun], metrics: &[Metric]) -> String {
    use std::fmt::Write;
    let mut labels: Vec<&str> = Vec::new();
    for run in runs {
        if !labels.contains(&run.label.as_str()) {
            labels.push(&run.label);
        }
    }
    labels.sort_unstable();
    let med = |label: &str, f: &dyn Fn(&Report) -> f64| {
        median(
            runs.iter()
                .filter(|r| r.label == label)
                .map(|r| f(&r.report))
                .collect(),
        )
    };
    let mut md = header.to_owned();
    let _ = writeln!(md, "\nMedians over the rounds:\n");
    let _ = writeln!(md, "| metric | {} | rust/go |", labels.join(" | "));
    let _ = writeln!(md, "|---|{}---:|", "---:|".repeat(labels.len()));
    for (name, f) in metrics {
        let cells: Vec<String> = labels
            .iter()
            .map(|label| med(label, f.as_ref()).map_or("–".into(), |v| format!("{v:.2}")))
            .collect();
        let ratio = match (med("rust", f.as_ref()), med("go", f.as_ref())) {
            (Some(rust), Some(go)) if go > 0.0 => format!("{:.4}", rust / go),
            _ => "–".into(),
        };
        let _ = writeln!(md, "| {name} | {} | {ratio} |", cells.join(" | "));
    }
    let _ = writeln!(md, "\nEvery run:\n");
    let names: Vec<&str> = metrics.iter().map(|(name, _)| *name).collect();
    let _ = writeln!(
        md,
        "| round | peer | clusters | {} | load before→after |",
        names.join(" | ")
    );
    let _ = writeln!(md, "|---:|---|---:|{}---|", "---:|".repeat(names.len()));
    for run in runs {
        let cells: Vec<String> = metrics
            .iter()
            .map(|(_, f)| format!("{:.2}", f(&run.report)))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}→{} |",
            run.round,
            run.label,
            run.report.clusters,
            cells.join(" | "),
            run.load.0,
            run.load.1
        );
    }
    md
}

/// P6: `namespaces` labelled namespaces of one apiserver, each with `--objects`
/// ConfigMaps, reconciled as namespace-clusters by the Rust peer (shared clients;
/// with `--per-namespace` also a client each) and by the Go peer (Go's namespace
/// provider).
async fn namespace_scale(args: &Args, namespaces: usize) -> Result<(), String> {
    use std::fmt::Write;
    let peers = args.controller_peers();
    let binaries = peer_binaries(&Args {
        peers: peers.clone(),
        ..args.clone()
    })?;
    let (fleet, kubeconfigs) = start_fleet(1).await?;
    let client = fleet.cluster(0).client().map_err(|e| e.to_string())?;
    let seeding = Instant::now();
    eprintln!(
        "creating {namespaces} namespaces × {} ConfigMaps ...",
        args.objects
    );
    futures::stream::iter(0..namespaces)
        .map(|index| seed_namespace(client.clone(), format!("ns-{index:05}"), args.objects))
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    eprintln!("seeded in {:.1} s", seeding.elapsed().as_secs_f64());
    let expected = namespaces * args.objects;
    let mut modes: Vec<(String, String, Vec<String>)> = Vec::new();
    for peer in &peers {
        let shared = vec!["--namespaces-as-clusters".to_owned(), "shared".to_owned()];
        modes.push((peer.clone(), peer.clone(), shared));
        if peer == "rust" && args.per_namespace {
            let own = vec!["--namespaces-as-clusters".to_owned(), "per-namespace".to_owned()];
            modes.push(("rust per-namespace".into(), peer.clone(), own));
        }
    }
    let runs = run_modes(args, &modes, |peer, extra| {
        let run = PeerRun {
            peer,
            binary: &binaries[peer],
            kubeconfigs: kubeconfigs.path(),
            expected,
            updates: 0,
            extra: extra.iter().cloned().chain(args.sleep_args(0)).collect(),
        };
        async move { run.run(args, async { Ok(()) }).await }
    })
    .await?;
    drop(fleet);
    let mut header = report_header(args);
    let _ = writeln!(
        header,
        "- one apiserver, {namespaces} labelled namespaces × {} ConfigMaps = {expected} objects; {} round(s), order rotating; concurrency {}",
        args.objects, args.rounds, args.concurrency
    );
    let _ = writeln!(
        header,
        "- rust: `Namespaces::new` (clients shared with the host){}; go: `providers/namespace` (engages every namespace, the 4 system ones too); \
         clusters = namespace-clusters engaged (rust counts the manager's own cluster too)",
        if args.per_namespace {
            ", and `Namespaces::with_config` (a client each)"
        } else {
            ""
        }
    );
    if args.no_health_probes {
        let _ = writeln!(
            header,
            "- the Rust peer ran without the manager's health probes (`--no-health-probes`)"
        );
    }
    let _ = writeln!(
        header,
        "- KiB per namespace = peak RSS (VmHWM) when every object was reconciled ÷ {namespaces}"
    );
    let metrics: [Metric; 3] = [
        ("all engaged and reconciled (s)", Box::new(|r| r.time_to_all_s)),
        ("peak RSS at sync (MiB)", Box::new(|r| mib(r.vmhwm_synced_kib))),
        (
            "KiB per namespace",
            Box::new(move |r| r.vmhwm_synced_kib as f64 / namespaces.max(1) as f64),
        ),
    ];
    publish(args, &render_modes(&header, &runs, &metrics))
}

/// The namespace of the host that holds the kubeconfig Secrets (P4).
const SECRETS_NAMESPACE: &str = "bench-secrets";

/// P4: a host and `--clusters` target apiservers with `--objects` ConfigMaps each.
/// For each peer run, the driver deletes the kubeconfig Secrets, starts the peer on
/// the host's kubeconfig with its Secret provider, waits until the provider has
/// listed the (no) Secrets and one more second, then creates `secrets` Secrets one
/// after another, `--engage-interval-ms` apart, each stamped with its write time
/// and naming one target round-robin. The peer reports, per cluster, Secret written
/// → first reconcile of an object in it.
async fn engage_latency(args: &Args, secrets: usize) -> Result<(), String> {
    let peers = args.controller_peers();
    let binaries = peer_binaries(&Args {
        peers: peers.clone(),
        ..args.clone()
    })?;
    let targets = args.clusters.max(1);
    eprintln!("starting a host and {targets} target clusters ...");
    let (fleet, _) = start_fleet(1 + targets).await?;
    let target_clients: Vec<kube::Client> = fleet.clusters()[1..]
        .iter()
        .map(|c| c.client().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    futures::future::try_join_all(target_clients.iter().map(|c| seed(c.clone(), args.objects))).await?;
    let runs = engage_rounds(args, &binaries, &fleet, secrets).await?;
    drop(fleet);
    let md = report_header(args) + &render_engage(args, targets, secrets, &runs);
    publish(args, &md)
}

/// The P4 rounds on `fleet`: cluster 0 is the host, the others (seeded) the
/// targets of the `secrets` Secrets.
async fn engage_rounds(
    args: &Args,
    binaries: &BTreeMap<&'static str, PathBuf>,
    fleet: &kube_envtest::Fleet,
    secrets: usize,
) -> Result<Vec<ModeRun>, String> {
    // The peers see the host only; the targets come from the Secrets.
    let host_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::copy(
        fleet.cluster(0).kubeconfig_path(),
        host_dir.path().join("host.kubeconfig"),
    )
    .map_err(|e| e.to_string())?;
    let host = fleet.cluster(0).client().map_err(|e| e.to_string())?;
    create_namespace(host.clone(), SECRETS_NAMESPACE).await?;
    let kubeconfigs: Vec<kube::config::Kubeconfig> = fleet.clusters()[1..]
        .iter()
        .map(|c| c.kubeconfig().clone())
        .collect();
    if kubeconfigs.is_empty() {
        return Err("P4 needs at least one target cluster besides the host".into());
    }
    let secrets_api: Api<Secret> = Api::namespaced(host, SECRETS_NAMESPACE);
    let modes: Vec<(String, String, Vec<String>)> = args
        .controller_peers()
        .iter()
        .map(|peer| (peer.clone(), peer.clone(), Vec::new()))
        .collect();
    let expected = secrets * args.objects;
    let runs = run_modes(args, &modes, |peer, _| {
        let run = PeerRun {
            peer,
            binary: &binaries[peer],
            kubeconfigs: host_dir.path(),
            expected,
            updates: 0,
            extra: ["--kubeconfig-secrets", SECRETS_NAMESPACE, "--ready-after", "0"]
                .map(str::to_owned)
                .into_iter()
                .chain(args.sleep_args(0))
                .collect(),
        };
        let (api, kubeconfigs) = (secrets_api.clone(), &kubeconfigs);
        async move {
            delete_kubeconfig_secrets(&api).await?;
            let driving = async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for index in 0..secrets {
                    let name = format!("engage-{index:04}");
                    let mut secret = multicluster_runtime::providers::secret::kubeconfig_secret(
                        &name,
                        SECRETS_NAMESPACE,
                        &kubeconfigs[index % kubeconfigs.len()],
                    );
                    let stamp = mcr_bench::nanos(SystemTime::now()).to_string();
                    secret.metadata.annotations = Some([(WRITTEN_AT.to_owned(), stamp)].into());
                    api.create(&PostParams::default(), &secret)
                        .await
                        .map_err(|e| format!("creating Secret {name}: {e}"))?;
                    tokio::time::sleep(Duration::from_millis(args.engage_interval_ms)).await;
                }
                Ok(())
            };
            let report = run.run(args, driving).await?;
            if report.engaged != secrets {
                return Err(format!(
                    "the {peer} peer timed {} of {secrets} engagements",
                    report.engaged
                ));
            }
            Ok(report)
        }
    })
    .await?;
    delete_kubeconfig_secrets(&secrets_api).await?;
    Ok(runs)
}

/// The P4 results as Markdown (without the command, date and machine lines).
fn render_engage(args: &Args, targets: usize, secrets: usize, runs: &[ModeRun]) -> String {
    use std::fmt::Write;
    let mut header = String::new();
    let _ = writeln!(
        header,
        "- P4: a host and {targets} target apiservers × {} ConfigMaps; {secrets} kubeconfig Secrets, {} ms apart, round-robin over the targets (each Secret its own cluster); {} round(s), order rotating; concurrency {}",
        args.objects, args.engage_interval_ms, args.rounds, args.concurrency
    );
    let _ = writeln!(
        header,
        "- rust: `providers::secret::Secrets`; go: `providers/kubeconfig` of multicluster-runtime v0.24.1; engage latency = Secret stamped and created → first reconcile of an object in its cluster"
    );
    let metrics: [Metric; 3] = [
        ("engage latency p50 (ms)", Box::new(|r| r.engage_p50_ms)),
        ("engage latency max (ms)", Box::new(|r| r.engage_max_ms)),
        ("peak RSS (MiB)", Box::new(|r| mib(r.vmhwm_kib))),
    ];
    render_modes(&header, runs, &metrics)
}

/// Deletes every kubeconfig Secret of the benchmark and waits until none is left.
async fn delete_kubeconfig_secrets(api: &Api<Secret>) -> Result<(), String> {
    let selector = ListParams::default().labels(&format!(
        "{}={}",
        multicluster_runtime::providers::secret::DEFAULT_LABEL_KEY,
        multicluster_runtime::providers::secret::DEFAULT_LABEL_VALUE
    ));
    api.delete_collection(&DeleteParams::default(), &selector)
        .await
        .map_err(|e| format!("deleting the kubeconfig Secrets: {e}"))?;
    for _ in 0..100 {
        let left = api
            .list(&selector)
            .await
            .map_err(|e| format!("listing the kubeconfig Secrets: {e}"))?;
        if left.items.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the kubeconfig Secrets were not deleted in 10 s".into())
}

/// P5: cluster A with `backlog` ConfigMaps, cluster B with `--fair-probes`. Each
/// peer reconciles with the same concurrency and the same sleep in each reconcile;
/// once it has reconciled a twentieth of the objects (the rest of A is still
/// queued), the driver writes the probes in B one after another, each stamped, and
/// the peer reports their wait (write → reconcile) as its update latency.
async fn fairness(args: &Args, backlog: usize) -> Result<(), String> {
    let peers = args.controller_peers();
    let binaries = peer_binaries(&Args {
        peers: peers.clone(),
        ..args.clone()
    })?;
    let probes = args.fair_probes.max(1);
    eprintln!("starting clusters A and B ...");
    let (fleet, kubeconfigs) = start_fleet(2).await?;
    let a = fleet.cluster(0).client().map_err(|e| e.to_string())?;
    let b = fleet.cluster(1).client().map_err(|e| e.to_string())?;
    let seeding = Instant::now();
    eprintln!("seeding {backlog} ConfigMaps in A and {probes} in B ...");
    futures::future::try_join(seed(a, backlog), seed(b.clone(), probes)).await?;
    eprintln!("seeded in {:.1} s", seeding.elapsed().as_secs_f64());
    let runs = fair_rounds(args, &binaries, kubeconfigs.path(), b, backlog + probes, backlog).await?;
    drop(fleet);
    let setting = format!("cluster A: {backlog} ConfigMaps (the backlog); cluster B: {probes}, the probes");
    let md = report_header(args) + &render_fairness(args, &setting, backlog, probes, &runs);
    publish(args, &md)
}

/// The P5 rounds on the fleet of `kubeconfigs` with `expected` objects in all;
/// `backlog` of them in cluster A, the probes in the cluster of `b`.
async fn fair_rounds(
    args: &Args,
    binaries: &BTreeMap<&'static str, PathBuf>,
    kubeconfigs: &Path,
    b: kube::Client,
    expected: usize,
    backlog: usize,
) -> Result<Vec<ModeRun>, String> {
    let probes = args.fair_probes.max(1);
    let ready_after = (backlog / 20).max(1);
    let extra: Vec<String> = ["--ready-after".to_owned(), ready_after.to_string()]
        .into_iter()
        .chain(args.sleep_args(2))
        .collect();
    let modes: Vec<(String, String, Vec<String>)> = args
        .controller_peers()
        .iter()
        .map(|peer| (peer.clone(), peer.clone(), extra.clone()))
        .collect();
    let b_api: Api<ConfigMap> = Api::namespaced(b, NAMESPACE);
    run_modes(args, &modes, |peer, extra| {
        let run = PeerRun {
            peer,
            binary: &binaries[peer],
            kubeconfigs,
            expected,
            updates: probes,
            extra: extra.to_vec(),
        };
        let api = b_api.clone();
        async move {
            let driving = async {
                for index in 0..probes {
                    let name = object_name(index);
                    let stamp = mcr_bench::nanos(SystemTime::now()).to_string();
                    let patch = serde_json::json!({ "metadata": { "annotations": { WRITTEN_AT: stamp } } });
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| format!("updating {name} in B: {e}"))?;
                    tokio::time::sleep(Duration::from_millis(args.fair_interval_ms)).await;
                }
                Ok(())
            };
            run.run(args, driving).await
        }
    })
    .await
}

/// The P5 results as Markdown (without the command, date and machine lines).
fn render_fairness(args: &Args, setting: &str, backlog: usize, probes: usize, runs: &[ModeRun]) -> String {
    use std::fmt::Write;
    let mut header = String::new();
    let _ = writeln!(
        header,
        "- P5: {setting}; {} round(s), order rotating",
        args.rounds
    );
    let _ = writeln!(
        header,
        "- both peers: concurrency {}, every reconcile sleeps {} ms; once {} objects are reconciled, {probes} probes in B are written {} ms apart",
        args.concurrency,
        args.reconcile_sleep_ms.unwrap_or(2),
        (backlog / 20).max(1),
        args.fair_interval_ms
    );
    let _ = writeln!(
        header,
        "- wait = probe written → reconciled; all reconciled = process start → every object reconciled"
    );
    let metrics: [Metric; 3] = [
        ("probe wait p50 (ms)", Box::new(|r| r.lat_p50_ms)),
        ("probe wait max (ms)", Box::new(|r| r.lat_max_ms)),
        ("all reconciled (s)", Box::new(|r| r.time_to_all_s)),
    ];
    render_modes(&header, runs, &metrics)
}

/// Creates namespace `name` (an existing one is fine).
async fn create_namespace(client: kube::Client, name: &str) -> Result<(), String> {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    match Api::<Namespace>::all(client)
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(format!("creating namespace {name}: {error}")),
    }
}

/// Creates the labelled namespace `name` with `objects` labelled ConfigMaps.
async fn seed_namespace(client: kube::Client, name: String, objects: usize) -> Result<(), String> {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    ns.metadata.labels = Some([(MEMBER_LABEL.to_owned(), "yes".to_owned())].into());
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(format!("creating namespace {name}: {error}")),
    }
    seed_configmaps(Api::namespaced(client, &name), objects, 1).await
}

/// One peer's run in one round.
struct Run {
    round: usize,
    report: Report,
    load: (String, String),
}

fn peer_binaries(args: &Args) -> Result<BTreeMap<&'static str, PathBuf>, String> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let mut binaries = BTreeMap::from([
        ("rust", bin_dir.join("rust-peer")),
        ("floor", bin_dir.join("floor-peer")),
    ]);
    if let Some(go) = &args.go_peer {
        binaries.insert("go", go.clone());
    }
    for peer in &args.peers {
        match binaries.get(peer.as_str()) {
            Some(path) if path.is_file() => {}
            Some(path) => return Err(format!("the {peer} peer is not at {}", path.display())),
            None if peer == "go" => return Err("the go peer needs --go-peer PATH".into()),
            None => return Err(format!("unknown peer {peer:?} (rust, go, floor)")),
        }
    }
    Ok(binaries)
}

/// Creates the namespace and `objects` labelled ConfigMaps in one cluster (existing
/// ones are kept, so a re-run on a live fleet is fine).
async fn seed(client: kube::Client, objects: usize) -> Result<(), String> {
    create_namespace(client.clone(), NAMESPACE).await?;
    seed_configmaps(Api::namespaced(client, NAMESPACE), objects, 16).await
}

/// Creates `objects` labelled ConfigMaps through `api`, `parallel` at a time.
async fn seed_configmaps(api: Api<ConfigMap>, objects: usize, parallel: usize) -> Result<(), String> {
    futures::stream::iter(0..objects)
        .map(|index| {
            let api = api.clone();
            async move {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(object_name(index));
                cm.metadata.labels = Some([(MEMBER_LABEL.to_owned(), "yes".to_owned())].into());
                cm.data = Some([("index".to_owned(), index.to_string())].into());
                match api.create(&PostParams::default(), &cm).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                    Err(error) => Err(format!("creating ConfigMap {index}: {error}")),
                }
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await
}

fn object_name(index: usize) -> String {
    format!("cm-{index:06}")
}

/// Runs one peer of P1–P3 to the end: waits for its ready file, drives the
/// updates, and reads its JSON line. A peer that fails, times out or misses an
/// object or update is an error.
async fn run_peer(
    peer: &str,
    binary: &Path,
    kubeconfigs: &Path,
    args: &Args,
    clients: &[kube::Client],
) -> Result<Report, String> {
    let run = PeerRun {
        peer,
        binary,
        kubeconfigs,
        expected: args.clusters * args.objects,
        updates: args.updates(),
        extra: args.sleep_args(0),
    };
    run.run(args, async {
        if args.updates() > 0 {
            drive_updates(clients, args).await?;
        }
        Ok(())
    })
    .await
}

/// One start of one peer.
struct PeerRun<'a> {
    peer: &'a str,
    binary: &'a Path,
    kubeconfigs: &'a Path,
    /// Objects the peer must reconcile.
    expected: usize,
    /// Updates it must see.
    updates: usize,
    /// Further peer arguments.
    extra: Vec<String>,
}

impl PeerRun<'_> {
    /// Starts the peer, waits for its ready file, runs `driving` (the writes of the
    /// workload), waits for the peer to exit and reads its JSON line. A peer that
    /// fails, times out or misses an object or update is an error.
    async fn run(
        &self,
        args: &Args,
        driving: impl std::future::Future<Output = Result<(), String>>,
    ) -> Result<Report, String> {
        let peer = self.peer;
        let ready = tempfile::NamedTempFile::new()
            .map_err(|e| e.to_string())?
            .into_temp_path();
        std::fs::remove_file(&ready).map_err(|e| e.to_string())?;
        let timeout = Duration::from_secs(args.peer_timeout + args.update_secs);
        let mut child = tokio::process::Command::new(self.binary)
            .arg("--kubeconfigs")
            .arg(self.kubeconfigs)
            .args(["--expected", &self.expected.to_string()])
            .args(["--selector", &format!("{MEMBER_LABEL}=yes")])
            .args(["--concurrency", &args.concurrency.to_string()])
            .args(["--updates", &self.updates.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .args(["--timeout", &format!("{}s", timeout.as_secs())])
            .args(&self.extra)
            .args((args.no_health_probes && peer == "rust").then_some("--no-health-probes"))
            .args((args.compact_cache && peer == "rust").then_some("--compact-cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the {peer} peer ({}): {e}", self.binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let reading = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut last = None;
            while let Ok(Some(line)) = lines.next_line().await {
                last = Some(line);
            }
            last
        });
        let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(30);
        // Wait for the peer to be ready (or an early exit).
        loop {
            if ready.exists() {
                break;
            }
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let line = reading.await.ok().flatten().unwrap_or_default();
                return Err(format!(
                    "the {peer} peer exited ({status}) before it was ready: {line}"
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the {peer} peer was not ready in {} s",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        driving.await?;
        let status = tokio::time::timeout_at(deadline, child.wait())
            .await
            .map_err(|_| format!("the {peer} peer did not finish in time"))?
            .map_err(|e| e.to_string())?;
        let line = reading.await.ok().flatten().unwrap_or_default();
        let report: Report = serde_json::from_str(&line)
            .map_err(|e| format!("the {peer} peer ({status}) printed no report ({e}): {line:?}"))?;
        if !status.success() || !report.complete {
            return Err(format!("the {peer} peer failed ({status}): {line}"));
        }
        Ok(report)
    }
}

/// Patches `rate` distinct ConfigMaps a second for `update_secs`, round-robin over
/// the clusters; each patch stamps [`WRITTEN_AT`] with the time it is sent.
async fn drive_updates(clients: &[kube::Client], args: &Args) -> Result<(), String> {
    let apis: Arc<Vec<Api<ConfigMap>>> = Arc::new(
        clients
            .iter()
            .map(|c| Api::namespaced(c.clone(), NAMESPACE))
            .collect(),
    );
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / args.rate);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.updates() {
        ticks.tick().await;
        let apis = apis.clone();
        let api_index = index % apis.len();
        let name = object_name(index / apis.len());
        tasks.spawn(async move {
            let stamp = mcr_bench::nanos(SystemTime::now()).to_string();
            let patch = serde_json::json!({ "metadata": { "annotations": { WRITTEN_AT: stamp } } });
            apis[api_index]
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
                .map_err(|e| format!("updating {name}: {e}"))
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Threads that keep the CPUs busy until dropped (`--saturate`).
struct Burner {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burner {
    fn start(threads: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // Work the optimizer cannot drop.
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                })
            })
            .collect();
        Burner { stop, threads }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0);
    format!(
        "{cores} cores, {:.0} GiB memory",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The results as Markdown: the setting, medians with ratios, then every run.
fn render(args: &Args, runs: &[Run]) -> String {
    use std::fmt::Write;
    type Metric = (&'static str, fn(&Report) -> f64);
    let metrics: [Metric; 8] = [
        ("P1 time to all reconciled (s)", |r| r.time_to_all_s),
        ("P2 peak RSS at sync (MiB)", |r| mib(r.vmhwm_synced_kib)),
        ("P2 peak RSS at exit (MiB)", |r| mib(r.vmhwm_kib)),
        ("P3 update latency p50 (ms)", |r| r.lat_p50_ms),
        ("P3 update latency p99 (ms)", |r| r.lat_p99_ms),
        ("P3 update latency max (ms)", |r| r.lat_max_ms),
        ("P3 stage: write → informer event p50 (ms, rust only)", |r| {
            r.stage_p50_ms
        }),
        ("P3 stage: write → informer event p99 (ms, rust only)", |r| {
            r.stage_p99_ms
        }),
    ];
    let med = |peer: &str, f: fn(&Report) -> f64| {
        median(
            runs.iter()
                .filter(|r| r.report.peer == peer)
                .map(|r| f(&r.report))
                // 0: not measured by this peer (the stage rows).
                .filter(|v| *v > 0.0)
                .collect(),
        )
    };
    let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".to_owned(),
    };
    let mut md = report_header(args);
    let _ = writeln!(
        md,
        "- fleet: {} clusters × {} ConfigMaps = {} objects; {} round(s), peer order rotating; concurrency {}",
        args.clusters,
        args.objects,
        args.clusters * args.objects,
        args.rounds,
        args.concurrency
    );
    let _ = writeln!(
        md,
        "- updates: {}/s for {} s = {} per peer run, each on a distinct object",
        args.rate,
        args.update_secs,
        args.updates()
    );
    if args.saturate > 0 {
        let _ = writeln!(
            md,
            "- contention: {} threads of the driver spin on the CPUs during each peer run (`--saturate`)",
            args.saturate
        );
    }
    let _ = writeln!(md, "\nMedians over the rounds:\n");
    let _ = writeln!(md, "| metric | rust | go | floor | rust/go | rust/floor |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for (label, f) in metrics {
        let (rust, go, floor) = (med("rust", f), med("go", f), med("floor", f));
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(rust),
            cell(go),
            cell(floor),
            ratio(rust, go),
            ratio(rust, floor)
        );
    }
    let above = |peer: &str| {
        let synced = |r: &Report| mib(r.vmhwm_synced_kib);
        Some(med(peer, synced)? - med("floor", synced)?)
    };
    let _ = writeln!(
        md,
        "\nPeak RSS at sync above the floor: rust {} MiB, go {} MiB, ratio rust/go {}.",
        cell(above("rust")),
        cell(above("go")),
        ratio(above("rust"), above("go"))
    );
    let _ = writeln!(md, "\nEvery run:\n");
    let _ = writeln!(
        md,
        "| round | peer | P1 s | RSS sync MiB | RSS exit MiB | p50 ms | p99 ms | max ms | informer event p99 ms | updates seen | load before→after |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for run in runs {
        let r = &run.report;
        let stage = if r.stage_p99_ms > 0.0 {
            format!("{:.1}", r.stage_p99_ms)
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {stage} | {}/{} | {}→{} |",
            run.round,
            r.peer,
            r.time_to_all_s,
            mib(r.vmhwm_synced_kib),
            mib(r.vmhwm_kib),
            r.lat_p50_ms,
            r.lat_p99_ms,
            r.lat_max_ms,
            r.updates_seen,
            r.updates,
            run.load.0,
            run.load.1
        );
    }
    md
}
