//! The kubeconfig files provider (under construction).
