//! Shared pieces of the benchmark peers and driver in `bench/` (see `bench/README.md`).
//!
//! Every peer — the Rust one on this library, the floor (a bare kube `watcher` per
//! cluster) and the Go one on `sigs.k8s.io/multicluster-runtime` — takes the same
//! [`PeerArgs`], counts each labelled ConfigMap of the fleet once, measures the
//! write→reconcile latency of the driver's updates, and prints one [`Report`] as a
//! JSON line. The Go peer mirrors these names and fields in `bench/go-peer/main.go`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The annotation each update of the driver carries: its write time in Unix
/// nanoseconds.
pub const WRITTEN_AT: &str = "bench.multicluster-runtime.rs/written-at";

/// The label that marks the benchmark's ConfigMaps (and, for P6, its namespaces).
pub const MEMBER_LABEL: &str = "bench.multicluster-runtime.rs/member";

/// When the peer started, for [`mark`].
static STARTED: std::sync::OnceLock<(Instant, bool)> = std::sync::OnceLock::new();

/// Prints `timeline <ms since start> <what>` to stderr when the environment sets
/// `MCR_BENCH_TIMELINE` (any value): where a peer's time to all reconciled goes.
pub fn mark(what: impl std::fmt::Display) {
    if let Some((start, true)) = STARTED.get() {
        eprintln!("timeline {:8.1} {what}", start.elapsed().as_secs_f64() * 1e3);
    }
}

/// The arguments every peer takes (the Go peer has the same flags).
#[derive(Debug, Clone, clap::Parser)]
pub struct PeerArgs {
    /// Directory of `<cluster>.kubeconfig` files: one cluster each.
    #[arg(long)]
    pub kubeconfigs: PathBuf,
    /// Objects to reconcile across the fleet before the sync counts as done.
    #[arg(long)]
    pub expected: usize,
    /// Label selector of the ConfigMaps to watch.
    #[arg(long, default_value = "")]
    pub selector: String,
    /// Concurrent reconciles (ignored by the floor, which has no queue).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Updates to wait for after the sync (each one carries [`WRITTEN_AT`]).
    #[arg(long, default_value_t = 0)]
    pub updates: usize,
    /// A file created once every expected object is reconciled.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Namespaces as clusters (P6, Rust peer only): the first kubeconfig is the
    /// host, each namespace labelled `bench.multicluster-runtime.rs/member=yes` a
    /// cluster, sharing the host's client (`shared`) or with a client each
    /// (`per-namespace`).
    #[arg(long, value_enum)]
    pub namespaces_as_clusters: Option<NamespaceClients>,
    /// Clusters from kubeconfig Secrets (P4): the first kubeconfig is the host, and
    /// each Secret of this namespace of the host labelled
    /// `sigs.k8s.io/multicluster-runtime-kubeconfig=true` a cluster named after it.
    /// The ready file is created once the provider has listed the Secrets, and the
    /// report gives, per cluster, the time from the Secret's [`WRITTEN_AT`] stamp to
    /// the first reconcile of an object in that cluster.
    #[arg(long)]
    pub kubeconfig_secrets: Option<String>,
    /// Artificial cost of each reconcile (P5): the reconciler sleeps this long.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub reconcile_sleep: Duration,
    /// Create the ready file once this many objects are reconciled rather than all
    /// of them (P5: the rest is still queued when the driver writes its probes).
    #[arg(long)]
    pub ready_after: Option<usize>,
    /// Turn off the manager's health probes of every engaged cluster (Rust peer
    /// only; the Go library has none), to see what they cost.
    #[arg(long)]
    pub no_health_probes: bool,
    /// Keep the cached ConfigMaps in the compact stored form (JSON, decoded on
    /// read: `CacheOptions::compact::<ConfigMap>()`; Rust peer only).
    #[arg(long)]
    pub compact_cache: bool,
}

/// How namespace-clusters get their clients (see [`PeerArgs::namespaces_as_clusters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NamespaceClients {
    /// `Namespaces::new`: every namespace-cluster sends through the host's client.
    Shared,
    /// `Namespaces::with_config`: one client (connection pool) per namespace.
    PerNamespace,
}

/// Parses `90s`, `5m` or plain seconds (the Go peer's `time.ParseDuration` takes the
/// first two forms too).
///
/// # Errors
/// A value that is none of those forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("not a duration: {text:?} (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// One peer's results: the JSON line it prints last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `rust`, `floor` or `go`.
    pub peer: String,
    /// Clusters in the fleet.
    pub clusters: usize,
    /// Objects expected (and, when `complete`, reconciled).
    pub objects: usize,
    /// From process start to every object reconciled once, in seconds (P1).
    pub time_to_all_s: f64,
    /// Peak RSS when every object was reconciled, in KiB (P2).
    pub vmhwm_synced_kib: u64,
    /// Peak RSS at exit, after the updates, in KiB.
    pub vmhwm_kib: u64,
    /// Updates the peer waited for.
    pub updates: usize,
    /// Updates it saw.
    pub updates_seen: usize,
    /// Write→reconcile latency of the updates (P3), in milliseconds.
    pub lat_p50_ms: f64,
    /// 99th percentile of the same.
    pub lat_p99_ms: f64,
    /// Maximum of the same.
    pub lat_max_ms: f64,
    /// Rust peer, P1–P3 only: write → the update's event at the cache informer's
    /// subscribers (the watch and the store, before the source, the queue and the
    /// reconcile task): median, in milliseconds. 0 where not measured.
    #[serde(default)]
    pub stage_p50_ms: f64,
    /// 99th percentile of the same.
    #[serde(default)]
    pub stage_p99_ms: f64,
    /// Clusters engaged from kubeconfig Secrets whose first reconcile was timed (P4).
    #[serde(default)]
    pub engaged: usize,
    /// Secret written → first reconcile in its cluster (P4): median, in milliseconds.
    #[serde(default)]
    pub engage_p50_ms: f64,
    /// Maximum of the same.
    #[serde(default)]
    pub engage_max_ms: f64,
    /// Every object and every update was seen in time.
    pub complete: bool,
}

/// Counts distinct objects, the latency of each observed update and the first
/// reconcile in each cluster, and wakes the peer when the counts are reached.
///
/// An update counts once per object and stamp: a reconcile that sees a stamp no
/// newer than the last one counted for that object (a second reconcile of the same
/// write, from a duplicate event or a relist) adds no latency sample.
#[derive(Debug)]
pub struct Tally {
    start_nanos: u128,
    expected: usize,
    updates: usize,
    inner: Mutex<TallyState>,
    seen_changed: Notify,
    all_updates: Notify,
}

#[derive(Debug, Default)]
struct TallyState {
    /// Per object key, the newest stamp counted (0: none yet).
    last_stamp: HashMap<String, u128>,
    /// How many distinct objects a waiter of [`Tally::seen_at_least`] waits for:
    /// it is woken when they are reached, not on every object (a wake-up per
    /// object would load the peer under measurement with the harness's own work).
    wanted: usize,
    /// Per cluster, the distinct objects seen (for [`mark`]).
    per_cluster: HashMap<String, usize>,
    /// Per cluster, the wall-clock time of its first reconcile (Unix nanoseconds).
    first_in_cluster: HashMap<String, u128>,
    latencies: Vec<Duration>,
    /// When the last expected object was first reconciled.
    all_seen_at: Option<Instant>,
}

impl Tally {
    /// A tally for `expected` objects and `updates` updates, counting only stamps
    /// written after `start` (older ones belong to an earlier peer's run).
    pub fn new(start: SystemTime, expected: usize, updates: usize) -> Self {
        Tally {
            start_nanos: nanos(start),
            expected,
            updates,
            inner: Mutex::new(TallyState {
                last_stamp: HashMap::with_capacity(expected),
                latencies: Vec::with_capacity(updates),
                ..TallyState::default()
            }),
            seen_changed: Notify::new(),
            all_updates: Notify::new(),
        }
    }

    /// Records that the object `namespace/name` of `cluster` was reconciled with the
    /// annotation value `written_at` (if any).
    pub fn record(&self, cluster: &str, namespace: Option<&str>, name: &str, written_at: Option<&str>) {
        let now = nanos(SystemTime::now());
        let key = object_key(cluster, namespace, name);
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !state.first_in_cluster.contains_key(cluster) {
            state.first_in_cluster.insert(cluster.to_owned(), now);
            mark(format_args!("first object of {cluster}"));
        }
        let stamp = written_at
            .and_then(|s| s.parse::<u128>().ok())
            .filter(|&stamp| self.updates > 0 && stamp >= self.start_nanos);
        let objects_before = state.last_stamp.len();
        let last = state.last_stamp.entry(key).or_insert(0);
        let fresh = stamp.filter(|&stamp| stamp > *last);
        if let Some(stamp) = fresh {
            *last = stamp;
        }
        if state.last_stamp.len() > objects_before && matches!(STARTED.get(), Some((_, true))) {
            let count = state.per_cluster.entry(cluster.to_owned()).or_default();
            *count += 1;
            if count.is_multiple_of(500) {
                mark(format_args!("{count} objects of {cluster}"));
            }
        }
        if state.last_stamp.len() > objects_before {
            if state.last_stamp.len() == self.expected {
                state.all_seen_at = Some(Instant::now());
                mark("all objects seen");
            }
            if state.last_stamp.len() >= state.wanted {
                self.seen_changed.notify_waiters();
            }
        }
        let Some(stamp) = fresh else {
            return;
        };
        let latency = Duration::from_nanos(u64::try_from(now.saturating_sub(stamp)).unwrap_or(u64::MAX));
        state.latencies.push(latency);
        if state.latencies.len() == self.updates {
            self.all_updates.notify_one();
        }
    }

    /// Distinct objects seen so far.
    pub fn seen(&self) -> usize {
        self.state().last_stamp.len()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TallyState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until at least `count` distinct objects were seen.
    pub async fn seen_at_least(&self, count: usize) {
        loop {
            let changed = self.seen_changed.notified();
            {
                let mut state = self.state();
                if state.last_stamp.len() >= count {
                    return;
                }
                state.wanted = match state.wanted {
                    0 => count,
                    wanted => wanted.min(count),
                };
            }
            changed.await;
        }
    }

    /// When the last expected object was first reconciled, if it was.
    pub fn all_seen_at(&self) -> Option<Instant> {
        self.state().all_seen_at
    }

    /// Waits until every expected update was seen.
    pub async fn all_updates(&self) {
        if self.state().latencies.len() < self.updates {
            self.all_updates.notified().await;
        }
    }

    /// The latencies seen so far.
    pub fn latencies(&self) -> Vec<Duration> {
        self.state().latencies.clone()
    }

    /// Per cluster, the wall-clock time of its first reconcile in Unix nanoseconds.
    pub fn first_reconciles(&self) -> HashMap<String, u128> {
        self.state().first_in_cluster.clone()
    }
}

/// The key a peer counts an object under: `<cluster>/<namespace>/<name>`.
pub fn object_key(cluster: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{cluster}/{}/{name}", namespace.unwrap_or_default())
}

/// Runs a peer's measurement and returns its report (`complete` false on a
/// time-out):
///
/// 1. waits for `ready` (the peer's own readiness, e.g. its provider has listed the
///    Secrets) and for [`PeerArgs::ready_after`] objects (default: all), then
///    creates the ready file, on which the driver starts writing;
/// 2. waits for every expected object (P1: the time from `start` to the first
///    reconcile of the last of them) and every expected update (P3, P5).
pub async fn measure(
    peer: &str,
    args: &PeerArgs,
    clusters: usize,
    start: std::time::Instant,
    tally: &Tally,
    ready: impl std::future::Future<Output = ()>,
) -> Report {
    let mut report = Report {
        peer: peer.to_owned(),
        clusters,
        objects: args.expected,
        updates: args.updates,
        ..Report::default()
    };
    let deadline = tokio::time::Instant::from_std(start) + args.timeout;
    let ready_after = args.ready_after.unwrap_or(args.expected).min(args.expected);
    let gate = async {
        ready.await;
        tally.seen_at_least(ready_after).await;
    };
    if tokio::time::timeout_at(deadline, gate).await.is_err() {
        eprintln!(
            "{peer}-peer: not ready in time ({} of {ready_after} objects reconciled)",
            tally.seen(),
        );
        return report;
    }
    if let Some(path) = &args.ready_file
        && let Err(error) = std::fs::write(path, b"")
    {
        eprintln!("{peer}-peer: cannot create {}: {error}", path.display());
        return report;
    }
    if tokio::time::timeout_at(deadline, tally.seen_at_least(args.expected))
        .await
        .is_err()
    {
        eprintln!(
            "{peer}-peer: timed out with {} of {} objects reconciled",
            tally.seen(),
            args.expected
        );
        return report;
    }
    let all_seen_at = tally.all_seen_at().unwrap_or_else(Instant::now);
    report.time_to_all_s = all_seen_at.duration_since(start).as_secs_f64();
    report.vmhwm_synced_kib = vm_hwm_kib();
    let updates_in_time = tokio::time::timeout_at(deadline, tally.all_updates())
        .await
        .is_ok();
    let mut latencies = tally.latencies();
    report.updates_seen = latencies.len();
    (report.lat_p50_ms, report.lat_p99_ms, report.lat_max_ms) = percentiles(&mut latencies);
    report.vmhwm_kib = vm_hwm_kib();
    report.complete = updates_in_time;
    if !updates_in_time {
        eprintln!(
            "{peer}-peer: timed out with {} of {} updates seen",
            report.updates_seen, args.updates
        );
    }
    report
}

/// P4: per cluster with both a stamp and a first reconcile, the time from the
/// stamp (`stamps`: cluster → Unix nanoseconds of the Secret's write) to the first
/// reconcile in it (`firsts`, from [`Tally::first_reconciles`]).
pub fn engage_latencies(stamps: &HashMap<String, u128>, firsts: &HashMap<String, u128>) -> Vec<Duration> {
    stamps
        .iter()
        .filter_map(|(cluster, &stamp)| {
            let first = *firsts.get(cluster)?;
            Some(Duration::from_nanos(
                u64::try_from(first.saturating_sub(stamp)).unwrap_or(u64::MAX),
            ))
        })
        .collect()
}

/// Fills the P4 fields of `report` from the engage latencies of its clusters.
pub fn report_engagements(report: &mut Report, mut latencies: Vec<Duration>) {
    report.engaged = latencies.len();
    let (p50, _, max) = percentiles(&mut latencies);
    (report.engage_p50_ms, report.engage_max_ms) = (p50, max);
}

/// Prints the report as one JSON line and exits: 0 when complete, 1 otherwise.
pub fn finish(report: &Report) -> ! {
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(error) => eprintln!("cannot encode the report: {error}"),
    }
    std::process::exit(if report.complete { 0 } else { 1 })
}

/// A peer's `main`: parses the common arguments, runs `run` with the moments the
/// process started (monotonic and wall clock), and [finishes](finish) with its
/// report, or exits 1 with `peer: <message>`.
pub async fn run_peer<F, Fut>(peer: &str, run: F) -> !
where
    F: FnOnce(PeerArgs, Instant, SystemTime) -> Fut,
    Fut: std::future::Future<Output = Result<Report, String>>,
{
    let (start, wall_start) = (Instant::now(), SystemTime::now());
    let _ = STARTED.set((start, std::env::var_os("MCR_BENCH_TIMELINE").is_some()));
    let args = PeerArgs::parse();
    match run(args, start, wall_start).await {
        Ok(report) => finish(&report),
        Err(message) => {
            eprintln!("{peer}: {message}");
            std::process::exit(1);
        }
    }
}

/// p50, p99 and the maximum in milliseconds (nearest rank); zeros when empty.
pub fn percentiles(latencies: &mut [Duration]) -> (f64, f64, f64) {
    if latencies.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    latencies.sort_unstable();
    let rank = |q: f64| {
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let index = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        millis(latencies[index - 1])
    };
    (rank(0.50), rank(0.99), millis(latencies[latencies.len() - 1]))
}

fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Nanoseconds since the Unix epoch.
pub fn nanos(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The peak resident set size of this process in KiB (`VmHWM` of
/// `/proc/self/status`), or 0 where that is not available.
pub fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let rest = line.strip_prefix("VmHWM:")?;
                rest.trim().trim_end_matches("kB").trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

/// The kubeconfig files of `dir` (`*.kubeconfig`), sorted, each with its cluster name
/// (the file name without the extension).
///
/// # Errors
/// The directory cannot be read or holds no kubeconfig.
pub fn kubeconfig_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".kubeconfig")?
                .to_owned();
            Some((name, path))
        })
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(format!("{}: no *.kubeconfig files", dir.display()));
    }
    Ok(found)
}

/// A kube config from a kubeconfig file.
///
/// # Errors
/// The file cannot be read or parsed.
pub async fn load_config(path: &Path) -> Result<kube::Config, String> {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentiles(&mut samples), (50.0, 99.0, 100.0));
        assert_eq!(percentiles(&mut []), (0.0, 0.0, 0.0));
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn tally_counts_objects_once_and_only_fresh_stamps() {
        let start = SystemTime::now();
        let tally = Tally::new(start, 2, 2);
        tally.record("a", Some("ns"), "x", Some("1"));
        tally.record("a", Some("ns"), "x", None);
        assert_eq!(tally.seen(), 1);
        assert!(
            tally.latencies().is_empty(),
            "a stamp older than the start is not an update"
        );
        let fresh = nanos(SystemTime::now()).to_string();
        tally.record("b", Some("ns"), "y", Some(&fresh));
        assert_eq!((tally.seen(), tally.latencies().len()), (2, 1));
        assert!(tally.all_seen_at().is_some());
        assert_eq!(tally.first_reconciles().len(), 2);
    }

    #[test]
    fn a_second_reconcile_of_one_write_is_not_a_second_update() {
        let tally = Tally::new(SystemTime::now(), 1, 2);
        let first = nanos(SystemTime::now()).to_string();
        tally.record("a", Some("ns"), "x", Some(&first));
        tally.record("a", Some("ns"), "x", Some(&first));
        assert_eq!(tally.latencies().len(), 1, "the same stamp twice counts once");
        let second = (nanos(SystemTime::now()) + 1).to_string();
        tally.record("a", Some("ns"), "x", Some(&second));
        tally.record("a", Some("ns"), "x", Some(&first));
        assert_eq!(
            tally.latencies().len(),
            2,
            "an older stamp after a newer one does not count"
        );
    }

    #[test]
    fn engage_latency_runs_from_the_stamp_to_the_first_reconcile() {
        let stamps = HashMap::from([("a".to_owned(), 1_000_000u128), ("gone".to_owned(), 5)]);
        let firsts = HashMap::from([("a".to_owned(), 3_000_000u128), ("other".to_owned(), 9)]);
        assert_eq!(engage_latencies(&stamps, &firsts), vec![Duration::from_millis(2)]);
    }
}
