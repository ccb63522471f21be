#!/usr/bin/env bash
# The CRDs of the enforcement backends (issue 14), as their projects publish them, from the Go
# module proxy: ClusterNetworkPolicy from sigs.k8s.io/network-policy-api (v0.3.0 serves v1alpha2
# and v1beta1; v0.2.0 serves v1alpha2 only, as Cilium 1.20 ships it; the experimental channel has
# domainNames, the standard one does not) and CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
# from Cilium's module; and OpenReports' Report (issue 24: what audit and the controller write). The
# API server then validates what our renderers write with the real schemas. Nothing is built;
# a warm cache exits at once.
#
# Usage: fetch-policy-crds.sh     # prints the folder holding the CRDs
# Env:   SORTIE_K8S_CACHE (default ~/.cache/sortie-egress)
set -euo pipefail

npapi_versions=(v0.3.0 v0.2.0)
cilium_version=v1.20.2
openreports_version=v0.2.1

cache_root="${SORTIE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sortie-egress}"
# The folder's name changes with what it holds (-ccnp: the clusterwide CRD too), so a cache from
# before is fetched anew rather than trusted.
out="$cache_root/policy-crds-npapi-${npapi_versions[0]}-${npapi_versions[1]}-cilium-$cilium_version-ccnp-openreports-$openreports_version"

# shellcheck source=build-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-lib.sh"
if [[ -f "$out/.complete" ]]; then
  echo "$out"
  exit 0
fi
log() { log_line fetch-policy-crds "$@"; }
command -v go >/dev/null || { log "the Go toolchain is needed to fetch the CRDs (go not on PATH)"; exit 2; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
started=$SECONDS

module_dir() {  # module@version: download it (source only, nothing built) and print its folder
  go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)",/\1/p'
}
rm -rf "$out" && mkdir -p "$out"
for version in "${npapi_versions[@]}"; do
  log "fetching network-policy-api $version"
  dir="$(module_dir "sigs.k8s.io/network-policy-api@$version")"
  for channel in experimental standard; do
    cp "$dir/config/crd/$channel/policy.networking.k8s.io_clusternetworkpolicies.yaml" \
       "$out/network-policy-api-$version-$channel.yaml"
  done
done
log "fetching cilium $cilium_version (its CRDs only are used)"
dir="$(module_dir "github.com/cilium/cilium@$cilium_version")"
for plural in ciliumnetworkpolicies ciliumclusterwidenetworkpolicies; do
  cp "$dir/pkg/k8s/apis/cilium.io/client/crds/v2/$plural.yaml" "$out/cilium-$cilium_version-$plural.yaml"
done
log "fetching openreports $openreports_version (its Report CRD only)"
dir="$(module_dir "github.com/openreports/reports-api@$openreports_version")"
cp "$dir/config/crd/openreports.io_reports.yaml" "$out/openreports-$openreports_version-reports.yaml"
chmod 0644 "$out"/*.yaml
printf 'network-policy-api %s\ncilium %s\nopenreports %s\nfetched_seconds %s\n' "${npapi_versions[*]}" "$cilium_version" \
  "$openreports_version" "$((SECONDS - started))" > "$out/.complete"
log "done in $((SECONDS - started)) s: $out"
echo "$out"
