#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install the project with the given extras.
# Idempotent and quiet when nothing changed; sourced by serve.sh and test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "sortie-egress needs Python >= 3.11 (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [[ ! -x "$root/.venv/bin/python" ]]; then
  echo "[bootstrap] creating $root/.venv" >&2
  "$python" -m venv "$root/.venv"
  "$root/.venv/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$root/.venv/.installed-${extras:-base}"
if [[ ! -f "$stamp" || "$root/pyproject.toml" -nt "$stamp" ]]; then
  echo "[bootstrap] installing sortie-egress${extras:+[$extras]}" >&2
  "$root/.venv/bin/python" -m pip install --quiet -e "$root${extras:+[$extras]}"
  touch "$stamp"
fi
