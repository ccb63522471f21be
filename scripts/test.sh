#!/usr/bin/env bash
# The whole test suite: unit tests, the server over TLS, the CLI, and the tests
# against a real control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler), which is built from the Go module proxy on first use and
# cached in ~/.cache/sortie-egress, the Helm chart with Helm 3 and 4 (built the
# same way), and the real node. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh" test
cd "$root"
# Obtain the control plane and the node parts before pytest starts, so a cold build shows its
# progress. The node needs root and a few Debian packages (scripts/node-host-packages.sh):
# required in CI; elsewhere the node tests skip with instructions when they cannot run.
"$root/.venv/bin/python" -m tests.cluster build >/dev/null
# Helm 3 and Helm 4 for the chart tests, the CRDs of the chart's optional objects, and cert-manager's
# controllers and CA injector (built from the Go module proxy like the control plane).
bash "$root/tests/cluster/build-helm.sh" >/dev/null
bash "$root/tests/cluster/build-cert-manager.sh" >/dev/null
# The enforcement backends' CRDs (ClusterNetworkPolicy, CiliumNetworkPolicy), as their projects publish them.
bash "$root/tests/cluster/fetch-policy-crds.sh" >/dev/null
# Our image (tests/cluster/build-image.sh: buildah, from ./Dockerfile) is built here too.
# Cilium (agent, CNI plugin, operator: the second node dataplane) is built here too.
case "${CI:-}" in
  1|true|yes) bash "$root/tests/cluster/build-node.sh" >/dev/null
              bash "$root/tests/cluster/build-cilium.sh" >/dev/null
              bash "$root/tests/cluster/build-image.sh" >/dev/null ;;
  *) { bash "$root/tests/cluster/build-node.sh" >/dev/null && bash "$root/tests/cluster/build-cilium.sh" >/dev/null &&
       bash "$root/tests/cluster/build-image.sh" >/dev/null; } ||
       echo "[test] node parts, Cilium or our image unavailable: the node tests will skip (see tests/cluster/)" >&2 ;;
esac
exec "$root/.venv/bin/python" -m pytest "$@"
