//! The reconciling core shared by the providers that discover clusters from objects of
//! a host cluster (Cluster API `Cluster`s, `ClusterProfile`s): it follows the host's
//! shared informers, decides per object what its cluster should be, and keeps a
//! [`Clusters`] registry in step.
//! It is compiled when either of those providers' features is on.
//!
//! # How it works
//!
//! - Level-triggered: an event (of the primary objects or of the Secrets) only marks
//!   the object *key* dirty; a per-key task then asks the [`Planner`] what the key's
//!   cluster should be from the current contents of the stores. A lost event (a
//!   lagging subscriber) is repaired by marking every key dirty.
//! - Per key, one task at a time, latest state wins; keys are independent, so a slow
//!   client build (an exec credential plugin that hangs) delays only its own key.
//! - A cluster is rebuilt only when its [fingerprint](crate::cluster::kubeconfig::fingerprint)
//!   changes, or when the client certificate an exec plugin issued is about to
//!   expire. A build or engagement that fails (e.g. the exec plugin fails for a
//!   while) is retried with exponential backoff (5 s doubling up to 5 min), and
//!   whenever the object or its Secret changes.
//! - Problems are logged once per key and reason (warnings for objects that cannot be
//!   engaged), never with credentials: exec plugin output is never quoted.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use kube::api::DynamicObject;
use kube::config::Kubeconfig;
use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::cache::follow::wait_synced_logged;
use crate::cache::{Informer, InformerEvent, ObjectKey};
use crate::cluster::kubeconfig;
use crate::cluster::{Cluster, ClusterName, ClusterOptions};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, ProviderRunnable};
use crate::providers::clusters::Clusters;

/// How long building one client may take (exec credential plugins run then).
pub(crate) const BUILD_TIMEOUT: Duration = Duration::from_secs(60);
/// How many clients are built at once.
const CONCURRENT_BUILDS: usize = 8;
/// How often the wait for the host's first list is reported.
const SYNC_REPORT: Duration = Duration::from_secs(30);
/// The shortest wait before rebuilding a client whose certificate expires.
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// How long before its expiry a client certificate is renewed, at most.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// The first wait before retrying a failed client build or engagement; it doubles
/// per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between retries.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Decides, from the host's stores, what the cluster of one object should be.
pub(crate) trait Planner: Send + Sync + 'static {
    /// The provider's name in logs and errors.
    fn provider(&self) -> &'static str;

    /// The cluster name of the object `key`.
    fn cluster_name(&self, key: &ObjectKey) -> ClusterName;

    /// What the cluster of `key` should be now.
    fn plan(&self, key: &ObjectKey) -> Plan;

    /// The keys whose plan may depend on `secret`.
    fn secret_keys(&self, secret: &Secret) -> Vec<ObjectKey>;
}

/// What the cluster of one object should be.
pub(crate) enum Plan {
    /// The object is gone or being deleted: disengage and forget it.
    Gone(String),
    /// The object exists but must not be engaged (e.g. unhealthy): disengage.
    #[allow(dead_code, reason = "only the profile provider disengages live objects")]
    Disengage(String),
    /// Not ready yet: nothing changes (an engaged cluster stays engaged).
    Wait(String),
    /// Ready but unusable (missing or bad credentials): a warning; an engaged cluster
    /// keeps its last good credentials.
    Invalid(String),
    /// Engaged with a client built from this target.
    Engage(Box<Target>),
}

/// A vetted kubeconfig context to build a cluster from.
pub(crate) struct Target {
    /// The kubeconfig, vetted against the policy that applies to it.
    pub kubeconfig: Kubeconfig,
    /// The context to use.
    pub context: String,
    /// Where it came from, e.g. `Secret ns/name`, for errors.
    pub origin: String,
    /// The servers it was vetted against, which its client holds to every address
    /// it connects to.
    pub endpoints: kubeconfig::EndpointPolicy,
}

impl Target {
    /// A target for `context` of `kubeconfig`, which came from `origin` and was
    /// vetted against `policy`.
    pub(crate) fn new(
        kubeconfig: Kubeconfig,
        context: String,
        origin: String,
        policy: &kubeconfig::KubeconfigPolicy,
    ) -> Self {
        Target {
            kubeconfig,
            context,
            origin,
            endpoints: policy.endpoints.clone(),
        }
    }
}

/// Parses, vets and picks the context of a kubeconfig from a Secret.
///
/// # Errors
/// Why it cannot be used, without any of its content.
pub(crate) fn secret_target(
    data: &[u8],
    policy: &kubeconfig::KubeconfigPolicy,
    origin: String,
) -> Result<Target, String> {
    let mut parsed = kubeconfig::parse(data, &origin).map_err(|e| e.to_string())?;
    kubeconfig::vet(&mut parsed, policy, &origin).map_err(|e| e.to_string())?;
    let context = pick_context(&parsed).ok_or_else(|| {
        format!(
            "{origin}: it sets no current-context and has {} contexts; expected one",
            parsed.contexts.len()
        )
    })?;
    Ok(Target::new(parsed, context, origin, policy))
}

/// The current context, or the only context if none is current.
fn pick_context(kubeconfig: &Kubeconfig) -> Option<String> {
    match &kubeconfig.current_context {
        Some(current) if !current.is_empty() => Some(current.clone()),
        _ if kubeconfig.contexts.len() == 1 => Some(kubeconfig.contexts[0].name.clone()),
        _ => None,
    }
}

/// The informers an engine follows.
pub(crate) struct Watches {
    /// The objects that stand for clusters.
    pub primary: Arc<Informer<DynamicObject>>,
    /// The Secrets credentials are read from, if any.
    pub secrets: Option<Arc<Informer<Secret>>>,
}

/// Keeps a [`Clusters`] registry in step with the objects of a host cluster.
pub(crate) struct Engine<P> {
    planner: P,
    clusters: Clusters,
    options: ClusterOptions,
    builds: Semaphore,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last problem or wait reported per key, so each is logged once.
    notes: HashMap<ObjectKey, String>,
    /// Bumped to force a rebuild (an expiring client certificate).
    epochs: HashMap<ObjectKey, u64>,
    /// Keys whose cluster is registered, to find those whose object vanished unseen.
    known: HashSet<ObjectKey>,
}

/// What a key's task did.
enum Outcome {
    /// Nothing for the loop to do.
    Settled,
    /// The key was forgotten.
    Gone,
    /// A (new) cluster was engaged; rebuild it after this long, if set.
    Engaged(Option<Duration>),
    /// Building or engaging the cluster failed (an exec plugin may fail for a while):
    /// try again later.
    Failed,
}

impl<P: Planner> Engine<P> {
    pub(crate) fn new(planner: P, clusters: Clusters, options: ClusterOptions) -> Self {
        Engine {
            planner,
            clusters,
            options,
            builds: Semaphore::new(CONCURRENT_BUILDS),
            state: Mutex::new(State::default()),
        }
    }

    /// Runs the registry and follows `watches` until `token` is cancelled, or fails if
    /// the host's informers stop.
    pub(crate) async fn run(
        self: Arc<Self>,
        watches: Watches,
        token: CancellationToken,
        aware: Arc<dyn Aware>,
    ) -> Result<()> {
        // A run starts from nothing: the registry forgot its clusters when the last
        // run stopped, and so does the bookkeeping about them.
        *self.state() = State::default();
        let inner = token.child_token();
        let registry = self.clusters.clone();
        let follow = {
            let inner = inner.clone();
            async move {
                let result = self.follow(&watches, &inner).await;
                // Stops the registry too, which disengages every cluster.
                inner.cancel();
                result
            }
        };
        let (registered, followed) = tokio::join!(registry.start(inner.clone(), aware), follow);
        followed.and(registered)
    }

    async fn follow(self: &Arc<Self>, watches: &Watches, token: &CancellationToken) -> Result<()> {
        let provider = self.planner.provider();
        if !self.wait_synced(&watches.primary, token).await? {
            return Ok(());
        }
        if let Some(secrets) = &watches.secrets
            && !self.wait_synced(secrets, token).await?
        {
            return Ok(());
        }
        // Subscribed before the stores are read (by `mark_all`), so that no change is
        // missed; not before the first list, whose events `mark_all` covers.
        let mut primary_events = watches.primary.subscribe();
        let mut secret_events = watches.secrets.as_ref().map(|s| s.subscribe());
        tracing::info!(
            provider,
            resource = watches.primary.resource(),
            "following the host cluster"
        );
        let mut run = Run::default();
        self.mark_all(&mut run, watches);
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                event = primary_events.recv() => match event {
                    Ok(event) => {
                        if let Some(key) = ObjectKey::of(event.object().as_ref()) {
                            self.mark(&mut run, key);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(provider, missed, "fell behind the host's events; reconciling every object");
                        self.mark_all(&mut run, watches);
                    }
                    Err(RecvError::Closed) => return Err(stopped(provider, watches.primary.resource())),
                },
                event = recv_secret(&mut secret_events) => match event {
                    Ok(event) => {
                        let mut keys = self.planner.secret_keys(event.object());
                        if let InformerEvent::Applied { old: Some(old), .. } = &event {
                            keys.extend(self.planner.secret_keys(old));
                        }
                        for key in keys {
                            self.mark(&mut run, key);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(provider, missed, "fell behind the host's Secret events; reconciling every object");
                        self.mark_all(&mut run, watches);
                    }
                    Err(RecvError::Closed) => {
                        let resource = watches.secrets.as_ref().map_or("Secret", |s| s.resource());
                        return Err(stopped(provider, resource));
                    }
                },
                Some(done) = run.tasks.join_next_with_id() => self.finished(&mut run, done),
                Some(fired) = run.timers.join_next_with_id() => {
                    // A timer aborted after it fired is stale: its key has a newer one.
                    if let Ok((id, (key, timer))) = fired
                        && run.timer_handles.get(&key).is_some_and(|handle| handle.id() == id)
                    {
                        run.timer_handles.remove(&key);
                        if timer == Timer::Refresh {
                            *self.state().epochs.entry(key.clone()).or_default() += 1;
                        }
                        self.mark(&mut run, key);
                    }
                }
            }
        }
    }

    /// Waits for the first list of `informer`; `false` if `token` was cancelled first.
    async fn wait_synced<K>(&self, informer: &Informer<K>, token: &CancellationToken) -> Result<bool> {
        let provider = self.planner.provider();
        let what = format!("{provider} provider (is the CRD installed, may we list it?)");
        tokio::select! {
            () = token.cancelled() => Ok(false),
            synced = wait_synced_logged(informer, SYNC_REPORT, &what) => match synced {
                true => Ok(true),
                false => Err(stopped(provider, informer.resource())),
            },
        }
    }

    fn mark_all(self: &Arc<Self>, run: &mut Run, watches: &Watches) {
        let mut keys: HashSet<ObjectKey> = watches
            .primary
            .store()
            .list()
            .iter()
            .filter_map(|object| ObjectKey::of(object.as_ref()))
            .collect();
        keys.extend(self.state().known.iter().cloned());
        for key in keys {
            self.mark(run, key);
        }
    }

    /// Reconciles `key` now, or once its running task finishes.
    fn mark(self: &Arc<Self>, run: &mut Run, key: ObjectKey) {
        if run.running.contains(&key) {
            run.again.insert(key);
            return;
        }
        let this = self.clone();
        let task_key = key.clone();
        let handle = run.tasks.spawn(async move { this.reconcile(&task_key).await });
        run.running.insert(key.clone());
        run.ids.insert(handle.id(), key);
    }

    fn finished(
        self: &Arc<Self>,
        run: &mut Run,
        done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>,
    ) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, Some(outcome)),
            Err(err) => {
                tracing::error!(provider = self.planner.provider(), error = %crate::redact::describe(&err), "a reconcile task failed");
                (err.id(), None)
            }
        };
        let Some(key) = run.ids.remove(&id) else {
            return;
        };
        run.running.remove(&key);
        match outcome {
            Some(Outcome::Engaged(Some(after))) => {
                run.failures.remove(&key);
                run.schedule(key.clone(), after, Timer::Refresh);
            }
            Some(Outcome::Failed) => {
                let failures = run.failures.get(&key).map_or(1, |n| n.saturating_add(1));
                run.failures.insert(key.clone(), failures);
                run.schedule(key.clone(), retry_after(failures), Timer::Retry);
            }
            Some(Outcome::Gone | Outcome::Engaged(None)) => {
                run.failures.remove(&key);
                if let Some(timer) = run.timer_handles.remove(&key) {
                    timer.abort();
                }
            }
            // A pending refresh or retry stays due.
            Some(Outcome::Settled) => {
                run.failures.remove(&key);
            }
            None => {}
        }
        if run.again.remove(&key) {
            self.mark(run, key);
        }
    }

    async fn reconcile(&self, key: &ObjectKey) -> Outcome {
        let provider = self.planner.provider();
        let name = self.planner.cluster_name(key);
        match self.planner.plan(key) {
            Plan::Gone(why) => {
                if self.clusters.remove(&name) {
                    tracing::info!(provider, cluster = %name, object = %key, reason = %why, "cluster disengaged");
                }
                let mut state = self.state();
                state.notes.remove(key);
                state.epochs.remove(key);
                state.known.remove(key);
                Outcome::Gone
            }
            Plan::Disengage(why) => {
                if self.clusters.remove(&name) {
                    tracing::info!(provider, cluster = %name, object = %key, reason = %why, "cluster disengaged");
                    self.state().notes.insert(key.clone(), why);
                } else {
                    self.note(key, &name, false, why);
                }
                self.state().known.remove(key);
                Outcome::Gone
            }
            Plan::Wait(why) => {
                self.note(key, &name, false, why);
                Outcome::Settled
            }
            Plan::Invalid(why) => {
                let why = if self.clusters.names().contains(&name) {
                    format!("{why}; the cluster stays engaged with its previous credentials")
                } else {
                    format!("{why}; the cluster is not engaged")
                };
                self.note(key, &name, true, why);
                Outcome::Settled
            }
            Plan::Engage(target) => self.engage(key, name, *target).await,
        }
    }

    async fn engage(&self, key: &ObjectKey, name: ClusterName, target: Target) -> Outcome {
        let provider = self.planner.provider();
        let Some(fingerprint) = kubeconfig::fingerprint(&target.kubeconfig, &target.context) else {
            let why = format!("{}: context {:?} cannot be used", target.origin, target.context);
            self.note(key, &name, true, why);
            return Outcome::Settled;
        };
        let epoch = self.state().epochs.get(key).copied().unwrap_or(0);
        let fingerprint = mix(fingerprint, epoch);
        let origin = target.origin.clone();
        let mut refresh = None;
        let built = self
            .clusters
            .replace_if_changed(name.clone(), fingerprint, async || {
                let _permit = self.builds.acquire().await;
                let cluster = self.build(&name, target).await?;
                refresh = refresh_after(cluster.client().valid_until().as_ref().map(|t| t.as_second()));
                Ok(cluster)
            })
            .await;
        match built {
            Ok(true) => {
                let again = {
                    let mut state = self.state();
                    state.notes.remove(key);
                    !state.known.insert(key.clone())
                };
                let what = if again {
                    "cluster re-engaged"
                } else {
                    "cluster engaged"
                };
                tracing::info!(provider, cluster = %name, object = %key, credentials = %origin, "{what}");
                Outcome::Engaged(refresh)
            }
            Ok(false) => {
                self.state().notes.remove(key);
                Outcome::Settled
            }
            Err(err) => {
                // The engagement itself may have failed with the cluster registered.
                if self.clusters.names().contains(&name) {
                    self.state().known.insert(key.clone());
                }
                self.note(
                    key,
                    &name,
                    true,
                    format!("{}; retrying", crate::redact::describe(&err)),
                );
                Outcome::Failed
            }
        }
    }

    /// Builds the cluster's client. Off the async threads: with an exec credential
    /// plugin, kube runs the plugin while building.
    async fn build(&self, name: &ClusterName, target: Target) -> Result<Arc<Cluster>> {
        let Target {
            kubeconfig: parsed,
            context,
            origin,
            endpoints,
        } = target;
        let config = kubeconfig::client_config(&parsed, Some(&context), &origin).await?;
        let options = &self.options.client;
        let client =
            kubeconfig::build_client(config, options, &endpoints, BUILD_TIMEOUT, &origin, &context).await?;
        Ok(Arc::new(Cluster::with_options(
            name.clone(),
            client,
            self.options.clone(),
        )))
    }

    /// Logs `why` for `key` unless it was the last thing logged for it.
    fn note(&self, key: &ObjectKey, name: &ClusterName, warn: bool, why: String) {
        let mut state = self.state();
        if state.notes.get(key) == Some(&why) {
            return;
        }
        let provider = self.planner.provider();
        if warn {
            tracing::warn!(provider, cluster = %name, object = %key, "cannot engage: {why}");
        } else {
            tracing::info!(provider, cluster = %name, object = %key, "not engaged: {why}");
        }
        state.notes.insert(key.clone(), why);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The bookkeeping of the follow loop.
#[derive(Default)]
struct Run {
    /// The running reconcile tasks, by task id.
    tasks: JoinSet<Outcome>,
    ids: HashMap<tokio::task::Id, ObjectKey>,
    running: HashSet<ObjectKey>,
    /// Keys marked while their task ran: reconciled again when it ends.
    again: HashSet<ObjectKey>,
    /// At most one timer per key.
    timers: JoinSet<(ObjectKey, Timer)>,
    timer_handles: HashMap<ObjectKey, AbortHandle>,
    /// Consecutive failures per key, for the retry backoff.
    failures: HashMap<ObjectKey, u32>,
}

/// Why a key's timer was set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// The client's certificate is about to expire: rebuild it.
    Refresh,
    /// The last build or engagement failed: try again.
    Retry,
}

impl Run {
    /// Reconciles `key` after `after`, replacing its timer.
    fn schedule(&mut self, key: ObjectKey, after: Duration, timer: Timer) {
        let fired = key.clone();
        let handle = self.timers.spawn(async move {
            tokio::time::sleep(after).await;
            (fired, timer)
        });
        if let Some(previous) = self.timer_handles.insert(key, handle) {
            previous.abort();
        }
    }
}

/// The wait before the retry after `failures` consecutive failures.
fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

async fn recv_secret(
    events: &mut Option<tokio::sync::broadcast::Receiver<InformerEvent<Secret>>>,
) -> Result<InformerEvent<Secret>, RecvError> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

fn stopped(provider: &str, resource: &str) -> Error {
    Error::Provider {
        provider: provider.to_owned(),
        source: format!("the host cluster's {resource} informer stopped (was the host cluster stopped?)")
            .into(),
    }
}

fn mix(fingerprint: u64, epoch: u64) -> u64 {
    if epoch == 0 {
        return fingerprint;
    }
    let mut hasher = DefaultHasher::new();
    (fingerprint, epoch).hash(&mut hasher);
    hasher.finish()
}

/// When to rebuild a client whose credentials expire at `expires` (Unix seconds):
/// shortly before, never sooner than [`MIN_REFRESH`].
fn refresh_after(expires: Option<i64>) -> Option<Duration> {
    let expires = expires?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let left = Duration::from_secs(u64::try_from(expires).ok()?.saturating_sub(now));
    let margin = (left / 5).min(REFRESH_MARGIN);
    Some(left.saturating_sub(margin).max(MIN_REFRESH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_shortly_before_expiry() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64;
        assert_eq!(refresh_after(None), None);
        let hour = refresh_after(Some(now + 3600)).expect("expires");
        assert!(
            hour <= Duration::from_secs(3540) && hour >= Duration::from_secs(3530),
            "{hour:?}"
        );
        let soon = refresh_after(Some(now + 20)).expect("expires");
        assert!(
            soon <= Duration::from_secs(16) && soon >= Duration::from_secs(14),
            "{soon:?}"
        );
        assert_eq!(refresh_after(Some(now - 100)), Some(MIN_REFRESH));
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(retry_after(1), FIRST_RETRY);
        assert_eq!(retry_after(2), FIRST_RETRY * 2);
        assert_eq!(retry_after(4), FIRST_RETRY * 8);
        assert_eq!(retry_after(10), MAX_RETRY);
        assert_eq!(retry_after(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn epochs_change_the_fingerprint() {
        assert_eq!(mix(42, 0), 42);
        assert_ne!(mix(42, 1), 42);
        assert_ne!(mix(42, 1), mix(42, 2));
    }

    #[test]
    fn the_current_or_only_context_is_picked() {
        let one = "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: only\n  context:\n    cluster: a\n";
        let parsed = kubeconfig::parse(one.as_bytes(), "t").expect("valid");
        assert_eq!(pick_context(&parsed).as_deref(), Some("only"));
        let two = format!("{one}- name: other\n  context:\n    cluster: a\n");
        let parsed = kubeconfig::parse(two.as_bytes(), "t").expect("valid");
        assert_eq!(pick_context(&parsed), None);
        let err = secret_target(
            two.as_bytes(),
            &kubeconfig::KubeconfigPolicy::untrusted(),
            "Secret a/b".into(),
        )
        .err()
        .expect("ambiguous");
        assert!(err.contains("Secret a/b") && err.contains("2 contexts"), "{err}");
        let current = format!("{two}current-context: other\n");
        let parsed = kubeconfig::parse(current.as_bytes(), "t").expect("valid");
        assert_eq!(pick_context(&parsed).as_deref(), Some("other"));
    }
}
