//! The ClusterProfile inventory provider (under construction).
