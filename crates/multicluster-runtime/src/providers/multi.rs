//! A provider that composes other providers under name prefixes.
//!
//! Available with the cargo feature `multi` (or `providers`, which enables every provider).
//!
//! Each inner provider is registered under a name; its cluster `c` becomes
//! `<provider>#<c>` (the separator is configurable), so the same inner name under two
//! providers stays two clusters. Providers can be added and removed while the manager
//! runs: removing one disengages all its clusters.
//!
//! # Which name is the cluster's
//!
//! The engaged [`ClusterName`], `<provider>#<cluster>`, is the authoritative one: it
//! is the name under which the manager and every controller know the cluster, the
//! name [`Provider::get`] and [`Manager::get_cluster`](crate::Manager::get_cluster)
//! take, and the cluster of every [`Request`](crate::controller::Request) for it
//! ([`ReconcileRequest::cluster_name`](crate::controller::ReconcileRequest::cluster_name)).
//! The engaged [`Cluster`] carries that name too ([`Cluster::name`] is `eu#prod`):
//! it shares the member's client and cache under the prefixed name, one instance
//! per instance of the member's, so that the same member instance engaged again
//! is still a no-op and a new one still a replacement. Only the cache's own errors
//! and logs name the member's inner name (`prod`), since the cache is the member's.
//!
//! ```no_run
//! # async fn demo(local: kube::Client, eu: kube::Client, us: kube::Client) -> multicluster_runtime::Result<()> {
//! use std::sync::Arc;
//! use multicluster_runtime::providers::{clusters::Clusters, multi::Multi};
//! use multicluster_runtime::{Cluster, Manager};
//!
//! let europe = Arc::new(Clusters::new());
//! europe.add(Arc::new(Cluster::new("prod", eu))).await?;
//! let america = Arc::new(Clusters::new());
//! america.add(Arc::new(Cluster::new("prod", us))).await?;
//!
//! let multi = Arc::new(Multi::new());
//! multi.add_provider("eu", europe).await?; // engages `eu#prod`
//! multi.add_provider("us", america).await?; // engages `us#prod`
//! let manager = Manager::with_provider(Arc::new(Cluster::new("", local)), multi.clone());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{CacheError, FieldIndex};
use crate::cluster::{Cluster, ClusterName};
use crate::error::{Error, Result};
use crate::multicluster::{Aware, Provider, ProviderRunnable};

/// The default separator between provider and cluster names.
pub const DEFAULT_SEPARATOR: &str = "#";

/// Composes providers; see the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct Multi {
    separator: Arc<str>,
    state: Arc<Mutex<State>>,
    aliases: Aliases,
}

/// The engaged instances under prefixed names, each with the member's instance it
/// stands for.
#[derive(Clone, Default)]
struct Aliases(Arc<Mutex<HashMap<ClusterName, Alias>>>);

/// The member's instance, and the one engaged for it.
type Alias = (Arc<Cluster>, Arc<Cluster>);

impl Aliases {
    /// The instance that stands for `inner` under `name`: the one made before for
    /// the same instance, or a new one.
    fn of(&self, name: &ClusterName, inner: &Arc<Cluster>) -> Arc<Cluster> {
        let mut aliases = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match aliases.get(name) {
            Some((known, alias)) if Arc::ptr_eq(known, inner) => alias.clone(),
            _ => {
                let alias = Arc::new(Cluster::alias(name.clone(), inner));
                aliases.insert(name.clone(), (inner.clone(), alias.clone()));
                alias
            }
        }
    }

    /// The instance that stands for `inner` under `name`, without remembering a
    /// new one.
    fn lookup(&self, name: &ClusterName, inner: &Arc<Cluster>) -> Arc<Cluster> {
        let aliases = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match aliases.get(name) {
            Some((known, alias)) if Arc::ptr_eq(known, inner) => alias.clone(),
            _ => Arc::new(Cluster::alias(name.clone(), inner)),
        }
    }

    /// Forgets `alias` once its engagement ended, unless a newer one replaced it.
    fn forget(&self, name: &ClusterName, alias: &Arc<Cluster>) {
        let mut aliases = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if aliases
            .get(name)
            .is_some_and(|(_, known)| Arc::ptr_eq(known, alias))
        {
            aliases.remove(name);
        }
    }
}

#[derive(Default)]
struct State {
    providers: HashMap<String, Member>,
    indexes: Vec<FieldIndex>,
    running: Option<Running>,
}

struct Member {
    provider: Arc<dyn Provider>,
    /// Cancelled when the member is removed or the multi provider stops.
    token: CancellationToken,
}

#[derive(Clone)]
struct Running {
    token: CancellationToken,
    aware: Arc<dyn Aware>,
    /// The run's tasks: the members' runs and the watchers of their engagements;
    /// [`Multi::start`] returns once they have ended.
    tasks: TaskTracker,
}

impl std::fmt::Debug for Multi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multi")
            .field("separator", &self.separator)
            .field("providers", &self.provider_names())
            .finish()
    }
}

impl Default for Multi {
    fn default() -> Self {
        Self::with_separator(DEFAULT_SEPARATOR)
    }
}

impl Multi {
    /// A multi provider with the separator `#`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A multi provider whose cluster names are `<provider><separator><cluster>`.
    pub fn with_separator(separator: impl Into<String>) -> Self {
        let separator: String = separator.into();
        Multi {
            separator: Arc::from(separator),
            state: Arc::default(),
            aliases: Aliases::default(),
        }
    }

    /// Adds `provider` under `name`: the field indexes registered so far are applied
    /// to it and, if the multi provider runs and `provider` is runnable, it is started
    /// with its clusters engaged as `<name><separator><cluster>`.
    ///
    /// # Errors
    /// [`Error::Provider`] if `name` is empty, contains the separator or is taken; an
    /// index that cannot be applied.
    pub async fn add_provider<P: Provider + 'static>(
        &self,
        name: impl Into<String>,
        provider: Arc<P>,
    ) -> Result<()> {
        let name = name.into();
        if name.is_empty() || name.contains(&*self.separator) {
            return Err(self.refuse(format!(
                "provider name {name:?} must be non-empty and without {:?}",
                self.separator
            )));
        }
        let provider: Arc<dyn Provider> = provider;
        // The member joins and the indexes are read in one step: an index registered
        // after it is applied by `index_field`, one registered before it here, so
        // each exactly once.
        let (indexes, running, token) = {
            let mut state = self.lock();
            if state.providers.contains_key(&name) {
                return Err(self.refuse(format!("a provider named {name:?} exists already")));
            }
            let running = state.running.clone();
            let token = running
                .as_ref()
                .map_or_else(CancellationToken::new, |r| r.token.child_token());
            let member = Member {
                provider: provider.clone(),
                token: token.clone(),
            };
            state.providers.insert(name.clone(), member);
            (state.indexes.clone(), running, token)
        };
        for index in indexes {
            if let Err(err) = tolerate_existing(provider.index_field(index).await) {
                self.remove_provider(&name);
                return Err(err);
            }
        }
        if running.is_some() {
            self.launch(name, provider, token);
        }
        Ok(())
    }

    /// Removes the provider `name` and disengages all its clusters before returning.
    /// Returns whether it existed.
    pub fn remove_provider(&self, name: &str) -> bool {
        let removed = self.lock().providers.remove(name);
        removed.map(|member| member.token.cancel()).is_some()
    }

    /// The names of the providers, in no particular order.
    pub fn provider_names(&self) -> Vec<String> {
        self.lock().providers.keys().cloned().collect()
    }

    /// Splits a cluster name into provider and inner cluster name.
    fn split<'a>(&self, name: &'a ClusterName) -> Option<(&'a str, &'a str)> {
        name.as_str().split_once(&*self.separator)
    }

    /// Starts a runnable member with an [`Aware`] that prefixes its cluster names,
    /// on the tasks of the run that `token` belongs to; not if that run has ended.
    fn launch(&self, name: String, provider: Arc<dyn Provider>, token: CancellationToken) {
        let Some(runnable) = provider.into_runnable() else {
            return;
        };
        // Under the lock that `start` takes to end the run: a member is either
        // spawned before the run's tasks are closed, and waited for, or not at all.
        let state = self.lock();
        let Some(running) = state.running.as_ref().filter(|_| !token.is_cancelled()) else {
            return;
        };
        let prefixed: Arc<dyn Aware> = Arc::new(Prefixed {
            prefix: format!("{name}{}", self.separator),
            member: token.clone(),
            aware: running.aware.clone(),
            aliases: self.aliases.clone(),
            tasks: running.tasks.clone(),
        });
        running.tasks.spawn(async move {
            if let Err(err) = runnable.start(token.clone(), prefixed).await {
                // One failing member must not take the others down: its clusters go.
                tracing::error!(provider = name, error = %crate::redact::describe(&err), "provider failed; its clusters are disengaged");
            }
            token.cancel();
        });
    }

    fn refuse(&self, reason: String) -> Error {
        Error::Provider {
            provider: "multi".into(),
            source: reason.into(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An index a member has already (a cluster shared with another member) is fine.
fn tolerate_existing(result: Result<()>) -> Result<()> {
    match result {
        Err(Error::Cache(CacheError::IndexExists { .. })) => Ok(()),
        other => other,
    }
}

#[async_trait]
impl Provider for Multi {
    async fn get(&self, name: &ClusterName) -> Result<Arc<Cluster>> {
        let not_found = || Error::ClusterNotFound(name.clone());
        let (member, inner) = self.split(name).ok_or_else(not_found)?;
        let provider = self
            .lock()
            .providers
            .get(member)
            .map(|m| m.provider.clone())
            .ok_or_else(not_found)?;
        let cluster = provider
            .get(&ClusterName::from(inner))
            .await
            .map_err(|err| match err {
                Error::ClusterNotFound(_) => not_found(),
                other => other,
            })?;
        Ok(self.aliases.lookup(name, &cluster))
    }

    async fn index_field(&self, index: FieldIndex) -> Result<()> {
        let providers: Vec<Arc<dyn Provider>> = {
            let mut state = self.lock();
            state.indexes.push(index.clone());
            state.providers.values().map(|m| m.provider.clone()).collect()
        };
        for provider in providers {
            tolerate_existing(provider.index_field(index.clone()).await)?;
        }
        Ok(())
    }

    fn into_runnable(self: Arc<Self>) -> Option<Arc<dyn ProviderRunnable>> {
        Some(self)
    }
}

#[async_trait]
impl ProviderRunnable for Multi {
    /// Starts every runnable member (and those added later) until `token` is
    /// cancelled, and returns once every member's `start` has returned.
    async fn start(&self, token: CancellationToken, aware: Arc<dyn Aware>) -> Result<()> {
        let tasks = TaskTracker::new();
        let members: Vec<(String, Arc<dyn Provider>, CancellationToken)> = {
            let mut state = self.lock();
            state.running = Some(Running {
                token: token.clone(),
                aware,
                tasks: tasks.clone(),
            });
            let members = std::mem::take(&mut state.providers);
            let mut started = Vec::new();
            for (name, member) in members {
                // Members added before start get tokens tied to this run.
                let child = token.child_token();
                started.push((name.clone(), member.provider.clone(), child.clone()));
                state.providers.insert(
                    name,
                    Member {
                        provider: member.provider,
                        token: child,
                    },
                );
            }
            started
        };
        for (name, provider, member_token) in members {
            self.launch(name, provider, member_token);
        }
        token.cancelled().await;
        self.lock().running = None;
        // The members' tokens are children of `token`: each member stops now.
        tasks.close();
        tasks.wait().await;
        Ok(())
    }
}

/// Engages a member's clusters under `<member><separator><cluster>`, and ties each
/// cluster's token to the member's, so removing the member disengages its clusters
/// even if the member itself does not cancel them.
struct Prefixed {
    prefix: String,
    member: CancellationToken,
    aware: Arc<dyn Aware>,
    aliases: Aliases,
    /// The run's tasks, which the watchers of engagements join.
    tasks: TaskTracker,
}

#[async_trait]
impl Aware for Prefixed {
    async fn engage(&self, token: CancellationToken, name: ClusterName, cluster: Arc<Cluster>) -> Result<()> {
        let full = ClusterName::from(format!("{}{}", self.prefix, name.as_str()));
        let alias = self.aliases.of(&full, &cluster);
        // A child of the cluster's token, so that an engagement that has ended
        // already arrives ended (and is ignored) instead of live until the task
        // below notices; the member's end reaches it through that task.
        let tied = token.child_token();
        let (watched, member) = (tied.clone(), self.member.clone());
        let (aliases, ended, ended_alias) = (self.aliases.clone(), full.clone(), alias.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                () = member.cancelled() => watched.cancel(),
                () = watched.cancelled() => {}
            }
            aliases.forget(&ended, &ended_alias);
        });
        self.aware.engage(tied, full, alias).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the token of every engagement it receives.
    #[derive(Default)]
    struct Tokens(Mutex<Vec<CancellationToken>>);

    #[async_trait]
    impl Aware for Tokens {
        async fn engage(&self, token: CancellationToken, _: ClusterName, _: Arc<Cluster>) -> Result<()> {
            self.0.lock().unwrap().push(token);
            Ok(())
        }
    }

    /// r07: an engagement whose token was cancelled on its way reaches the manager
    /// ended, not under a fresh live token, so the manager ignores it (rule 1 of
    /// the engagement registry) instead of engaging a removed cluster; a live one
    /// ends with its own token and with the member's.
    #[tokio::test]
    async fn r07_a_cancelled_engagement_stays_cancelled_through_the_prefix() {
        let client =
            kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap();
        let cluster = Arc::new(Cluster::new("c", client));
        let tokens = Arc::new(Tokens::default());
        let member = CancellationToken::new();
        let prefixed = Prefixed {
            prefix: "m#".into(),
            member: member.clone(),
            aware: tokens.clone(),
            aliases: Aliases::default(),
            tasks: TaskTracker::new(),
        };
        let ended = CancellationToken::new();
        ended.cancel();
        prefixed.engage(ended, "c".into(), cluster.clone()).await.unwrap();
        assert!(tokens.0.lock().unwrap()[0].is_cancelled(), "arrives ended");

        let live = CancellationToken::new();
        prefixed
            .engage(live.clone(), "c".into(), cluster.clone())
            .await
            .unwrap();
        let engaged = tokens.0.lock().unwrap()[1].clone();
        assert!(!engaged.is_cancelled());
        live.cancel();
        assert!(engaged.is_cancelled(), "ends with its own token at once");

        let other = CancellationToken::new();
        prefixed.engage(other, "c".into(), cluster).await.unwrap();
        let engaged = tokens.0.lock().unwrap()[2].clone();
        member.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), engaged.cancelled())
            .await
            .expect("ends with the member");
    }
}
