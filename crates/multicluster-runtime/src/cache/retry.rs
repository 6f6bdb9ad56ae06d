//! Retrying a failing watch with backoff, as documented: from 0.8 s, doubling up to
//! 30 s, with jitter, starting over once the watch delivers an object again.
//!
//! kube's `default_backoff()` starts over on any item that is not an error, and
//! kube's watcher yields `Event::Init` before each list attempt: a list that always
//! fails (a watch forbidden by RBAC) was retried every 0.8–1.6 s forever, each
//! attempt logged. Here `Init` does not count as success: only an object, or the
//! end of a list, does (v01, issue 21).

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use kube::runtime::watcher;

use crate::backoff::Backoff;

/// Between two attempts of a failing watch: 0.8 s after the first failure in a
/// row, doubling up to 30 s (before jitter).
pub(crate) const WATCH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(800), Duration::from_secs(30));

/// `events` with a pause before each attempt that follows a failure: the
/// [`WATCH_BACKOFF`] delay of the failures in a row, stretched by up to a quarter
/// at random so that the clusters and resources that failed together do not retry
/// together.
pub(crate) fn with_backoff<S, T>(events: S) -> impl Stream<Item = watcher::Result<watcher::Event<T>>> + Send
where
    S: Stream<Item = watcher::Result<watcher::Event<T>>> + Send,
    T: Send,
{
    // The failures in a row, and whether the last item was one of them.
    stream::unfold(
        (Box::pin(events), 0u32, false),
        |(mut events, failures, failed)| async move {
            if failed {
                tokio::time::sleep(jittered(WATCH_BACKOFF.delay(failures))).await;
            }
            let item = events.next().await?;
            let failures = match &item {
                // The resource version is too old: the watcher lists again next,
                // which is how a watch catches up, not a failure to back off from.
                Err(error) if is_expired(error) => failures,
                Err(_) => failures.saturating_add(1),
                // Announces a list attempt: nothing has succeeded yet.
                Ok(watcher::Event::Init) => failures,
                Ok(_) => 0,
            };
            let failed = item.as_ref().is_err_and(|error| !is_expired(error));
            Some((item, (events, failures, failed)))
        },
    )
}

/// Whether `error` says the watch's resource version expired (410 Gone): the
/// watcher then lists anew at once.
pub(crate) fn is_expired(error: &watcher::Error) -> bool {
    const GONE: u16 = 410;
    status_code(error) == Some(GONE)
}

/// The HTTP status the apiserver answered a failed attempt with; `None` if it did
/// not answer (or the failure is the watcher's own).
pub(crate) fn status_code(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

/// `delay`, longer by a random part of up to a quarter.
fn jittered(delay: Duration) -> Duration {
    // A fresh `RandomState` is seeded from the OS's randomness: enough to spread
    // retries, without a random-number crate.
    let random = RandomState::new().hash_one(0u8);
    let quarter = delay / 4;
    let nanos = u64::try_from(quarter.as_nanos()).unwrap_or(u64::MAX);
    delay + Duration::from_nanos(random.checked_rem(nanos).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn failing_list() -> impl Stream<Item = watcher::Result<watcher::Event<()>>> + Send {
        // Like kube's watcher for a forbidden list: `Init`, then the error, again
        // and again.
        stream::iter(0..)
            .flat_map(|_| stream::iter([Ok(watcher::Event::Init), Err(watcher::Error::NoResourceVersion)]))
    }

    #[tokio::test(start_paused = true)]
    async fn v01_a_list_that_keeps_failing_backs_off_to_30_s_despite_init_events() {
        let started = tokio::time::Instant::now();
        let mut events = Box::pin(with_backoff(failing_list()));
        let mut failed_at = Vec::new();
        while failed_at.len() < 9 {
            if events.next().await.expect("endless").is_err() {
                failed_at.push(started.elapsed());
            }
        }
        let gaps: Vec<Duration> = failed_at.windows(2).map(|w| w[1] - w[0]).collect();
        // 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30 s, each up to a quarter longer.
        let expected = [800, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000].map(Duration::from_millis);
        for (gap, least) in gaps.iter().zip(expected) {
            assert!(*gap >= least && *gap <= least + least / 4, "{gaps:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn v01_an_expired_resource_version_is_listed_again_at_once() {
        let gone = || {
            let status = kube::core::Status::failure("too old resource version", "Expired").with_code(410);
            Err(watcher::Error::WatchError(Box::new(status)))
        };
        let script = stream::iter([
            Err(watcher::Error::NoResourceVersion),
            gone(),
            Ok(watcher::Event::<()>::Init),
            Ok(watcher::Event::InitDone),
        ]);
        let started = tokio::time::Instant::now();
        let times: Vec<Duration> = with_backoff(script).map(|_| started.elapsed()).collect().await;
        // One backoff after the real failure, none after the expiry.
        assert!(times[1] >= Duration::from_millis(800), "{times:?}");
        assert_eq!(times[3], times[1], "{times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn v01_the_backoff_starts_over_once_an_object_arrives() {
        let polled = Arc::new(AtomicU32::new(0));
        let seen = polled.clone();
        let script = stream::iter([
            Err(watcher::Error::NoResourceVersion),
            Err(watcher::Error::NoResourceVersion),
            Ok(watcher::Event::<()>::InitDone),
            Err(watcher::Error::NoResourceVersion),
        ])
        .inspect(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        let started = tokio::time::Instant::now();
        let times: Vec<Duration> = with_backoff(script).map(|_| started.elapsed()).collect().await;
        assert_eq!(polled.load(Ordering::SeqCst), 4);
        // No wait before the first; 0.8 s then 1.6 s after errors; after the
        // success, the next error comes at once.
        assert_eq!(times[0], Duration::ZERO);
        assert!(times[1] >= Duration::from_millis(800) && times[1] <= Duration::from_millis(1000));
        assert!(times[2] - times[1] >= Duration::from_millis(1600));
        assert_eq!(times[3], times[2], "{times:?}");
    }
}
