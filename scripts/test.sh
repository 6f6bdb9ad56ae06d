#!/usr/bin/env bash
# Runs every test of the workspace against real control planes: builds kube-apiserver
# and etcd first if they are not cached yet (see tools/controlplane/build.sh).
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p kube-envtest e03`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBE_ENVTEST_BIN_DIR="$(tools/controlplane/build.sh)"
export KUBE_ENVTEST_BIN_DIR
exec cargo test --workspace --all-features "$@"
