//! Holding a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` package
//! does it: the one protocol behind leader election, a shard's fence and a replica's
//! peer record (see `docs/decisions/leader-election.md` and `sharding.md`).
//!
//! Invariants, in the order they keep two holders apart:
//!
//! 1. Expiry is judged on the *observer's* monotonic clock: a claimant takes a lease
//!    held by another only once it has seen the same record unchanged for the record's
//!    lease duration. The holder's `renewTime` is never compared with a local clock,
//!    so clock skew between machines does not matter, only clock rate.
//! 2. The holder counts its renew deadline from the *start* of its last successful
//!    renewal, which is before the write landed and so before any claimant saw it.
//!    Once the deadline passes without a renewal the holder gives up, while a
//!    claimant still has at least `lease_duration - renew_deadline` to wait.
//! 3. Every write carries the `resourceVersion` it read: of two claimants racing for
//!    one record, one gets a conflict and stays (or becomes) a claimant.
//! 4. A lease released on a clean stop has no holder, so the next claimant takes it
//!    at its next try instead of waiting out the duration.
//!
//! The Leases are read and written through a [`LeaseStore`]: the manager's cluster in
//! production ([`KubeLeases`]), an in-memory store in the sharding simulation. Time
//! is tokio's, which the simulation pauses and advances.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::WatchSpec;
use crate::cluster::Cluster;

/// Why a Lease operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LeaseError {
    /// The write lost a race: the record changed since it was read, or it exists
    /// already.
    #[error("conflict")]
    Conflict,
    /// Anything else, as a message.
    #[error("{0}")]
    Failed(String),
}

/// Where Leases are kept: one namespace of one cluster.
#[async_trait]
pub(crate) trait LeaseStore: Send + Sync + 'static {
    /// The namespace, for Lease objects and log lines.
    fn namespace(&self) -> &str;
    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError>;
    /// [`LeaseError::Conflict`] if it exists.
    async fn create(&self, lease: Lease) -> Result<Lease, LeaseError>;
    /// [`LeaseError::Conflict`] if its `resourceVersion` is not the stored one.
    async fn replace(&self, lease: Lease) -> Result<Lease, LeaseError>;
    /// Deletes `name`, if its `resourceVersion` is still `version` when given
    /// ([`LeaseError::Conflict`] if not); absent is fine.
    async fn delete(&self, name: &str, version: Option<&str>) -> Result<(), LeaseError>;
    /// Every Lease whose labels match `selector`, once now and again after each
    /// change: each item is the whole current set.
    fn watch(&self, selector: &str) -> BoxStream<'static, Vec<Arc<Lease>>>;
    /// The Lease `name` as a watch of the Leases matching `selector` holds it now
    /// (`Some(None)`: it has none), started on first use; `None` until that watch
    /// has listed.
    fn cached(&self, selector: &str, name: &str) -> Option<Option<Arc<Lease>>>;
}

/// Leases in a namespace of a cluster, watched through the cluster's shared cache.
pub(crate) struct KubeLeases {
    api: Api<Lease>,
    cluster: Arc<Cluster>,
    namespace: String,
}

impl KubeLeases {
    pub(crate) fn new(cluster: Arc<Cluster>, namespace: &str) -> Self {
        KubeLeases {
            api: Api::namespaced(cluster.client().clone(), namespace),
            cluster,
            namespace: namespace.to_owned(),
        }
    }
}

impl KubeLeases {
    /// The shared cache's informer of the Leases of the namespace matching
    /// `selector`.
    fn informer(&self, selector: &str) -> Arc<crate::cache::Informer<Lease>> {
        let spec = WatchSpec::default().namespace(&self.namespace).labels(selector);
        self.cluster.cache().informer_with::<Lease>(&(), spec)
    }
}

fn from_kube(err: kube::Error) -> LeaseError {
    match &err {
        kube::Error::Api(status) if status.code == 409 => LeaseError::Conflict,
        _ => LeaseError::Failed(crate::redact::describe(&err)),
    }
}

#[async_trait]
impl LeaseStore for KubeLeases {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        self.api.get_opt(name).await.map_err(from_kube)
    }

    async fn create(&self, lease: Lease) -> Result<Lease, LeaseError> {
        self.api
            .create(&PostParams::default(), &lease)
            .await
            .map_err(from_kube)
    }

    async fn replace(&self, lease: Lease) -> Result<Lease, LeaseError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.api
            .replace(&name, &PostParams::default(), &lease)
            .await
            .map_err(from_kube)
    }

    async fn delete(&self, name: &str, version: Option<&str>) -> Result<(), LeaseError> {
        let params = DeleteParams {
            preconditions: version.map(|v| Preconditions {
                resource_version: Some(v.to_owned()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(from_kube(err)),
        }
    }

    fn cached(&self, selector: &str, name: &str) -> Option<Option<Arc<Lease>>> {
        let informer = self.informer(selector);
        informer
            .is_synced()
            .then(|| informer.store().get(Some(&self.namespace), name))
    }

    fn watch(&self, selector: &str) -> BoxStream<'static, Vec<Arc<Lease>>> {
        let informer = self.informer(selector);
        let events = informer.subscribe();
        // A snapshot once synced, then one after each change (or lost changes).
        let synced = {
            let informer = informer.clone();
            async move {
                while informer.wait_synced(Duration::from_secs(60)).await.is_err() {
                    if informer.is_stopped() {
                        return None;
                    }
                }
                Some(informer.store().list())
            }
        };
        let changes = futures::stream::unfold((events, informer), |(mut events, informer)| async move {
            match events.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let snapshot = informer.store().list();
                    Some((snapshot, (events, informer)))
                }
                Err(RecvError::Closed) => None,
            }
        });
        futures::stream::once(synced)
            .filter_map(std::future::ready)
            .chain(changes)
            .boxed()
    }
}

/// One Lease to hold, and how.
#[derive(Clone, Debug)]
pub(crate) struct Claim {
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    /// How long the holder keeps retrying a failed renewal before it gives up.
    pub renew_deadline: Duration,
    /// How often the holder renews.
    pub renew_period: Duration,
    /// How often a claimant tries again while another holds the lease.
    pub retry_period: Duration,
    /// Where in the first renew period the first renewal falls, from 0 (half a
    /// period after acquiring) to 1 (a whole period): many leases acquired at once
    /// then do not all renew at once.
    pub phase: f64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Claim {
    /// Why these timings cannot work, if they cannot (client-go's checks).
    pub(crate) fn invalid(&self) -> Option<String> {
        if self.identity.is_empty() {
            return Some("identity is empty".into());
        }
        if self.retry_period.is_zero() || self.renew_period.is_zero() {
            return Some("retry period is zero".into());
        }
        if self.renew_deadline <= self.renew_period {
            return Some(format!(
                "renew deadline {:?} must be longer than the renew period {:?}",
                self.renew_deadline, self.renew_period
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Some(format!(
                "lease duration {:?} must be longer than renew deadline {:?}",
                self.lease_duration, self.renew_deadline
            ));
        }
        None
    }
}

/// Why a holder stopped holding.
pub(crate) type Lost = String;

/// What a holder does with each term of its Lease: leader election runs the
/// leader-only runnables in it; a sharded replica lets its fences count on it.
#[async_trait]
pub(crate) trait Terms: Send {
    /// The Lease was acquired: begins a term. Returns the token whose cancellation
    /// ends holding the Lease cleanly, and work to run beside the holding (it may
    /// cancel that token, e.g. once the term's work has drained).
    fn begin(&mut self) -> (CancellationToken, futures::future::BoxFuture<'static, ()>);

    /// Holding ended: `Ok` when the token of [`begin`](Self::begin) was cancelled (the
    /// Lease is still held), the reason when it was lost. Returns whether to
    /// campaign again.
    async fn end(&mut self, held: Result<(), Lost>, elector: &mut Elector) -> bool;
}

/// Holds the Lease term after term: campaigns, begins a term once it holds the
/// Lease, renews it until the term's token is cancelled or it is lost, ends the
/// term, and campaigns again if `terms` says so. Returns when `stop` is cancelled
/// while campaigning, or when `terms` says to stop. The one loop behind both
/// coordination strategies.
pub(crate) async fn hold_terms(elector: &mut Elector, stop: &CancellationToken, terms: &mut dyn Terms) {
    while let Some(acquired) = elector.campaign(stop).await {
        let (until, beside) = terms.begin();
        let held = tokio::select! {
            held = elector.hold(&until, acquired) => held,
            () = async { beside.await; std::future::pending().await } => unreachable!(),
        };
        if !terms.end(held, elector).await {
            return;
        }
    }
}

/// One claimant's side of the protocol for one Lease.
pub(crate) struct Elector {
    store: Arc<dyn LeaseStore>,
    claim: Claim,
    /// The last record seen and when it was first seen (local monotonic clock).
    observed: Option<(LeaseSpec, Instant)>,
    /// The record as we last wrote it, while we hold it: renewals write on top of it
    /// without reading first; a conflict sends the next attempt back to reading.
    written: Option<Lease>,
}

impl Elector {
    pub(crate) fn new(store: Arc<dyn LeaseStore>, claim: Claim) -> Self {
        Elector {
            store,
            claim,
            observed: None,
            written: None,
        }
    }

    /// `namespace/name`, for logs and errors.
    pub(crate) fn lease(&self) -> String {
        format!("{}/{}", self.store.namespace(), self.claim.name)
    }

    /// Tries until the lease is ours; returns when the successful attempt started, or
    /// `None` once `stop` is cancelled.
    pub(crate) async fn campaign(&mut self, stop: &CancellationToken) -> Option<Instant> {
        let retry = self.claim.retry_period;
        loop {
            if stop.is_cancelled() {
                return None;
            }
            let started = Instant::now();
            let attempt = tokio::select! {
                () = stop.cancelled() => return None,
                attempt = tokio::time::timeout(retry, self.try_acquire_or_renew()) => attempt,
            };
            let wait = match attempt {
                Ok(Ok(true)) => return Some(started),
                // Held by another: try again once it would expire, at most `retry` from now.
                Ok(Ok(false)) => self
                    .expires_in()
                    .filter(|left| !left.is_zero())
                    .map_or(retry, |left| left.min(retry) + Duration::from_millis(10)),
                Ok(Err(err)) => {
                    tracing::warn!(lease = self.lease(), error = %err, "cannot acquire lease");
                    retry
                }
                Err(_) => retry,
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renews every renew period until `stop` is cancelled (`Ok`) or the lease is
    /// lost (`Err`): taken by another, or not renewed within the renew deadline
    /// counted from the start of the last successful renewal (`renewed`).
    pub(crate) async fn hold(&mut self, stop: &CancellationToken, mut renewed: Instant) -> Result<(), Lost> {
        let (period, deadline) = (self.claim.renew_period, self.claim.renew_deadline);
        let mut wait = period.mul_f64(0.5 + 0.5 * self.claim.phase.clamp(0.0, 1.0));
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep_until((Instant::now() + wait).min(renewed + deadline)) => {}
            }
            let started = Instant::now();
            if started >= renewed + deadline {
                return Err(format!("not renewed within the renew deadline of {deadline:?}"));
            }
            match tokio::time::timeout_at(renewed + deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    renewed = started;
                    wait = period;
                }
                Ok(Ok(false)) => {
                    let holder = self.holder().unwrap_or_else(|| "another replica".into());
                    return Err(format!("lease taken by {holder}"));
                }
                Ok(Err(err)) => {
                    tracing::warn!(lease = self.lease(), error = %err, "cannot renew lease; retrying");
                    // Retry sooner than a full period: the deadline is running.
                    wait = period / 2;
                }
                Err(_) => return Err(format!("not renewed within the renew deadline of {deadline:?}")),
            }
        }
    }

    /// Gives the lease up if it is still ours: no holder, so the next claimant takes
    /// it at its next try.
    pub(crate) async fn release(&mut self) -> Result<(), LeaseError> {
        let mut lease = match self.written.take() {
            Some(lease) => lease,
            None => match self.store.get(&self.claim.name).await? {
                Some(lease) => lease,
                None => return Ok(()),
            },
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.claim.identity.as_str()) {
            return Ok(());
        }
        let now = Some(MicroTime(Timestamp::now()));
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.acquire_time = now.clone();
        spec.renew_time = now;
        match self.store.replace(lease).await {
            // Changed since we wrote it: read it and release it if it is still ours.
            Err(LeaseError::Conflict) => Box::pin(self.release()).await,
            other => other.map(drop),
        }
    }

    /// One attempt; whether the lease is ours afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let now = Timestamp::now();
        if let Some(mut lease) = self.written.take() {
            let spec = lease.spec.take().unwrap_or_default();
            lease.spec = Some(self.ours(now, spec.acquire_time, spec.lease_transitions));
            match self.store.replace(lease).await {
                Ok(renewed) => {
                    self.observe(renewed.spec.clone().unwrap_or_default());
                    self.written = Some(renewed);
                    return Ok(true);
                }
                // Someone wrote since: read it and decide below.
                Err(LeaseError::Conflict) => {}
                Err(err) => return Err(err),
            }
        }
        let Some(mut lease) = self.store.get(&self.claim.name).await? else {
            let lease = Lease {
                metadata: self.metadata(),
                spec: Some(self.ours(now, Some(MicroTime(now)), Some(0))),
            };
            let created = self.store.create(lease).await;
            return self.wrote(created);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(spec.clone());
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.claim.identity.as_str());
        if holder.is_some() && !ours && !self.expires_in().is_some_and(|left| left.is_zero()) {
            return Ok(false);
        }
        lease.spec = Some(if ours {
            self.ours(now, spec.acquire_time, spec.lease_transitions)
        } else {
            let transitions = spec.lease_transitions.unwrap_or(0) + 1;
            self.ours(now, Some(MicroTime(now)), Some(transitions))
        });
        let replaced = self.store.replace(lease).await;
        self.wrote(replaced)
    }

    /// Takes in the outcome of writing us as holder: whether the lease is ours.
    fn wrote(&mut self, written: Result<Lease, LeaseError>) -> Result<bool, LeaseError> {
        match written {
            Ok(lease) => {
                self.observe(lease.spec.clone().unwrap_or_default());
                self.written = Some(lease);
                Ok(true)
            }
            Err(LeaseError::Conflict) => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn metadata(&self) -> ObjectMeta {
        let non_empty = |map: &BTreeMap<String, String>| (!map.is_empty()).then(|| map.clone());
        ObjectMeta {
            name: Some(self.claim.name.clone()),
            namespace: Some(self.store.namespace().to_owned()),
            labels: non_empty(&self.claim.labels),
            annotations: non_empty(&self.claim.annotations),
            ..ObjectMeta::default()
        }
    }

    fn ours(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.claim.identity.clone()),
            lease_duration_seconds: Some(whole_seconds(self.claim.lease_duration)),
            acquire_time: acquired,
            renew_time: Some(MicroTime(now)),
            lease_transitions: transitions,
            ..LeaseSpec::default()
        }
    }

    /// Records `spec`, restarting the expiry clock if it differs from the last seen.
    fn observe(&mut self, spec: LeaseSpec) {
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != spec) {
            self.observed = Some((spec, Instant::now()));
        }
    }

    /// How long until the observed record expires for this observer; `None` if it
    /// has no holder (free now).
    fn expires_in(&self) -> Option<Duration> {
        let (spec, seen) = self.observed.as_ref()?;
        spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
        let duration = spec
            .lease_duration_seconds
            .map_or(
                self.claim.lease_duration,
                |s| Duration::from_secs(s.max(0) as u64),
            );
        Some((*seen + duration).saturating_duration_since(Instant::now()))
    }

    fn holder(&self) -> Option<String> {
        self.observed.as_ref()?.0.holder_identity.clone()
    }
}

/// A duration as a Lease's `leaseDurationSeconds`: whole seconds, rounded up, at
/// least 1.
pub(crate) fn whole_seconds(duration: Duration) -> i32 {
    duration.as_secs_f64().ceil().clamp(1.0, f64::from(i32::MAX)) as i32
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory [`LeaseStore`] for simulations: conflicts as the apiserver
    //! reports them, a watch per selector, a count of writes, and stores that can be
    //! cut off from it (a partition) or made slow to write.

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use futures::StreamExt;
    use futures::stream::BoxStream;
    use k8s_openapi::api::coordination::v1::Lease;
    use tokio::sync::watch;

    use super::{LeaseError, LeaseStore};

    /// The records, shared by every replica's [`MemoryLeases`].
    #[derive(Default)]
    pub(crate) struct Records {
        leases: Mutex<HashMap<String, Arc<Lease>>>,
        version: AtomicU64,
        /// Watched `key=value` selectors, each told of writes to Leases it matches.
        watched: Mutex<Vec<Arc<Watched>>>,
        writes: AtomicU64,
        /// Writes per Lease name.
        writes_to: Mutex<HashMap<String, u64>>,
    }

    /// One watch: its selector, the names of the Leases it matches, and a signal.
    struct Watched {
        key: String,
        value: String,
        members: Mutex<std::collections::BTreeSet<String>>,
        changed: watch::Sender<u64>,
    }

    impl Watched {
        fn matches(&self, lease: &Lease) -> bool {
            lease.metadata.labels.as_ref().and_then(|m| m.get(&self.key)) == Some(&self.value)
        }
    }

    impl Records {
        /// Every write (create, replace, delete) so far.
        pub(crate) fn writes(&self) -> u64 {
            self.writes.load(Ordering::Relaxed)
        }

        /// The Lease `name` as stored now.
        pub(crate) fn get(&self, name: &str) -> Option<Arc<Lease>> {
            self.leases.lock().unwrap().get(name).cloned()
        }

        /// Writes to the Lease `name` so far.
        pub(crate) fn writes_to(&self, name: &str) -> u64 {
            self.writes_to.lock().unwrap().get(name).copied().unwrap_or(0)
        }
    }

    /// One replica's view of [`Records`]; cut off while `reachable` is false.
    pub(crate) struct MemoryLeases {
        pub records: Arc<Records>,
        pub reachable: Arc<AtomicBool>,
        /// Writes made through this handle.
        pub writes: Arc<AtomicU64>,
        /// How long each write through this handle takes, in milliseconds.
        pub write_delay_ms: Arc<AtomicU64>,
        /// Whether a slow write lands at once and only its answer is late (the
        /// caller may give up on a write that did happen), or lands only once the
        /// delay has passed (a write given up on never happens).
        pub lands_first: Arc<AtomicBool>,
    }

    impl MemoryLeases {
        pub(crate) fn new(records: Arc<Records>) -> Self {
            MemoryLeases {
                records,
                reachable: Arc::new(AtomicBool::new(true)),
                writes: Arc::default(),
                write_delay_ms: Arc::default(),
                lands_first: Arc::default(),
            }
        }

        /// Makes every write through this handle take `delay` (zero: at once); see
        /// [`lands_first`](Self::lands_first).
        pub(crate) fn slow_writes(&self, delay: Duration, lands_first: bool) {
            let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            self.lands_first.store(lands_first, Ordering::Relaxed);
            self.write_delay_ms.store(ms, Ordering::Relaxed);
        }

        /// Makes one write, as slow as set.
        async fn slowly<T>(&self, write: impl FnOnce() -> Result<T, LeaseError>) -> Result<T, LeaseError> {
            self.reach()?;
            let delay = Duration::from_millis(self.write_delay_ms.load(Ordering::Relaxed));
            if delay.is_zero() {
                return write();
            }
            if self.lands_first.load(Ordering::Relaxed) {
                let written = write();
                tokio::time::sleep(delay).await;
                return written;
            }
            tokio::time::sleep(delay).await;
            self.reach()?;
            write()
        }

        fn reach(&self) -> Result<(), LeaseError> {
            if self.reachable.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err(LeaseError::Failed("unreachable".into()))
            }
        }

        /// Writes `lease` (or deletes, if `None`) under `name` if `allowed` says so
        /// of the stored record, in one step.
        fn write(
            &self,
            name: &str,
            lease: Option<Lease>,
            allowed: impl FnOnce(Option<&Arc<Lease>>) -> bool,
        ) -> Result<Option<Lease>, LeaseError> {
            let records = &self.records;
            let mut leases = records.leases.lock().unwrap();
            if !allowed(leases.get(name)) {
                return Err(LeaseError::Conflict);
            }
            let stored = match lease {
                Some(mut lease) => {
                    let version = records.version.fetch_add(1, Ordering::Relaxed) + 1;
                    lease.metadata.resource_version = Some(version.to_string());
                    leases.insert(name.to_owned(), Arc::new(lease.clone()));
                    Some(lease)
                }
                None => {
                    leases.remove(name);
                    None
                }
            };
            drop(leases);
            *records
                .writes_to
                .lock()
                .unwrap()
                .entry(name.to_owned())
                .or_default() += 1;
            records.writes.fetch_add(1, Ordering::Relaxed);
            self.writes.fetch_add(1, Ordering::Relaxed);
            for watched in records.watched.lock().unwrap().iter() {
                let mut members = watched.members.lock().unwrap();
                let was = members.contains(name);
                let is = stored.as_ref().is_some_and(|l| watched.matches(l));
                if is {
                    members.insert(name.to_owned());
                } else {
                    members.remove(name);
                }
                if was || is {
                    watched.changed.send_modify(|n| *n += 1);
                }
            }
            Ok(stored)
        }
    }

    #[async_trait]
    impl LeaseStore for MemoryLeases {
        fn namespace(&self) -> &str {
            "sim"
        }

        async fn get(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
            self.reach()?;
            Ok(self
                .records
                .leases
                .lock()
                .unwrap()
                .get(name)
                .map(|l| (**l).clone()))
        }

        async fn create(&self, lease: Lease) -> Result<Lease, LeaseError> {
            let name = lease.metadata.name.clone().unwrap_or_default();
            let stored = self
                .slowly(|| self.write(&name, Some(lease), |stored| stored.is_none()))
                .await?;
            Ok(stored.expect("written"))
        }

        async fn replace(&self, lease: Lease) -> Result<Lease, LeaseError> {
            let name = lease.metadata.name.clone().unwrap_or_default();
            let version = lease.metadata.resource_version.clone();
            let stored = self
                .slowly(|| {
                    self.write(&name, Some(lease), |stored| {
                        stored.is_some_and(|s| s.metadata.resource_version == version)
                    })
                })
                .await?;
            Ok(stored.expect("written"))
        }

        async fn delete(&self, name: &str, version: Option<&str>) -> Result<(), LeaseError> {
            let matches = |stored: Option<&Arc<Lease>>| {
                version
                    .is_none_or(|v| stored.is_none_or(|s| s.metadata.resource_version.as_deref() == Some(v)))
            };
            self.slowly(|| self.write(name, None, matches)).await.map(drop)
        }

        fn cached(&self, selector: &str, name: &str) -> Option<Option<Arc<Lease>>> {
            let (key, value) = selector.split_once('=').expect("key=value selector");
            let lease = self.records.get(name).filter(|lease| {
                lease
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .map(String::as_str)
                    == Some(value)
            });
            // A partitioned replica's watch sees nothing new: as if it were stale.
            self.reachable.load(Ordering::Relaxed).then_some(lease)
        }

        fn watch(&self, selector: &str) -> BoxStream<'static, Vec<Arc<Lease>>> {
            let (key, value) = selector.split_once('=').expect("key=value selector");
            let (key, value) = (key.to_owned(), value.to_owned());
            let (records, reachable) = (self.records.clone(), self.reachable.clone());
            let watched = Arc::new(Watched {
                key,
                value,
                members: Mutex::default(),
                changed: watch::Sender::new(0),
            });
            let changes = tokio_stream_watch(watched.changed.subscribe());
            {
                // Registered and filled under the records' lock: no write in between.
                let leases = records.leases.lock().unwrap();
                let mut members = watched.members.lock().unwrap();
                members.extend(
                    leases
                        .iter()
                        .filter(|(_, l)| watched.matches(l))
                        .map(|(n, _)| n.clone()),
                );
                records.watched.lock().unwrap().push(watched.clone());
            }
            changes
                .filter_map(move |()| {
                    // A partitioned replica's watch sees nothing new.
                    let snapshot = reachable.load(Ordering::Relaxed).then(|| {
                        let leases = records.leases.lock().unwrap();
                        let members = watched.members.lock().unwrap();
                        members.iter().filter_map(|n| leases.get(n).cloned()).collect()
                    });
                    std::future::ready(snapshot)
                })
                .boxed()
        }
    }

    /// A stream that yields once now and once per change of `changes` (changes in a
    /// burst may be merged).
    fn tokio_stream_watch(changes: watch::Receiver<u64>) -> BoxStream<'static, ()> {
        futures::stream::unfold((changes, true), |(mut changes, first)| async move {
            if !first {
                changes.changed().await.ok()?;
            }
            changes.borrow_and_update();
            Some(((), (changes, false)))
        })
        .boxed()
    }
}
