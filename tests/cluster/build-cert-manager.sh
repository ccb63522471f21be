#!/usr/bin/env bash
# Build cert-manager's controllers and CA injector (issue 12) from the Go module proxy, pinned,
# into a cache: tests/cluster/cert-manager/main.go runs cert-manager's own reconcilers (its
# command modules are not served by the proxy: see that file). A warm cache exits at once.
#
# Usage: build-cert-manager.sh      # prints the folder holding cert-manager
# Env:   SORTIE_K8S_CACHE (default ~/.cache/sortie-egress)
set -euo pipefail

cert_manager_version=v1.21.2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${SORTIE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sortie-egress}"
source_hash="$(cat "$here/cert-manager/main.go" "$here/cert-manager/go.mod" | sha256sum | cut -c1-12)"
out="$cache_root/cert-manager-$cert_manager_version-$source_hash"

# shellcheck source=build-lib.sh
source "$here/build-lib.sh"
if cache_complete "$out" cert-manager; then
  echo "$out"
  exit 0
fi

log() { log_line build-cert-manager "$@"; }

command -v go >/dev/null || { log "the Go toolchain is needed to build cert-manager (go not on PATH)"; exit 2; }
grep -q "github.com/cert-manager/cert-manager $cert_manager_version\$" "$here/cert-manager/go.mod" ||
  { log "tests/cluster/cert-manager/go.mod must require cert-manager $cert_manager_version"; exit 2; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
started=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/sortie-cert-manager-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp "$here/cert-manager/main.go" "$here/cert-manager/go.mod" "$work/"
cd "$work"
log "resolving github.com/cert-manager/cert-manager@$cert_manager_version and its pins"
go mod tidy >&2
mkdir -p "$out"
rm -f "$out/.complete"
log "building (elapsed $((SECONDS - started)) s)"
go build -trimpath -ldflags "-s -w" -o "$out/cert-manager.tmp" . >&2
mv "$out/cert-manager.tmp" "$out/cert-manager"
printf 'cert-manager %s\nbuilt_seconds %s\n' "$cert_manager_version" "$((SECONDS - started))" > "$out/.complete"
log "done in $((SECONDS - started)) s: $out"
echo "$out"
