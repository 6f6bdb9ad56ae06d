//! `envtest`: a local fleet of real Kubernetes control planes on this machine.
//!
//! ```text
//! envtest up --clusters 3 --dir ./fleet
//! envtest up --clusters 3 --hub-dir ./hub --members-dir ./members --controller-manager
//! ```
//! The first starts one etcd and three kube-apiservers and writes
//! `./fleet/cluster-<i>.kubeconfig` for each; the second starts a hub (the cluster a
//! manager runs against, `./hub/cluster-0.kubeconfig`) plus three members
//! (`./members/cluster-1.kubeconfig` to `cluster-3`), each with a
//! kube-controller-manager. Both run until Ctrl-C or SIGTERM, then stop every
//! process and remove the kubeconfigs they wrote. Missing control-plane binaries are
//! built first by the build script the kube-envtest package ships (needs Go).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use kube_envtest::{Binaries, CONTROLLERS, EtcdTopology, Fleet, KUBERNETES_VERSION};

#[derive(Parser)]
#[command(
    name = "envtest",
    version,
    about = "Local fleets of real Kubernetes control planes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a fleet, write one kubeconfig per cluster, and run until Ctrl-C.
    Up(Up),
    /// Print where the kube-apiserver, etcd and kube-controller-manager binaries are
    /// (building them if needed), and the command that builds them.
    Binaries,
}

#[derive(clap::Args)]
#[command(after_help = up_after_help())]
struct Up {
    /// How many clusters to start (with --hub-dir: how many members, besides the hub).
    #[arg(long, short = 'n', default_value_t = 3)]
    clusters: usize,
    /// Where to write the kubeconfigs (`<cluster>.kubeconfig`); created if missing.
    /// With --hub-dir, the members' kubeconfigs only.
    #[arg(long, visible_alias = "members-dir", default_value = "envtest-fleet")]
    dir: PathBuf,
    /// Also start a hub, the cluster a multi-cluster manager runs against, and write
    /// its kubeconfig (`cluster-0.kubeconfig`) here, apart from the members'
    /// (`cluster-1` ... `cluster-<clusters>`).
    #[arg(long)]
    hub_dir: Option<PathBuf>,
    /// Run a kube-controller-manager per cluster (namespace, garbage-collector and
    /// service-account controllers), so that deleted namespaces go away and owned
    /// objects are garbage-collected.
    #[arg(long)]
    controller_manager: bool,
    /// One etcd for the fleet, or one per cluster.
    #[arg(long, value_enum, default_value_t = Etcd::Shared)]
    etcd: Etcd,
    /// Directory with kube-apiserver and etcd (default: the build script's cache).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// The `up` help's closing words: what goes where, and what runs.
fn up_after_help() -> String {
    format!(
        "\
Output: stdout has one line per kubeconfig written, the hub's first (with --hub-dir); \
progress goes to stderr. On Ctrl-C or SIGTERM every process stops and the \
kubeconfigs are removed.

Hub and members: `envtest up --clusters 3 --hub-dir ./hub --members-dir ./members` \
starts four clusters: cluster-0 is the hub (./hub/cluster-0.kubeconfig, for the \
manager's own client) and cluster-1 to cluster-3 are the members \
(./members/cluster-<i>.kubeconfig, for a kubeconfig-files provider). --members-dir \
is another name for --dir.

--controller-manager runs kube-controller-manager with --controllers={}: nothing \
that makes pods, no node controllers.",
        CONTROLLERS.join(",")
    )
}

#[derive(Clone, Copy, ValueEnum)]
enum Etcd {
    Shared,
    PerCluster,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        // Readiness polling makes the client log every refused connection; quiet by default.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENVTEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a file or a log collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Up(up) => up.run().await,
        Command::Binaries => binaries(None).map(|b| {
            let manager = if b.kube_controller_manager.is_file() {
                b.kube_controller_manager.display().to_string()
            } else {
                format!("(not built: {})", b.kube_controller_manager.display())
            };
            println!(
                "kube-apiserver:          {}\netcd:                    {}\n\
                 kube-controller-manager: {manager}\nbuild command:           {}",
                b.kube_apiserver.display(),
                b.etcd.display(),
                Binaries::build_command()
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("envtest: {message}");
            ExitCode::FAILURE
        }
    }
}

impl Up {
    async fn run(self) -> Result<(), String> {
        let binaries = binaries(self.bin_dir.as_deref())?;
        let topology = match self.etcd {
            Etcd::Shared => EtcdTopology::Shared,
            Etcd::PerCluster => EtcdTopology::PerCluster,
        };
        let hub = usize::from(self.hub_dir.is_some());
        let total = self.clusters + hub;
        eprintln!(
            "starting {total} cluster(s){}, kube-apiserver {KUBERNETES_VERSION}{} ...",
            if hub == 1 { " (a hub and its members)" } else { "" },
            if self.controller_manager {
                " with kube-controller-manager"
            } else {
                ""
            }
        );
        let started = Instant::now();
        let fleet = Fleet::builder()
            .clusters(total)
            .etcd(topology)
            .binaries(binaries)
            .controller_manager(self.controller_manager)
            .start_with_progress(|cluster| {
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  ready  {:<12} {}  ({secs:.1} s)",
                    cluster.name(),
                    cluster.server_url()
                );
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut written = Vec::with_capacity(total);
        let mut write = |cluster: &kube_envtest::LocalCluster, dir: &Path| {
            written.push(cluster.write_kubeconfig(dir).map_err(|e| e.to_string())?);
            Ok::<_, String>(())
        };
        if let Some(hub_dir) = &self.hub_dir {
            write(fleet.cluster(0), hub_dir)?;
        }
        for cluster in &fleet.clusters()[hub..] {
            write(cluster, &self.dir)?;
        }
        eprintln!(
            "fleet ready in {:.1} s; kubeconfigs:",
            started.elapsed().as_secs_f64()
        );
        for path in &written {
            println!("{}", path.display());
        }
        if self.controller_manager {
            eprintln!("controllers: {}", CONTROLLERS.join(", "));
        }
        eprintln!(
            "try: kubectl --kubeconfig {} get namespaces",
            written.first().map_or(String::new(), |p| p.display().to_string())
        );
        eprintln!("press Ctrl-C to stop");
        wait_for_shutdown().await;
        eprintln!("stopping ...");
        drop(fleet);
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        eprintln!("stopped; removed {} kubeconfig(s)", written.len());
        Ok(())
    }
}

/// The binaries from `dir`, or the usual places (built first by the build script
/// the kube-envtest package ships, when missing).
fn binaries(dir: Option<&Path>) -> Result<Binaries, String> {
    let found = match dir {
        Some(dir) => Binaries::in_dir(dir),
        None => Binaries::find_or_build(),
    };
    found.map_err(|e| e.to_string())
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
