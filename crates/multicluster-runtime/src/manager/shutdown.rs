//! What graceful shutdown reports: the reconciles it had to cut short.

use std::fmt;

use crate::controller::Request;

/// A reconcile that was still running when graceful shutdown ran out of time, and
/// was cancelled; listed by [`Error::ShutdownTimedOut`](crate::Error::ShutdownTimedOut).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutShort {
    /// The controller's name.
    pub controller: String,
    /// The request it was reconciling.
    pub request: Request,
}

impl fmt::Display for CutShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in controller {}", self.request, self.controller)
    }
}

/// `a, b, c`; the first ten, then how many more.
pub(crate) fn describe_cut_short(cut: &[CutShort]) -> String {
    const SHOWN: usize = 10;
    let mut text = cut
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if cut.len() > SHOWN {
        text.push_str(&format!(" and {} more", cut.len() - SHOWN));
    }
    text
}
