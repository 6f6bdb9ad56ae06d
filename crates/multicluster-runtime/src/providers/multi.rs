//! The composition of providers provider (under construction).
