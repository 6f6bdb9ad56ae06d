//! One cluster's share of a sharded replica: take its fence, work on it, hand it
//! back.
//!
//! A fence Lease names the replica that works on its cluster. It is *not* renewed on
//! its own: it is valid while its holder's peer Lease is, so that a replica writes
//! one Lease per renew period however many clusters it owns. A replica works on
//! clusters only within a *peer term*, while it holds its own peer Lease; once a
//! renewal of that Lease has not succeeded within the renew deadline, the term ends
//! and every cluster's work is cut at once.
//!
//! Runs while the coordinator wants this replica to own the cluster:
//!
//! 1. **Acquire** the fence, within a peer term. It is free (no holder), ours, or
//!    held by a replica that is gone: its peer Lease has been unchanged for the lease
//!    duration as this replica observed it (its watch, confirmed by a fresh read
//!    just before taking), or has been absent that long. The write carries the
//!    fence's `resourceVersion`, so of two replicas racing, one wins.
//! 2. **Start**: engage the cluster into the manager's components under a new
//!    [`Term`].
//! 3. **Hand over** when the coordinator no longer wants it here: disengage, wait
//!    until nothing of the cluster runs any more, then release the fence so that the
//!    new owner takes it at its next try.
//! 4. **Lose** when the peer term ends: *cut* the term first (no new work enters,
//!    the work in flight is cancelled), then disengage, which may wait for the
//!    cluster's gate. The holder stopped at most `renew deadline` after the start of
//!    its last successful renewal, while others wait `lease duration` from when they
//!    saw it. Then try to acquire it again in the next peer term, while wanted.
//!
//! However the work ends, the fence is then handed back if it may name this
//! replica, and retried every probe interval until that is done: a replica whose
//! peer Lease is alive again would otherwise keep the fence from everyone for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, Ownership, Wanted};
use crate::cluster::ClusterName;
use crate::manager::lease::{Claim, LeaseError, LeaseStore, whole_seconds};
use crate::term::Term;

/// How a term of work on a cluster ended.
enum Worked {
    /// The cluster was gone before its work started.
    Gone,
    /// Handed over: the work drained.
    HandedOver,
    /// Cut: the peer term ended or the fence changed.
    Cut,
}

/// Why acquiring stopped without the fence.
enum Missed {
    /// The cluster is no longer wanted here.
    NotWanted,
    /// The peer term ended.
    PeerLost,
}

/// What a replica saw of a fence holder's peer Lease by its own reads, when its
/// watch has no record of it: the record (`None`: absent) and since when.
type OwnObservation = Option<(Option<LeaseSpec>, Instant)>;

impl Coordinator {
    /// Owns `name` while `wanted` is not cancelled (see the [module docs](self)).
    pub(super) async fn own(self: Arc<Self>, name: ClusterName, wanted: Wanted) {
        let mut fence = Fence::new(self.store.clone(), self.fence_claim(&name));
        let handed_over = self.work_on(&name, &wanted, &mut fence).await;
        // However the work ended, the fence must not keep naming this replica: its
        // peer Lease may be renewed again soon, and then nobody could take it.
        if fence.claimed {
            self.hand_back(&name, &mut fence, &wanted.gone).await;
        }
        if handed_over {
            self.changed(&name, Ownership::Released);
        }
    }

    /// Takes the fence and works on `name` in each peer term while wanted. Returns
    /// whether it was handed over after working (rather than lost or never
    /// started); the fence may still be ours either way.
    async fn work_on(&self, name: &ClusterName, shard: &Wanted, fence: &mut Fence) -> bool {
        let wanted = &shard.token;
        loop {
            let Some(peer) = self.peer_term(wanted).await else {
                return false;
            };
            match self.acquire(fence, wanted, &peer).await {
                Ok(()) => {}
                Err(Missed::NotWanted) => return false,
                Err(Missed::PeerLost) => continue,
            }
            // No longer wanted while the write was on its way: hand it straight back,
            // before anything starts, so that its rightful owner need not wait.
            if wanted.is_cancelled() {
                return false;
            }
            // The term ended while the write was on its way: nothing may start.
            if peer.is_cancelled() {
                continue;
            }
            // What cuts the work: the end of the peer term, or the fence changed by
            // someone else (the run loop watches the fences we hold).
            let held = shard.hold(fence.held(&peer));
            let outcome = self.work_in_term(name, wanted, &held).await;
            shard.unhold();
            match outcome {
                Worked::Gone => return false,
                Worked::HandedOver => return true,
                Worked::Cut => {
                    let reason = if peer.is_cancelled() {
                        "peer lease not renewed within the renew deadline"
                    } else {
                        "the fence Lease was changed by someone else"
                    };
                    self.changed(name, Ownership::Lost(reason.to_owned()));
                    if wanted.is_cancelled() {
                        return false;
                    }
                }
            }
        }
    }

    /// Works on `name` under a new term until `wanted` is cancelled (a hand-over:
    /// the work drains) or `held` is (the peer term ended or the fence changed: the
    /// work is cut).
    async fn work_in_term(
        &self,
        name: &ClusterName,
        wanted: &CancellationToken,
        held: &CancellationToken,
    ) -> Worked {
        let term = Term::new();
        // Engaging may wait on the user's code; a loss meanwhile cuts the term at
        // once, so that nothing enters it past the renew deadline.
        let start = self.host.start(name, &term);
        tokio::pin!(start);
        let started = tokio::select! {
            started = &mut start => started,
            () = held.cancelled() => {
                term.cut();
                start.await
            }
        };
        if !started {
            // Gone meanwhile: nothing to work on.
            return Worked::Gone;
        }
        self.changed(name, Ownership::Acquired);
        // A loss wins over a hand-over: its work must be cut, not drained.
        let mut cut = tokio::select! {
            biased;
            () = held.cancelled() => true,
            () = wanted.cancelled() => false,
        };
        // Lost: end the term first. Disengaging may wait (for the cluster's gate,
        // held across the user's engage), and new work must be refused from the
        // renew deadline on, not from whenever that wait ends.
        if cut {
            term.cut();
        }
        // Disengage, then wait for the work inside; a hand-over drains it unless a
        // loss comes meanwhile.
        let drain = async {
            self.host.stop(name, &term).await;
            term.end(false).await;
        };
        tokio::pin!(drain);
        if cut {
            drain.await;
        } else {
            tokio::select! {
                biased;
                () = held.cancelled() => {
                    term.cut();
                    cut = true;
                    drain.await;
                }
                () = &mut drain => {}
            }
        }
        self.host.forget(name).await;
        if cut { Worked::Cut } else { Worked::HandedOver }
    }

    /// Gives the fence up (deletes it if the cluster is `gone`), trying again every
    /// probe interval until it is no longer ours; once the coordinator stops, after
    /// one try (its peer Lease is deleted next, and the fence lapses with it).
    async fn hand_back(&self, name: &ClusterName, fence: &mut Fence, gone: &AtomicBool) {
        loop {
            let attempt = async {
                if gone.load(Ordering::Relaxed) {
                    fence.remove().await
                } else {
                    fence.release().await
                }
            };
            match tokio::time::timeout(self.options.renew_deadline, attempt).await {
                Ok(Ok(())) => return,
                Ok(Err(err)) => {
                    tracing::warn!(cluster = %name, lease = fence.lease(), error = %err, "cannot release fence; trying again")
                }
                Err(_) => {
                    tracing::warn!(cluster = %name, lease = fence.lease(), "fence not released in time; trying again")
                }
            }
            tokio::select! {
                () = self.stopping.cancelled() => return,
                () = tokio::time::sleep(self.options.probe_interval) => {}
            }
        }
    }

    /// Takes the fence, trying every probe interval (or when its holder would
    /// expire, if sooner), while wanted and within `peer`.
    async fn acquire(
        &self,
        fence: &mut Fence,
        wanted: &CancellationToken,
        peer: &CancellationToken,
    ) -> Result<(), Missed> {
        let probe = self.options.probe_interval;
        let mut seen: OwnObservation = None;
        loop {
            if wanted.is_cancelled() {
                return Err(Missed::NotWanted);
            }
            if peer.is_cancelled() {
                return Err(Missed::PeerLost);
            }
            let wait = match self.try_acquire(fence, &mut seen).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => wait,
                Err(err) => {
                    tracing::warn!(lease = fence.lease(), error = %err, "cannot acquire fence");
                    probe
                }
            };
            tokio::select! {
                () = wanted.cancelled() => return Err(Missed::NotWanted),
                () = peer.cancelled() => return Err(Missed::PeerLost),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt: `None` once the fence is ours, else how long to wait.
    async fn try_acquire(
        &self,
        fence: &mut Fence,
        seen: &mut OwnObservation,
    ) -> Result<Option<Duration>, LeaseError> {
        let probe = self.options.probe_interval;
        let current = fence.read().await?;
        // The fence's name is a hash of the cluster's: a record whose annotation names
        // another cluster is that cluster's fence (a collision) or was written by
        // someone else. Taking it would take it from that cluster; wait until it is
        // put right (deleted, or its annotation fixed).
        if current
            .as_ref()
            .is_some_and(|lease| fence.names_another_cluster(lease))
        {
            if !fence.warned_foreign {
                fence.warned_foreign = true;
                tracing::warn!(
                    lease = fence.lease(),
                    annotation = super::CLUSTER_ANNOTATION,
                    "the fence Lease names another cluster; not taking it (delete it if it is stale)"
                );
            }
            return Ok(Some(probe));
        }
        let holder = current
            .as_ref()
            .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
            .filter(|h| !h.is_empty());
        if let Some(holder) = holder.filter(|h| *h != self.options.identity)
            && let Some(wait) = self.holder_works(&holder, seen).await?
        {
            return Ok(Some(wait.min(probe)));
        }
        Ok((!fence.take(current).await?).then_some(probe))
    }

    /// Whether `holder` may still work on its clusters: `Some(wait)` if it may
    /// (look again after `wait`), `None` if it is gone.
    async fn holder_works(
        &self,
        holder: &str,
        seen: &mut OwnObservation,
    ) -> Result<Option<Duration>, LeaseError> {
        let now = Instant::now();
        let default = self.options.lease_duration;
        let watched = super::lock(&self.peers).record_of(holder);
        if let Some((spec, since)) = &watched {
            let expires = *since + lease_duration(spec, default);
            if now < expires {
                return Ok(Some(expires - now));
            }
        }
        // Expired as the watch saw it, or not seen by it: a fresh read decides.
        let fresh = self
            .store
            .get(&self.options.peer_lease_of(holder))
            .await?
            .and_then(|l| l.spec);
        match fresh {
            // Marked dead by a peer (no holder), or the name is another's now.
            Some(spec) if spec.holder_identity.as_deref() != Some(holder) => Ok(None),
            // The record the watch saw expire, unchanged since.
            Some(spec) if watched.as_ref().is_some_and(|(w, _)| *w == spec) => Ok(None),
            // Changed, absent, or never watched: observe it ourselves, on our clock.
            fresh => {
                let duration = fresh.as_ref().map_or(default, |s| lease_duration(s, default));
                match seen {
                    Some((before, since)) if *before == fresh => {
                        Ok((now < *since + duration).then(|| *since + duration - now))
                    }
                    _ => {
                        *seen = Some((fresh, now));
                        Ok(Some(duration))
                    }
                }
            }
        }
    }
}

fn lease_duration(spec: &LeaseSpec, default: Duration) -> Duration {
    spec.lease_duration_seconds
        .map_or(default, |s| Duration::from_secs(s.max(0) as u64))
}

/// One cluster's fence Lease, as its claimant writes it.
struct Fence {
    store: Arc<dyn LeaseStore>,
    claim: Claim,
    /// The record as we last wrote it, while it is ours.
    written: Option<Lease>,
    /// Whether the fence may name us: from the first attempt to take it (a write
    /// that failed may still have landed) until a release finds it is not ours.
    claimed: bool,
    /// Whether a record naming another cluster was reported.
    warned_foreign: bool,
    /// The `resourceVersion` of the record our last take replaced (`None`: it
    /// created the fence).
    replaced: Option<String>,
}

/// A fence this replica holds and works under, as the run loop checks it against
/// the fences' watch (see [`Coordinator::check_fences`]).
pub(super) struct Held {
    /// The fence's Lease name.
    pub lease: String,
    /// The `resourceVersion` we wrote.
    pub version: Option<String>,
    /// The version our write replaced: a watch that still shows it is behind, not
    /// changed, until it has shown ours.
    pub replaced: Option<String>,
    /// Whether the watch has shown our version.
    pub seen_ours: bool,
    /// The last version (or absence) a fresh read was made for.
    pub checked: Option<Option<String>>,
    /// Cancelled when the work must be cut: a child of the peer term, cancelled
    /// also when a fresh read shows the fence is no longer ours.
    pub lost: CancellationToken,
}

impl Fence {
    fn new(store: Arc<dyn LeaseStore>, claim: Claim) -> Self {
        Fence {
            store,
            claim,
            written: None,
            claimed: false,
            warned_foreign: false,
            replaced: None,
        }
    }

    /// The fence as just taken, to be held within `peer`.
    fn held(&self, peer: &CancellationToken) -> Held {
        Held {
            lease: self.claim.name.clone(),
            version: self
                .written
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone()),
            replaced: self.replaced.clone(),
            seen_ours: false,
            checked: None,
            lost: peer.child_token(),
        }
    }

    /// Whether `lease`, stored under this fence's name, says it is the fence of
    /// another cluster. A record without the annotation names none: taking it
    /// writes ours.
    fn names_another_cluster(&self, lease: &Lease) -> bool {
        let annotation = |annotations: Option<&std::collections::BTreeMap<String, String>>| {
            annotations
                .and_then(|a| a.get(super::CLUSTER_ANNOTATION))
                .cloned()
        };
        match annotation(lease.metadata.annotations.as_ref()) {
            Some(named) => annotation(Some(&self.claim.annotations)) != Some(named),
            None => false,
        }
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.store.namespace(), self.claim.name)
    }

    async fn read(&self) -> Result<Option<Lease>, LeaseError> {
        self.store.get(&self.claim.name).await
    }

    /// Writes us as holder over `current` (as read); `false` if another write came
    /// first.
    async fn take(&mut self, current: Option<Lease>) -> Result<bool, LeaseError> {
        self.claimed = true;
        self.replaced = current.as_ref().and_then(|l| l.metadata.resource_version.clone());
        let now = Some(MicroTime(Timestamp::now()));
        let transitions = current
            .as_ref()
            .and_then(|l| l.spec.as_ref()?.lease_transitions)
            .unwrap_or(-1)
            + 1;
        let spec = LeaseSpec {
            holder_identity: Some(self.claim.identity.clone()),
            lease_duration_seconds: Some(whole_seconds(self.claim.lease_duration)),
            acquire_time: now.clone(),
            renew_time: now,
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let written = match current {
            Some(mut lease) => {
                // Our label and annotation, whatever the record had.
                let metadata = &mut lease.metadata;
                metadata
                    .labels
                    .get_or_insert_default()
                    .extend(self.claim.labels.clone());
                metadata
                    .annotations
                    .get_or_insert_default()
                    .extend(self.claim.annotations.clone());
                lease.spec = Some(spec);
                self.store.replace(lease).await
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.claim.name.clone()),
                        namespace: Some(self.store.namespace().to_owned()),
                        labels: Some(self.claim.labels.clone()),
                        annotations: Some(self.claim.annotations.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.store.create(lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.written = Some(lease);
                Ok(true)
            }
            Err(LeaseError::Conflict) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The fence as this replica last wrote it, or else as it is now; `None` if it
    /// does not exist.
    async fn latest(&mut self) -> Result<Option<Lease>, LeaseError> {
        match self.written.take() {
            Some(lease) => Ok(Some(lease)),
            None => self.read().await,
        }
    }

    /// Deletes the fence if it is still ours (its cluster is gone). The delete
    /// carries the version last written or read, so a fence another replica has
    /// taken meanwhile stays.
    async fn remove(&mut self) -> Result<(), LeaseError> {
        let Some(lease) = self.latest().await? else {
            self.claimed = false;
            return Ok(());
        };
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
        let version = lease.metadata.resource_version.as_deref();
        let (true, Some(version)) = (holder == Some(self.claim.identity.as_str()), version) else {
            self.claimed = false;
            return Ok(());
        };
        match self.store.delete(&self.claim.name, Some(version)).await {
            // Changed since: read it and delete it if it is still ours.
            Err(LeaseError::Conflict) => Box::pin(self.remove()).await,
            Ok(()) => {
                self.claimed = false;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// No holder, if it is still ours: the next owner takes it at its next try.
    async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self.latest().await? else {
            self.claimed = false;
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.claim.identity.as_str()) {
            self.claimed = false;
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.store.replace(lease).await {
            // Changed since we wrote it: read it and release it if it is still ours.
            Err(LeaseError::Conflict) => Box::pin(self.release()).await,
            Ok(_) => {
                self.claimed = false;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::manager::Sharding;
    use crate::manager::coordination::{CLUSTER_ANNOTATION, FENCE_LABEL, Host};
    use crate::manager::lease::memory::{MemoryLeases, Records};

    /// Components that record which clusters were started, and hold no work.
    #[derive(Default)]
    struct Started(Mutex<Vec<ClusterName>>);

    #[async_trait]
    impl Host for Started {
        async fn start(&self, name: &ClusterName, term: &Term) -> bool {
            let entered = term.enter().is_some();
            if entered {
                self.0.lock().unwrap().push(name.clone());
            }
            entered
        }
        async fn stop(&self, _: &ClusterName, _: &Term) {}
        async fn forget(&self, _: &ClusterName) {}
    }

    fn fence_record(name: &str, cluster: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("sim".into()),
                labels: Some([(FENCE_LABEL.to_owned(), "sim".to_owned())].into()),
                annotations: Some([(CLUSTER_ANNOTATION.to_owned(), cluster.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        }
    }

    /// x07: a free fence Lease under this cluster's fence name whose annotation
    /// names another cluster is not taken (nor changed), and the cluster is not
    /// worked on, for many probe intervals; once it is deleted, the cluster's own
    /// fence is taken and the cluster is worked on.
    #[tokio::test(start_paused = true)]
    async fn x07_a_fence_naming_another_cluster_is_not_taken() {
        let records = Arc::new(Records::default());
        let store = Arc::new(MemoryLeases::new(records.clone()));
        let options = Sharding::new("sim").identity("a");
        let (x, fence) = (ClusterName::from("x"), options.fence_lease(&"x".into()));
        store.create(fence_record(&fence, "y")).await.expect("created");
        let host = Arc::new(Started::default());
        let coordinator = Coordinator::new(options.clone(), store.clone(), host.clone());
        coordinator.known(&x, 0);
        let stop = CancellationToken::new();
        let run = tokio::spawn(coordinator.clone().run(stop.clone()));
        // Six probe intervals on the paused clock: every attempt has run.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(host.0.lock().unwrap().is_empty(), "x was worked on");
        assert_eq!(
            records.writes_to(&fence),
            1,
            "the other cluster's fence was written"
        );
        let stored = records.get(&fence).expect("the fence stays");
        assert_eq!(
            stored.metadata.annotations.as_ref().unwrap()[CLUSTER_ANNOTATION],
            "y"
        );

        store.delete(&fence, None).await.expect("deleted");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*host.0.lock().unwrap(), [x]);
        let taken = records.get(&fence).expect("x's fence");
        assert_eq!(
            taken.metadata.annotations.as_ref().unwrap()[CLUSTER_ANNOTATION],
            "x"
        );
        assert_eq!(
            taken.spec.as_ref().and_then(|s| s.holder_identity.as_deref()),
            Some("a")
        );
        stop.cancel();
        run.await.expect("coordinator stops");
    }

    /// r08: deleting the fence of a removed cluster never deletes a fence that
    /// another replica has taken since; its own, it deletes.
    #[tokio::test]
    async fn r08_a_fence_another_replica_took_is_not_deleted() {
        let records = Arc::new(Records::default());
        let store: Arc<dyn LeaseStore> = Arc::new(MemoryLeases::new(records.clone()));
        let name = ClusterName::from("x");
        let fence_of = |identity: &str| {
            let options = Sharding::new("sim").identity(identity);
            Fence::new(store.clone(), options.claim(options.fence_lease(&name), 0.0))
        };
        let lease = Sharding::new("sim").fence_lease(&name);
        let (mut a, mut b) = (fence_of("a"), fence_of("b"));
        assert!(a.take(None).await.expect("written"));
        // b takes it over a, as once a's peer Lease has expired.
        let current = b.read().await.expect("read");
        assert!(b.take(current).await.expect("written"));
        a.remove().await.expect("no error");
        let holder = records
            .get(&lease)
            .and_then(|l| l.spec.as_ref()?.holder_identity.clone());
        assert_eq!(holder.as_deref(), Some("b"), "b's fence was deleted");
        assert!(!a.claimed);
        b.remove().await.expect("deleted");
        assert!(records.get(&lease).is_none(), "b's own fence stays");
    }
}
