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
import base64
import concurrent.futures
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from tests.cluster.binaries import find_binaries  # noqa: E402
from tests.cluster.harness import ControlPlane, free_port, wait_for  # noqa: E402
from tests.support import ControllerProcess, WebhookProcess, generate_certs, session_pod  # noqa: E402
from sortie_egress.admission.registration import mutating_configuration  # noqa: E402

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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def watch_gates(kubeconfig: str, namespace: str, expected: int, ready: Any, results: Any, prefix: str = "burst-") -> None:
    """In a process of its own (so the creating threads do not delay what it sees): the wall-clock
    time at which each pod is first seen without our gate; stops after ``expected`` of them."""
    from kubernetes import config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    core = client.CoreV1Api(client.ApiClient(configuration))
    released: dict[str, float] = {}
    version = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["metadata"]["resourceVersion"]
    while len(released) < expected:
        response = core.list_namespaced_pod(namespace, watch=True, resource_version=version, allow_watch_bookmarks=True,
                                            timeout_seconds=600, _preload_content=False)
        ready.set()
        buffer = b""
        try:
            for chunk in response.stream(65536):
                buffer += chunk
                while b"\n" in buffer and len(released) < expected:
                    line, buffer = buffer.split(b"\n", 1)
                    event = json.loads(line)
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion", version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        gates = [g["name"] for g in obj["spec"].get("schedulingGates") or []]
                        if GATE not in gates and obj["metadata"]["name"].startswith(prefix):
                            released.setdefault(obj["metadata"]["name"], time.time())
                if len(released) >= expected:
                    break
        except Exception:  # a watch cut short: carry on from the last version seen
            continue
    results.put(released)


def create_pods(core: client.CoreV1Api, namespace: str, count: int, prefix: str) -> dict[str, float]:
    created: dict[str, float] = {}

    def one(index: int) -> None:
        pod = session_pod(name=f"{prefix}-{index}", session_id=f"{prefix}-{index}", policy=POLICY, namespace=namespace)
        core.create_namespaced_pod(namespace, pod, _preload_content=False)
        created[pod["metadata"]["name"]] = time.time()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))
    return created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--rss-pods", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=48, help="controller worker threads")
    parser.add_argument("--backfill", type=int, default=500,
                        help="gated pods created before the controller starts: its own processing rate, no creates competing")
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
        ca_bundle = base64.b64encode((work / "certs" / "ca.crt").read_bytes()).decode()
        admission = client.AdmissionregistrationV1Api(api)
        admission.create_mutating_webhook_configuration(mutating_configuration(url=webhook.url, ca_bundle=ca_bundle))
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
        if args.backfill:
            create_pods(core, namespace, args.backfill, "backfill")
        # A later --metrics-port overrides the helper's own "0".
        controller = ControllerProcess(kubeconfig, work / "controller.log",
                                       extra_args=("--no-leader-elect", "--namespace", namespace, "--workers", str(args.workers),
                                                   "--metrics-port", str(metrics_port)))
        started = time.time()
        controller.start()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(lambda: writes(metrics_url) >= 0, 10, "controller metrics")
        if args.backfill:
            def backfilled() -> bool:
                pods = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]
                return not any(GATE in [g["name"] for g in p["spec"].get("schedulingGates") or []] for p in pods)

            wait_for(backfilled, 300, "the backfill", interval=0.1)
            seconds = time.time() - started
            print(f"backfill of {args.backfill} gated pods: all released {seconds:.2f} s after the controller started "
                  f"({args.backfill / seconds:.0f} pods/s, start-up and cache sync included)", flush=True)

        import multiprocessing

        context = multiprocessing.get_context("spawn")
        ready, results = context.Event(), context.Queue()
        watcher = context.Process(target=watch_gates, args=(str(plane.kubeconfig_path), namespace, args.burst, ready, results))
        watcher.start()
        ready.wait(30)
        writes_before = writes(metrics_url)
        processes = {c.name: c.process.pid for c in plane.components if c.process}
        processes["webhook"] = webhook.process.pid
        processes["controller"] = controller.process.pid
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        started = time.time()
        created = create_pods(core, namespace, args.burst, "burst")
        create_seconds = time.time() - started
        released = results.get(timeout=300)
        watcher.join(10)
        total = max(released[name] for name in created) - started
        latencies = sorted(released[name] - created[name] for name in created)
        policies = json.loads(client.NetworkingV1Api(api).list_namespaced_network_policy(namespace, _preload_content=False).data)["items"]
        assert len(policies) == args.burst + args.backfill, len(policies)
        per_pod = (writes(metrics_url) - writes_before) / args.burst
        q = statistics.quantiles(latencies, n=100)
        print(f"burst of {args.burst}: created in {create_seconds:.2f} s ({args.burst / create_seconds:.0f} pods/s offered); "
              f"all policies and gate releases done {total:.2f} s after the first create "
              f"({args.burst / total:.0f} pods/s)", flush=True)
        print(f"gate-release latency: p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms", flush=True)
        print(f"API writes per pod: {per_pod:.2f}", flush=True)
        used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
        print("CPU seconds during the burst (2 cores = 2 s per second): " + ", ".join(
            f"{name} {seconds:.1f}" for name, seconds in sorted(used.items(), key=lambda item: -item[1])), flush=True)

        if args.rss_pods > args.burst + args.backfill:
            created_more = create_pods(core, namespace, args.rss_pods - args.burst - args.backfill, "rss")

            def all_released() -> bool:
                pods = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]
                return len(pods) >= args.rss_pods and not any(
                    GATE in [g["name"] for g in p["spec"].get("schedulingGates") or []] for p in pods)

            assert created_more
            wait_for(all_released, 900, "all gates released", interval=2)
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
