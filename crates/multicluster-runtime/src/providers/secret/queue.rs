//! One worker per Secret name: a Secret's changes are handled in order, only the
//! latest pending change is kept, and a slow Secret never delays another.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs `handle(name, item)` for submitted items: at most one at a time per name,
/// in submission order, skipping items superseded while an earlier one ran.
pub(super) struct KeyedQueue<T> {
    /// Names with a running worker, and the item it takes next.
    slots: Mutex<HashMap<String, Option<T>>>,
}

impl<T> Default for KeyedQueue<T> {
    fn default() -> Self {
        KeyedQueue {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Send + 'static> KeyedQueue<T> {
    /// Queues `item` for `name`, starting a worker for the name on `tasks` if none
    /// runs. The worker stops when it finds nothing pending, or when `token` is
    /// cancelled.
    pub(super) fn submit<F, Fut>(
        self: &Arc<Self>,
        name: String,
        item: T,
        token: &CancellationToken,
        tasks: &TaskTracker,
        handle: F,
    ) where
        F: Fn(String, T) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut slots = self.lock();
        if let Some(pending) = slots.get_mut(&name) {
            *pending = Some(item);
            return;
        }
        slots.insert(name.clone(), None);
        let (queue, token) = (self.clone(), token.clone());
        tasks.spawn(async move {
            let mut next = item;
            loop {
                if token
                    .run_until_cancelled(handle(name.clone(), next))
                    .await
                    .is_none()
                {
                    queue.lock().remove(&name);
                    return;
                }
                let mut slots = queue.lock();
                match slots.get_mut(&name).and_then(Option::take) {
                    Some(item) => next = item,
                    None => {
                        slots.remove(&name);
                        return;
                    }
                }
            }
        });
    }

    /// How many names have a running worker.
    #[cfg(test)]
    pub(super) fn busy(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Option<T>>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::{Notify, mpsc};

    use super::*;

    #[tokio::test]
    async fn keeps_order_coalesces_and_isolates_names() {
        let queue = Arc::new(KeyedQueue::<u32>::default());
        let (token, tasks) = (CancellationToken::new(), TaskTracker::new());
        let gate = Arc::new(Notify::new());
        let (done, mut seen) = mpsc::unbounded_channel();
        let handler = {
            let gate = gate.clone();
            move |name: String, item: u32| {
                let (gate, done) = (gate.clone(), done.clone());
                async move {
                    if name == "slow" && item == 1 {
                        gate.notified().await;
                    }
                    done.send((name, item)).expect("receiver lives");
                }
            }
        };
        queue.submit("slow".into(), 1, &token, &tasks, handler.clone());
        tokio::task::yield_now().await;
        queue.submit("slow".into(), 2, &token, &tasks, handler.clone());
        queue.submit("slow".into(), 3, &token, &tasks, handler.clone());
        queue.submit("fast".into(), 1, &token, &tasks, handler.clone());
        let first = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
        assert_eq!(first.expect("fast is not held up"), Some(("fast".into(), 1)));
        gate.notify_one();
        assert_eq!(seen.recv().await, Some(("slow".into(), 1)));
        assert_eq!(seen.recv().await, Some(("slow".into(), 3)), "2 was superseded");
        while queue.busy() > 0 {
            tokio::task::yield_now().await;
        }
        queue.submit("slow".into(), 4, &token, &tasks, handler);
        assert_eq!(seen.recv().await, Some(("slow".into(), 4)), "a new worker starts");
    }

    #[tokio::test]
    async fn cancellation_stops_workers() {
        let queue = Arc::new(KeyedQueue::<u32>::default());
        let (token, tasks) = (CancellationToken::new(), TaskTracker::new());
        queue.submit("x".into(), 1, &token, &tasks, |_, _| std::future::pending::<()>());
        token.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("worker stopped");
        assert_eq!(queue.busy(), 0);
    }
}
