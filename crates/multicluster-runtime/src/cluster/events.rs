//! Event recorders of a cluster: one per reporter, made on first use and shared.
//!
//! kube's [`Recorder`] keeps the Events it published in the last minutes, so that
//! the same Event again becomes a count on the existing one (an `EventSeries`)
//! instead of a new object. That works only if the recorder outlives a reconcile:
//! a recorder per reconcile would write a new Event every time. So a cluster keeps
//! one recorder per [`Reporter`] (in practice, per controller) for as long as it
//! lives. A cluster that replaces another (rotated credentials) starts afresh, with
//! recorders on its own client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::events::{Recorder, Reporter};

/// The recorders of one cluster, by reporter. Cheap to clone: clones share them.
#[derive(Clone, Default)]
pub(crate) struct Recorders(Arc<Mutex<HashMap<Reporter, Recorder>>>);

impl Recorders {
    /// The recorder of `reporter`, writing with `client`; made on first use.
    pub(crate) fn get(&self, client: &kube::Client, reporter: &Reporter) -> Recorder {
        let mut recorders = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        recorders
            .entry(reporter.clone())
            .or_insert_with(|| Recorder::new(client.clone(), reporter.clone()))
            .clone()
    }

    /// How many recorders there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_recorder_per_reporter() {
        let config = kube::Config::new("https://127.0.0.1:6443".parse().expect("a URL"));
        let client = kube::Client::try_from(config).expect("client");
        let recorders = Recorders::default();
        let shared = recorders.clone();
        let reporter = |controller: &str| Reporter {
            controller: controller.to_owned(),
            instance: Some("pod-0".to_owned()),
        };
        recorders.get(&client, &reporter("a"));
        shared.get(&client, &reporter("a"));
        assert_eq!(recorders.len(), 1);
        recorders.get(&client, &reporter("b"));
        assert_eq!(shared.len(), 2);
    }
}
