//! Which of the engaged clusters this replica works on.
//!
//! Providers engage every cluster into the manager; the coordinator decides which of
//! them the manager engages into its components (controllers, above all). Without
//! [sharding](Sharding) that is all of them. With it, replicas of one program split
//! the fleet between them on `coordination.k8s.io` Leases in the manager's cluster:
//!
//! - each replica keeps a **peer Lease** `<prefix>-peer-<identity>` with its weight,
//!   and reads every replica's from one watch;
//! - a cluster belongs to the live peer that [rendezvous hashing](hrw) ranks first,
//!   so a join or a leave moves only about 1/N of the clusters;
//! - before it works on a cluster, the owner takes the cluster's **fence Lease**
//!   `<prefix>-shard-<hash of the name>`; a fence is valid while its holder's peer
//!   Lease is, so a replica renews one Lease however many clusters it owns. A
//!   replica that hands a cluster over first stops working on it, then releases
//!   the fence; one that cannot renew its peer Lease stops working on every cluster
//!   before the others may take them. No cluster is worked on by two replicas at
//!   once, and a dead replica's clusters move once its peer Lease expires.
//!
//! A cluster not owned here has no informer, no watch, no health probe and no queue
//! entry on this replica. See `docs/decisions/sharding.md` for the protocol and its
//! failure cases.

pub(crate) mod hrw;
mod peers;
mod shard;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lease::{Claim, Elector, LeaseStore, Lost, Terms, hold_terms};
use crate::cluster::ClusterName;
pub(crate) use crate::term::Term;
pub(crate) use peers::Peer;
use peers::{Peers, WEIGHT_ANNOTATION};

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod with_manager;

/// The label that marks a peer Lease, with the prefix as its value.
pub const PEER_LABEL: &str = "multicluster-runtime.io/shard-peer-of";
/// The label that marks a fence Lease, with the prefix as its value.
pub const FENCE_LABEL: &str = "multicluster-runtime.io/shard-fence-of";
/// The annotation of a fence Lease that names its cluster.
pub const CLUSTER_ANNOTATION: &str = "multicluster-runtime.io/cluster";
/// The largest weight a replica counts with ([`Sharding::weight`]): its own, and
/// what a peer Lease advertises (more counts as this). Whoever can write a peer
/// Lease could otherwise advertise a weight that takes every cluster; with the cap,
/// the honest replicas of weight 1 keep at least 1/(1 + 100) of the fleet each
/// against one such Lease. Restrict who may write the Leases
/// (`docs/decisions/coordination.md#trust`).
pub const MAX_WEIGHT: u32 = 100;

/// Sharding settings for a [`Manager`](super::Manager): replicas of one program split
/// the fleet between them (see [Sharding](super#sharding)).
///
/// Defaults are those of Go's multicluster-runtime sharded coordinator: lease
/// duration 20 s, renew period 10 s, probe interval 5 s; the renew deadline is
/// 15 s. The Leases live in the manager's own cluster, in namespace `default` unless
/// set; the manager needs `get`, `list`, `watch`, `create`, `update` and `delete` on
/// `leases` there (`deploy/rbac/sharding.yaml`). Their names are not known in
/// advance, so RBAC cannot pin them: whoever else may write Leases in that
/// namespace can steer which replica works on which cluster. Give them a namespace
/// of their own (see `docs/decisions/coordination.md#trust`).
///
/// ```
/// use std::time::Duration;
/// use multicluster_runtime::manager::Sharding;
///
/// let sharding = Sharding::new("fleet-operator")
///     .namespace("operators")
///     .identity("replica-0")
///     .weight(2)
///     .lease_duration(Duration::from_secs(20))
///     .renew_period(Duration::from_secs(10))
///     .probe_interval(Duration::from_secs(5));
/// assert_eq!(sharding.peer_lease(), "fleet-operator-peer-replica-0");
/// assert!(sharding.fence_lease(&"eu-1".into()).starts_with("fleet-operator-shard-"));
/// ```
#[derive(Clone, Debug)]
pub struct Sharding {
    prefix: String,
    namespace: String,
    identity: String,
    weight: u32,
    lease_duration: Duration,
    renew_period: Duration,
    renew_deadline: Duration,
    probe_interval: Duration,
}

impl Sharding {
    /// Shard on Leases named after `prefix` (a DNS label of at most 40 characters,
    /// e.g. the program's name), with an identity of the host name and a random
    /// suffix, weight 1, and the default timings.
    pub fn new(prefix: impl Into<String>) -> Self {
        Sharding {
            prefix: prefix.into(),
            namespace: "default".into(),
            identity: super::leader::default_identity().to_lowercase().replace('_', "-"),
            weight: 1,
            lease_duration: Duration::from_secs(20),
            renew_period: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(15),
            probe_interval: Duration::from_secs(5),
        }
    }

    /// The namespace of the Leases (default `default`).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// This replica's identity, unique among the replicas (default: host name and a
    /// random suffix). Used in its peer Lease's name when it is a valid name part.
    #[must_use]
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    /// This replica's share of the clusters relative to the others (default 1); 0
    /// takes none. At most [`MAX_WEIGHT`]: a larger weight counts as that, here and
    /// on every other replica.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.min(MAX_WEIGHT);
        self
    }

    /// How long a peer or fence Lease lives after its holder last renewed it, as
    /// observed by the others (default 20 s). A dead replica's clusters move about
    /// this long after it died.
    #[must_use]
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration;
        self
    }

    /// How often the peer Lease is renewed (default 10 s): one write per replica per
    /// renew period, however many clusters it owns.
    #[must_use]
    pub fn renew_period(mut self, period: Duration) -> Self {
        self.renew_period = period;
        self
    }

    /// How long a replica keeps retrying a failed renewal of its peer Lease before it
    /// stops working on all its clusters (default 15 s); between the renew period and
    /// the lease duration.
    #[must_use]
    pub fn renew_deadline(mut self, deadline: Duration) -> Self {
        self.renew_deadline = deadline;
        self
    }

    /// How often a fence held by another is tried again (default 5 s); peers'
    /// liveness is re-checked as their Leases would expire.
    #[must_use]
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// This replica's identity.
    pub fn holder_identity(&self) -> &str {
        &self.identity
    }

    /// The name of this replica's peer Lease: `<prefix>-peer-<identity>`, or with a
    /// hash of the identity if the identity is not a valid name part.
    pub fn peer_lease(&self) -> String {
        if is_name_part(&self.identity, 200) {
            format!("{}-peer-{}", self.prefix, self.identity)
        } else {
            format!("{}-peer-{:016x}", self.prefix, hrw::hash(&[&self.identity]))
        }
    }

    /// The name of the peer Lease of the replica `identity` (of this prefix).
    pub(crate) fn peer_lease_of(&self, identity: &str) -> String {
        Sharding {
            identity: identity.to_owned(),
            ..self.clone()
        }
        .peer_lease()
    }

    /// The name of the fence Lease of `cluster`: `<prefix>-shard-<hash of the name>`,
    /// a valid name whatever the cluster's.
    pub fn fence_lease(&self, cluster: &ClusterName) -> String {
        format!("{}-shard-{:016x}", self.prefix, hrw::hash(&[cluster.as_str()]))
    }

    /// `namespace/prefix`, for errors.
    pub(crate) fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.prefix)
    }

    pub(crate) fn namespace_name(&self) -> &str {
        &self.namespace
    }

    /// Why these settings cannot work, if they cannot.
    pub(crate) fn invalid(&self) -> Option<String> {
        let prefix_ok = is_name_part(&self.prefix, 40);
        if !prefix_ok {
            return Some(format!(
                "prefix {:?} must be a DNS label of at most 40 characters (a-z, 0-9, '-')",
                self.prefix
            ));
        }
        if self.probe_interval.is_zero() {
            return Some("probe interval is zero".into());
        }
        self.claim(String::new(), 0.0).invalid()
    }

    fn claim(&self, name: String, phase: f64) -> Claim {
        Claim {
            name,
            identity: self.identity.clone(),
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            renew_period: self.renew_period,
            retry_period: self.probe_interval,
            phase,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// What the coordinator drives: the manager, or a stand-in in the simulation.
#[async_trait]
pub(crate) trait Host: Send + Sync + 'static {
    /// Engages the cluster `name` into the components under `term`; `false` if it is
    /// not engaged (any more).
    async fn start(&self, name: &ClusterName, term: &Term) -> bool;
    /// Disengages `name` from the components if `term` is its current term. The
    /// caller then [ends](Term::end) the term, which waits for the work inside.
    async fn stop(&self, name: &ClusterName, term: &Term);
    /// Frees what `name` holds here now that its work has ended (the watches of its
    /// caches), unless it is owned again meanwhile.
    async fn forget(&self, name: &ClusterName);
}

/// A change of ownership, for logs and metrics.
pub(crate) enum Ownership {
    Acquired,
    Released,
    Lost(String),
}

/// What the coordinator learns from the manager and from its shards.
enum Change {
    Known(ClusterName, u64),
    Gone(ClusterName, u64),
    /// A shard's task ended.
    Finished(ClusterName),
}

/// Counts of ownership changes since start.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Changes {
    pub acquired: u64,
    pub released: u64,
    pub lost: u64,
}

/// What the coordinator sees, for readiness and metrics.
#[derive(Default, Clone)]
pub(crate) struct View {
    /// Live peers, this replica included once its own record is seen.
    pub peers: Vec<Peer>,
    /// Clusters this replica works on now.
    pub owned: HashSet<ClusterName>,
}

/// The sharded coordinator of one manager.
pub(crate) struct Coordinator {
    options: Sharding,
    store: Arc<dyn LeaseStore>,
    host: Arc<dyn Host>,
    changes: mpsc::UnboundedSender<Change>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
    view: Mutex<View>,
    /// Peer Leases as this replica has seen them, from its watch.
    peers: Mutex<Peers>,
    /// While this replica holds its peer Lease: the term, cancelled when it ends.
    peer_term: watch::Sender<Option<CancellationToken>>,
    /// Peer records marked dead or deleted by this replica, by name and version, so
    /// that each version is written once.
    swept: Mutex<HashSet<(String, String)>>,
    /// Cancelled once the run loop stops: shards then try to hand their fences back
    /// once only.
    stopping: CancellationToken,
    acquired: AtomicU64,
    released: AtomicU64,
    lost: AtomicU64,
}

impl Coordinator {
    pub(crate) fn new(options: Sharding, store: Arc<dyn LeaseStore>, host: Arc<dyn Host>) -> Arc<Self> {
        let (changes, receiver) = mpsc::unbounded_channel();
        Arc::new(Coordinator {
            options,
            store,
            host,
            changes,
            receiver: Mutex::new(Some(receiver)),
            view: Mutex::default(),
            peers: Mutex::default(),
            peer_term: watch::Sender::new(None),
            swept: Mutex::default(),
            stopping: CancellationToken::new(),
            acquired: AtomicU64::new(0),
            released: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        })
    }

    /// The cluster `name` is engaged in the manager, as its engagement `generation`.
    ///
    /// The manager tells [`known`](Self::known) and [`gone`](Self::gone) under the
    /// name's gate, in the order the engagements change; a `gone` then removes the
    /// name only if no later engagement was made known.
    pub(crate) fn known(&self, name: &ClusterName, generation: u64) {
        let _ = self.changes.send(Change::Known(name.clone(), generation));
    }

    /// The engagement `generation` of `name` ended, and none replaced it.
    pub(crate) fn gone(&self, name: &ClusterName, generation: u64) {
        let _ = self.changes.send(Change::Gone(name.clone(), generation));
    }

    pub(crate) fn options(&self) -> &Sharding {
        &self.options
    }

    /// Live peers and owned clusters, as of now.
    pub(crate) fn view(&self) -> View {
        lock(&self.view).clone()
    }

    /// How many peer record versions this replica remembers having swept.
    #[cfg(test)]
    pub(crate) fn swept(&self) -> usize {
        lock(&self.swept).len()
    }

    /// Ownership changes so far.
    pub(crate) fn changes(&self) -> Changes {
        Changes {
            acquired: self.acquired.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }

    /// The live peer that should own `name`, by this replica's view.
    pub(crate) fn owner_of(&self, name: &ClusterName) -> Option<String> {
        let view = lock(&self.view);
        hrw::owner(
            name.as_str(),
            view.peers.iter().map(|p| (p.identity.as_str(), p.weight)),
        )
    }

    fn fence_claim(&self, name: &ClusterName) -> Claim {
        let mut claim = self.options.claim(self.options.fence_lease(name), 0.0);
        claim
            .labels
            .insert(FENCE_LABEL.into(), self.options.prefix.clone());
        claim
            .annotations
            .insert(CLUSTER_ANNOTATION.into(), name.as_str().to_owned());
        claim
    }

    fn peer_claim(&self) -> Claim {
        // Replicas started together do not all renew at once.
        let phase = (hrw::hash(&[&self.options.identity, "phase"]) % 64) as f64 / 64.0;
        let mut claim = self.options.claim(self.options.peer_lease(), phase);
        claim
            .labels
            .insert(PEER_LABEL.into(), self.options.prefix.clone());
        claim
            .annotations
            .insert(WEIGHT_ANNOTATION.into(), self.options.weight.to_string());
        claim
    }

    fn changed(&self, name: &ClusterName, change: Ownership) {
        let identity = &self.options.identity;
        match change {
            Ownership::Acquired => {
                self.acquired.fetch_add(1, Ordering::Relaxed);
                lock(&self.view).owned.insert(name.clone());
                tracing::info!(cluster = %name, identity, "shard acquired");
            }
            Ownership::Released => {
                self.released.fetch_add(1, Ordering::Relaxed);
                lock(&self.view).owned.remove(name);
                tracing::info!(cluster = %name, identity, "shard handed over");
            }
            Ownership::Lost(reason) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                lock(&self.view).owned.remove(name);
                tracing::warn!(cluster = %name, identity, reason, "shard lost; its work was cut short");
            }
        }
    }

    /// Runs until `stop` is cancelled, then hands every owned cluster back and
    /// deletes this replica's peer Lease.
    ///
    /// # Panics
    /// If run twice.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut changes = lock(&self.receiver).take().expect("the coordinator runs once");
        let record_stop = CancellationToken::new();
        // The peer record is kept until the shards are handed back, then deleted.
        let record = TaskTracker::new();
        record.spawn(self.clone().keep_peer_record(record_stop.clone()));
        record.close();
        let mut snapshots = self.store.watch(&format!("{PEER_LABEL}={}", self.options.prefix));
        let fences = format!("{FENCE_LABEL}={}", self.options.prefix);
        // Starts the fences' watch now, so that it has listed before a fence is held.
        let _ = self.store.cached(&fences, "");
        let mut next_fence_check = Instant::now();
        let mut state = State::default();
        let shards = TaskTracker::new();
        let mut wake = Instant::now() + self.options.probe_interval;
        loop {
            let mut touched = Vec::new();
            tokio::select! {
                () = stop.cancelled() => break,
                Some(snapshot) = snapshots.next() => lock(&self.peers).observe(&snapshot, Instant::now()),
                Some(change) = changes.recv() => touched.push(state.apply(change)),
                () = tokio::time::sleep_until(wake) => {}
            }
            while let Ok(change) = changes.try_recv() {
                touched.push(state.apply(change));
            }
            let now = Instant::now();
            let (live, next_expiry, sweep) = {
                let peers = lock(&self.peers);
                let sweep = peers.sweep(&self.options.identity, now, self.options.lease_duration);
                // A version no longer seen cannot come up again: forget having swept it.
                lock(&self.swept).retain(|(name, version)| peers.holds(name, version));
                (peers.live(now), peers.next_expiry(now), sweep)
            };
            self.sweep(sweep, &shards);
            if live != state.live {
                state.ring = hrw::Ring::new(live.iter().map(|p| (p.identity.as_str(), p.weight)));
                state.live = live;
                lock(&self.view).peers = state.live.clone();
                tracing::info!(
                    identity = self.options.identity,
                    peers = ?state.live.iter().map(|p| &p.identity).collect::<Vec<_>>(),
                    "shard peers changed"
                );
                touched = state.known.keys().chain(state.running.keys()).cloned().collect();
            }
            for name in touched {
                self.decide(&name, &mut state, &shards);
            }
            // The fences held, once per probe interval (at most a renew period).
            if now >= next_fence_check {
                self.check_fences(&state, &fences, &shards);
                next_fence_check = now + self.options.probe_interval;
            }
            // Re-check when a peer record would expire, and at every probe interval
            // (when the fences are checked next).
            let probe = next_fence_check.min(now + self.options.probe_interval);
            wake = next_expiry.map_or(probe, |at| at.min(probe));
        }
        self.stopping.cancel();
        for wanted in state.running.values() {
            wanted.token.cancel();
        }
        shards.close();
        shards.wait().await;
        record_stop.cancel();
        record.wait().await;
    }

    /// Marks dead peers and deletes long-dead records (see `peers`), each version
    /// once; another replica doing the same first is a harmless conflict.
    fn sweep(self: &Arc<Self>, sweep: peers::Sweep, tasks: &TaskTracker) {
        let mut swept = lock(&self.swept);
        let key = |name: &Option<String>, version: &Option<String>| {
            (
                name.clone().unwrap_or_default(),
                version.clone().unwrap_or_default(),
            )
        };
        let mark: Vec<_> = sweep
            .mark
            .into_iter()
            .filter(|l| swept.insert(key(&l.metadata.name, &l.metadata.resource_version)))
            .collect();
        let delete: Vec<_> = sweep
            .delete
            .into_iter()
            .filter(|(name, version)| swept.insert((name.clone(), version.clone())))
            .collect();
        drop(swept);
        if mark.is_empty() && delete.is_empty() {
            return;
        }
        let this = self.clone();
        tasks.spawn(async move {
            for lease in mark {
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
                let mut dead = (*lease).clone();
                if let Some(spec) = dead.spec.as_mut() {
                    spec.holder_identity = None;
                }
                if this.store.replace(dead).await.is_ok() {
                    tracing::info!(
                        identity = this.options.identity,
                        peer = holder,
                        "peer lease expired; marked dead"
                    );
                }
            }
            for (name, version) in delete {
                let _ = this.store.delete(&name, Some(&version)).await;
            }
        });
    }

    /// Cuts the work on every cluster whose fence, as the fences' watch (selected
    /// by `fences`) shows it, was changed by someone else since this replica took
    /// it: deleted, or naming another holder, confirmed by a fresh read (the watch
    /// may be behind our own write). Each version seen is read at most once per
    /// shard; nothing is checked before the watch has listed.
    fn check_fences(self: &Arc<Self>, state: &State, fences: &str, tasks: &TaskTracker) {
        let me = self.options.identity.as_str();
        for (name, wanted) in &state.running {
            let mut slot = lock(&wanted.held);
            let Some(held) = slot.as_mut().filter(|held| !held.lost.is_cancelled()) else {
                continue;
            };
            let Some(seen) = self.store.cached(fences, &held.lease) else {
                return;
            };
            let seen = seen.as_ref();
            let version = seen.and_then(|lease| lease.metadata.resource_version.clone());
            if version.is_some() && version == held.version {
                held.seen_ours = true;
                continue;
            }
            // The watch has not caught up with our write yet.
            if !held.seen_ours && version == held.replaced {
                continue;
            }
            let holder = seen.and_then(|lease| lease.spec.as_ref()?.holder_identity.as_deref());
            if seen.is_some() && holder == Some(me) {
                continue;
            }
            if held.checked.as_ref() == Some(&version) {
                continue;
            }
            held.checked = Some(version);
            let (store, lease, lost) = (self.store.clone(), held.lease.clone(), held.lost.clone());
            let (name, me) = (name.clone(), me.to_owned());
            tasks.spawn(async move {
                match store.get(&lease).await {
                    Ok(current) => {
                        let holder = current
                            .as_ref()
                            .and_then(|l| l.spec.as_ref()?.holder_identity.clone());
                        if holder.as_deref() != Some(me.as_str()) {
                            tracing::warn!(
                                cluster = %name,
                                identity = me,
                                lease = format!("{}/{lease}", store.namespace()),
                                "the fence Lease no longer names this replica; cutting the work on its cluster"
                            );
                            lost.cancel();
                        }
                    }
                    Err(err) => {
                        tracing::warn!(cluster = %name, error = %err, "cannot read the fence Lease to check it");
                    }
                }
            });
        }
    }

    /// Starts or stops owning `name` as the current view wants.
    fn decide(self: &Arc<Self>, name: &ClusterName, state: &mut State, shards: &TaskTracker) {
        let me = self.options.identity.as_str();
        let mine = state.known.contains_key(name) && state.ring.owner(name.as_str()) == Some(me);
        match state.running.get(name) {
            // Running, or handing over: a new shard waits for the old one's end.
            Some(wanted) => {
                wanted
                    .gone
                    .store(!state.known.contains_key(name), Ordering::Relaxed);
                if !mine {
                    wanted.token.cancel();
                }
            }
            None if mine => {
                let wanted = Wanted::default();
                state.running.insert(name.clone(), wanted.clone());
                let (this, name) = (self.clone(), name.clone());
                shards.spawn(async move {
                    this.clone().own(name.clone(), wanted).await;
                    let _ = this.changes.send(Change::Finished(name));
                });
            }
            None => {}
        }
    }

    /// The current peer term, once there is one; `None` if `wanted` is cancelled
    /// first.
    async fn peer_term(&self, wanted: &CancellationToken) -> Option<CancellationToken> {
        let mut terms = self.peer_term.subscribe();
        let term = tokio::select! {
            biased;
            () = wanted.cancelled() => return None,
            term = terms.wait_for(|t| t.as_ref().is_some_and(|t| !t.is_cancelled())) => term.ok()?.clone(),
        };
        term
    }

    /// Keeps this replica's peer Lease until `stop`, then deletes it. Each time it
    /// is held is a peer term; a renewal that does not succeed within the renew
    /// deadline ends the term, and with it the work on every owned cluster.
    async fn keep_peer_record(self: Arc<Self>, stop: CancellationToken) {
        let claim = self.peer_claim();
        let name = claim.name.clone();
        let mut record = Elector::new(self.store.clone(), claim);
        let mut terms = PeerTerms {
            coordinator: self.clone(),
            stop: stop.clone(),
            term: None,
        };
        hold_terms(&mut record, &stop, &mut terms).await;
        if let Err(err) = self.store.delete(&name, None).await {
            tracing::warn!(lease = record.lease(), error = %err, "cannot delete peer lease; it will expire");
        }
    }
}

/// A sharded replica's peer terms: while one lasts, the fences this replica holds
/// are valid and its shards may work; it ends (and cuts their work) when the peer
/// Lease is lost.
struct PeerTerms {
    coordinator: Arc<Coordinator>,
    /// Ends holding the peer Lease: the coordinator stops.
    stop: CancellationToken,
    /// The term begun last.
    term: Option<CancellationToken>,
}

#[async_trait]
impl Terms for PeerTerms {
    fn begin(&mut self) -> (CancellationToken, futures::future::BoxFuture<'static, ()>) {
        let term = CancellationToken::new();
        self.coordinator.peer_term.send_replace(Some(term.clone()));
        self.term = Some(term);
        (self.stop.clone(), Box::pin(std::future::pending()))
    }

    async fn end(&mut self, held: Result<(), Lost>, elector: &mut Elector) -> bool {
        self.coordinator.peer_term.send_replace(None);
        if let Some(term) = self.term.take() {
            term.cancel();
        }
        if let Err(reason) = held {
            tracing::error!(
                lease = elector.lease(),
                reason,
                "peer lease lost; work on every owned cluster cut"
            );
        }
        true
    }
}

/// What the run loop and a shard task share: whether it is still wanted here and,
/// once not, whether its cluster is gone from the fleet (then its fence is deleted
/// rather than released); and, while it works, the fence it holds, which the run
/// loop checks against the fences' watch.
#[derive(Clone, Default)]
pub(super) struct Wanted {
    pub token: CancellationToken,
    pub gone: Arc<AtomicBool>,
    held: Arc<Mutex<Option<shard::Held>>>,
}

impl Wanted {
    /// The shard works under `held` from now on; returns the token that cuts it.
    fn hold(&self, held: shard::Held) -> CancellationToken {
        let lost = held.lost.clone();
        *lock(&self.held) = Some(held);
        lost
    }

    /// The shard's work ended: its fence is no longer checked.
    fn unhold(&self) {
        lock(&self.held).take();
    }
}

/// The run loop's state.
#[derive(Default)]
struct State {
    /// The live peers as last acted on, and their ring.
    live: Vec<Peer>,
    ring: hrw::Ring,
    /// Clusters engaged in the manager, with the generation of their engagement.
    known: HashMap<ClusterName, u64>,
    /// Clusters with a running shard task, and what it is told.
    running: HashMap<ClusterName, Wanted>,
}

impl State {
    /// Applies `change`; returns the cluster it is about.
    fn apply(&mut self, change: Change) -> ClusterName {
        match change {
            Change::Known(name, generation) => {
                self.known.insert(name.clone(), generation);
                name
            }
            Change::Gone(name, generation) => {
                if self.known.get(&name).is_some_and(|known| *known <= generation) {
                    self.known.remove(&name);
                }
                name
            }
            Change::Finished(name) => {
                self.running.remove(&name);
                name
            }
        }
    }
}

/// Whether `part` can go into a Lease name (and a label value): lowercase letters,
/// digits and `-`, neither first nor last, at most `max` long.
fn is_name_part(part: &str, max: usize) -> bool {
    !part.is_empty()
        && part.len() <= max
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !part.starts_with('-')
        && !part.ends_with('-')
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
