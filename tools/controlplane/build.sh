#!/usr/bin/env bash
# The control-plane build module ships inside the kube-envtest package (so that
# `cargo package` takes it along); this path stays for scripts, CI and the README.
# See crates/kube-envtest/controlplane/build.sh for what it does and its options.
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../../crates/kube-envtest/controlplane/build.sh" "$@"
