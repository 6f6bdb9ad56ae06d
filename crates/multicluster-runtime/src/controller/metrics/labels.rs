//! The label set of a controller's and its queue's series.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

use crate::cluster::ClusterName;

/// `controller` or `name` (the queue's), then `cluster` unless the label is off,
/// then `result` where the metric has one.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct SeriesLabels {
    owner: (&'static str, Arc<str>),
    cluster: Option<ClusterName>,
    result: Option<&'static str>,
}

impl SeriesLabels {
    /// Labels of a controller's series (`controller=...`).
    pub(crate) fn controller(name: &Arc<str>, cluster: Option<&ClusterName>) -> Self {
        Self::new("controller", name, cluster)
    }

    /// Labels of a queue's series (`name=...`).
    pub(crate) fn queue(name: &Arc<str>, cluster: Option<&ClusterName>) -> Self {
        Self::new("name", name, cluster)
    }

    fn new(key: &'static str, name: &Arc<str>, cluster: Option<&ClusterName>) -> Self {
        SeriesLabels {
            owner: (key, name.clone()),
            cluster: cluster.cloned(),
            result: None,
        }
    }

    pub(crate) fn with_result(mut self, result: &'static str) -> Self {
        self.result = Some(result);
        self
    }
}

impl EncodeLabelSet for SeriesLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        (self.owner.0, &*self.owner.1).encode(encoder.encode_label())?;
        if let Some(cluster) = &self.cluster {
            ("cluster", cluster.as_str()).encode(encoder.encode_label())?;
        }
        if let Some(result) = self.result {
            ("result", result).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}
