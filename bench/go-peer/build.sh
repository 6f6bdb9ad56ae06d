#!/usr/bin/env bash
# Builds the Go peer from the Go module proxy at the versions pinned in go.mod, into
# a cache directory outside the repository, and prints the binary's path. Same
# scheme as tools/controlplane/build.sh: the Go module and build caches are Go's own
# (outside the clone), and a stamp of the sources keys the finished binary, so a
# second run costs well under a second.
#
#   bench/go-peer/build.sh                  build (or reuse) and print the binary
#   MCR_GO_PEER_DIR=DIR build.sh            build into DIR instead
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

stamp="$(cat go.mod go.sum ./*.go build.sh | sha256sum | cut -c1-16)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/multicluster-runtime/go-peer"
out="${MCR_GO_PEER_DIR:-$cache_root/$stamp}"

if [[ -x "$out/go-peer" && "$(cat "$out/.complete" 2>/dev/null)" == "$stamp" ]]; then
  echo "$out/go-peer"
  exit 0
fi
command -v go >/dev/null 2>&1 || { echo "go-peer/build.sh: Go is needed and was not found on PATH" >&2; exit 1; }

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--mod=readonly} -trimpath"
echo "go-peer/build.sh: building the Go peer into $out (first time: a few minutes)" >&2
go build -ldflags "-s -w" -o "$tmp/go-peer" .
mv "$tmp/go-peer" "$out/"
echo "$stamp" >"$out/.complete"
echo "$out/go-peer"
