#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the Go module proxy at the versions pinned in
# go.mod, into a version-keyed cache directory outside the repository, and prints
# that directory. A complete cache is reused: a second run costs well under a second.
#
#   tools/controlplane/build.sh            build (or reuse) and print the directory
#   KUBE_ENVTEST_BIN_DIR=DIR build.sh      build into DIR instead
#
# The envtest crate looks in the same place, so after this script nothing else is
# needed. Needs Go (see go.mod for the minimum version); no cgo, no C toolchain.
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
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/multicluster-runtime/controlplane"
out="${KUBE_ENVTEST_BIN_DIR:-$cache_root/$k8s_version}"

if [[ -x "$out/kube-apiserver" && -x "$out/etcd" && "$(cat "$out/.complete" 2>/dev/null)" == "$stamp" ]]; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: Go is needed to build the control plane and was not found on PATH" >&2
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
echo "build.sh: building kube-apiserver $k8s_version and etcd into $out (first time: several minutes)" >&2
go build -ldflags "$ldflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -ldflags "-s -w" -o "$tmp/etcd" ./etcd

# Move into place only once both exist, so an interrupted build is never mistaken
# for a complete one.
mv "$tmp/kube-apiserver" "$tmp/etcd" "$out/"
echo "$stamp" >"$out/.complete"
echo "$out"
