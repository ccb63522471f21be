#!/usr/bin/env bash
# Build the real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) from the published Go modules.
#
# Why a build and not a download: this machine reaches only package registries,
# and the Go module proxy serves k8s.io/kubernetes and etcd as source. The
# binaries land in a cache outside the repo and are reused across runs; a cold
# build takes minutes on 2 cores, a warm one exits at once.
#
# Usage: build-control-plane.sh            # prints the folder holding the binaries
# Env:   SORTIE_K8S_VERSION (default v1.37.2), SORTIE_K8S_CACHE (default ~/.cache/sortie-egress)
set -euo pipefail

version="${SORTIE_K8S_VERSION:-v1.37.2}"
cache_root="${SORTIE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sortie-egress}"
out="$cache_root/k8s-$version"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler)

# shellcheck source=build-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-lib.sh"
if cache_complete "$out" "${binaries[@]}"; then
  echo "$out"
  exit 0
fi

log() { log_line build-control-plane "$@"; }

command -v go >/dev/null || { log "the Go toolchain is needed to build the control plane (go not on PATH)"; exit 2; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
started=$SECONDS

work="$(mktemp -d "${TMPDIR:-/tmp}/sortie-k8s-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

log "resolving k8s.io/kubernetes@$version"
gomod_file="$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
[[ -f "$gomod_file" ]] || { log "could not fetch k8s.io/kubernetes@$version from the Go module proxy"; exit 2; }
etcd_version="$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$gomod_file")"
k8s_wrapper_module "$version" sortie.local/k8sbuild "go.etcd.io/etcd/server/v3 $etcd_version" >/dev/null
staging_version="v0.${version#v1.}"
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO

log "downloading modules (etcd $etcd_version, staging $staging_version)"
go mod tidy >&2

ldflags="$(k8s_ldflags "$version")"

mkdir -p "$out"
rm -f "$out/.complete"
build_one() {  # name package
  log "building $1 (elapsed $((SECONDS - started)) s)"
  go build -trimpath -ldflags "$ldflags" -o "$out/$1.tmp" "$2" >&2
  mv "$out/$1.tmp" "$out/$1"
}
build_one etcd go.etcd.io/etcd/server/v3
build_one kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build_one kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build_one kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
printf 'kubernetes %s\netcd %s\nbuilt_seconds %s\n' "$version" "$etcd_version" "$((SECONDS - started))" > "$out/.complete"
log "done in $((SECONDS - started)) s: $out"
echo "$out"
