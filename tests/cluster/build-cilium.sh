#!/usr/bin/env bash
# Build Cilium for the test node (issue 14), pinned, from the Go module proxy into a cache:
# cilium-agent, cilium-cni and cilium-operator-generic, plus the agent's BPF sources (it compiles
# its datapath at run time with clang; scripts/node-host-packages.sh installs Debian's clang-19).
#
# Two of Cilium's requirements are not served by the proxy: gobgp/v4 at Cilium's pseudo-version
# (v4.7.0 builds in its place; BGP is not used here) and sigs.k8s.io/mcs-api/controllers v0.5.2
# (Cilium uses one constant of it outside its tests: mcs-api-controllers/ is a minimal stand-in).
#
# Nothing here starts or touches the host: it only builds. A warm cache exits at once.
#
# Usage: build-cilium.sh            # prints the folder holding the binaries and bpf/
# Env:   SORTIE_K8S_CACHE (default ~/.cache/sortie-egress)
set -euo pipefail

cilium_version=v1.20.2
gobgp_version=v4.7.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${SORTIE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sortie-egress}"
pins="cilium-$cilium_version gobgp-$gobgp_version mcs-$(sha256sum "$here/mcs-api-controllers/controllers.go" | cut -c1-8)"
out="$cache_root/cilium-$cilium_version-$(printf '%s' "$pins" | sha256sum | cut -c1-12)"
binaries=(cilium-agent cilium-cni cilium-operator-generic)

# shellcheck source=build-lib.sh
source "$here/build-lib.sh"
if cache_complete "$out" "${binaries[@]}" && [[ -f "$out/bpf/bpf_lxc.c" ]]; then
  echo "$out"
  exit 0
fi

log() { log_line build-cilium "$@"; }
command -v go >/dev/null || { log "the Go toolchain is needed to build Cilium (go not on PATH)"; exit 2; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
started=$SECONDS
mkdir -p "$out"
rm -f "$out/.complete"

work="$(mktemp -d "${TMPDIR:-/tmp}/sortie-cilium-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp -r "$here/mcs-api-controllers" "$work/mcs-api-controllers"
cilium_dir="$(go mod download -json "github.com/cilium/cilium@$cilium_version" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
[[ -d "$cilium_dir/bpf" ]] || { log "could not fetch github.com/cilium/cilium@$cilium_version from the Go module proxy"; exit 2; }
(
  cd "$work"
  cat > go.mod <<GOMOD
module sortie.local/ciliumbuild

go $(sed -n 's/^go \(.*\)$/\1/p' "$cilium_dir/go.mod" | head -n1)

require github.com/cilium/cilium $cilium_version

replace github.com/osrg/gobgp/v4 => github.com/osrg/gobgp/v4 $gobgp_version

replace sigs.k8s.io/mcs-api/controllers => ./mcs-api-controllers

replace sigs.k8s.io/controller-tools => github.com/cilium/controller-tools v0.21.0-1
GOMOD
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "github.com/cilium/cilium/daemon"\n\t_ "github.com/cilium/cilium/operator"\n\t_ "github.com/cilium/cilium/plugins/cilium-cni"\n)\n' > tools.go
  log "resolving Cilium $cilium_version's modules (elapsed $((SECONDS - started)) s)"
  go mod tidy -e >&2
  ldflags="-s -w -X github.com/cilium/cilium/pkg/version.ciliumVersion=${cilium_version#v}"
  log "building cilium-agent (elapsed $((SECONDS - started)) s)"
  go build -trimpath -tags osusergo -ldflags "$ldflags" -o "$out/cilium-agent" github.com/cilium/cilium/daemon >&2
  log "building cilium-cni (elapsed $((SECONDS - started)) s)"
  go build -trimpath -tags osusergo -ldflags "$ldflags" -o "$out/cilium-cni" github.com/cilium/cilium/plugins/cilium-cni >&2
  log "building cilium-operator-generic (elapsed $((SECONDS - started)) s)"
  go build -trimpath -tags osusergo,ipam_provider_operator -ldflags "$ldflags" -o "$out/cilium-operator-generic" \
    github.com/cilium/cilium/operator >&2
)
rm -rf "$out/bpf"
cp -r "$cilium_dir/bpf" "$out/bpf"
chmod -R u+w "$out/bpf"

printf '%s\nbuilt_seconds %s\n' "$pins" "$((SECONDS - started))" > "$out/.complete"
log "done in $((SECONDS - started)) s: $out"
echo "$out"
