"""Controller benchmark against the real control plane, webhook registered.

A burst of session pods is created through the API server (so every one is
mutated and gated by our webhook); a watch records when each pod's gate goes.
Prints the time until every policy exists and every gate is released, p50 and
p99 of per-pod gate-release latency (create answered -> gate removal seen),
API writes per pod (from the controller's own counter), and the controller's
RSS with N session pods present.

    python bench/controller.py [--burst 500] [--rss-pods 5000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from tests.cluster.binaries import find_binaries  # noqa: E402
from tests.cluster.harness import ControlPlane, free_port, wait_for  # noqa: E402
from tests.support import ControllerProcess, WebhookProcess, generate_certs, session_pod  # noqa: E402
from webhook.configuration import mutating_configuration, validating_configuration  # noqa: E402

POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.20.0.0/16", "port": 443, "protocol": "TCP"},
                                         {"cidr": "192.0.2.0/24", "port": 8000, "end_port": 8100}]}
GATE = "sortie.io/egress-policy"


def writes(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(float(value) for value in re.findall(r'^sortie_egress_api_writes_total\{[^}]*\} (\S+)$', text, re.M))


def queue_depth(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    match = re.search(r"^sortie_egress_queue_depth (\S+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class GateWatcher(threading.Thread):
    """Records, per pod, when the watch first shows it without our gate."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        super().__init__(daemon=True)
        self.core, self.namespace = core, namespace
        self.released: dict[str, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        listed = json.loads(self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)
        version = listed["metadata"]["resourceVersion"]
        while True:
            response = self.core.list_namespaced_pod(self.namespace, watch=True, resource_version=version,
                                                     allow_watch_bookmarks=True, timeout_seconds=600,
                                                     _preload_content=False)
            self.ready.set()
            buffer = b""
            for chunk in response.stream(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    event = json.loads(line)
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        gates = [g["name"] for g in obj["spec"].get("schedulingGates") or []]
                        name = obj["metadata"]["name"]
                        if GATE not in gates and name not in self.released:
                            self.released[name] = time.perf_counter()


def create_pods(core: client.CoreV1Api, namespace: str, count: int, prefix: str) -> dict[str, float]:
    created: dict[str, float] = {}

    def one(index: int) -> None:
        pod = session_pod(name=f"{prefix}-{index}", session_id=f"{prefix}-{index}", policy=POLICY, namespace=namespace)
        core.create_namespaced_pod(namespace, pod, _preload_content=False)
        created[pod["metadata"]["name"]] = time.perf_counter()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))
    return created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--rss-pods", type=int, default=5000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sortie-bench-controller-"))
    plane = ControlPlane(find_binaries(), root=work / "cluster").start()
    print(f"control plane up in {plane.startup_seconds:.1f} s", flush=True)
    generate_certs(work / "certs")
    webhook = WebhookProcess(work / "certs", work / "webhook.log").start()
    controller = None
    try:
        api = plane.admin.api_client()
        api.configuration.connection_pool_maxsize = 32
        core = client.CoreV1Api(api)
        ca_bundle = __import__("base64").b64encode((work / "certs" / "ca.crt").read_bytes()).decode()
        admission = client.AdmissionregistrationV1Api(api)
        admission.create_mutating_webhook_configuration(mutating_configuration(url=webhook.url, ca_bundle=ca_bundle))
        admission.create_validating_webhook_configuration(validating_configuration(url=webhook.url, ca_bundle=ca_bundle))
        for manifest in ("namespace.yaml", "rbac.yaml"):
            assert plane.kubectl("apply", "-f", str(ROOT / "manifests" / "base" / manifest)).returncode == 0
        kubeconfig = plane.kubeconfig_for("controller", plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False))
        namespace = "bench"
        core.create_namespace({"metadata": {"name": namespace}})
        wait_for(lambda: core.read_namespaced_service_account("default", namespace), 30, "default ServiceAccount")
        probe = session_pod(policy=POLICY, namespace=namespace)
        wait_for(lambda: "sortie.io/egress-mode" in (core.create_namespaced_pod(namespace, probe, dry_run="All").metadata.labels or {}),
                 30, "the webhook")
        metrics_port = free_port()
        # A later --metrics-port overrides the helper's own "0".
        controller = ControllerProcess(kubeconfig, work / "controller.log",
                                       extra_args=("--no-leader-elect", "--namespace", namespace,
                                                   "--metrics-port", str(metrics_port))).start()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(lambda: writes(metrics_url) >= 0, 10, "controller metrics")

        watcher = GateWatcher(core, namespace)
        watcher.start()
        watcher.ready.wait(10)
        writes_before = writes(metrics_url)
        started = time.perf_counter()
        created = create_pods(core, namespace, args.burst, "burst")
        create_seconds = time.perf_counter() - started
        wait_for(lambda: all(name in watcher.released for name in created), 300, "every gate released", interval=0.05)
        total = max(watcher.released[name] for name in created) - started
        latencies = sorted(watcher.released[name] - created[name] for name in created)
        policies = json.loads(client.NetworkingV1Api(api).list_namespaced_network_policy(namespace, _preload_content=False).data)["items"]
        assert len(policies) == args.burst, len(policies)
        per_pod = (writes(metrics_url) - writes_before) / args.burst
        q = statistics.quantiles(latencies, n=100)
        print(f"burst of {args.burst}: created in {create_seconds:.2f} s ({args.burst / create_seconds:.0f} pods/s offered); "
              f"all policies and gate releases done {total:.2f} s after the first create "
              f"({args.burst / total:.0f} pods/s)", flush=True)
        print(f"gate-release latency: p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms", flush=True)
        print(f"API writes per pod: {per_pod:.2f}", flush=True)

        if args.rss_pods > args.burst:
            more = args.rss_pods - args.burst
            created_more = create_pods(core, namespace, more, "rss")
            wait_for(lambda: all(name in watcher.released for name in created_more), 600, "all gates released", interval=0.2)
            wait_for(lambda: queue_depth(metrics_url) == 0, 60, "the work queue to drain")
            print(f"controller RSS with {args.rss_pods} session pods: {rss_mb(controller.process.pid):.0f} MB", flush=True)
    finally:
        if controller is not None:
            controller.stop()
        webhook.stop()
        plane.stop()
        plane.cleanup()


if __name__ == "__main__":
    main()
