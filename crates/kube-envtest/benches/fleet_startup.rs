//! Time to a ready fleet, and resident memory per apiserver and per etcd.
//!
//! Run with `cargo bench -p kube-envtest --bench fleet_startup` (binaries from
//! `tools/controlplane/build.sh`). Optional arguments: the fleet sizes (default
//! `1 4 8`) and `--rounds N` (default 3). Prints a Markdown table; results and the
//! machine they came from are kept in `docs/benchmarks/envtest.md`.
//!
//! Memory is read from `/proc/<pid>/status` (VmRSS) right after the fleet is ready
//! and again after a short settle, since the apiserver keeps filling caches for a
//! few seconds after `/readyz` turns ok.

use std::time::{Duration, Instant};

use kube_envtest::{EtcdTopology, Fleet};

struct Sample {
    ready: Duration,
    apiserver_rss_mib: f64,
    etcd_rss_mib: f64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes = Vec::new();
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|r| r.parse().ok())
                    .ok_or("--rounds takes a number")?
            }
            "--bench" => {} // passed by `cargo bench`
            other => sizes.push(
                other
                    .parse::<usize>()
                    .map_err(|_| format!("not a fleet size: {other}"))?,
            ),
        }
    }
    if sizes.is_empty() {
        sizes = vec![1, 4, 8];
    }

    println!("machine: {} cores, {:.1} GiB memory", cores(), mem_total_gib());
    println!(
        "| etcd | clusters | ready (median of {rounds}) | min | max | apiserver RSS (MiB, each) | etcd RSS (MiB, each) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for topology in [EtcdTopology::Shared, EtcdTopology::PerCluster] {
        for &size in &sizes {
            let mut samples = Vec::new();
            for _ in 0..rounds {
                samples.push(measure(topology, size).await?);
            }
            samples.sort_by_key(|s| s.ready);
            let median = &samples[samples.len() / 2];
            println!(
                "| {topology:?} | {size} | {:.2} s | {:.2} s | {:.2} s | {:.0} | {:.0} |",
                median.ready.as_secs_f64(),
                samples[0].ready.as_secs_f64(),
                samples[samples.len() - 1].ready.as_secs_f64(),
                median.apiserver_rss_mib,
                median.etcd_rss_mib,
            );
        }
    }
    Ok(())
}

async fn measure(topology: EtcdTopology, size: usize) -> Result<Sample, kube_envtest::Error> {
    let started = Instant::now();
    let fleet = Fleet::builder().clusters(size).etcd(topology).start().await?;
    let ready = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let apiservers: Vec<u32> = fleet
        .clusters()
        .iter()
        .filter_map(|c| c.apiserver_pid())
        .collect();
    let etcds: Vec<u32> = fleet
        .pids()
        .into_iter()
        .filter(|pid| !apiservers.contains(pid))
        .collect();
    Ok(Sample {
        ready,
        apiserver_rss_mib: mean_rss_mib(&apiservers),
        etcd_rss_mib: mean_rss_mib(&etcds),
    })
}

fn mean_rss_mib(pids: &[u32]) -> f64 {
    let total: u64 = pids
        .iter()
        .map(|pid| status_kib(&format!("/proc/{pid}/status"), "VmRSS:"))
        .sum();
    total as f64 / 1024.0 / pids.len().max(1) as f64
}

fn status_kib(file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn mem_total_gib() -> f64 {
    status_kib("/proc/meminfo", "MemTotal:") as f64 / 1024.0 / 1024.0
}
