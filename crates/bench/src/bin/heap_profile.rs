//! Heap bytes measured with `dhat`, for what RSS cannot tell apart (see
//! `bench/README.md`). Needs the `dhat-heap` feature.
//!
//! **P2, bytes per cached object** (`--objects N`, repeatable): one kube-envtest
//! apiserver with, for each count, a namespace `heap-<count>` holding that many
//! ConfigMaps shaped like the driver's (one label, one data entry). For each count in
//! turn, smallest first, a [`Cache`] with one ConfigMap informer of that namespace (a
//! field selector on a cluster-wide watch) is started, synced, and the growth of the
//! live heap since just before it was made is the cache's. The objects themselves are
//! measured by deep-cloning each cached object once; the cache's overhead is the
//! difference. The marginal figures between two counts leave out what a cache holds
//! whatever its size (the watch connection, the event channel).
//!
//! **P6, bytes per namespace-cluster** (`--namespace-clusters N`): N labelled
//! namespaces with `--objects-per-namespace` ConfigMaps each, reconciled by one
//! controller through the namespace provider (shared client), as the Rust peer runs
//! P6. Once every object was reconciled, the growth of the live heap since before the
//! manager was made, less the cached objects (measured as above), divided by the
//! engaged clusters, is the cost of one engaged namespace-cluster beyond its objects.
//!
//! With `--sites FILE`, DHAT's JSON profile is written with the largest P2 cache, or
//! the P6 manager, still alive at the end: `bench/dhat-sites.py FILE` lists the
//! allocation sites that hold its bytes.
//!
//! With `--compact`, the caches keep their ConfigMaps in the compact stored form
//! (`CacheOptions::compact::<ConfigMap>()`, JSON decoded on read); the P2 overhead
//! column is then the cache's bytes beyond the objects' JSON.
//!
//! **Read and write cost** (`--read-cost`, with one `--objects N`): no profile (dhat's
//! allocator passes through to the system's when no profiler runs). Two caches of the
//! same N ConfigMaps, one decoded and one compact, and for each the time of a `get`
//! of every object, of a `list` of all, and of `by_index` for one value; then the
//! encode (what the compact form adds to each stored object) and decode of one
//! cached object, in a loop.
//!
//! Bytes are what the program asked the allocator for; the allocator's own overhead
//! per block is not included, which is why the block counts are printed too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use mcr_bench::{MEMBER_LABEL, Tally};
use multicluster_runtime::cache::{Cache, CacheOptions, WatchSpec};
use multicluster_runtime::controller::{Action, Controller, ReconcileRequest, Request};
use multicluster_runtime::providers::namespace::Namespaces;
use multicluster_runtime::{Cluster, ClusterName, ClusterOptions, Manager};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[derive(Parser, Debug)]
#[command(about = "Heap bytes per cached ConfigMap (P2) or per namespace-cluster (P6), with dhat")]
struct Args {
    /// P2: objects to cache, once per value (repeat the flag).
    #[arg(long, required_unless_present = "namespace_clusters")]
    objects: Vec<usize>,
    /// P6: this many labelled namespaces, engaged as clusters.
    #[arg(long, conflicts_with = "objects")]
    namespace_clusters: Option<usize>,
    /// P6: ConfigMaps per namespace.
    #[arg(long, default_value_t = 2)]
    objects_per_namespace: usize,
    /// Concurrent creates while seeding.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Write DHAT's JSON profile here, with the last measured state alive at the end.
    #[arg(long)]
    sites: Option<PathBuf>,
    /// Keep the cached ConfigMaps in the compact stored form.
    #[arg(long)]
    compact: bool,
    /// Time reads and writes of the decoded and the compact form instead of
    /// profiling the heap (one `--objects` count).
    #[arg(long, conflicts_with_all = ["sites", "namespace_clusters", "compact"])]
    read_cost: bool,
    /// `--read-cost`: how many times each read is repeated.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

/// Live heap: bytes and blocks.
#[derive(Clone, Copy)]
struct Heap {
    bytes: u64,
    blocks: u64,
}

impl Heap {
    fn now() -> Self {
        let stats = dhat::HeapStats::get();
        Heap {
            bytes: stats.curr_bytes as u64,
            blocks: stats.curr_blocks as u64,
        }
    }

    /// Growth since `before` (never negative).
    fn since(self, before: Heap) -> Heap {
        Heap {
            bytes: self.bytes.saturating_sub(before.bytes),
            blocks: self.blocks.saturating_sub(before.blocks),
        }
    }
}

/// What one P2 count measured.
struct Measured {
    objects: usize,
    cache: Heap,
    object: Heap,
    json_bytes: u64,
    sync_s: f64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(message) = run(args).await {
        eprintln!("heap-profile: {message}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let profiler = match &args.sites {
        _ if args.read_cost => None,
        Some(path) => Some(
            dhat::Profiler::builder()
                .file_name(path)
                .trim_backtraces(Some(12))
                .build(),
        ),
        None => Some(dhat::Profiler::builder().testing().build()),
    };
    eprintln!("starting one apiserver ...");
    let fleet = kube_envtest::Fleet::builder()
        .clusters(1)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let cluster = &fleet.clusters()[0];
    let client = cluster.client().map_err(|e| e.to_string())?;
    let kept = match args.namespace_clusters {
        None if args.read_cost => {
            read_cost(&args, client).await?;
            Box::new(()) as Box<dyn Send>
        }
        Some(namespaces) => {
            Box::new(namespace_clusters(&args, client, cluster.config(), namespaces).await?) as Box<dyn Send>
        }
        None => Box::new(objects(&args, client).await?) as Box<dyn Send>,
    };
    // The profile is written now, with `kept` alive.
    drop(profiler);
    drop(kept);
    drop(fleet);
    Ok(())
}

/// P2: the cache's bytes per object at each `--objects` count. Returns the largest
/// cache, still running, when a profile is to be written.
async fn objects(args: &Args, client: kube::Client) -> Result<Option<RunningCache>, String> {
    let mut sizes = args.objects.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.contains(&0) {
        return Err("--objects must be positive".into());
    }
    let largest = *sizes.last().ok_or("no --objects")?;
    let seeding = Instant::now();
    eprintln!("creating {} ConfigMaps ...", sizes.iter().sum::<usize>());
    for &objects in &sizes {
        seed_namespace(
            client.clone(),
            &p2_namespace(objects),
            objects,
            false,
            args.parallel,
        )
        .await?;
    }
    eprintln!("seeded in {:.1} s", seeding.elapsed().as_secs_f64());

    println!(
        "| objects | synced in s | cache heap MiB | cache B/object | object itself B | cache overhead B/object | heap blocks/object (cache, object) | object as JSON B | load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---:|---|");
    let mut results: Vec<Measured> = Vec::new();
    let mut kept = None;
    for &objects in &sizes {
        let (measured, cache) = measure_cache(client.clone(), objects, args.compact).await?;
        let per = |bytes: u64| bytes / objects as u64;
        // Compact: what the cache holds beyond the objects' JSON.
        let held = if args.compact {
            measured.json_bytes
        } else {
            measured.object.bytes
        };
        println!(
            "| {} | {:.2} | {:.2} | {} | {} | {} | {:.1}, {:.1} | {} | {} |",
            objects,
            measured.sync_s,
            measured.cache.bytes as f64 / (1024.0 * 1024.0),
            per(measured.cache.bytes),
            per(measured.object.bytes),
            per(measured.cache.bytes.saturating_sub(held)),
            measured.cache.blocks as f64 / objects as f64,
            measured.object.blocks as f64 / objects as f64,
            per(measured.json_bytes),
            load_average(),
        );
        results.push(measured);
        if objects == largest && args.sites.is_some() {
            kept = Some(cache);
        } else {
            drop(cache);
            // Let the informer's task see the cancellation and free its watch.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for pair in results.windows(2) {
        let (small, large) = (&pair[0], &pair[1]);
        let added = (large.objects - small.objects) as u64;
        let overhead = |m: &Measured| {
            let held = if args.compact {
                m.json_bytes
            } else {
                m.object.bytes
            };
            m.cache.bytes.saturating_sub(held)
        };
        println!(
            "\nMarginal, {} → {} objects: cache {} B/object, object itself {} B/object, overhead {} B/object.",
            small.objects,
            large.objects,
            large.cache.bytes.saturating_sub(small.cache.bytes) / added,
            large.object.bytes.saturating_sub(small.object.bytes) / added,
            overhead(large).saturating_sub(overhead(small)) / added,
        );
    }
    Ok(kept)
}

/// A cache stopped when dropped.
struct RunningCache {
    _cache: Cache,
    token: CancellationToken,
}

impl Drop for RunningCache {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The cache options of `--compact` or not.
fn cache_options(compact: bool) -> CacheOptions {
    if compact {
        CacheOptions::default().compact::<ConfigMap>()
    } else {
        CacheOptions::default()
    }
}

/// The watch of the P2 count `objects`.
fn p2_spec(objects: usize) -> WatchSpec {
    WatchSpec::default()
        .labels(&format!("{MEMBER_LABEL}=yes"))
        .fields(&format!("metadata.namespace={}", p2_namespace(objects)))
}

/// Caches the ConfigMaps of the count `objects` and measures the heap they take.
async fn measure_cache(
    client: kube::Client,
    objects: usize,
    compact: bool,
) -> Result<(Measured, RunningCache), String> {
    let spec = p2_spec(objects);
    let before = Heap::now();
    let started = Instant::now();
    let token = CancellationToken::new();
    let cache = Cache::new(
        ClusterName::from("heap"),
        client,
        cache_options(compact),
        token.clone(),
    );
    let informer = cache.informer_with::<ConfigMap>(&(), spec);
    informer
        .wait_synced(Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())?;
    let sync_s = started.elapsed().as_secs_f64();
    // The last page's buffers are freed once the watch call is under way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cache_heap = Heap::now().since(before);
    let listed = informer.store().list();
    drop(informer);
    if listed.len() != objects {
        return Err(format!("cached {} ConfigMaps, expected {objects}", listed.len()));
    }
    let (object, json_bytes) = deep_size(&listed);
    drop(listed);
    let measured = Measured {
        objects,
        cache: cache_heap,
        object,
        json_bytes,
        sync_s,
    };
    Ok((measured, RunningCache { _cache: cache, token }))
}

/// `--read-cost`: times the reads of a decoded and a compact cache of the same
/// objects, and the encode and decode of one of them.
async fn read_cost(args: &Args, client: kube::Client) -> Result<(), String> {
    let [objects] = args.objects[..] else {
        return Err("--read-cost takes one --objects count".into());
    };
    if objects == 0 {
        return Err("--objects must be positive".into());
    }
    eprintln!("creating {objects} ConfigMaps ...");
    seed_namespace(
        client.clone(),
        &p2_namespace(objects),
        objects,
        false,
        args.parallel,
    )
    .await?;
    let repeat = args.repeat.max(1);
    println!(
        "| form | get, per object µs | list of {objects}, ms | list, per object µs | by_index (all {objects} under one value), ms | load |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    let mut sample = None;
    for compact in [false, true] {
        let token = CancellationToken::new();
        let _stop = StopOnDrop(token.clone());
        let cache = Cache::new(
            ClusterName::from("cost"),
            client.clone(),
            cache_options(compact),
            token,
        );
        cache
            .index_field::<ConfigMap>("member", |cm| {
                cm.labels().get(MEMBER_LABEL).cloned().into_iter().collect()
            })
            .map_err(|e| e.to_string())?;
        let informer = cache.informer_with::<ConfigMap>(&(), p2_spec(objects));
        informer
            .wait_synced(Duration::from_secs(600))
            .await
            .map_err(|e| e.to_string())?;
        let store = informer.store();
        if store.is_compact() != compact {
            return Err(format!(
                "the store's form is not the one asked for (compact: {compact})"
            ));
        }
        let names: Vec<String> = store.list().iter().map(|cm| cm.name_any()).collect();
        if names.len() != objects {
            return Err(format!("cached {} ConfigMaps, expected {objects}", names.len()));
        }
        let namespace = p2_namespace(objects);
        let started = Instant::now();
        let mut found = 0;
        for _ in 0..repeat {
            for name in &names {
                found += usize::from(store.get(Some(&namespace), name).is_some());
            }
        }
        let get_us = started.elapsed().as_secs_f64() * 1e6 / (repeat * objects) as f64;
        let started = Instant::now();
        for _ in 0..repeat {
            found += store.list().len();
        }
        let list_ms = started.elapsed().as_secs_f64() * 1e3 / repeat as f64;
        let started = Instant::now();
        for _ in 0..repeat {
            found += store.by_index("member", "yes").map_err(|e| e.to_string())?.len();
        }
        let index_ms = started.elapsed().as_secs_f64() * 1e3 / repeat as f64;
        if found != 3 * repeat * objects {
            return Err(format!(
                "reads found {found} objects, expected {}",
                3 * repeat * objects
            ));
        }
        println!(
            "| {} | {get_us:.3} | {list_ms:.2} | {:.3} | {index_ms:.2} | {} |",
            if compact { "compact" } else { "decoded" },
            list_ms * 1e3 / objects as f64,
            load_average(),
        );
        if sample.is_none() {
            sample = store.get(Some(&namespace), &names[0]);
        }
    }
    // What the compact form adds per stored object (an encode) and per read of one
    // (a decode), on one cached object as the store holds it.
    let sample = sample.ok_or("no object to time")?;
    let json = serde_json::to_vec(&*sample).map_err(|e| e.to_string())?;
    let rounds = 20_000;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes += std::hint::black_box(
            serde_json::to_vec(std::hint::black_box(&*sample)).map_err(|e| e.to_string())?,
        )
        .len();
    }
    let encode_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        let decoded: ConfigMap =
            serde_json::from_slice(std::hint::black_box(&json)).map_err(|e| e.to_string())?;
        bytes += std::hint::black_box(Arc::new(decoded))
            .data
            .as_ref()
            .map_or(0, |d| d.len());
    }
    let decode_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        bytes += std::hint::black_box(Arc::new((*sample).clone()))
            .data
            .as_ref()
            .map_or(0, |d| d.len());
    }
    let clone_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    std::hint::black_box(bytes);
    println!(
        "\nOne cached ConfigMap ({} B as JSON), {rounds} times each: encode {encode_us:.3} µs, decode into an Arc {decode_us:.3} µs, deep clone into an Arc {clone_us:.3} µs (load {}).",
        json.len(),
        load_average(),
    );
    Ok(())
}

/// The heap that `objects` take on their own, each as a `ConfigMap` behind an `Arc`
/// as a store holds it (measured by deep-cloning each once), and their total size as
/// JSON.
fn deep_size(objects: &[Arc<ConfigMap>]) -> (Heap, u64) {
    let json_bytes = objects
        .iter()
        .map(|cm| serde_json::to_vec(&**cm).map_or(0, |json| json.len() as u64))
        .sum();
    let mut copies: Vec<Arc<ConfigMap>> = Vec::with_capacity(objects.len());
    let before = Heap::now();
    copies.extend(objects.iter().map(|cm| Arc::new((**cm).clone())));
    let heap = Heap::now().since(before);
    drop(copies);
    (heap, json_bytes)
}

/// P6: the heap of a manager with one controller over `namespaces`
/// namespace-clusters, per cluster and beyond the cached objects (whose own heap is
/// measured on a plain list of them, before the manager starts, while nothing else
/// allocates). Returns what must stay alive for the profile.
async fn namespace_clusters(
    args: &Args,
    client: kube::Client,
    config: kube::Config,
    namespaces: usize,
) -> Result<impl Send + use<>, String> {
    let per_namespace = args.objects_per_namespace;
    let expected = namespaces * per_namespace;
    let seeding = Instant::now();
    eprintln!("creating {namespaces} namespaces × {per_namespace} ConfigMaps ...");
    let parallel = args.parallel;
    let seeded: Vec<Result<(), String>> = futures::stream::iter(0..namespaces)
        .map(|index| {
            let client = client.clone();
            async move { seed_namespace(client, &format!("ns-{index:05}"), per_namespace, true, 1).await }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    seeded.into_iter().collect::<Result<(), String>>()?;
    eprintln!("seeded in {:.1} s", seeding.elapsed().as_secs_f64());

    // The objects' own heap, measured before anything else runs: each as the cache
    // stores it (a plain list, managedFields dropped).
    let mut listed: Vec<Arc<ConfigMap>> = Api::<ConfigMap>::all(client.clone())
        .list(&kube::api::ListParams::default().labels(&format!("{MEMBER_LABEL}=yes")))
        .await
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .map(|mut cm| {
            cm.metadata.managed_fields = None;
            Arc::new(cm)
        })
        .collect();
    listed.retain(|cm| cm.namespace().is_some_and(|ns| ns.starts_with("ns-")));
    let (object, _) = deep_size(&listed);
    drop(listed);

    let before = Heap::now();
    let started = Instant::now();
    let host = Arc::new(
        Cluster::connect(
            "",
            config,
            ClusterOptions::default().cache(cache_options(args.compact)),
        )
        .await
        .map_err(|e| e.to_string())?,
    );
    let provider = Namespaces::new(host.clone()).selector(&format!("{MEMBER_LABEL}=yes"));
    let manager = Manager::with_provider(host.clone(), Arc::new(provider));
    let tally = Arc::new(Tally::new(SystemTime::now(), expected, 0));
    Controller::builder::<ConfigMap>(&manager)
        .named("heap-configmaps")
        .watch_spec(WatchSpec::default().labels(&format!("{MEMBER_LABEL}=yes")))
        .register(reconcile, error_policy, tally.clone())
        .await
        .map_err(|e| e.to_string())?;
    let token = CancellationToken::new();
    let running = tokio::spawn({
        let (manager, token) = (manager.clone(), token.clone());
        async move { manager.start(token).await }
    });
    tokio::time::timeout(Duration::from_secs(600), tally.seen_at_least(expected))
        .await
        .map_err(|_| format!("only {} of {expected} objects reconciled", tally.seen()))?;
    let reconciled_s = started.elapsed().as_secs_f64();
    // Let the last reconciles and engagements settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = Heap::now().since(before);
    let engaged = manager.engaged_clusters().len();

    let beyond = Heap {
        bytes: total.bytes.saturating_sub(object.bytes),
        blocks: total.blocks.saturating_sub(object.blocks),
    };
    println!(
        "| namespaces | clusters engaged | objects | all reconciled s | heap MiB | objects' heap MiB | B per cluster beyond its objects | blocks per cluster | load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {namespaces} | {engaged} | {expected} | {reconciled_s:.2} | {:.2} | {:.2} | {} | {:.1} | {} |",
        total.bytes as f64 / (1024.0 * 1024.0),
        object.bytes as f64 / (1024.0 * 1024.0),
        beyond.bytes / engaged.max(1) as u64,
        beyond.blocks as f64 / engaged.max(1) as f64,
        load_average(),
    );
    Ok((manager, running, StopOnDrop(token)))
}

/// Cancels its token when dropped.
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn reconcile(
    req: ReconcileRequest<ConfigMap>,
    tally: Arc<Tally>,
) -> Result<Action, std::convert::Infallible> {
    if let Some(cm) = &req.object {
        tally.record(
            req.request.cluster.as_str(),
            cm.namespace().as_deref(),
            &cm.name_any(),
            None,
        );
    }
    Ok(Action::await_change())
}

fn error_policy(_: &Request, _: &std::convert::Infallible, _: Arc<Tally>) -> Action {
    Action::backoff()
}

/// The namespace of the ConfigMaps cached for the P2 count `objects`.
fn p2_namespace(objects: usize) -> String {
    format!("heap-{objects}")
}

/// Creates namespace `name` (labelled as a P6 member if `member`) with `objects`
/// ConfigMaps shaped like the driver's, `parallel` at a time.
async fn seed_namespace(
    client: kube::Client,
    name: &str,
    objects: usize,
    member: bool,
    parallel: usize,
) -> Result<(), String> {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    if member {
        ns.metadata.labels = Some([(MEMBER_LABEL.to_owned(), "yes".to_owned())].into());
    }
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| format!("creating namespace {name}: {e}"))?;
    let api: Api<ConfigMap> = Api::namespaced(client, name);
    let results: Vec<Result<(), String>> = futures::stream::iter(0..objects)
        .map(|index| {
            let api = api.clone();
            async move {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(format!("cm-{index:06}"));
                cm.metadata.labels = Some([(MEMBER_LABEL.to_owned(), "yes".to_owned())].into());
                cm.data = Some([("index".to_owned(), index.to_string())].into());
                api.create(&PostParams::default(), &cm)
                    .await
                    .map(drop)
                    .map_err(|e| format!("creating ConfigMap {name}/{index}: {e}"))
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
