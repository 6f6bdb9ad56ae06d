#!/usr/bin/env bash
# Builds kustomize from the Go module proxy and fetches the Prometheus Operator's
# ServiceMonitor CRD and cert-manager's Certificate and Issuer CRDs, all at the
# versions pinned below, into a version-keyed cache directory outside the
# repository, and prints that directory:
#   <dir>/kustomize                        renders deploy/operator/**/kustomization.yaml
#   <dir>/servicemonitors.crd.yaml         for applying the ServiceMonitor in tests
#   <dir>/cert-manager.crds.yaml           for applying the webhook's Certificate and Issuers
# A complete cache is reused (well under a second). The test c07 in
# examples/tests/manifests.rs runs this script when its directory is missing.
#
#   tools/kustomize/build.sh                  build (or reuse) and print the directory
#   KUSTOMIZE_BIN_DIR=DIR tools/kustomize/build.sh   use DIR instead
#
# Needs Go (1.26 or newer); no kubectl, no container engine.
set -euo pipefail

kustomize_version=v5.8.2
prometheus_operator_version=v0.85.0
cert_manager_version=v1.19.1

key="kustomize-$kustomize_version+prometheus-operator-$prometheus_operator_version+cert-manager-$cert_manager_version"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/multicluster-runtime/kustomize"
out="${KUSTOMIZE_BIN_DIR:-$cache_root/$key}"

if [[ -x "$out/kustomize" && -s "$out/servicemonitors.crd.yaml" && -s "$out/cert-manager.crds.yaml" && "$(cat "$out/.complete" 2>/dev/null)" == "$key" ]]; then
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "tools/kustomize/build.sh: Go is needed to build kustomize and was not found on PATH" >&2
  exit 1
fi

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# Outside any module: `go install pkg@version` and `go mod download` need no go.mod.
cd "$tmp"
export CGO_ENABLED=0 GOFLAGS=-trimpath
echo "tools/kustomize/build.sh: building kustomize $kustomize_version into $out" >&2
GOBIN="$tmp" go install -ldflags "-s -w" "sigs.k8s.io/kustomize/kustomize/v5@$kustomize_version"

module="github.com/prometheus-operator/prometheus-operator@$prometheus_operator_version"
dir="$(go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
crd="$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
if [[ ! -s "$crd" ]]; then
  echo "tools/kustomize/build.sh: $module has no ServiceMonitor CRD at $crd" >&2
  exit 1
fi
cp "$crd" "$tmp/servicemonitors.crd.yaml"

# cert-manager's module carries its CRDs as controller-gen writes them.
module="github.com/cert-manager/cert-manager@$cert_manager_version"
dir="$(go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
for kind in certificates issuers; do
  crd="$dir/deploy/crds/cert-manager.io_$kind.yaml"
  if [[ ! -s "$crd" ]]; then
    echo "tools/kustomize/build.sh: $module has no $kind CRD at $crd" >&2
    exit 1
  fi
  cat "$crd" >>"$tmp/cert-manager.crds.yaml"
done

# Move into place only once all exist, so an interrupted build is never mistaken
# for a complete one.
mv "$tmp/kustomize" "$tmp/servicemonitors.crd.yaml" "$tmp/cert-manager.crds.yaml" "$out/"
echo "$key" >"$out/.complete"
echo "$out"
