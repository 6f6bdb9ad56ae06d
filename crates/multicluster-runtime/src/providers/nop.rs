//! The no clusters provider (under construction).
