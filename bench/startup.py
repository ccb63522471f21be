"""The start-up window on a real node (CONTRACT §6): can a session container reach what its
policy denies in its first instant, and how long does each step of a session start take?

Brings up the test node with the product installed from our image (as tests/test_node_egress.py
does: tests/cluster/nodecluster.py), then creates ``--pods`` session pods whose only container
runs ``/probe watch`` against a destination their policy denies (TCP 198.18.1.2:80; the policy
allows only :443) from the container's first instant, for ``--seconds``; and as many plain
pods doing the same, as the control (they must get through at once, or the probe measures
nothing). A watch on the pods and a poll of the node's packet filter (every 20 ms) time each
step, from the create call:

- gate released: the pod is first seen without the scheduling gate
- address: the pod is first seen with an IP
- rules present: the pod's address is first seen in kube-router's iptables rules (kube-router
  only: Cilium's are BPF maps, and its CNI returns only once the endpoint's policy is computed)
- Running: the pod is first seen Running (for a session pod: after the injected init
  container saw its policy enforced)
- attempts, how many got through, and the last that did, in ms after the container started:
  for a session pod, any at all breaks §6.

And, from the containers' own log lines as the kubelet timestamped them (``kubectl logs
--timestamps``, nanoseconds, same clock), where a session pod's time after its rules goes:

- wait started: the injected wait's first line (its interpreter started, flags read, CAs loaded)
- enforced: its last line (the rounds done; the container exits right after)
- app started: the probe's first line (the kubelet saw the wait exit, created and started the
  app container); for plain pods too

Run as root on a machine with the node parts: ``.venv/bin/python bench/startup.py``
(``--dataplane cilium`` for the Cilium node, ``--backend`` for the exact backends on it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.harness import ControlPlane, wait_for  # noqa: E402
from tests.cluster.node import PROBE_IMAGE  # noqa: E402
from tests.cluster.nodecluster import installed_cluster  # noqa: E402
from tests.cluster.targets import TARGET_A  # noqa: E402
from tests.cluster.install import switch_backend  # noqa: E402
from tests.node_matrix import BACKENDS, pod_manifest  # noqa: E402
from sortie_egress.enforcement_wait.injection import INIT_CONTAINER_NAME  # noqa: E402

DENIED = f"{TARGET_A}:80"
POLICY = {"mode": "allowlist", "rules": [{"cidr": f"{TARGET_A}/32", "port": 443, "protocol": "TCP"}]}


def _pod(name: str, policy: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    pod = pod_manifest("default", name, policy)
    pod["spec"]["containers"][0]["command"] = ["/probe", "watch", "tcp", DENIED, str(seconds)]
    pod["spec"]["containers"][0]["image"] = PROBE_IMAGE
    return pod


class Timeline:
    """First time (seconds after its create call) each pod was seen in each state."""

    def __init__(self, plane: ControlPlane, iptables: bool = True) -> None:
        self.plane = plane
        self.iptables = iptables
        self.created: dict[str, float] = {}
        self.created_wall: dict[str, float] = {}
        self.seen: dict[str, dict[str, float]] = {}
        self.addresses: dict[str, str] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def mark(self, name: str, state: str) -> None:
        with self.lock:
            if name in self.created and state not in self.seen.setdefault(name, {}):
                self.seen[name][state] = time.monotonic() - self.created[name]

    def watch_pods(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.plane.admin.api_client())
        while not self.stop.is_set():
            for event in watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=5):
                pod = event["object"]
                name = pod.metadata.name
                if not pod.spec.scheduling_gates:
                    self.mark(name, "released")
                if pod.status.pod_ip:
                    self.addresses[name] = pod.status.pod_ip
                    self.mark(name, "address")
                if pod.status.phase == "Running":
                    self.mark(name, "running")
                if self.stop.is_set():
                    break

    def poll_dataplane(self) -> None:
        while not self.stop.is_set() and self.iptables:
            rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
            for name, address in list(self.addresses.items()):
                if f"{address}/32" in rules or f" {address} " in rules:
                    self.mark(name, "rules")
            time.sleep(0.02)


def measure(plane: ControlPlane, pods: int, seconds: float, iptables: bool = True) -> dict[str, list[dict[str, Any]]]:
    kinds = {"session": POLICY, "plain": None}
    timeline = Timeline(plane, iptables)
    threads = [threading.Thread(target=timeline.watch_pods, daemon=True),
               threading.Thread(target=timeline.poll_dataplane, daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the watch is established before the first create
    for index in range(pods):
        for kind, policy in kinds.items():
            name = f"{kind}-{index}"
            timeline.created[name] = time.monotonic()
            timeline.created_wall[name] = time.time()
            applied = plane.kubectl("apply", "-f", "-", input=json.dumps(_pod(name, policy, seconds)))
            assert applied.returncode == 0, applied.stderr

    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for name in timeline.created:
        line = wait_for(lambda name=name: next((l for l in plane.kubectl("logs", name).stdout.splitlines()
                                                if l.startswith("attempts=")), None), seconds + 60, f"{name}'s result")
        numbers = dict(part.split("=") for part in line.split())
        results[name.split("-")[0]].append({
            "attempts": int(numbers["attempts"]), "open": int(numbers["open"]),
            "first_open_ms": int(numbers["first_open_ms"]), "last_open_ms": int(numbers["last_open_ms"]),
            **timeline.seen.get(name, {}),
            **_log_marks(plane, name, timeline.created_wall[name]),
        })
    timeline.stop.set()
    return results


def _stamp(line: str) -> tuple[float, str]:
    """A ``kubectl logs --timestamps`` line: (seconds since the epoch, the text); RFC 3339 with
    nanoseconds, which datetime reads only to microseconds."""
    stamp, _, text = line.partition(" ")
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    whole = datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return whole + float("0." + (fraction or "0")), text


def _log_marks(plane: ControlPlane, name: str, created: float) -> dict[str, float]:
    """Seconds after the create call of the wait's first and last lines and the app's first."""
    marks: dict[str, float] = {}
    wait = plane.kubectl("logs", "--timestamps", "-c", INIT_CONTAINER_NAME, name)
    lines = [_stamp(line) for line in wait.stdout.splitlines() if line.strip()] if wait.returncode == 0 else []
    if lines:
        marks["wait started"] = lines[0][0] - created
        enforced = [stamp for stamp, text in lines if "enforced in" in text]
        if enforced:
            marks["enforced"] = enforced[-1] - created
    app = plane.kubectl("logs", "--timestamps", "-c", "probe", name)
    started = [stamp for stamp, text in map(_stamp, app.stdout.splitlines()) if text.strip() == "started"] \
        if app.returncode == 0 else []
    if started:
        marks["app started"] = started[0] - created
    return marks


def _remove_wait(plane: ControlPlane) -> None:
    """The webhook without ``--enforcement-canary`` (and its port), rolled out."""
    deployment = json.loads(plane.kubectl("-n", "sortie-system", "get", "deployment", "sortie-egress-webhook",
                                          "-o", "json").stdout)
    argv = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag in ("--enforcement-canary", "--enforcement-port"):
        index = argv.index(flag)
        del argv[index:index + 2]
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": argv}]
    result = plane.kubectl("-n", "sortie-system", "patch", "deployment", "sortie-egress-webhook", "--type=json",
                           "-p", json.dumps(patch))
    assert result.returncode == 0, result.stderr
    result = plane.kubectl("-n", "sortie-system", "rollout", "status", "deployment/sortie-egress-webhook",
                           "--timeout=180s", timeout=200)
    assert result.returncode == 0, result.stderr


def _median(values: list[float | None]) -> str:
    present = [value for value in values if value is not None]
    return f"{statistics.median(present):.2f} ({max(present):.2f}) s" if present else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10, help="session pods, and as many plain ones")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each container probes")
    parser.add_argument("--dataplane", choices=["kube-router", "cilium"], default="kube-router")
    parser.add_argument("--backend", choices=BACKENDS, default="networkpolicy",
                        help="the product's backend (cilium and clusternetworkpolicy need --dataplane cilium)")
    parser.add_argument("--enforcement-wait", choices=["required", "auto"], default="required",
                        help="auto: install the backend's -auto example (manifests/examples/cilium-auto: no wait on the "
                             "cilium backend, the session baseline instead)")
    parser.add_argument("--without-wait", action="store_true",
                        help="remove --enforcement-canary from the webhook (docs/operations.md): no wait is injected, "
                             "so what is measured is the dataplane's own start-up behaviour")
    args = parser.parse_args()
    if args.backend != "networkpolicy" and args.dataplane != "cilium":
        parser.error(f"the {args.backend} backend needs --dataplane cilium (kube-router enforces NetworkPolicy only)")
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="sortie-bench-startup-"))
    with installed_cluster(workdir, dataplane=args.dataplane) as product:
        if args.backend != "networkpolicy" or args.enforcement_wait != "required":
            switch_backend(product.plane, workdir / "backend-overlay", product.image, args.backend, args.enforcement_wait,
                           args.dataplane)
        if args.without_wait:
            _remove_wait(product.plane)
        wait_for(lambda: product.plane.kubectl("get", "serviceaccount", "default").returncode == 0, 30, "default SA")
        results = measure(product.plane, args.pods, args.seconds, iptables=args.dataplane == "kube-router")
    print(f"dataplane {args.dataplane}, backend {args.backend}, "
          f"{'no wait injected' if args.without_wait else 'enforcementWait auto' if args.enforcement_wait == 'auto' else 'the wait injected (as shipped)'}")
    steps = ("released", "address", "rules", "wait started", "enforced", "app started", "running")
    print(f"{'kind':<8} {'pods':>4} {'attempts':>9} {'got through':>12} {'last through':>13}   (medians; max in brackets)")
    for kind, rows in results.items():
        attempts, through = sum(r["attempts"] for r in rows), sum(r["open"] for r in rows)
        last = max((r["last_open_ms"] for r in rows), default=-1)
        print(f"{kind:<8} {len(rows):>4} {attempts:>9} {through:>12} {str(last) + ' ms' if last >= 0 else '-':>13}")
        for step in steps:
            if any(step in r for r in rows):
                print(f"    create -> {step:<14} {_median([r.get(step) for r in rows])}")
    leaked = sum(r["open"] for r in results["session"])
    control = all(r["open"] > 0 and r["first_open_ms"] < 1000 for r in results["plain"])
    print(f"session containers reached the denied destination {leaked} times; "
          f"the control {'got through at once, as it must' if control else 'DID NOT get through: the probe measured nothing'}")
    return 0 if control else 1


if __name__ == "__main__":
    sys.exit(main())
