"""What a session pod create costs through the real API server, against a plain pod (issue 13).

One control plane (etcd, kube-apiserver, controller-manager, scheduler, a kubelet-less Node),
tamper protection applied as shipped, our webhook registered in it over TLS as production runs
it (``--enforcement-canary``: the init container is injected). Session pods (a policy, so our
webhook is called, mutates and gates them), "called" pods (a session label but no policy: the
API server calls us and we answer "allowed" with no patch, which is the cost of any webhook
call) and plain pods (no session label: the API server never calls us) are created in turn, in
the same run, each create timed from the client (the create call's round trip, which includes
admission), in a shuffled order (seeded: every kind as often, none always first after another, so
an ordering effect on a sequential run cannot pass for a cost):

1. with the controller stopped: the webhook's own cost, ``--pods`` creates one at a time, then
   ``--pods`` more from ``--parallel`` threads;
2. the same with the controller running (its writes compete with the creates).

It prints p50/p99 per kind and the difference at each, and the webhook calls per session start
(the webhook's admissions counter over the session pods created: every call is a round trip
on the API server's path; the controller's gate release must not add one), and, for each
measurement, where a call's time goes: the API server's own measure of each call to our webhook
(``apiserver_admission_webhook_admission_duration_seconds``: encoding the review, the TLS round
trip, decoding the answer and applying its patch) beside the webhook's own time per call
(request received to answer ready); the difference is the API server's side of a call.

    .venv/bin/python bench/create.py [--pods 500] [--parallel 16]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import random
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
from tests.cluster.harness import ControlPlane, wait_for  # noqa: E402
from tests.conftest import install_admission_policies  # noqa: E402
from tests.support import ControllerProcess, WebhookProcess, generate_certs, session_pod  # noqa: E402
from sortie_egress.admission.registration import mutating_configuration  # noqa: E402

POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.20.0.0/16", "port": 443, "protocol": "TCP"}]}


def webhook_metrics(webhook: WebhookProcess) -> tuple[float, float]:
    """(admissions answered on /mutate, all decisions; seconds spent answering them, server side)."""
    with urllib.request.urlopen(f"{webhook.url}/metrics", context=webhook.context(), timeout=5) as reply:
        text = reply.read().decode()
    calls = sum(float(value) for value in re.findall(
        r'^sortie_egress_admissions_total\{[^}]*endpoint="mutate"[^}]*\} (\S+)$', text, re.M))
    seconds = sum(float(value) for value in re.findall(
        r'^sortie_egress_admission_duration_seconds_sum\{[^}]*endpoint="mutate"[^}]*\} (\S+)$', text, re.M))
    return calls, seconds


def apiserver_webhook_metrics(plane: ControlPlane) -> tuple[float, float]:
    """(calls to mutating webhooks, seconds they took) as the API server measures them."""
    reply = plane.kubectl("get", "--raw", "/metrics", check=True)
    text = reply.stdout
    def total(suffix: str) -> float:
        return sum(float(value) for value in re.findall(
            rf'^apiserver_admission_webhook_admission_duration_seconds_{suffix}\{{[^}}]*type="admit"[^}}]*\}} (\S+)$',
            text, re.M))
    return total("count"), total("sum")


KINDS = ("session", "called", "plain")


def pod(kind: str, name: str, namespace: str) -> dict[str, Any]:
    if kind == "session":
        return session_pod(name=name, session_id=name, policy=POLICY, namespace=namespace)
    if kind == "called":
        return session_pod(name=name, session_id=name, policy=None, namespace=namespace)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}


def timed_creates(core: client.CoreV1Api, namespace: str, count: int, parallel: int) -> dict[str, list[float]]:
    """``count`` pods of each kind, in turn, from ``parallel`` threads: create latencies in ms."""
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}

    order = [kind for kind in KINDS for _ in range(count)]
    random.Random(count * 31 + parallel).shuffle(order)

    def one(index: int) -> None:
        kind = order[index]
        manifest = pod(kind, f"{kind}-{index}", namespace)
        started = time.perf_counter()
        core.create_namespaced_pod(namespace, manifest, _preload_content=False)
        latencies[kind].append((time.perf_counter() - started) * 1000)

    if parallel == 1:
        for index in range(len(KINDS) * count):
            one(index)
    else:
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            list(pool.map(one, range(len(KINDS) * count)))
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(title: str, latencies: dict[str, list[float]]) -> None:
    p50 = {kind: statistics.median(values) for kind, values in latencies.items()}
    p99 = {kind: percentile(values, 0.99) for kind, values in latencies.items()}
    print(f"{title:<44} session p50 {p50['session']:6.2f} p99 {p99['session']:6.2f} ms | plain p50 {p50['plain']:6.2f} "
          f"p99 {p99['plain']:6.2f} ms | added p50 {p50['session'] - p50['plain']:+6.2f} "
          f"p99 {p99['session'] - p99['plain']:+6.2f} ms | a call with no patch adds p50 "
          f"{p50['called'] - p50['plain']:+6.2f} p99 {p99['called'] - p99['plain']:+6.2f} ms", flush=True)


def phase(title: str, plane: ControlPlane, webhook: WebhookProcess, run: Any) -> None:
    """One measurement: the create latencies, and where a webhook call's time went in it."""
    server_before, ours_before = apiserver_webhook_metrics(plane), webhook_metrics(webhook)
    latencies = run()
    server_calls, server_seconds = (a - b for a, b in zip(apiserver_webhook_metrics(plane), server_before))
    calls, seconds = (a - b for a, b in zip(webhook_metrics(webhook), ours_before))
    report(title, latencies)
    print(f"{'':44} a webhook call as the API server times it: {1e6 * server_seconds / max(server_calls, 1):7.0f} us "
          f"({server_calls:.0f} calls); of which our webhook's own: {1e6 * seconds / max(calls, 1):5.0f} us", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=500, help="pods of each kind per measurement")
    parser.add_argument("--parallel", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sortie-bench-create-"))
    plane = ControlPlane(find_binaries(), root=work / "cluster").start()
    generate_certs(work / "certs")
    webhook = WebhookProcess(work / "certs", work / "webhook.log", extra_args=(
        "--enforcement-canary", "sortie-egress-canary", "--enforcement-image", "registry.invalid/sortie-egress:1")).start()
    controller = None
    try:
        api = plane.admin.api_client()
        api.configuration.connection_pool_maxsize = args.parallel * 2
        core = client.CoreV1Api(api)
        install_admission_policies(plane)
        ca_bundle = base64.b64encode((work / "certs" / "ca.crt").read_bytes()).decode()
        client.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(
            mutating_configuration(url=webhook.url, ca_bundle=ca_bundle))
        namespaces = ["warm-up", "alone-seq", "alone-par", "running-seq", "running-par"]
        for namespace in namespaces:
            core.create_namespace({"metadata": {"name": namespace}})
            wait_for(lambda namespace=namespace: core.read_namespaced_service_account("default", namespace), 30,
                     "default ServiceAccount")
        probe = session_pod(policy=POLICY, namespace="warm-up")
        wait_for(lambda: "sortie.io/egress-mode" in (core.create_namespaced_pod("warm-up", probe, dry_run="All")
                                                     .metadata.labels or {}), 30, "the webhook")
        timed_creates(core, "warm-up", 20, 1)  # connections, caches, the memo
        calls_before, seconds_before = webhook_metrics(webhook)
        phase(f"controller stopped, {args.pods} of each, sequential", plane, webhook,
              lambda: timed_creates(core, "alone-seq", args.pods, 1))
        phase(f"controller stopped, {args.parallel} in parallel", plane, webhook,
              lambda: timed_creates(core, "alone-par", args.pods, args.parallel))
        kubeconfig = plane.kubeconfig_for("controller", plane.credentials_for_service_account(
            "sortie-system", "sortie-egress", create=False))
        controller = ControllerProcess(kubeconfig, work / "controller.log",
                                       extra_args=("--no-leader-elect", "--namespace", "running-seq",
                                                   "--namespace", "running-par")).start()
        phase("controller running, sequential", plane, webhook, lambda: timed_creates(core, "running-seq", args.pods, 1))
        phase(f"controller running, {args.parallel} in parallel", plane, webhook,
              lambda: timed_creates(core, "running-par", args.pods, args.parallel))
        wait_for(lambda: not any(p.spec.scheduling_gates for p in core.list_namespaced_pod("running-par").items),
                 120, "every gate released")
        calls, seconds = (after - before for after, before in zip(webhook_metrics(webhook), (calls_before, seconds_before)))
        all_calls = calls
        calls -= 4 * args.pods  # the "called" pods: one call each by construction
        print(f"webhook calls per session start: {calls / (4 * args.pods):.2f} "
              f"({calls:.0f} calls for {4 * args.pods} session pods, gates released included); "
              f"the webhook's own time per call: {1e6 * seconds / max(all_calls, 1):.0f} us (request received to answer ready)")
    finally:
        if controller is not None:
            controller.stop()
        webhook.stop()
        plane.stop()


if __name__ == "__main__":
    main()
