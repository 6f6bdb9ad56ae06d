//! A term of ownership, and the work done under it: the one primitive of both
//! coordination strategies.
//!
//! A replica may hand work over only once nothing of it runs here any more. With
//! sharding, a term is one cluster's: the controllers enter it for each reconcile
//! ([`Term::enter`]). With leader election, a term is the leadership's: each
//! leader-only runnable enters it for as long as it runs. Ending the term refuses
//! new entries and waits until those inside have left. A term ended because its
//! Lease was lost is also *cut*: the work inside is told to stop at once, since
//! another replica may take over as soon as the Lease expires.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One term of ownership; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Term {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Term").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    state: watch::Sender<State>,
    cut: CancellationToken,
}

#[derive(Default, Clone, Copy)]
struct State {
    ended: bool,
    inside: usize,
}

/// Leave to do work for a cluster, until dropped.
pub(crate) struct Work {
    /// `None`: the cluster is not sharded; nothing waits for this work.
    term: Option<Term>,
}

impl Term {
    pub(crate) fn new() -> Self {
        Term::default()
    }

    /// A term whose work is also told to stop once `parent` is cancelled (a
    /// leadership term, whose runnables stop with the manager's run).
    pub(crate) fn within(parent: &CancellationToken) -> Self {
        Term {
            inner: Arc::new(Inner {
                state: watch::Sender::default(),
                cut: parent.child_token(),
            }),
        }
    }

    /// A token for long-running work of the term (a runnable), cancelled once the
    /// work must stop.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.inner.cut.child_token()
    }

    /// Enters the term; `None` once it is ending.
    pub(crate) fn enter(&self) -> Option<Work> {
        let mut entered = false;
        self.inner.state.send_if_modified(|state| {
            entered = !state.ended;
            state.inside += usize::from(entered);
            entered
        });
        entered.then(|| Work {
            term: Some(self.clone()),
        })
    }

    /// Ends the term: no one enters any more; with `cut`, the work inside is told to
    /// stop at once. Returns when nothing is inside.
    ///
    /// # Cancel safety
    /// Cancel safe: the term stays ended; waiting again picks up where it was.
    pub(crate) async fn end(&self, cut: bool) {
        if cut {
            self.cut();
        } else {
            self.close();
        }
        let mut state = self.inner.state.subscribe();
        // The sender lives in `self`: the wait cannot fail.
        let _ = state.wait_for(|state| state.inside == 0).await;
    }

    /// Ends the term without waiting: no one enters any more, and the work inside
    /// is told to stop at once. [`end`](Self::end) then waits for it to leave.
    pub(crate) fn cut(&self) {
        self.close();
        self.inner.cut.cancel();
    }

    /// Refuses new entries from now on.
    fn close(&self) {
        self.inner
            .state
            .send_if_modified(|state| !std::mem::replace(&mut state.ended, true));
    }

    pub(crate) fn same(&self, other: &Term) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Work {
    /// Work on a cluster that is not sharded.
    pub(crate) fn free() -> Self {
        Work { term: None }
    }

    /// Completes once the work must stop at once (its term's fence was lost); never
    /// for unsharded work.
    pub(crate) async fn cut(&self) {
        match &self.term {
            Some(term) => term.inner.cut.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Some(term) = &self.term {
            term.inner.state.send_modify(|state| state.inside -= 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ending_waits_for_work_inside_and_refuses_new_work() {
        let term = Term::new();
        let work = term.enter().expect("open");
        let ending = tokio::spawn({
            let term = term.clone();
            async move { term.end(false).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!ending.is_finished(), "work is inside");
        assert!(term.enter().is_none(), "no entry once ending");
        drop(work);
        ending.await.unwrap();
        assert!(term.enter().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_term_tells_its_work_to_stop() {
        let term = Term::new();
        let work = term.enter().expect("open");
        let cut = tokio::time::timeout(Duration::from_secs(1), work.cut()).await;
        assert!(cut.is_err(), "not cut while the term lasts");
        let ending = tokio::spawn({
            let term = term.clone();
            async move { term.end(true).await }
        });
        work.cut().await;
        drop(work);
        ending.await.unwrap();
        let free = Work::free();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), free.cut())
                .await
                .is_err()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Reconciles entering and leaving on other threads while the term ends:
        /// once `end` returns, no work is inside and none can enter, whatever the
        /// interleaving; work that entered before the end was waited for.
        #[test]
        fn no_work_is_inside_once_the_term_has_ended(
            threads in 1usize..4,
            rounds in 1usize..200,
            end_after in 0usize..300,
        ) {
            use std::sync::atomic::{AtomicUsize, Ordering};

            let term = Term::new();
            let inside = Arc::new(AtomicUsize::new(0));
            let entered = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let (term, inside, entered) = (term.clone(), inside.clone(), entered.clone());
                    std::thread::spawn(move || {
                        for _ in 0..rounds {
                            let Some(work) = term.enter() else {
                                return;
                            };
                            inside.fetch_add(1, Ordering::SeqCst);
                            entered.fetch_add(1, Ordering::SeqCst);
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(work);
                        }
                    })
                })
                .collect();
            while entered.load(Ordering::SeqCst) < end_after.min(threads * rounds)
                && workers.iter().any(|w| !w.is_finished())
            {
                std::thread::yield_now();
            }
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(term.end(false));
            proptest::prop_assert_eq!(inside.load(Ordering::SeqCst), 0, "work inside an ended term");
            proptest::prop_assert!(term.enter().is_none(), "entered an ended term");
            let before = entered.load(Ordering::SeqCst);
            for worker in workers {
                worker.join().unwrap();
            }
            proptest::prop_assert_eq!(entered.load(Ordering::SeqCst), before, "entered after the end");
        }
    }
}
