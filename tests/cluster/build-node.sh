#!/usr/bin/env bash
# Build the parts of a real node (issue 11) from the Go module proxy, pinned, into a cache:
# kubelet and kube-proxy (same Kubernetes version and wrapper module as the control plane, so most of its
# packages come from the control plane's build cache), containerd + ctr + the runc shim,
# runc (cgo, with libseccomp), the CNI plugins the node uses, kube-router (the NetworkPolicy
# dataplane, firewall only) and CoreDNS (cluster DNS, run as pods). kube-proxy (iptables mode)
# gives the node Services: the in-cluster API address and cluster DNS.
#
# Nothing here starts or touches the host: it only builds. A warm cache exits at once.
#
# Usage: build-node.sh            # prints the folder holding the binaries
# Env:   SORTIE_K8S_VERSION (default v1.37.2), SORTIE_K8S_CACHE (default ~/.cache/sortie-egress)
set -euo pipefail

k8s_version="${SORTIE_K8S_VERSION:-v1.37.2}"
containerd_version=v2.4.2
runc_version=v1.5.3
cni_version=v1.10.0
kube_router_version=v2.1.0
coredns_version=v1.15.0

cache_root="${SORTIE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sortie-egress}"
pins="k8s-$k8s_version containerd-$containerd_version runc-$runc_version cni-$cni_version kube-router-$kube_router_version coredns-$coredns_version"
out="$cache_root/node-$(printf '%s' "$pins" | sha256sum | cut -c1-12)"
binaries=(kubelet kube-proxy containerd ctr containerd-shim-runc-v2 runc bridge host-local loopback portmap kube-router coredns)

# shellcheck source=build-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-lib.sh"
if cache_complete "$out" "${binaries[@]}"; then
  echo "$out"
  exit 0
fi

log() { log_line build-node "$@"; }

command -v go >/dev/null || { log "the Go toolchain is needed to build the node parts (go not on PATH)"; exit 2; }
if ! [[ -f /usr/include/seccomp.h ]]; then
  log "runc needs libseccomp's headers: apt-get install -y libseccomp-dev (Debian's package)"
  exit 2
fi
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
started=$SECONDS
mkdir -p "$out"
rm -f "$out/.complete"

install_one() {  # package@version [go flags...]: go install into $out, the module's own go.mod and pins
  local target="$1"
  shift
  log "building $target (elapsed $((SECONDS - started)) s)"
  GOBIN="$out" go install -trimpath "$@" "$target" >&2
}

# kubelet: a wrapper module like the control plane's (k8s.io/kubernetes pins its staging
# modules at v0.0.0 with replace directives that `go install pkg@version` refuses).
work="$(mktemp -d "${TMPDIR:-/tmp}/sortie-node-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
(
  cd "$work"
  k8s_wrapper_module "$k8s_version" sortie.local/nodebuild >/dev/null
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-proxy"\n\t_ "k8s.io/kubernetes/cmd/kubelet"\n)\n' > tools.go
  go mod tidy >&2
  for cmd in kubelet kube-proxy; do
    log "building $cmd $k8s_version (elapsed $((SECONDS - started)) s)"
    CGO_ENABLED=0 go build -trimpath -ldflags "$(k8s_ldflags "$k8s_version")" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2
  done
)

containerd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version"
for cmd in containerd ctr containerd-shim-runc-v2; do
  CGO_ENABLED=0 install_one "github.com/containerd/containerd/v2/cmd/$cmd@$containerd_version" \
    -tags "urfave_cli_no_docs no_btrfs" -ldflags "$containerd_ldflags"
done
CGO_ENABLED=1 install_one "github.com/opencontainers/runc@$runc_version" -tags "seccomp urfave_cli_no_docs" \
  -ldflags "-X main.version=${runc_version#v}"
for plugin in main/bridge ipam/host-local main/loopback meta/portmap; do
  CGO_ENABLED=0 install_one "github.com/containernetworking/plugins/plugins/$plugin@$cni_version" -ldflags "-s -w"
done
CGO_ENABLED=0 install_one "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$kube_router_version" -ldflags "-s -w"
CGO_ENABLED=0 install_one "github.com/coredns/coredns@$coredns_version" -ldflags "-s -w"

printf '%s\nbuilt_seconds %s\n' "$pins" "$((SECONDS - started))" > "$out/.complete"
log "done in $((SECONDS - started)) s: $out"
echo "$out"
