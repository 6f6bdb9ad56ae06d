#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and etcd from the Go module proxy at
# the versions pinned in go.mod, into a version-keyed cache directory outside any
# checkout, and prints that directory. A complete cache is reused: a second run costs
# well under a second.
#
#   bash build.sh                          build (or reuse) and print the directory
#   KUBE_ENVTEST_BIN_DIR=DIR bash build.sh build into DIR instead
#
# This script ships inside the kube-envtest package (`Binaries::build_command()` in
# the crate names its path; in the multicluster-runtime repository,
# tools/controlplane/build.sh runs it). The crate looks in the same place, so after
# this script nothing else is needed. Needs Go (see go.mod for the minimum version);
# no cgo, no C toolchain. The programs are for Linux, the only system kube-envtest
# runs on.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' go.mod)"
if [[ -z "$k8s_version" ]]; then
  echo "build.sh: k8s.io/kubernetes is not required in $here/go.mod" >&2
  exit 1
fi
minor="${k8s_version#v1.}"
minor="${minor%%.*}"

# The directory is keyed by the Kubernetes release (the envtest crate knows it); the
# stamp records the exact module graph, so a change of any pinned dependency (etcd
# included) rebuilds instead of reusing stale binaries.
stamp="$k8s_version $(cat go.mod go.sum etcd/main.go build.sh | sha256sum | cut -c1-16)"
binaries=(kube-apiserver kube-controller-manager etcd)
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/multicluster-runtime/controlplane"
out="${KUBE_ENVTEST_BIN_DIR:-$cache_root/$k8s_version}"

complete() {
  local binary
  for binary in "${binaries[@]}"; do
    [[ -x "$out/$binary" ]] || return 1
  done
  [[ "$(cat "$out/.complete" 2>/dev/null)" == "$stamp" ]]
}
if complete; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: Go is needed to build the control plane and was not found on PATH" >&2
  exit 1
fi
goos="$(go env GOOS)"
if [[ "$goos" != linux ]]; then
  echo "build.sh: kube-envtest runs only on Linux, and this would build for $goos;" \
    "build on Linux, or set GOOS=linux to build programs for a Linux machine" >&2
  exit 1
fi

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$k8s_version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"

export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--mod=readonly} -trimpath"
echo "build.sh: building kube-apiserver, kube-controller-manager $k8s_version and etcd into $out (first time: several minutes)" >&2
go build -ldflags "$ldflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
# Optional at run time (FleetBuilder::controller_manager); built here so that the
# stamp covers it too.
go build -ldflags "$ldflags" -o "$tmp/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
go build -ldflags "-s -w" -o "$tmp/etcd" ./etcd

# Move into place only once all exist, so an interrupted build is never mistaken
# for a complete one.
for binary in "${binaries[@]}"; do
  mv "$tmp/$binary" "$out/"
done
echo "$stamp" >"$out/.complete"
echo "$out"
