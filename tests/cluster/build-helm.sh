#!/usr/bin/env bash
# Build Helm 3 and Helm 4 (issue 12) from the Go module proxy, pinned, into a cache, the way
# build-control-plane.sh builds the control plane: no registry here ships the binary. The
# version is linked in (-X .../internal/version.version) so `helm version` says what it is.
# Next to them, in crds/, the real CRDs the chart's optional objects need, from the same proxy:
# cert-manager's (deploy/crds of its module) and the Prometheus Operator's ServiceMonitor, so
# the API server validates those objects with their real schemas. A warm cache exits at once.
#
# Usage: build-helm.sh            # prints the folder holding helm3, helm4 and crds/
# Env:   SORTIE_K8S_CACHE (default ~/.cache/sortie-egress)
set -euo pipefail

helm3_version=v3.22.0
helm4_version=v4.3.2
cert_manager_version=v1.21.2
prometheus_operator_version=v0.85.0

cache_root="${SORTIE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sortie-egress}"
out="$cache_root/helm-$helm3_version-$helm4_version"
binaries=(helm3 helm4)
crds="$out/crds-cert-manager-$cert_manager_version-prometheus-operator-$prometheus_operator_version"

# shellcheck source=build-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-lib.sh"
if cache_complete "$out" "${binaries[@]}" && [[ -f "$crds/.complete" ]]; then
  echo "$out"
  exit 0
fi

log() { log_line build-helm "$@"; }

command -v go >/dev/null || { log "the Go toolchain is needed to build helm (go not on PATH)"; exit 2; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
started=$SECONDS

module_dir() {  # module@version: download it (source only, nothing built) and print its folder
  go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)",/\1/p'
}
if ! [[ -f "$crds/.complete" ]]; then
  log "fetching cert-manager $cert_manager_version and Prometheus Operator $prometheus_operator_version CRDs"
  rm -rf "$crds" && mkdir -p "$crds"
  cm="$(module_dir "github.com/cert-manager/cert-manager@$cert_manager_version")"
  po="$(module_dir "github.com/prometheus-operator/prometheus-operator@$prometheus_operator_version")"
  cp "$cm"/deploy/crds/*cert-manager.io_*.yaml "$crds/"
  cp "$po/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$crds/"
  chmod 0644 "$crds"/*.yaml
  touch "$crds/.complete"
fi
if cache_complete "$out" "${binaries[@]}"; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
rm -f "$out/.complete"

build_one() {  # name major version
  local name="$1" major="$2" version="$3" gobin
  gobin="$(mktemp -d "${TMPDIR:-/tmp}/sortie-helm-build.XXXXXX")"
  log "building helm $version (elapsed $((SECONDS - started)) s)"
  GOBIN="$gobin" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$version -X helm.sh/helm/$major/internal/version.gitTreeState=clean" \
    "helm.sh/helm/$major/cmd/helm@$version" >&2
  mv "$gobin/helm" "$out/$name"
  rm -rf "$gobin"
}
build_one helm3 v3 "$helm3_version"
build_one helm4 v4 "$helm4_version"

printf 'helm3 %s\nhelm4 %s\nbuilt_seconds %s\n' "$helm3_version" "$helm4_version" "$((SECONDS - started))" > "$out/.complete"
log "done in $((SECONDS - started)) s: $out"
echo "$out"
