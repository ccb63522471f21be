#!/usr/bin/env bash
# The whole test suite: unit tests, the server over TLS, the CLI, and the tests
# against a real control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler), which is built from the Go module proxy on first use and
# cached in ~/.cache/sortie-egress. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh" test
cd "$root"
# Obtain the control plane before pytest starts, so a cold build shows its progress.
"$root/.venv/bin/python" -m tests.cluster build >/dev/null
exec "$root/.venv/bin/python" -m pytest "$@"
