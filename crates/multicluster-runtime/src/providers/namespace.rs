//! The namespaces as clusters provider (under construction).
