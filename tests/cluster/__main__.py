"""``python -m tests.cluster build|up|down|env``: the test cluster, for people.

``up`` starts the control plane in the background and records it in .cluster/state.json;
``up --node`` (as root) adds the real node (containerd, kubelet, kube-proxy, kube-router or with
``--dataplane cilium`` Cilium, CoreDNS, the probe targets) and installs the product from our image with ``kubectl apply -k``;
``env`` prints the KUBECONFIG export; ``down`` stops exactly what ``up`` started and, after
``--node``, undoes every change to the host (tests/cluster/host.py).
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
from .harness import ControlPlane, ControlPlaneError

STATE_DIR = Path(os.environ.get("SORTIE_CLUSTER_DIR", ".cluster"))
STATE = STATE_DIR / "state.json"


def _start_node(workdir: Path, dataplane: str) -> tuple[ControlPlane, float]:
    """The node cluster and the product on it (nodecluster.start_installed), left running; the
    host is undone if anything fails."""
    from .host import HostLedger
    from .nodecluster import LEDGER, start_installed

    ledger = HostLedger(LEDGER)
    leftovers = ledger.undo()
    if leftovers:
        raise ControlPlaneError(f"a previous node run left changes that cannot be undone: {leftovers}")
    print("building (or reusing) the node parts and our image, starting the node, installing the product "
          "with kubectl apply -k ...", file=sys.stderr)
    try:
        product = start_installed(workdir, dataplane=dataplane)
    except BaseException:
        ledger.undo()
        raise
    return product.plane, product.install_seconds


def _up(node: bool, dataplane: str = "kube-router") -> int:
    if STATE.exists():
        print(f"already up (see {STATE}); run `python -m tests.cluster down` first", file=sys.stderr)
        return 1
    STATE_DIR.mkdir(exist_ok=True)
    try:
        if node:
            from .nodecluster import NodeUnavailable

            try:
                plane, seconds = _start_node((STATE_DIR / "root").resolve(), dataplane)
            except NodeUnavailable as exc:
                print(exc, file=sys.stderr)
                return 2
            print(f"node cluster up, product installed in {seconds:.0f} s; try examples/probe-session-pod.yaml",
                  file=sys.stderr)
        else:
            plane = ControlPlane(find_binaries(build=True), root=(STATE_DIR / "root").resolve())
            plane.start()
    except (BinariesMissing, ControlPlaneError, RuntimeError) as exc:
        print(exc, file=sys.stderr)
        return 2
    state = {
        "node": node,
        "kubeconfig": str(plane.kubeconfig_path),
        "server": plane.server,
        "logs": str(plane.logs),
        "components": [{"name": c.name, "pid": c.process.pid, "port": c.port} for c in plane.components if c.process],
    }
    STATE.write_text(json.dumps(state, indent=2))
    print(f"control plane up in {plane.startup_seconds:.1f} s at {plane.server}; logs in {plane.logs}", file=sys.stderr)
    print(f"export KUBECONFIG={plane.kubeconfig_path}")
    return 0


def _alive(pid: int) -> bool:
    """The process group ``up`` started is still there (not only its port: the API server
    listens on the node's address after ``--node``, and stops slowly)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
        while time.monotonic() < deadline and _alive(component["pid"]):
            time.sleep(0.1)
        if _alive(component["pid"]):
            os.killpg(component["pid"], signal.SIGKILL)
    problems: list[str] = []
    if state.get("node"):
        from .host import HostLedger
        from .nodecluster import LEDGER

        problems = HostLedger(LEDGER).undo()  # the node's processes, links, rules, mounts, cgroups, folders
    STATE.unlink()
    shutil.rmtree(STATE_DIR / "root", ignore_errors=True)  # a fresh etcd and CA next time (and the overlay)
    if problems:
        print("host changes not undone (see tests/cluster/host.py):\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print("cluster stopped" + (", host restored" if state.get("node") else ""), file=sys.stderr)
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
    parser.add_argument("--node", action="store_true",
                        help="up: with a real node and the product installed from our image (root; Linux)")
    parser.add_argument("--dataplane", choices=["kube-router", "cilium"], default="kube-router",
                        help="up --node: the node's NetworkPolicy dataplane (cilium: built by build-cilium.sh)")
    args = parser.parse_args()
    if args.action == "up":
        return _up(args.node, args.dataplane)
    return {"build": _build, "down": _down, "env": _env}[args.action]()


if __name__ == "__main__":
    sys.exit(main())
