#!/usr/bin/env bash
# Runs every test of the workspace against real control planes: builds kube-apiserver,
# kube-controller-manager and etcd first if they are not cached yet (see
# tools/controlplane/build.sh). examples/tests/packaging.rs (c05) also builds the
# packaged kube-envtest and CLI in a scratch project, into <target dir>/c05-outside.
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p kube-envtest e03`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBE_ENVTEST_BIN_DIR="$(tools/controlplane/build.sh)"
export KUBE_ENVTEST_BIN_DIR
exec cargo test --workspace --all-features "$@"
