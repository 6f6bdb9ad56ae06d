//! The Cluster API provider (under construction).
