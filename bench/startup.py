"""The start-up window on a real node (CONTRACT §6): can a session container reach what its
policy denies in its first instant, and how long does each step of a session start take?

Brings up the test node with the product installed from our image (as tests/test_node_egress.py
does: tests/cluster/nodecluster.py), then creates
``--pods`` session pods whose only container runs ``/probe watch`` against a destination
their policy denies (TCP 198.18.1.2:80; the policy allows only :443) from the container's
first instant, for ``--seconds``; and as many plain pods doing the same, as the control
(they must get through at once, or the probe measures nothing). It prints, per kind:

- create -> gate released (the pod's PodScheduled condition, which the gate holds back)
- create -> container started (containerStatuses startedAt)
- attempts, how many got through, and the last that did, in ms after the container started:
  for a session pod, that is the enforcement gap as seen from inside the pod (any at all
  breaks §6). (kube-router's ipsets are no clock for it: the pod's address shows up in them
  seconds after the denied attempts have stopped getting through.)

Run as root on a machine with the node parts: ``.venv/bin/python bench/startup.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.harness import ControlPlane, wait_for  # noqa: E402
from tests.cluster.node import PROBE_IMAGE  # noqa: E402
from tests.cluster.nodecluster import installed_cluster  # noqa: E402
from tests.cluster.targets import TARGET_A  # noqa: E402
from tests import test_node_egress as node_test  # noqa: E402

DENIED = f"{TARGET_A}:80"
POLICY = {"mode": "allowlist", "rules": [{"cidr": f"{TARGET_A}/32", "port": 443, "protocol": "TCP"}]}


def _time(text: str | None) -> float | None:
    return None if not text else dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _pod(name: str, policy: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    pod = node_test._pod("default", name, policy)
    pod["spec"]["containers"][0]["command"] = ["/probe", "watch", "tcp", DENIED, str(seconds)]
    pod["spec"]["containers"][0]["image"] = PROBE_IMAGE
    return pod


def measure(plane: ControlPlane, pods: int, seconds: float) -> dict[str, list[dict[str, Any]]]:
    kinds = {"session": POLICY, "plain": None}
    created: dict[str, float] = {}
    for index in range(pods):
        for kind, policy in kinds.items():
            name = f"{kind}-{index}"
            created[name] = time.time()
            applied = plane.kubectl("apply", "-f", "-", input=json.dumps(_pod(name, policy, seconds)))
            assert applied.returncode == 0, applied.stderr
    def state(name: str) -> dict[str, Any]:
        return json.loads(plane.kubectl("get", "pod", name, "-o", "json").stdout)

    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for name in created:
        line = wait_for(lambda name=name: next((l for l in plane.kubectl("logs", name).stdout.splitlines()
                                                if l.startswith("attempts=")), None), seconds + 60, f"{name}'s result")
        numbers = dict(part.split("=") for part in line.split())
        pod = state(name)
        conditions = {c["type"]: c for c in pod["status"].get("conditions", [])}
        started = _time(pod["status"]["containerStatuses"][0]["state"].get("running", {}).get("startedAt"))
        scheduled = _time(conditions.get("PodScheduled", {}).get("lastTransitionTime"))
        results[name.split("-")[0]].append({
            "attempts": int(numbers["attempts"]), "open": int(numbers["open"]),
            "first_open_ms": int(numbers["first_open_ms"]), "last_open_ms": int(numbers["last_open_ms"]),
            "create_to_released": None if scheduled is None else scheduled - created[name],
            "create_to_started": None if started is None else started - created[name],
        })
    return results


def _median(values: list[float | None]) -> str:
    present = [value for value in values if value is not None]
    return f"{statistics.median(present):.2f} s" if present else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10, help="session pods, and as many plain ones")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each container probes")
    args = parser.parse_args()
    import tempfile

    with installed_cluster(Path(tempfile.mkdtemp(prefix="sortie-bench-startup-"))) as product:
        wait_for(lambda: product.plane.kubectl("get", "serviceaccount", "default").returncode == 0, 30, "default SA")
        results = measure(product.plane, args.pods, args.seconds)
    print(f"{'kind':<8} {'pods':>4} {'attempts':>9} {'got through':>12} {'last through':>13} "
          f"{'create->released':>17} {'create->started':>16}")
    for kind, rows in results.items():
        attempts, through = sum(r["attempts"] for r in rows), sum(r["open"] for r in rows)
        last = max((r["last_open_ms"] for r in rows), default=-1)
        print(f"{kind:<8} {len(rows):>4} {attempts:>9} {through:>12} {str(last) + ' ms' if last >= 0 else '-':>13} "
              f"{_median([r['create_to_released'] for r in rows]):>17} {_median([r['create_to_started'] for r in rows]):>16}")
    leaked = sum(r["open"] for r in results["session"])
    control = all(r["open"] > 0 and r["first_open_ms"] < 1000 for r in results["plain"])
    print(f"session containers reached the denied destination {leaked} times; "
          f"the control {'got through at once, as it must' if control else 'DID NOT get through: the probe measured nothing'}")
    return 0 if control else 1


if __name__ == "__main__":
    sys.exit(main())
