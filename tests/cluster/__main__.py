"""``python -m tests.cluster build|up|down|env``: the test control plane, for people.

``up`` starts it in the background and records it in .cluster/state.json;
``env`` prints the KUBECONFIG export; ``down`` stops exactly what ``up`` started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from .binaries import BinariesMissing, find_binaries
from .harness import ControlPlane, ControlPlaneError, port_is_bound

STATE_DIR = Path(os.environ.get("SORTIE_CLUSTER_DIR", ".cluster"))
STATE = STATE_DIR / "state.json"


def _up() -> int:
    if STATE.exists():
        print(f"already up (see {STATE}); run `python -m tests.cluster down` first", file=sys.stderr)
        return 1
    try:
        plane = ControlPlane(find_binaries(build=True), root=(STATE_DIR / "root").resolve())
        plane.start()
    except (BinariesMissing, ControlPlaneError) as exc:
        print(exc, file=sys.stderr)
        return 2
    state = {
        "kubeconfig": str(plane.kubeconfig_path),
        "server": plane.server,
        "logs": str(plane.logs),
        "components": [{"name": c.name, "pid": c.process.pid, "port": c.port} for c in plane.components if c.process],
    }
    STATE.write_text(json.dumps(state, indent=2))
    print(f"control plane up in {plane.startup_seconds:.1f} s at {plane.server}; logs in {plane.logs}", file=sys.stderr)
    print(f"export KUBECONFIG={plane.kubeconfig_path}")
    return 0


def _down() -> int:
    if not STATE.exists():
        print("not up", file=sys.stderr)
        return 0
    state = json.loads(STATE.read_text())
    for component in reversed(state["components"]):
        try:
            os.killpg(component["pid"], signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 15
    for component in state["components"]:
        while time.monotonic() < deadline and port_is_bound(component["port"]):
            time.sleep(0.1)
        if port_is_bound(component["port"]):
            os.killpg(component["pid"], signal.SIGKILL)
    STATE.unlink()
    shutil.rmtree(STATE_DIR / "root", ignore_errors=True)  # a fresh etcd and CA next time
    print("control plane stopped", file=sys.stderr)
    return 0


def _env() -> int:
    if not STATE.exists():
        print("not up: run `python -m tests.cluster up`", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={json.loads(STATE.read_text())['kubeconfig']}")
    return 0


def _build() -> int:
    try:
        print(find_binaries(build=True).folder)
    except BinariesMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    parser.add_argument("action", choices=["build", "up", "down", "env"])
    action = parser.parse_args().action
    return {"build": _build, "up": _up, "down": _down, "env": _env}[action]()


if __name__ == "__main__":
    sys.exit(main())
