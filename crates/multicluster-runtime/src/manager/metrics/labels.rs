//! The label set of the engagement counters.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

/// `provider`, and the outcome under `key` (`result` or `reason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct EngagementLabels {
    provider: Arc<str>,
    outcome: (&'static str, &'static str),
}

impl EngagementLabels {
    pub(crate) fn new(key: &'static str, provider: Arc<str>, outcome: &'static str) -> Self {
        EngagementLabels {
            provider,
            outcome: (key, outcome),
        }
    }
}

impl EncodeLabelSet for EngagementLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("provider", &*self.provider).encode(encoder.encode_label())?;
        self.outcome.encode(encoder.encode_label())
    }
}
