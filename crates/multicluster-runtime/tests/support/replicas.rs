//! Replicas of one program in one test process: what each reconciled and when, and
//! replicas that can be killed like a process.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use multicluster_runtime::Manager;
use multicluster_runtime::controller::Request;
use tokio_util::sync::CancellationToken;

/// Every reconcile of every replica: who, the request, when it started and ended.
#[derive(Default)]
pub struct Spans {
    spans: Mutex<Vec<Span>>,
}

#[derive(Clone, Debug)]
pub struct Span {
    pub replica: String,
    pub request: Request,
    pub start: Instant,
    pub end: Option<Instant>,
}

/// Ends its span when dropped: when the reconcile returns or is cancelled, and
/// when a killed replica's runtime drops it.
pub struct Running {
    spans: Arc<Spans>,
    index: usize,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.spans.spans.lock().unwrap()[self.index].end = Some(Instant::now());
    }
}

impl Spans {
    pub fn begin(self: &Arc<Self>, replica: &str, request: &Request) -> Running {
        let mut spans = self.spans.lock().unwrap();
        spans.push(Span {
            replica: replica.to_owned(),
            request: request.clone(),
            start: Instant::now(),
            end: None,
        });
        Running {
            spans: self.clone(),
            index: spans.len() - 1,
        }
    }

    pub fn all(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    pub fn count(&self, replica: &str) -> usize {
        self.all().iter().filter(|s| s.replica == replica).count()
    }

    pub fn replicas(&self) -> Vec<String> {
        let mut replicas: Vec<_> = self.all().into_iter().map(|s| s.replica).collect();
        replicas.sort();
        replicas.dedup();
        replicas
    }

    /// Pairs of reconciles of one cluster by two replicas that overlapped in time
    /// (a running one overlaps everything after its start).
    pub fn overlaps_across_replicas(&self) -> Vec<(Span, Span)> {
        let all = self.all();
        let mut found = Vec::new();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                let apart =
                    a.end.is_some_and(|end| end <= b.start) || b.end.is_some_and(|end| end <= a.start);
                if a.replica != b.replica && a.request.cluster == b.request.cluster && !apart {
                    found.push((a.clone(), b.clone()));
                }
            }
        }
        found
    }
}

/// A replica on a runtime of its own, so that it can be killed: the runtime is
/// dropped with every task in it, and nothing runs afterwards, no lease release
/// either.
pub struct Killable {
    pub manager: Manager,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Killable {
    /// Builds a manager with `build` on a new runtime and starts it there.
    pub fn start<B, F>(build: B) -> Self
    where
        B: FnOnce() -> F + Send + 'static,
        F: Future<Output = Manager>,
    {
        let (kill, killed) = tokio::sync::oneshot::channel();
        let (started, manager) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let manager = build().await;
                started.send(manager.clone()).expect("send manager");
                tokio::select! {
                    _ = killed => {}
                    result = manager.start(CancellationToken::new()) => panic!("killable replica returned {result:?}"),
                }
            });
            // Every task of the replica is dropped here, unpolled.
            drop(runtime);
        });
        Killable {
            manager: manager.recv().expect("replica started"),
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.kill.take().expect("killed once").send(());
        self.thread
            .take()
            .expect("thread")
            .join()
            .expect("replica thread");
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        if self.kill.is_some() {
            self.kill();
        }
    }
}
