#!/usr/bin/env bash
# The main job: the admission webhook on https://127.0.0.1:8443, on freshly
# generated local certificates (certs/) unless --tls-cert/--tls-key are given.
# Extra arguments go to `sortie-egress serve`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec "$root/.venv/bin/sortie-egress" serve --host 127.0.0.1 --port 8443 "$@"
