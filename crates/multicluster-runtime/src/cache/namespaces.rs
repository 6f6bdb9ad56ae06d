//! Watches of one namespace each, merged into the event stream of one informer.
//!
//! An informer restricted to namespaces ([`WatchNamespaces::Only`](super::WatchNamespaces::Only))
//! runs one kube [`watcher()`] per namespace (a namespaced URL, so a Role in each
//! namespace is all the RBAC it needs) and feeds all of them into its one [`Store`],
//! so that reads and indexes see one set of objects.
//!
//! The store's relist protocol (`Init`, `InitApply`…, `InitDone`, then objects the
//! list did not contain are deleted) is store-wide, while each namespace's watcher
//! relists on its own. [`merge`] translates:
//!
//! - one `Init` first, and one `InitDone` once **every** namespace finished its first
//!   list: the informer is synced when all its namespaces are;
//! - each namespace's `InitApply` passes through (the store reports it only if the
//!   object is new or changed), `Apply` and `Delete` pass through;
//! - when a namespace's list completes, the objects of that namespace in the store
//!   that the list did not contain are deleted (a `Delete` with the stored object),
//!   so a namespace relisting never touches the others.
//!
//! The store is read at that moment, and is up to date: the informer applies each
//! event before it polls the stream again, and the merge yields everything it
//! produced before it reads the next event of a watcher.
//!
//! Each namespace's watcher has its own backoff: a namespace whose watch fails (e.g.
//! 403) retries alone, and the others keep flowing.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};

use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use kube::api::{Api, ObjectMeta};
use kube::core::DynamicResourceScope;
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::Deserialize;

use super::{CacheObject, ObjectKey, Store};

/// `K` seen through a namespaced URL: the same resource, with the dynamic scope that
/// lets kube build an [`Api`] for one namespace of any type.
#[derive(Clone, Debug, Deserialize)]
#[serde(transparent)]
struct InNamespace<K>(K);

impl<K: Resource> Resource for InNamespace<K> {
    type DynamicType = K::DynamicType;
    type Scope = DynamicResourceScope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn metadata_api() -> bool {
        K::metadata_api()
    }

    fn url_path(dt: &Self::DynamicType, namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

/// The events of one namespace's watch, retried with backoff on its own: a
/// namespace that fails waits alone.
pub(crate) fn watch_namespace<K: CacheObject>(
    client: Client,
    dyntype: &K::DynamicType,
    namespace: &str,
    config: watcher::Config,
    list_watch: super::list_watch::ListWatch,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static {
    let api = Api::<InNamespace<K>>::namespaced_with(client, namespace, dyntype);
    super::list_watch::watch(api, config, list_watch).map(|item| item.map(unwrap))
}

fn unwrap<K>(event: watcher::Event<InNamespace<K>>) -> watcher::Event<K> {
    use watcher::Event::*;
    match event {
        Init => Init,
        InitApply(object) => InitApply(object.0),
        InitDone => InitDone,
        Apply(object) => Apply(object.0),
        Delete(object) => Delete(object.0),
    }
}

type Tagged<K> = (usize, watcher::Result<watcher::Event<K>>);

/// Merges the event streams of several namespaces (`(namespace, stream)`) into the
/// event stream of one informer whose store is `store`; see the [module docs](self).
pub(crate) fn merge<K, S>(
    watches: Vec<(String, S)>,
    store: Store<K>,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: CacheObject,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let mut streams: SelectAll<BoxStream<'static, Tagged<K>>> = SelectAll::new();
    let mut namespaces = Vec::with_capacity(watches.len());
    for (index, (namespace, stream)) in watches.into_iter().enumerate() {
        streams.push(stream.map(move |item| (index, item)).boxed());
        namespaces.push(Namespace {
            name: namespace,
            listed: false,
            listing: None,
        });
    }
    let merge = Merge {
        unlisted: namespaces.len(),
        namespaces,
        out: VecDeque::from([Ok(watcher::Event::Init)]),
        store,
    };
    futures::stream::unfold((merge, streams), |(mut merge, mut streams)| async move {
        loop {
            if let Some(event) = merge.out.pop_front() {
                return Some((event, (merge, streams)));
            }
            let (index, item) = streams.next().await?;
            merge.handle(index, item);
        }
    })
}

struct Merge<K> {
    namespaces: Vec<Namespace>,
    /// How many namespaces have not finished their first list.
    unlisted: usize,
    /// Events produced and not yet yielded.
    out: VecDeque<watcher::Result<watcher::Event<K>>>,
    store: Store<K>,
}

struct Namespace {
    name: String,
    /// Whether its first list completed.
    listed: bool,
    /// The names listed so far, while a list is under way.
    listing: Option<HashSet<String>>,
}

impl<K: CacheObject> Merge<K> {
    fn handle(&mut self, index: usize, item: watcher::Result<watcher::Event<K>>) {
        let event = match item {
            Ok(event) => event,
            Err(error) => return self.out.push_back(Err(error)),
        };
        let namespace = &mut self.namespaces[index];
        match event {
            watcher::Event::Init => namespace.listing = Some(HashSet::new()),
            watcher::Event::InitApply(object) => {
                if let (Some(listing), Some(key)) = (namespace.listing.as_mut(), ObjectKey::of(&object)) {
                    listing.insert(key.name);
                }
                self.out.push_back(Ok(watcher::Event::InitApply(object)));
            }
            watcher::Event::InitDone => {
                let listed = namespace.listing.take().unwrap_or_default();
                for object in self.store.list_namespace(&namespace.name) {
                    let name = object.meta().name.as_deref().unwrap_or_default();
                    if !listed.contains(name) {
                        self.out.push_back(Ok(watcher::Event::Delete(K::clone(&object))));
                    }
                }
                if !namespace.listed {
                    namespace.listed = true;
                    self.unlisted -= 1;
                    if self.unlisted == 0 {
                        self.out.push_back(Ok(watcher::Event::InitDone));
                    }
                }
            }
            other => self.out.push_back(Ok(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::channel::mpsc;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use tokio_util::sync::CancellationToken;

    use super::super::informer::{Informer, Prepare};
    use super::super::{InformerEvent, WatchSpec};
    use super::*;
    use crate::ClusterName;

    type Sender = mpsc::UnboundedSender<watcher::Result<watcher::Event<ConfigMap>>>;

    fn cm(namespace: &str, name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn names(informer: &Informer<ConfigMap>) -> Vec<String> {
        let mut names: Vec<String> = informer
            .store()
            .list()
            .iter()
            .map(|cm| {
                format!(
                    "{}/{}",
                    cm.metadata.namespace.as_deref().unwrap_or(""),
                    cm.metadata.name.as_deref().unwrap_or("")
                )
            })
            .collect();
        names.sort();
        names
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn send(tx: &Sender, event: watcher::Event<ConfigMap>) {
        tx.unbounded_send(Ok(event)).expect("the merge listens");
    }

    #[tokio::test]
    async fn syncs_when_every_namespace_listed_and_relists_one_namespace_alone() {
        use watcher::Event::*;
        let informer = Arc::new(Informer::<ConfigMap>::new(
            ClusterName::from("c"),
            Arc::from("ConfigMap (v1)"),
            WatchSpec::default().namespaces(["a", "b"]),
            64,
            8,
        ));
        let (a, a_rx) = mpsc::unbounded();
        let (b, b_rx) = mpsc::unbounded();
        let stream = merge(
            vec![("a".to_owned(), a_rx), ("b".to_owned(), b_rx)],
            informer.store().share(),
        );
        let mut events = informer.subscribe();
        let prepare = Prepare {
            strip_managed_fields: true,
            transform: None,
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(informer.clone().run(
            crate::cache::testing::once(stream),
            prepare,
            token.clone(),
        ));

        send(&a, Init);
        send(&a, InitApply(cm("a", "one", "1")));
        send(&a, InitApply(cm("a", "two", "1")));
        send(&a, InitDone);
        send(&a, Apply(cm("a", "three", "2")));
        settle().await;
        assert!(!informer.is_synced(), "b has not listed yet");
        assert_eq!(names(&informer), ["a/one", "a/three", "a/two"]);

        send(&b, Init);
        send(&b, InitApply(cm("b", "one", "1")));
        send(&b, InitDone);
        informer
            .wait_synced(Duration::from_secs(5))
            .await
            .expect("synced");
        assert_eq!(names(&informer), ["a/one", "a/three", "a/two", "b/one"]);

        // b's watch breaks and relists: b/one is gone, b/new is new; a is untouched.
        while events.try_recv().is_ok() {}
        send(&b, Init);
        send(&b, InitApply(cm("b", "new", "5")));
        send(&b, InitDone);
        // a relists unchanged: no event at all.
        send(&a, Init);
        for name in ["one", "two"] {
            send(&a, InitApply(cm("a", name, "1")));
        }
        send(&a, InitApply(cm("a", "three", "2")));
        send(&a, InitDone);
        settle().await;
        assert_eq!(names(&informer), ["a/one", "a/three", "a/two", "b/new"]);
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(match event {
                InformerEvent::Applied { new, .. } => format!("applied {:?}", new.metadata.name),
                InformerEvent::Deleted(old) => format!("deleted {:?}", old.metadata.name),
            });
        }
        assert_eq!(seen, ["applied Some(\"new\")", "deleted Some(\"one\")"]);

        token.cancel();
        task.await.expect("the informer stops");
    }

    #[tokio::test]
    async fn errors_pass_through_and_other_namespaces_keep_flowing() {
        use watcher::Event::*;
        let informer = Arc::new(Informer::<ConfigMap>::new(
            ClusterName::from("c"),
            Arc::from("ConfigMap (v1)"),
            WatchSpec::default(),
            64,
            8,
        ));
        let (a, a_rx) = mpsc::unbounded();
        let (b, b_rx) = mpsc::unbounded();
        let stream = merge(
            vec![("a".to_owned(), a_rx), ("b".to_owned(), b_rx)],
            informer.store().share(),
        );
        let prepare = Prepare {
            strip_managed_fields: true,
            transform: None,
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(informer.clone().run(
            crate::cache::testing::once(stream),
            prepare,
            token.clone(),
        ));
        b.unbounded_send(Err(watcher::Error::NoResourceVersion)).unwrap();
        send(&a, Init);
        send(&a, InitApply(cm("a", "x", "1")));
        send(&a, InitDone);
        settle().await;
        assert!(informer.last_error().is_some());
        assert_eq!(names(&informer), ["a/x"]);
        assert!(!informer.is_synced());
        token.cancel();
        task.await.expect("the informer stops");
    }
}
