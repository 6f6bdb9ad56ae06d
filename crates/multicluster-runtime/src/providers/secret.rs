//! The kubeconfig Secrets provider (under construction).
