"""Egress on packets: session pods on a real node (containerd, kubelet, CNI bridge, kube-router).

The product runs as in the other cluster tests (admission policies, our webhook
registered by URL, the controller under its shipped RBAC), but the pods really
run, and every cell of the table is a TCP connection from a pod to a listener
in a network namespace this module creates. kube-router rejects what a policy
does not allow, so a blocked probe fails fast; each pod's row includes a
destination its policy allows, so "blocked" is never just "broken".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import ControlPlane, wait_for
from tests.cluster.host import HostLedger, recorded, run
from tests.cluster.node import PROBE_IMAGE, TestNode
from tests.conftest import install_admission_policies
from tests.support import IN_CI, ControllerProcess, WebhookProcess, control_plane_binaries, generate_certs
from webhook.configuration import mutating_configuration

pytestmark = pytest.mark.cluster

TARGETS_NETNS = "sortie-targets"
HOST_SIDE, TARGET_SIDE = "sortie-t0", "sortie-t1"
GATEWAY = "198.18.1.1"
TARGET_A, TARGET_B = "198.18.1.2", "198.18.1.3"
PORTS = (80, 443, 8443)
CELLS = [("tcp", target, port) for target in (TARGET_A, TARGET_B) for port in PORTS] + [
    ("udp", target, 53) for target in (TARGET_A, TARGET_B)]
LEDGER = Path("/var/tmp/sortie-egress-node.ledger")  # fixed: a later run finds what a killed one left


def node_parts() -> Path:
    """The node's binaries, built (or reused) by build-node.sh; in CI a failure, elsewhere a skip."""
    script = Path(__file__).resolve().parent / "cluster" / "build-node.sh"
    missing = [tool for tool in ("nft", "ipset", "iptables") if shutil.which(tool) is None]
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if missing or result.returncode != 0 or os.geteuid() != 0:
        reason = (f"the node tests need root, {', '.join(missing) or 'the host tools'} and the node parts "
                  f"(bash {script}): {result.stderr.strip()[-400:]}")
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return Path(result.stdout.strip().splitlines()[-1])


LISTENER = """
import socket, selectors, sys
selector = selectors.DefaultSelector()
for address in sys.argv[1].split(","):
    for port in sys.argv[2].split(","):
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((address, int(port)))
        server.listen(64)
        selector.register(server, selectors.EVENT_READ, "tcp")
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((address, 53))
    selector.register(echo, selectors.EVENT_READ, "udp")
while True:
    for key, _ in selector.select():
        if key.data == "tcp":
            connection, _ = key.fileobj.accept()
            connection.close()
        else:
            data, peer = key.fileobj.recvfrom(512)
            key.fileobj.sendto(data, peer)
"""


def _targets(ledger: HostLedger, root: Path) -> subprocess.Popen[bytes]:
    """A network namespace holding TARGET_A and TARGET_B, each listening on PORTS, routed via the host."""
    ledger.netns(TARGETS_NETNS)
    ledger.link(HOST_SIDE, "type", "veth", "peer", "name", TARGET_SIDE)
    run("ip", "link", "set", TARGET_SIDE, "netns", TARGETS_NETNS)
    run("ip", "addr", "add", f"{GATEWAY}/24", "dev", HOST_SIDE)
    run("ip", "link", "set", HOST_SIDE, "up")
    inside = ("ip", "netns", "exec", TARGETS_NETNS)
    for address in (TARGET_A, TARGET_B):
        run(*inside, "ip", "addr", "add", f"{address}/24", "dev", TARGET_SIDE)
    run(*inside, "ip", "link", "set", TARGET_SIDE, "up")
    run(*inside, "ip", "link", "set", "lo", "up")
    run(*inside, "ip", "route", "add", "default", "via", GATEWAY)
    script = root / "listener.py"  # under the node's root: its undo finds the process by that path
    script.write_text(LISTENER)
    listener = subprocess.Popen([*inside, sys.executable, str(script), f"{TARGET_A},{TARGET_B}",
                                 ",".join(map(str, PORTS))], start_new_session=True)
    wait_for(lambda: run(*inside, "ss", "-ltn").stdout.count("LISTEN") >= 2 * len(PORTS)
             and run(*inside, "ss", "-lun").stdout.count(":53 ") >= 2, 10, "the listeners")
    return listener


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    parts = node_parts()
    plane = ControlPlane(control_plane_binaries(), root=tmp_path_factory.mktemp("node-plane"), fake_node=False).start()
    ledger = HostLedger(LEDGER)
    webhook = controller = None
    try:
        with recorded(ledger):
            root = Path("/var/tmp/sortie-egress-node")
            test_node = TestNode(plane, parts, root, ledger)
            try:
                test_node.start()
                listener = _targets(ledger, root)
                certs = tmp_path_factory.mktemp("node-webhook-certs")
                ca_bundle = generate_certs(certs)
                webhook = WebhookProcess(certs, certs / "webhook.log").start()
                install_admission_policies(plane)
                plane.kubectl("apply", "-f", "-", input=json.dumps(mutating_configuration(url=webhook.url,
                                                                                             ca_bundle=ca_bundle)))
                account = plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False)
                controller = ControllerProcess(plane.kubeconfig_for("controller", account),
                                               certs / "controller.log").start()
                wait_for(lambda: plane.kubectl("get", "serviceaccount", "default").returncode == 0, 30, "default SA")
                yield {"plane": plane, "node": test_node}
            finally:
                for process in (controller, webhook):
                    if process is not None:
                        process.stop()
                test_node.stop()
                if "listener" in locals():
                    listener.kill()
    finally:
        plane.stop()


def _pod(name: str, policy: dict[str, Any] | str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "default", "labels": {}}
    if policy is not None:
        metadata["labels"]["sortie.io/session-id"] = name
        metadata["annotations"] = {"sortie.io/egress-policy": policy if isinstance(policy, str) else json.dumps(policy)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": "probe", "image": PROBE_IMAGE, "imagePullPolicy": "Never",
                                     "command": ["/bin/busybox", "sleep", "3600"]}],
                     "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1}}


def _connects(plane: ControlPlane, pod: str, protocol: str, address: str, port: int) -> bool:
    """From the pod, tests/cluster/probe: a TCP connection made, or a UDP datagram echoed back."""
    result = plane.kubectl("exec", pod, "--", "/probe", protocol, f"{address}:{port}", timeout=30)
    if result.returncode not in (0, 1):
        raise AssertionError(f"probe {protocol} {address}:{port} in {pod} could not run: {result.stderr}")
    return result.returncode == 0


def _enforced(pod_ip: str) -> bool:
    """kube-router has put the pod into the ipsets of the policies that select it."""
    return pod_ip in run("ipset", "list").stdout


EVERYTHING = set(CELLS)
MATRIX: dict[str, tuple[dict[str, Any] | None, set[tuple[str, str, int]]]] = {
    # pod: (egress policy, the cells it may reach, written out by hand); every other cell must be blocked
    "plain": (None, EVERYTHING),
    "allow-443": ({"mode": "allowlist", "rules": [{"cidr": f"{TARGET_A}/32", "port": 443, "protocol": "TCP"}]},
                  {("tcp", TARGET_A, 443)}),
    "allow-range": ({"mode": "allowlist", "rules": [{"cidr": f"{TARGET_B}/32", "port": 443, "end_port": 8443}]},
                    {("tcp", TARGET_B, 443), ("tcp", TARGET_B, 8443)}),
    "allow-udp-53": ({"mode": "allowlist", "rules": [{"cidr": f"{TARGET_A}/32", "port": 53, "protocol": "UDP"}]},
                     {("udp", TARGET_A, 53)}),
    "allow-all-ports": ({"mode": "allowlist", "rules": [{"cidr": "198.18.1.0/24"}]}, EVERYTHING),
    "deny-a": ({"mode": "denylist", "rules": [{"cidr": f"{TARGET_A}/32"}]},
               {cell for cell in CELLS if cell[1] == TARGET_B}),
    "empty-allowlist": ({"mode": "allowlist", "rules": []}, set()),
}


def test_what_each_session_pod_can_reach_on_packets(node: dict[str, Any]) -> None:
    plane: ControlPlane = node["plane"]
    for name, (policy, _) in MATRIX.items():
        created = plane.kubectl("apply", "-f", "-", input=json.dumps(_pod(name, policy)))
        assert created.returncode == 0, created.stderr

    def running(name: str) -> str | None:
        pod = json.loads(plane.kubectl("get", "pod", name, "-o", "json").stdout)
        return pod["status"].get("podIP") if pod["status"].get("phase") == "Running" else None

    ips = {name: wait_for(lambda name=name: running(name), 90, f"pod {name} running") for name in MATRIX}
    for name, (policy, _) in MATRIX.items():
        if policy is not None:
            wait_for(lambda ip=ips[name]: _enforced(ip), 30, f"kube-router to enforce {name}")

    header = f"{'pod':<16}" + "".join(f"{proto}/{t.rsplit('.', 1)[1]}:{p}".rjust(11) for proto, t, p in CELLS)
    lines, differences = [header], []
    for name, (_, allowed) in MATRIX.items():
        cells = ""
        for cell in CELLS:
            expected, observed = cell in allowed, _connects(plane, name, *cell)
            cells += f"{('ok' if observed else '--') + ('' if observed == expected else '!'):>11}"
            if observed != expected:
                differences.append(f"{name} -> {cell[0]} {cell[1]}:{cell[2]}: expected {'open' if expected else 'blocked'},"
                                   f" observed {'open' if observed else 'blocked'}")
        lines.append(f"{name:<16}{cells}")
    print("\n".join(lines))  # ok = connected, -- = blocked, ! = differs from the policy
    assert differences == [], "\n".join(differences)
