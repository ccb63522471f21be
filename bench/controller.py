"""Controller benchmark against the real control plane, webhook registered.

A burst of session pods is created through the API server (so every one is
mutated and gated by our webhook); a watch records when each pod's gate goes.
Prints the time until every policy exists and every gate is released, p50 and
p99 of per-pod gate-release latency (create answered -> gate removal seen),
API writes per pod (from the controller's own counter), and the controller's
RSS with N session pods present.

    python bench/controller.py [--burst 500] [--rss-pods 5000]

With ``--sessions N`` (issue 24) it runs the scale scenario instead: N released session pods in
``--namespaces`` namespaces under two controller replicas with leader election (as shipped), the
canary served by two (simulated) controller pods; then both replicas' RSS; a leader change (the
leader stops and hands its Lease back; the follower, caches warm, reconciles every session: the
time, and the API writes it made: none is right); a cold start (a fresh replica lists, then
reconciles); a burst of ``--burst`` pods as fast as 16 threads get answers and one paced at
``--paced-rate`` (gate release p50/p99 beside the create calls' own); and a rollout of the canary's
two replicas (the addresses every session policy cuts out change four times): API writes per
session and the highest write rate over 5 s, against ``--canary-update-rate``.

    python bench/controller.py --sessions 5000 [--namespaces 50] [--burst 500] [--paced-rate 25]
                               [--canary-update-rate 20] [--no-rollout]
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


def scrape(metrics_url: str) -> str:
    return urllib.request.urlopen(metrics_url, timeout=10).read().decode()


def writes(metrics_url: str) -> float:
    text = scrape(metrics_url)
    return sum(float(value) for value in re.findall(r'^sortie_egress_api_writes_total\{[^}]*\} (\S+)$', text, re.M))


def queue_depth(metrics_url: str) -> float:
    text = scrape(metrics_url)
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


def create_pods(core: client.CoreV1Api, namespace: str, count: int, prefix: str, rate: float = 0.0,
                took: dict[str, float] | None = None) -> dict[str, float]:
    """Session pods created from 16 threads: as fast as the API server answers, or (``rate`` > 0) the
    n-th not before n/rate seconds in. name -> when its create was answered; ``took``: how long each
    create call took (the API server's own latency for a write at that moment, webhook included)."""
    created: dict[str, float] = {}
    start = time.monotonic()

    def one(index: int) -> None:
        if rate > 0:
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
        pod = session_pod(name=f"{prefix}-{index}", session_id=f"{prefix}-{index}", policy=POLICY, namespace=namespace)
        asked = time.time()
        core.create_namespaced_pod(namespace, pod, _preload_content=False)
        created[pod["metadata"]["name"]] = time.time()
        if took is not None:
            took[pod["metadata"]["name"]] = created[pod["metadata"]["name"]] - asked

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))
    return created


def release_line(created: dict[str, float], released: dict[str, float], took: dict[str, float]) -> str:
    """Gate release p50/p99/max, beside the create calls' own p50/p99: the release takes two more
    writes (the policy, the gate) and two watch deliveries, so on a saturated API server it cannot
    be quicker than about twice a create; the ratio is what the controller adds to that."""
    latencies = sorted(released[name] - created[name] for name in created)
    q, c = statistics.quantiles(latencies, n=100), statistics.quantiles(sorted(took.values()), n=100)
    return (f"gate release p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
            f"the create calls themselves p50 {c[49] * 1000:.0f} ms, p99 {c[98] * 1000:.0f} ms "
            f"(release p99 = {q[98] / c[98]:.1f} x create p99)")


def _histograms(text: str, name: str, keep: tuple[str, ...]) -> dict[tuple[str, ...], dict[float, float]]:
    """Cumulative bucket counts of histogram ``name`` from Prometheus text, by the labels in ``keep``."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[str, ...], dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == name + "_bucket":
                series = found.setdefault(tuple(sample.labels.get(label, "") for label in keep), {})
                bound = float(sample.labels["le"])  # "+Inf" included
                series[bound] = series.get(bound, 0.0) + sample.value
    return found


def _quantile(buckets: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (Prometheus' histogram_quantile, unsmoothed)."""
    total = buckets.get(float("inf"), 0.0)
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return float("inf")


def latency_report(before: str, after: str, name: str, keep: tuple[str, ...], least: int = 50) -> list[str]:
    """p50/p99 (bucket bounds) of ``name`` between two scrapes, per series with at least ``least`` samples."""
    earlier, later = _histograms(before, name, keep), _histograms(after, name, keep)
    lines = []
    for series, buckets in sorted(later.items()):
        delta = {bound: count - earlier.get(series, {}).get(bound, 0.0) for bound, count in buckets.items()}
        if delta.get(float("inf"), 0.0) >= least:
            lines.append(f"  {' '.join(series)}: {delta[float('inf')]:.0f} calls, p50 <= {_quantile(delta, 0.5) * 1000:g} ms, "
                         f"p99 <= {_quantile(delta, 0.99) * 1000:g} ms")
    return lines


def apiserver_metrics(api: client.ApiClient) -> str:
    """The API server's own metrics (the admin's client: cluster-admin may read /metrics)."""
    response = api.call_api("GET", api.configuration.host + "/metrics")
    response.read()
    return response.data.decode()


def metric(metrics_url: str, name: str) -> float:
    """The sum of every sample of ``name`` (all its labels)."""
    text = scrape(metrics_url)
    return sum(float(value) for value in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def ready(metrics_url: str) -> bool:
    try:
        return urllib.request.urlopen(metrics_url.replace("/metrics", "/readyz"), timeout=5).status == 200
    except OSError:
        return False


CANARY_LABELS = {"app.kubernetes.io/name": "sortie-egress", "app.kubernetes.io/component": "controller"}
SCALE_POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}


def canary_replica(core: client.CoreV1Api, name: str, address: str) -> None:
    """A controller replica as the canary informer sees it: a pod with the labels and an address
    (its status written as a kubelet would; the test node has none)."""
    core.create_namespaced_pod("sortie-system", {
        "metadata": {"name": name, "labels": CANARY_LABELS},
        "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "c", "image": "registry.invalid/none:1",
                                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}})
    core.patch_namespaced_pod_status(name, "sortie-system", {"status": {"podIP": address, "podIPs": [{"ip": address}]}})


def create_sessions(core: client.CoreV1Api, namespaces: list[str], count: int, prefix: str) -> None:
    def one(index: int) -> None:
        namespace = namespaces[index % len(namespaces)]
        pod = session_pod(name=f"{prefix}-{index}", session_id=f"{prefix}-{index}", policy=SCALE_POLICY, namespace=namespace)
        for attempt in range(5):
            try:
                core.create_namespaced_pod(namespace, pod, _preload_content=False)
                return
            except client.exceptions.ApiException as exc:
                if exc.status not in (429, 500, 503, 504) or attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for done, _ in enumerate(pool.map(one, range(count)), 1):
            if done % 5000 == 0:
                print(f"  {done} session pods created", flush=True)


def scale(args: argparse.Namespace, plane: ControlPlane, core: client.CoreV1Api, kubeconfig: Path, work: Path) -> None:
    namespaces = [f"scale-{index:03d}" for index in range(args.namespaces)]
    for namespace in [*namespaces, "bench"]:
        core.create_namespace({"metadata": {"name": namespace}})
    for namespace in [*namespaces, "bench"]:
        wait_for(lambda namespace=namespace: core.read_namespaced_service_account("default", namespace), 60,
                 f"the default ServiceAccount of {namespace}")
    probe = session_pod(policy=SCALE_POLICY, namespace="bench")
    wait_for(lambda: "sortie.io/egress-mode" in (core.create_namespaced_pod("bench", probe, dry_run="All").metadata.labels or {}),
             30, "the webhook")
    for name, address in (("replica-a", "10.1.0.1"), ("replica-b", "10.1.0.2")):
        canary_replica(core, name, address)
    canary_port = free_port()

    def start(name: str, address: str) -> tuple[ControllerProcess, str]:
        """A replica with leader election on (as shipped), its own metrics port, log and loopback
        address for the canary (in a cluster each replica is a pod of its own, on the same port)."""
        metrics_port = free_port()
        arguments = ("--workers", str(args.workers), "--metrics-port", str(metrics_port), "--canary-port", str(canary_port),
                     "--canary-address", address,
                     "--canary-update-rate", str(args.canary_update_rate))
        process = ControllerProcess(kubeconfig, work / f"controller-{name}.log", extra_args=arguments,
                                    sync_seconds=600).start()
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(lambda: ready(url), 600, f"controller {name} ready", interval=0.05)
        return process, url

    def resynced(url: str) -> bool:
        return (metric(url, "sortie_egress_leader") == 1 and metric(url, "sortie_egress_reconciles_total") >= args.sessions
                and metric(url, "sortie_egress_queue_depth") == 0)

    controller, metrics_url = start("a", "127.0.0.1")
    wait_for(lambda: metric(metrics_url, "sortie_egress_leader") == 1, 60, "controller a leading", interval=0.2)
    follower, follower_url = start("b", "127.0.0.2")
    try:
        started = time.time()
        create_sessions(core, namespaces, args.sessions, "s")
        print(f"{args.sessions} session pods in {len(namespaces)} namespaces created in {time.time() - started:.0f} s", flush=True)
        wait_for(lambda: metric(metrics_url, "sortie_egress_gate_release_seconds_count") >= args.sessions, 1800,
                 "every session released", interval=2)
        wait_for(lambda: metric(metrics_url, "sortie_egress_queue_depth") == 0, 600, "the queue drained", interval=1)
        print(f"all released {time.time() - started:.0f} s after the first create; controller RSS "
              f"{rss_mb(controller.process.pid):.0f} MB (leader), {rss_mb(follower.process.pid):.0f} MB (follower) "
              f"with {args.sessions} sessions", flush=True)

        # A leader change as it happens with the shipped two replicas: the leader stops (a rollout, a
        # drained node) and hands the Lease back; the follower, its caches listed and watched all along,
        # takes over and reconciles every session.
        changed = time.time()
        controller.stop()
        wait_for(lambda: resynced(follower_url), 900, "the follower's full resync", interval=0.2)
        print(f"after a leader change (the follower's caches warm): full resync of {args.sessions} sessions done "
              f"{time.time() - changed:.1f} s after the leader stopped, "
              f"{metric(follower_url, 'sortie_egress_api_writes_total'):.0f} API writes (nothing had drifted)", flush=True)

        # A cold start (no replica left running, as after both were replaced at once): list, then reconcile.
        follower.stop()
        restarted = time.time()
        controller, metrics_url = start("c", "127.0.0.3")
        listed = time.time() - restarted
        wait_for(lambda: resynced(metrics_url), 900, "the full resync", interval=0.2)
        resynced_after = time.time() - restarted
        print(f"after a cold start: caches listed and synced in {listed:.1f} s, full resync of {args.sessions} "
              f"sessions done {resynced_after:.1f} s after start, {metric(metrics_url, 'sortie_egress_api_writes_total'):.0f} "
              f"API writes (nothing had drifted); RSS {rss_mb(controller.process.pid):.0f} MB", flush=True)

        # A burst while every session exists.
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        # Flat out (16 threads, as fast as the API server answers), then paced at a rate it sustains.
        for prefix, rate in (("burst", 0.0), ("paced", args.paced_rate)):
            watching, results = context.Event(), context.Queue()
            watcher = context.Process(target=watch_gates, args=(str(plane.kubeconfig_path), "bench", args.burst, watching,
                                                                results, f"{prefix}-"))
            watcher.start()
            watching.wait(30)
            took: dict[str, float] = {}
            created = create_pods(core, "bench", args.burst, prefix, rate, took)
            released = results.get(timeout=600)
            watcher.join(10)
            offered = "as fast as 16 threads get answers" if not rate else f"offered at {rate:g}/s"
            print(f"{prefix} of {args.burst} ({offered}) with {args.sessions} sessions present: "
                  f"{release_line(created, released, took)}", flush=True)
            wait_for(lambda: metric(metrics_url, "sortie_egress_queue_depth") == 0, 600, "the queue drained", interval=1)

        if args.no_rollout:
            return
        # A rollout of the canary's two replicas, one at a time, as a Deployment rolls; once the
        # burst's pods are past their start (the controller updates a starting session at once).
        time.sleep(125)
        before, rolled = metric(metrics_url, "sortie_egress_api_writes_total"), time.time()
        samples: list[tuple[float, float]] = [(time.monotonic(), before)]
        steps = [("add", "replica-c", "10.1.0.3"), ("delete", "replica-a", ""), ("add", "replica-d", "10.1.0.4"),
                 ("delete", "replica-b", "")]
        for number, (action, name, address) in enumerate(steps):
            step_at = time.monotonic()
            if action == "add":
                canary_replica(core, name, address)
            else:
                core.delete_namespaced_pod(name, "sortie-system", grace_period_seconds=0)
            while time.monotonic() < step_at + args.rollout_step_seconds and number < len(steps) - 1:
                samples.append((time.monotonic(), metric(metrics_url, "sortie_egress_api_writes_total")))
                time.sleep(max(0.0, min(1.0, step_at + args.rollout_step_seconds - time.monotonic())))
        last_step = time.time() - rolled
        while True:
            samples.append((time.monotonic(), metric(metrics_url, "sortie_egress_api_writes_total")))
            quiet = [value for at, value in samples if at >= samples[-1][0] - 90]
            if (metric(metrics_url, "sortie_egress_queue_depth") == 0 and samples[-1][0] - samples[0][0] > 90
                    and quiet[0] == quiet[-1] and samples[-1][1] > before):
                break
            time.sleep(1)
        total = samples[-1][1] - before
        # The highest rate over any 5 s (completions bunch when the API server stalls for a moment).
        peak = max((later - earlier) / (t2 - t1) for (t1, earlier), (t2, later) in
                   ((samples[i], next(s for s in samples[i:] if s[0] - samples[i][0] >= 5)) for i in range(len(samples))
                    if samples[-1][0] - samples[i][0] >= 5))
        sessions = args.sessions  # every scale session's network (10.0.0.0/8) holds the canary's addresses
        print(f"rollout: 4 canary address changes within {last_step:.0f} s; {total:.0f} API writes for {sessions} "
              f"affected sessions = {total / sessions:.2f} per session, done {samples[-1][0] - samples[0][0] - 90:.0f} s "
              f"after the first change; highest rate over 5 s {peak:.1f} writes/s (--canary-update-rate "
              f"{args.canary_update_rate:g})", flush=True)
    finally:
        controller.stop()
        follower.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--rss-pods", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=48, help="controller worker threads")
    parser.add_argument("--backfill", type=int, default=500,
                        help="gated pods created before the controller starts: its own processing rate, no creates competing")
    parser.add_argument("--sessions", type=int, default=0, help="run the scale scenario with this many sessions")
    parser.add_argument("--namespaces", type=int, default=50, help="scale scenario: namespaces the sessions spread over")
    parser.add_argument("--canary-update-rate", type=float, default=20.0, help="scale scenario: the controller's flag")
    parser.add_argument("--paced-rate", type=float, default=25.0,
                        help="scale scenario: the second burst's pods per second (one the API server sustains)")
    parser.add_argument("--no-rollout", action="store_true", help="scale scenario: stop after the burst")
    parser.add_argument("--rollout-step-seconds", type=int, default=5, help="scale scenario: between two replica changes")
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
        if args.sessions:
            scale(args, plane, core, kubeconfig, work)
            return
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
        scraped = (apiserver_metrics(api), scrape(metrics_url))
        started = time.time()
        took: dict[str, float] = {}
        created = create_pods(core, namespace, args.burst, "burst", took=took)
        create_seconds = time.time() - started
        released = results.get(timeout=300)
        watcher.join(10)
        total = max(released[name] for name in created) - started
        policies = json.loads(client.NetworkingV1Api(api).list_namespaced_network_policy(namespace, _preload_content=False).data)["items"]
        assert len(policies) == args.burst + args.backfill, len(policies)
        per_pod = (writes(metrics_url) - writes_before) / args.burst
        print(f"burst of {args.burst}: created in {create_seconds:.2f} s ({args.burst / create_seconds:.0f} pods/s offered); "
              f"all policies and gate releases done {total:.2f} s after the first create "
              f"({args.burst / total:.0f} pods/s)", flush=True)
        print(release_line(created, released, took), flush=True)
        print(f"API writes per pod: {per_pod:.2f}", flush=True)
        used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
        print("CPU seconds during the burst (2 cores = 2 s per second): " + ", ".join(
            f"{name} {seconds:.1f}" for name, seconds in sorted(used.items(), key=lambda item: -item[1])), flush=True)
        print("API server, per call during the burst (apiserver_request_duration_seconds):", flush=True)
        print("\n".join(latency_report(scraped[0], apiserver_metrics(api), "apiserver_request_duration_seconds",
                                      ("verb", "resource", "subresource"))), flush=True)
        print("controller, per reconcile: " + " ".join(latency_report(
            scraped[1], scrape(metrics_url),
            "sortie_egress_reconcile_duration_seconds", ())).strip(), flush=True)

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
