"""The controller behind a fault-injecting proxy: resets, 429, 503, slow answers, cut and expired watches."""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.harness import ControlPlane, Credentials, free_port, wait_for
from tests.faultproxy import FaultOdds, FaultProxy
from tests.support import ControllerProcess, WebhookProcess, session_pod

pytestmark = pytest.mark.cluster
POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}
PODS = 40


def test_controller_converges_through_injected_faults(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                      controller_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    from kubernetes import client

    cert, key = control_plane.authority.issue("fault-proxy", dt.timedelta(days=1), hosts=["127.0.0.1"])
    (tmp_path / "proxy.crt").write_bytes(cert)
    (tmp_path / "proxy.key").write_bytes(key)
    proxy = FaultProxy(control_plane.api_port, control_plane.ca_file, tmp_path / "proxy.crt", tmp_path / "proxy.key",
                       odds=FaultOdds(reset=0.06, throttle=0.06, unavailable=0.06, slow=0.05, watch_gone=0.3,
                                      watch_cut_seconds=3.0), seed=11)
    proxy_port = proxy.start()
    token = control_plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False).token
    through_proxy = control_plane.kubeconfig_for(
        "controller-via-proxy", Credentials(f"https://127.0.0.1:{proxy_port}", control_plane.ca_file, token=token))
    metrics_port = free_port()
    controller = ControllerProcess(through_proxy, tmp_path / "controller.log",
                                   extra_args=("--namespace", namespace, "--metrics-port", str(metrics_port))).start()
    try:
        with control_plane.admin.api_client() as api:
            core, networking = client.CoreV1Api(api), client.NetworkingV1Api(api)
            pods = [session_pod(policy=POLICY, namespace=namespace) for _ in range(PODS)]
            for pod in pods:
                core.create_namespaced_pod(namespace, pod)

            def converged() -> bool:
                listed = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]
                return len(listed) == PODS and not any(
                    "sortie.io/egress-policy" in [g["name"] for g in p["spec"].get("schedulingGates") or []] for p in listed)

            wait_for(converged, 120, "every gate released through the faults", interval=0.5)
            # A watch is cut only once it has lived its 3 s: wait for that, rather than hope.
            wait_for(lambda: proxy.injected["watch_cut"] > 0, 30, "a watch to be cut")
            policies = json.loads(networking.list_namespaced_network_policy(namespace, _preload_content=False).data)["items"]
            assert sorted(p["metadata"]["name"] for p in policies) == sorted(
                "sortie-egress-" + p["metadata"]["labels"]["sortie.io/session-id"] for p in pods)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    finally:
        controller.stop()
        proxy.stop()
    for kind in ("reset", "throttle_429", "unavailable_503", "slow", "watch_410", "watch_cut"):
        assert proxy.injected[kind] > 0, f"no {kind} fault was injected: {dict(proxy.injected)}"
    expired = re.search(r'^sortie_egress_watch_restarts_total\{reason="expired"\} (\S+)$', text, re.M)
    assert expired and float(expired.group(1)) > 0, "the controller never listed again after a 410"
    # Bounded retries: every fault costs at most a retry, never a storm.
    assert proxy.writes <= 2 * PODS + 2 * sum(proxy.injected.values()) + 60, (proxy.writes, dict(proxy.injected))
    print(f"faults injected: {dict(proxy.injected)}; write requests: {proxy.writes}")
