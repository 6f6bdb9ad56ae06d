//! Sharded replicas: three processes split a fleet of 12 clusters between them;
//! kill one, and its clusters move to the other two.
//!
//!     cargo run -p examples --example sharded
//!
//! Without arguments this program is a **supervisor**. It starts a local fleet of
//! three apiservers: apiserver 0 is the manager's own cluster, where the replicas
//! keep their Leases; apiservers 1 and 2 hold the 12 member clusters `m00` to
//! `m11`, each a namespace with a managed ConfigMap in it (a cheap way to get many
//! clusters: each member has its own client and a cache limited to its namespace,
//! so it costs its owner watches of its own, as a real cluster would). It writes a
//! kubeconfig per member, whose context namespace is the member's namespace, into a
//! directory, and starts three **replicas** `a`, `b` and `c`: child processes of
//! this same program, run as
//!
//!     sharded --replica a --fleet-dir <dir> --bind-address 127.0.0.1:<port>
//!
//! Each replica is an ordinary manager with the uniform reconciler of the other
//! examples, plus [`Manager::with_sharding`]: it keeps a peer Lease
//! `sharded-peer-<id>` in the manager's cluster, and works only on the clusters
//! that rendezvous hashing over the live peers gives it, each behind a fence Lease
//! `sharded-shard-<hash>`. Every member cluster is engaged on every replica, but
//! only its owner runs informers, watches and reconciles for it. The timings are
//! short for the demo (lease 4 s, renew 1 s, renew deadline 3 s, probe 1 s); the
//! defaults are 20 s, 10 s, 15 s and 5 s.
//!
//! The supervisor reads each replica's `/readyz?verbose`, which lists the replica's
//! shard (`shard "a" owns 4 cluster(s); peers: a, b, c`) and every cluster as owned
//! (its state, e.g. `synced`) or `not owned here (owner b)`, and prints who owns
//! what. Then it kills the replica that owns the most clusters with SIGKILL: it
//! releases nothing, so the others wait until its peer Lease has gone unrenewed for
//! a lease duration, take its fences and start its clusters. The supervisor prints
//! the table again with the time the move took, creates a new ConfigMap in each
//! moved cluster to show that its new owner reconciles it, and stops the survivors
//! with SIGTERM: they drain their reconciles, release their fences and delete their
//! peer Leases, and exit 0.
//!
//! Each replica's log goes to `replica-<id>.log` in the fleet directory (a
//! temporary one unless `--fleet-dir` is given). While it runs, try
//! `curl 'http://127.0.0.1:<port>/readyz?verbose'` or
//! `curl -s http://127.0.0.1:<port>/metrics | grep shard` with a port it printed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use examples::fleet::LocalFleet;
use examples::uniform::{self, Progress};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use multicluster_runtime::cache::CacheOptions;
use multicluster_runtime::manager::{FENCE_LABEL, PEER_LABEL, Sharding};
use multicluster_runtime::providers::clusters::Clusters;
use multicluster_runtime::{Cluster, ClusterOptions, Manager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The replicas' identities.
pub const REPLICAS: [&str; 3] = ["a", "b", "c"];
/// How many member clusters the fleet has.
pub const MEMBERS: usize = 12;
/// The prefix of the replicas' Lease names.
pub const PREFIX: &str = "sharded";
/// How long a Lease lives after its last renewal: a killed replica's clusters move
/// about this long after its death.
pub const LEASE: Duration = Duration::from_secs(4);
/// How often a replica renews its peer Lease.
pub const RENEW: Duration = Duration::from_secs(1);
/// How long a replica retries a failed renewal before it stops all its work.
pub const DEADLINE: Duration = Duration::from_secs(3);
/// How often a fence held by another replica is tried again.
pub const PROBE: Duration = Duration::from_secs(1);
/// How long the supervisor waits for the replicas to agree, at most.
const PATIENCE: Duration = Duration::from_secs(90);

/// The command line: nothing for the supervisor, `--replica` for a replica.
#[derive(Parser, Debug, Clone)]
#[command(about = "Three sharded replicas over a local fleet; one is killed and its clusters move")]
pub struct Args {
    /// Run as the replica with this identity (the supervisor starts them).
    #[arg(long)]
    pub replica: Option<String>,
    /// The directory with the kubeconfigs: `manager.kubeconfig` and
    /// `members/<cluster>.kubeconfig`. The supervisor writes it (default: a
    /// temporary directory) and the replicas read it.
    #[arg(long)]
    pub fleet_dir: Option<PathBuf>,
    /// Where a replica serves /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind_address: SocketAddr,
}

#[allow(dead_code)] // the integration test includes this file for its functions
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::init_tracing();
    let args = Args::parse();
    if let Some(identity) = &args.replica {
        let dir = args
            .fleet_dir
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--replica needs --fleet-dir"))?;
        return run_replica(identity, dir, args.bind_address).await;
    }
    let temporary = tempfile::tempdir()?;
    let dir = args.fleet_dir.unwrap_or_else(|| temporary.path().to_path_buf());
    let program = std::env::current_exe()?;
    supervise(&dir, |replica_args| {
        let mut command = std::process::Command::new(&program);
        command.args(replica_args);
        command
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// A replica
// ---------------------------------------------------------------------------------

/// Runs the replica `identity` on the fleet described in `dir` until SIGTERM or
/// Ctrl-C, then hands its clusters back.
///
/// # Errors
/// The fleet directory cannot be read, or the manager fails.
pub async fn run_replica(identity: &str, dir: &Path, bind_address: SocketAddr) -> anyhow::Result<()> {
    let manager = replica(identity, dir, bind_address).await?;
    let token = CancellationToken::new();
    tokio::spawn({
        let token = token.clone();
        async move {
            examples::shutdown_signal().await;
            tracing::info!("shutdown signal: draining reconciles and releasing clusters");
            token.cancel();
        }
    });
    println!("--- replica {identity} serving http://{bind_address}/readyz?verbose");
    manager.start(token).await?;
    println!("--- replica {identity} stopped cleanly");
    Ok(())
}

/// The manager of one replica: every member cluster engaged through a `Clusters`
/// provider, sharding with this replica's identity, the HTTP endpoint, and the
/// uniform controller. Sharding is the only difference from an unsharded manager.
///
/// # Errors
/// A kubeconfig cannot be read, or the controller cannot be registered.
pub async fn replica(identity: &str, dir: &Path, bind_address: SocketAddr) -> anyhow::Result<Manager> {
    let host = kube::Client::try_from(read_kubeconfig(&dir.join("manager.kubeconfig")).await?)?;
    let provider = Arc::new(Clusters::new());
    for (name, path) in member_kubeconfigs(dir)? {
        let config = read_kubeconfig(&path).await?;
        // The context's namespace is the member's namespace: its cache watches only
        // that namespace.
        let namespace = config.default_namespace.clone();
        let options =
            ClusterOptions::default().cache(CacheOptions::default().default_namespaces([namespace]));
        let cluster = Cluster::with_options(name, kube::Client::try_from(config)?, options);
        provider.add(Arc::new(cluster)).await?;
    }
    let sharding = Sharding::new(PREFIX)
        .identity(identity)
        .lease_duration(LEASE)
        .renew_period(RENEW)
        .renew_deadline(DEADLINE)
        .probe_interval(PROBE);
    let manager = Manager::with_provider(Arc::new(Cluster::new("", host)), provider)
        .with_sharding(sharding)
        .with_http_endpoint(bind_address)
        .with_graceful_shutdown_timeout(Duration::from_secs(10));
    uniform::controller(&manager)
        .register(uniform::reconcile, uniform::error_policy, Progress::new())
        .await?;
    Ok(manager)
}

/// Reads a kubeconfig file into a client configuration (its current context).
async fn read_kubeconfig(path: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// The member kubeconfigs in `dir`, by cluster name (the file's stem), sorted.
fn member_kubeconfigs(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir(dir.join("members"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "kubeconfig")
            && let Some(name) = path.file_stem().and_then(|s| s.to_str())
        {
            members.push((name.to_owned(), path.clone()));
        }
    }
    members.sort();
    Ok(members)
}

// ---------------------------------------------------------------------------------
// The supervisor
// ---------------------------------------------------------------------------------

/// The name of member cluster `index`, also its namespace.
pub fn member(index: usize) -> String {
    format!("m{index:02}")
}

/// The apiserver (1 or 2) that holds member `index`.
fn apiserver_of(index: usize) -> usize {
    1 + index % 2
}

/// Who owns which member cluster: cluster name → replica identity.
pub type Owners = BTreeMap<String, String>;

/// What the demo saw, for its test.
#[derive(Debug)]
pub struct Demo {
    /// Owners once the three replicas agreed.
    pub before: Owners,
    /// The replica that was killed.
    pub killed: String,
    /// Owners once the two survivors agreed.
    pub after: Owners,
    /// From the kill until the survivors owned every cluster.
    pub moved_in: Duration,
    /// How the survivors exited after SIGTERM.
    pub survivors_exit: Vec<(String, ExitStatus)>,
    /// Leases still naming a holder after the survivors stopped.
    pub leases_held_after_stop: usize,
}

/// Starts the local fleet, writes its kubeconfigs into `dir`, starts the three
/// replicas with `command` (which turns a replica's arguments into the process to
/// run: this program itself, normally), prints who owns what, kills one, prints it
/// again with the time the move took, and stops the survivors with SIGTERM.
///
/// # Errors
/// The fleet does not start, a replica cannot be started, or the replicas do not
/// agree within 90 s.
pub async fn supervise(
    dir: &Path,
    command: impl Fn(&[String]) -> std::process::Command,
) -> anyhow::Result<Demo> {
    let fleet = LocalFleet::start(3).await?;
    write_fleet(&fleet, dir).await?;
    println!("--- fleet directory: {}", dir.display());

    let mut replicas = Vec::new();
    for identity in REPLICAS {
        replicas.push(Replica::start(identity, dir, &command)?);
    }

    println!("--- waiting until the three replicas split the {MEMBERS} clusters ...");
    let (before, _) = wait_for_split(&replicas, Instant::now()).await?;
    print_table("owners with three replicas", &before, None, &[]);

    // Kill the busiest replica: no draining, no release; its Leases must expire.
    let killed = busiest(&before);
    let lost: Vec<String> = owned_by(&before, &killed);
    let position = replicas
        .iter()
        .position(|r| r.identity == killed)
        .expect("a replica");
    let mut victim = replicas.remove(position);
    println!(
        "--- killing replica {killed} (SIGKILL), owner of {}",
        lost.join(" ")
    );
    let killed_at = Instant::now();
    victim.child.kill().await?;

    let (after, moved_in) = wait_for_split(&replicas, killed_at).await?;
    print_table(
        &format!(
            "owners after replica {killed} was killed: moved in {:.1} s",
            moved_in.as_secs_f64()
        ),
        &after,
        Some(&killed),
        &lost,
    );
    println!(
        "    (lease {} s, probe {} s: the survivors wait until {killed}'s peer Lease has gone unrenewed for the lease duration)",
        LEASE.as_secs(),
        PROBE.as_secs()
    );

    // The moved clusters are worked on again: a new ConfigMap in each is annotated.
    for cluster in &lost {
        let index: usize = cluster[1..].parse()?;
        let client = fleet.client(apiserver_of(index))?;
        uniform::create_managed_in(client.clone(), cluster, "after-move").await?;
        wait_until(&format!("after-move annotated in {cluster}"), || {
            annotated(client.clone(), cluster, "after-move")
        })
        .await?;
    }
    println!(
        "--- a new ConfigMap in each moved cluster was reconciled by its new owner ({})",
        lost.iter()
            .map(|c| format!("{c}→{}", after[c]))
            .collect::<Vec<_>>()
            .join(" ")
    );

    println!("--- stopping the survivors (SIGTERM): they drain, release their fences and leave");
    let mut survivors_exit = Vec::new();
    for replica in &mut replicas {
        let status = replica.terminate().await?;
        println!("    replica {}: {status}", replica.identity);
        survivors_exit.push((replica.identity.clone(), status));
    }
    let leases_held_after_stop = leases_held(fleet.client(0)?).await?;
    println!("--- Leases still held by anyone: {leases_held_after_stop}");
    Ok(Demo {
        before,
        killed,
        after,
        moved_in,
        survivors_exit,
        leases_held_after_stop,
    })
}

/// Creates each member's namespace with a managed ConfigMap, and writes the
/// manager's kubeconfig and one per member (its context namespace set to the
/// member's namespace) into `dir`.
async fn write_fleet(fleet: &LocalFleet, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("members"))?;
    write_kubeconfig(
        &dir.join("manager.kubeconfig"),
        fleet.fleet().cluster(0).kubeconfig(),
    )?;
    for index in 0..MEMBERS {
        let name = member(index);
        let apiserver = fleet.fleet().cluster(apiserver_of(index));
        let mut namespace = Namespace::default();
        namespace.metadata.name = Some(name.clone());
        Api::<Namespace>::all(apiserver.client()?)
            .create(&PostParams::default(), &namespace)
            .await?;
        uniform::create_managed_in(apiserver.client()?, &name, "app-settings").await?;
        let mut kubeconfig = apiserver.kubeconfig().clone();
        for context in &mut kubeconfig.contexts {
            if let Some(context) = context.context.as_mut() {
                context.namespace = Some(name.clone());
            }
        }
        write_kubeconfig(
            &dir.join("members").join(format!("{name}.kubeconfig")),
            &kubeconfig,
        )?;
    }
    Ok(())
}

/// Writes `kubeconfig` to `path` (as JSON, which kubeconfig readers accept),
/// readable by its owner only: it holds a private key.
fn write_kubeconfig(path: &Path, kubeconfig: &Kubeconfig) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(serde_json::to_string_pretty(kubeconfig)?.as_bytes())?;
    Ok(())
}

/// A replica process, killed if still running when dropped.
struct Replica {
    identity: String,
    address: SocketAddr,
    child: tokio::process::Child,
}

impl Replica {
    /// Starts replica `identity` on a free port, its output into
    /// `<dir>/replica-<identity>.log`.
    fn start(
        identity: &str,
        dir: &Path,
        command: &impl Fn(&[String]) -> std::process::Command,
    ) -> anyhow::Result<Self> {
        let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let args = [
            "--replica".to_owned(),
            identity.to_owned(),
            "--fleet-dir".to_owned(),
            dir.display().to_string(),
            "--bind-address".to_owned(),
            address.to_string(),
        ];
        let log_path = dir.join(format!("replica-{identity}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut command = tokio::process::Command::from(command(&args));
        command
            .env("NO_COLOR", "1") // plain log files
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn()?;
        println!(
            "--- started replica {identity}: pid {}, http://{address}/readyz?verbose, log {}",
            child.id().unwrap_or_default(),
            log_path.display()
        );
        Ok(Replica {
            identity: identity.to_owned(),
            address,
            child,
        })
    }

    /// Sends SIGTERM and waits for the exit, SIGKILL after 30 s.
    async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) has no memory effects, and the child is not reaped yet
            // (we hold it), so its PID is not anyone else's.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("replica {} did not stop within 30 s of SIGTERM", self.identity)
            }
        }
    }

    /// What this replica reports: its live peers and the clusters it owns, or
    /// `None` if it does not answer (yet).
    async fn report(&self) -> Option<ShardReport> {
        let body = http_get(self.address, "/readyz?verbose").await.ok()?;
        ShardReport::parse(&body)
    }
}

/// One replica's `/readyz?verbose`, the parts about sharding.
#[derive(Debug, Default, PartialEq, Eq)]
struct ShardReport {
    /// The live peers it sees, itself included.
    peers: BTreeSet<String>,
    /// The member clusters it owns.
    owned: BTreeSet<String>,
}

impl ShardReport {
    /// Reads lines such as
    ///
    /// ```text
    /// [+]cluster "m00" synced
    /// [+]cluster "m01" not owned here (owner b)
    /// [+]shard "a" owns 1 cluster(s); peers: a, b, c
    /// ```
    fn parse(body: &str) -> Option<Self> {
        let mut report = ShardReport::default();
        let mut shard_line = false;
        for line in body.lines() {
            let line = line.get(3..).unwrap_or_default(); // past "[+]" or "[-]"
            if let Some(rest) = line.strip_prefix("cluster \"")
                && let Some((name, state)) = rest.split_once("\" ")
                && !name.is_empty()
                && !state.starts_with("not owned here")
            {
                report.owned.insert(name.to_owned());
            } else if line.starts_with("shard ")
                && let Some((_, peers)) = line.split_once("peers: ")
            {
                shard_line = true;
                report.peers = peers
                    .split(", ")
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
        }
        shard_line.then_some(report)
    }
}

/// Waits until every running replica sees exactly the running replicas as peers
/// and every member cluster is owned by exactly one of them, unchanged for a
/// second. Returns the owners and when, counted from `since`, that state began.
async fn wait_for_split(replicas: &[Replica], since: Instant) -> anyhow::Result<(Owners, Duration)> {
    let expected: BTreeSet<String> = replicas.iter().map(|r| r.identity.clone()).collect();
    let mut stable: Option<(Owners, Instant)> = None;
    loop {
        let mut owners = Owners::new();
        let mut agreed = true;
        for replica in replicas {
            match replica.report().await {
                Some(report) if report.peers == expected => {
                    for cluster in report.owned {
                        // Two owners at once would break this split.
                        agreed &= owners.insert(cluster, replica.identity.clone()).is_none();
                    }
                }
                _ => agreed = false,
            }
        }
        agreed &= owners.len() == MEMBERS;
        match &stable {
            Some((seen, from)) if agreed && *seen == owners => {
                if from.elapsed() >= Duration::from_secs(1) {
                    return Ok((owners, from.duration_since(since)));
                }
            }
            _ => stable = agreed.then(|| (owners, Instant::now())),
        }
        if since.elapsed() > PATIENCE {
            anyhow::bail!("the replicas {expected:?} did not split the fleet within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The replica that owns the most clusters (the first of them by name).
fn busiest(owners: &Owners) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in owners.values() {
        *counts.entry(owner).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or_default();
    counts
        .into_iter()
        .find(|(_, count)| *count == most)
        .map(|(owner, _)| owner.to_owned())
        .unwrap_or_default()
}

/// The clusters `identity` owns.
pub fn owned_by(owners: &Owners, identity: &str) -> Vec<String> {
    owners
        .iter()
        .filter(|(_, owner)| *owner == identity)
        .map(|(cluster, _)| cluster.clone())
        .collect()
}

/// Prints one row per replica, one column per cluster: `#` owned, `+` taken over
/// from the `killed` replica (one of `moved`), `.` not owned.
fn print_table(title: &str, owners: &Owners, killed: Option<&str>, moved: &[String]) {
    println!("--- {title}");
    let header: String = (0..MEMBERS).map(|i| format!(" {}", member(i))).collect();
    println!("              {header}");
    for identity in REPLICAS {
        let mut row = String::new();
        for index in 0..MEMBERS {
            let cluster = member(index);
            let mark = match owners.get(&cluster) {
                Some(owner) if owner == identity && moved.contains(&cluster) => '+',
                Some(owner) if owner == identity => '#',
                _ => '.',
            };
            row.push_str(&format!("  {mark} "));
        }
        let note = if killed == Some(identity) {
            "killed".to_owned()
        } else {
            format!("owns {}", owned_by(owners, identity).len())
        };
        println!("    replica {identity} {row}  {note}");
    }
}

/// Whether the ConfigMap `name` in `namespace` carries the uniform reconciler's
/// annotation.
async fn annotated(client: kube::Client, namespace: &str, name: &str) -> bool {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    matches!(api.get_opt(name).await, Ok(Some(cm)) if cm.annotations().contains_key(uniform::RECONCILED_IN))
}

/// Polls `check` every 100 ms until it holds, for at most 90 s.
async fn wait_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > PATIENCE {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The peer and fence Leases of the replicas in the manager's cluster that still
/// name a holder.
async fn leases_held(host: kube::Client) -> anyhow::Result<usize> {
    let api: Api<Lease> = Api::namespaced(host, "default");
    let mut held = 0;
    for label in [PEER_LABEL, FENCE_LABEL] {
        let leases = api
            .list(&ListParams::default().labels(&format!("{label}={PREFIX}")))
            .await?;
        held += leases
            .items
            .iter()
            .filter(|l| {
                l.spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_ref())
                    .is_some_and(|h| !h.is_empty())
            })
            .count();
    }
    Ok(held)
}

/// A plain HTTP/1.1 GET of `path` from `address`: the response body.
async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}
