//! `envtest`: a local fleet of real Kubernetes control planes on this machine.
//!
//! ```text
//! envtest up --clusters 3 --dir ./fleet
//! ```
//! starts one etcd and three kube-apiservers, writes `./fleet/cluster-<i>.kubeconfig`
//! for each, and runs until Ctrl-C, then stops every process and removes the
//! kubeconfigs it wrote. Missing control-plane binaries are built first when run
//! from the repository checkout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use kube_envtest::{BUILD_COMMAND, Binaries, EtcdTopology, Fleet, KUBERNETES_VERSION};

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
    /// Print where the kube-apiserver and etcd binaries are (building them if needed).
    Binaries,
}

#[derive(clap::Args)]
struct Up {
    /// How many clusters to start.
    #[arg(long, short = 'n', default_value_t = 3)]
    clusters: usize,
    /// Where to write the kubeconfigs (`<cluster>.kubeconfig`); created if missing.
    #[arg(long, default_value = "envtest-fleet")]
    dir: PathBuf,
    /// One etcd for the fleet, or one per cluster.
    #[arg(long, value_enum, default_value_t = Etcd::Shared)]
    etcd: Etcd,
    /// Directory with kube-apiserver and etcd (default: the build script's cache).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
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
            println!(
                "kube-apiserver: {}\netcd:           {}",
                b.kube_apiserver.display(),
                b.etcd.display()
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
        eprintln!(
            "starting {} cluster(s), kube-apiserver {KUBERNETES_VERSION} ...",
            self.clusters
        );
        let started = Instant::now();
        let fleet = Fleet::builder()
            .clusters(self.clusters)
            .etcd(topology)
            .binaries(binaries)
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
        let written = fleet.write_kubeconfigs(&self.dir).map_err(|e| e.to_string())?;
        eprintln!(
            "fleet ready in {:.1} s; kubeconfigs:",
            started.elapsed().as_secs_f64()
        );
        for path in &written {
            println!("{}", path.display());
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
        eprintln!(
            "stopped; removed {} kubeconfig(s) from {}",
            written.len(),
            self.dir.display()
        );
        Ok(())
    }
}

/// The binaries from `dir`, or the usual places (built first when missing and this
/// is a repository checkout).
fn binaries(dir: Option<&Path>) -> Result<Binaries, String> {
    let found = match dir {
        Some(dir) => Binaries::in_dir(dir),
        None => Binaries::find_or_build(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(BUILD_COMMAND),
        ),
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
