//! One cluster's share of a sharded replica: take its fence, work on it, hand it
//! back.
//!
//! Runs while the coordinator wants this replica to own the cluster:
//!
//! 1. **Acquire** the cluster's fence Lease (free, ours, or expired on our clock).
//! 2. **Start**: engage the cluster into the manager's components under a new
//!    [`Term`]; renew the fence every renew period meanwhile.
//! 3. **Hand over** when the coordinator no longer wants it here (a peer joined or
//!    left, or the cluster is gone): disengage, wait until nothing of the cluster
//!    runs any more (renewals go on meanwhile, so that no one else starts), then
//!    release the fence so that the new owner takes it at its next try.
//! 4. **Lose**: if a renewal does not succeed within the renew deadline, or the
//!    fence shows another holder, disengage and *cut* the work in flight at once:
//!    another replica may take the fence once it expires, `lease duration - renew
//!    deadline` later at the earliest. Then try to acquire it again, while wanted.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::term::Term;
use super::{Coordinator, Ownership};
use crate::cluster::ClusterName;
use crate::manager::lease::Elector;

impl Coordinator {
    /// Owns `name` while `wanted` is not cancelled (see the [module docs](self)).
    pub(super) async fn own(self: Arc<Self>, name: ClusterName, wanted: CancellationToken) {
        let mut fence = Elector::new(self.store.clone(), self.fence_claim(&name));
        while let Some(acquired) = fence.campaign(&wanted).await {
            let term = Term::new();
            if !self.host.start(&name, &term).await {
                // Gone meanwhile: nothing to work on.
                self.release(&name, &mut fence).await;
                return;
            }
            self.changed(&name, Ownership::Acquired);
            let handed_over = CancellationToken::new();
            let hand_over = async {
                wanted.cancelled().await;
                self.host.stop(&name, &term).await;
                term.end(false).await;
                handed_over.cancel();
                std::future::pending::<()>().await;
            };
            let held = tokio::select! {
                held = fence.hold(&handed_over, acquired) => held,
                () = hand_over => unreachable!("handing over never completes"),
            };
            match held {
                Ok(()) => {
                    self.release(&name, &mut fence).await;
                    self.changed(&name, Ownership::Released);
                    return;
                }
                Err(reason) => {
                    self.host.stop(&name, &term).await;
                    term.end(true).await;
                    self.changed(&name, Ownership::Lost(reason));
                }
            }
        }
    }

    async fn release(&self, name: &ClusterName, fence: &mut Elector) {
        match tokio::time::timeout(self.options.renew_deadline, fence.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(cluster = %name, lease = fence.lease(), error = %err, "cannot release fence; it will expire")
            }
            Err(_) => tracing::warn!(cluster = %name, lease = fence.lease(), "fence not released in time; it will expire"),
        }
    }
}
