//! The list-and-watch behind an informer: kube's watcher, its first list streamed
//! where the apiserver can stream it, retried with backoff ([`retry`](super::retry)).
//!
//! A streamed list (`sendInitialEvents`, Kubernetes' "watch-list") sends the
//! objects one event at a time, so the client decodes and stores one object at a
//! time. A paged list decodes a page of 500 objects at once, and those pages sit
//! beside what the store already holds: in the benchmark's 8 clusters × 1,000
//! ConfigMaps that is ≈ 8 MiB of the peak, which the allocator then keeps.
//!
//! Apiservers that cannot stream answer the first watch with 422 or 400: before
//! 1.27, where `WatchList` is off (1.27–1.31 and 1.33 by default), or wherever an
//! administrator turned it off. The informer then lists in pages for the rest of
//! its life, as client-go's reflector falls back to list-and-watch. Any other
//! failure (unreachable, 403, 5xx) is retried as it is, streamed again.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::watcher::{self, InitialListStrategy, watcher};
use serde::de::DeserializeOwned;

use super::retry;
use crate::cluster::ClusterName;

/// An informer's list-and-watch settings, shared by every watch it makes (it
/// makes a new one after a transform panic or a reconnect): what names it in the
/// one log line of a fallback, and whether its first lists are still streamed, so
/// that a refusal lasts the informer's life.
#[derive(Clone, Debug)]
pub(crate) struct ListWatch {
    pub cluster: ClusterName,
    pub resource: String,
    /// The namespace of a per-namespace watch; empty for a cluster-wide one.
    pub namespace: String,
    /// Streamed first lists: [`CacheOptions::streaming_lists`](super::CacheOptions::streaming_lists)
    /// until the apiserver refuses one. Shared with the informer's other watches
    /// (its other namespaces, and the watches that replace these).
    pub streaming: Arc<AtomicBool>,
}

/// The events of `api` under `config`, as an informer follows them: a first list
/// streamed while `list_watch` says so and the apiserver can, else paged; every
/// failure retried with the documented backoff.
pub(crate) fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    list_watch: ListWatch,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let make = move |streaming: bool| {
        let mut config = config.clone();
        config.initial_list_strategy = if streaming {
            InitialListStrategy::StreamingList
        } else {
            InitialListStrategy::ListWatch
        };
        watcher(api.clone(), config).boxed()
    };
    retry::with_backoff(streamed_or_paged(make, list_watch))
}

/// The events of `make(true)` (streamed lists) until the apiserver refuses to
/// stream, then those of `make(false)` (paged lists) for good; only `make(false)`
/// once `list_watch.streaming` is false.
fn streamed_or_paged<K, F>(
    mut make: F,
    list_watch: ListWatch,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: Send + 'static,
    F: FnMut(bool) -> BoxStream<'static, watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let streaming = list_watch.streaming.load(Ordering::Relaxed);
    let events = make(streaming);
    stream::unfold(
        (events, make, streaming, list_watch),
        |(mut events, mut make, mut streaming, list_watch)| async move {
            loop {
                let item = events.next().await?;
                if streaming && item.as_ref().is_err_and(refuses_streaming) {
                    let status = item.as_ref().err().and_then(retry::status_code);
                    tracing::info!(
                        cluster = %list_watch.cluster,
                        resource = %list_watch.resource,
                        namespace = %list_watch.namespace,
                        status,
                        "the apiserver cannot stream a list (no WatchList); listing in pages from now on"
                    );
                    streaming = false;
                    list_watch.streaming.store(false, Ordering::Relaxed);
                    events = make(false);
                    continue;
                }
                return Some((item, (events, make, streaming, list_watch)));
            }
        },
    )
}

/// Whether the apiserver refused a watch's parameters: what one that cannot stream
/// lists answers `sendInitialEvents` (or, before 1.27, `resourceVersionMatch` on a
/// watch) with.
fn refuses_streaming(error: &watcher::Error) -> bool {
    const BAD_REQUEST: u16 = 400;
    const UNPROCESSABLE: u16 = 422;
    matches!(error, watcher::Error::WatchStartFailed(_))
        && matches!(retry::status_code(error), Some(BAD_REQUEST | UNPROCESSABLE))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::core::Status;
    use watcher::Event::{Init, InitApply, InitDone};

    use super::*;

    fn refused(code: u16) -> watcher::Error {
        let status = Status::failure("sendInitialEvents is forbidden", "Invalid").with_code(code);
        watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(status)))
    }

    fn named(name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm
    }

    fn list_watch(streaming: bool) -> ListWatch {
        ListWatch {
            cluster: ClusterName::from("eu-1"),
            resource: "configmaps".into(),
            namespace: String::new(),
            streaming: Arc::new(AtomicBool::new(streaming)),
        }
    }

    /// Scripted watches: what the streamed and the paged watch yield, and which
    /// were asked for, in order.
    #[allow(clippy::type_complexity)]
    fn scripted(
        streamed: Vec<watcher::Result<watcher::Event<ConfigMap>>>,
        paged: Vec<watcher::Result<watcher::Event<ConfigMap>>>,
    ) -> (
        impl FnMut(bool) -> BoxStream<'static, watcher::Result<watcher::Event<ConfigMap>>> + Send + 'static,
        Arc<Mutex<Vec<bool>>>,
    ) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (mut streamed, mut paged) = (Some(streamed), Some(paged));
        let log = asked.clone();
        let make = move |streaming: bool| {
            log.lock().unwrap().push(streaming);
            let items = if streaming { streamed.take() } else { paged.take() };
            stream::iter(items.expect("each watch is made once")).boxed()
        };
        (make, asked)
    }

    fn summary(items: &[watcher::Result<watcher::Event<ConfigMap>>]) -> Vec<String> {
        items
            .iter()
            .map(|item| match item {
                Ok(Init) => "init".to_owned(),
                Ok(InitApply(cm)) => format!("apply {}", cm.metadata.name.as_deref().unwrap_or("")),
                Ok(InitDone) => "done".to_owned(),
                Ok(_) => "other".to_owned(),
                Err(error) => format!("error {:?}", retry::status_code(error)),
            })
            .collect()
    }

    #[tokio::test]
    async fn v03_a_refused_streamed_list_falls_back_to_pages_for_good() {
        for code in [400, 422] {
            let (make, asked) = scripted(
                vec![Err(refused(code)), Ok(Init), Ok(InitApply(named("never")))],
                vec![
                    Ok(Init),
                    Ok(InitApply(named("a"))),
                    Ok(InitDone),
                    Err(refused(code)),
                ],
            );
            let shared = list_watch(true);
            let items: Vec<_> = streamed_or_paged(make, shared.clone()).collect().await;
            assert_eq!(
                summary(&items),
                ["init", "apply a", "done", &format!("error Some({code})")],
                "the refusal is not passed on; a later one, paged, is"
            );
            assert_eq!(*asked.lock().unwrap(), [true, false], "one fallback, then pages");

            // The informer's next watch (after a reconnect or a transform panic)
            // lists in pages at once.
            let (make, asked) = scripted(vec![Err(refused(code))], vec![Ok(Init), Ok(InitDone)]);
            let items: Vec<_> = streamed_or_paged(make, shared).collect().await;
            assert_eq!(summary(&items), ["init", "done"]);
            assert_eq!(*asked.lock().unwrap(), [false], "no second refused request");
        }
    }

    #[tokio::test]
    async fn v03_other_failures_of_a_streamed_list_are_retried_streamed() {
        let forbidden = {
            let status = Status::failure("forbidden", "Forbidden").with_code(403);
            watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(status)))
        };
        // A 422 once the watch runs is the watch's own error, not a refusal to stream.
        let in_stream =
            watcher::Error::WatchError(Box::new(Status::failure("too large", "Invalid").with_code(422)));
        let (make, asked) = scripted(
            vec![
                Err(forbidden),
                Err(watcher::Error::NoResourceVersion),
                Ok(Init),
                Ok(InitApply(named("a"))),
                Ok(InitDone),
                Err(in_stream),
            ],
            vec![],
        );
        let shared = list_watch(true);
        let items: Vec<_> = streamed_or_paged(make, shared.clone()).collect().await;
        assert_eq!(
            summary(&items),
            [
                "error Some(403)",
                "error None",
                "init",
                "apply a",
                "done",
                "error Some(422)"
            ]
        );
        assert_eq!(*asked.lock().unwrap(), [true]);
        assert!(shared.streaming.load(Ordering::Relaxed), "still streaming");
    }

    #[tokio::test]
    async fn v03_paged_lists_when_streaming_is_off() {
        let (make, asked) = scripted(vec![], vec![Err(refused(422)), Ok(Init), Ok(InitDone)]);
        let items: Vec<_> = streamed_or_paged(make, list_watch(false)).collect().await;
        assert_eq!(
            summary(&items),
            ["error Some(422)", "init", "done"],
            "nothing to fall back to"
        );
        assert_eq!(*asked.lock().unwrap(), [false]);
    }
}
