"""Our product installed as users install it, on a real node, judged on packets.

The node (containerd, kubelet, CNI bridge, kube-proxy, kube-router, CoreDNS pods) joins
the test control plane; our image is built from ./Dockerfile and installed with
``kubectl apply -k`` of an overlay that only swaps the image (tests/cluster/install.py).
Then every pod of the table probes every target: TCP connections and UDP echoes to
listeners in a network namespace this module creates, and a name looked up through
cluster DNS. kube-router rejects what no policy allows, so a blocked probe fails fast;
every row has something its pod can reach (DNS at least) or nothing it may, so
"blocked" is never just "broken" (the plain pods show every target up).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import ControlPlane, wait_for
from tests.cluster.host import run
from tests.cluster.install import MUTATING_CONFIGURATION, SYSTEM_NAMESPACE, diagnose, uninstall
from tests.cluster.nodecluster import Installed, NodeCluster, NodeUnavailable, installed_cluster
from tests.cluster.node import PROBE_IMAGE
from tests.cluster.targets import PORTS, TARGET_A, TARGET_B, UDP_PORT
from tests.support import IN_CI, control_plane_binaries

pytestmark = pytest.mark.cluster

CELLS = [("tcp", target, port) for target in (TARGET_A, TARGET_B) for port in PORTS] + [
    ("udp", target, UDP_PORT) for target in (TARGET_A, TARGET_B)]
DNS = ("dns", "kubernetes.default.svc.cluster.local", 53)  # a lookup through cluster DNS (CoreDNS pods)
COLUMNS = CELLS + [DNS]
EVERYTHING = set(COLUMNS)
WEB = {("tcp", target, port) for target in (TARGET_A, TARGET_B) for port in (80, 443)}
OUTSIDE_DNS = {("udp", TARGET_A, UDP_PORT), ("udp", TARGET_B, UDP_PORT)}

INVALID_ANNOTATION = '{"mode": "allowlist", "rule": []}'  # `rule`: a typo the webhook would refuse
ALLOW_443 = {"mode": "allowlist", "rules": [{"cidr": f"{TARGET_A}/32", "port": 443, "protocol": "TCP"}]}
SESSION = {"app.kubernetes.io/component": "session"}  # what Sortie's chart selects

# What Sortie's own Helm chart installs next to its sessions (CONTRACT §4).
SORTIE_CHART_DEFAULT = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "sortie-session-isolation", "namespace": "sortie-chart"},
    "spec": {"podSelector": {"matchLabels": SESSION}, "policyTypes": ["Egress"],
             "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                         "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]}]},
}

# (namespace, pod, egress annotation, extra labels, what it may reach: written out by hand).
# Every other cell must be blocked.
TABLE: list[tuple[str, str, dict[str, Any] | str | None, dict[str, str], set[tuple[str, str, int]]]] = [
    # No other policy in the namespace: the session's own policy is all there is.
    ("default", "plain", None, {}, EVERYTHING),
    ("default", "allow-443", ALLOW_443, {}, {("tcp", TARGET_A, 443), DNS}),
    ("default", "allow-range", {"mode": "allowlist", "rules": [{"cidr": f"{TARGET_B}/32", "port": 443, "end_port": 8443}]},
     {}, {("tcp", TARGET_B, 443), ("tcp", TARGET_B, 8443), DNS}),
    ("default", "allow-udp", {"mode": "allowlist", "rules": [{"cidr": f"{TARGET_A}/32", "port": 53, "protocol": "UDP"}]},
     {}, {("udp", TARGET_A, 53), DNS}),
    ("default", "allow-no-port", {"mode": "allowlist", "rules": [{"cidr": "198.18.1.0/24"}]}, {}, EVERYTHING),
    ("default", "deny-a", {"mode": "denylist", "rules": [{"cidr": f"{TARGET_A}/32"}]}, {},
     {cell for cell in COLUMNS if cell[1] != TARGET_A}),
    ("default", "empty-allowlist", {"mode": "allowlist", "rules": []}, {}, {DNS}),
    # Created before the product was installed, with an annotation admission would refuse:
    # the controller backfills it with a DNS-only policy (CONTRACT §3).
    ("default", "fail-closed", INVALID_ANNOTATION, {}, {DNS}),
    # Our baseline (manifests/components/baseline): plain pods keep DNS and HTTP/HTTPS anywhere
    # (port 53 anywhere too: the cluster default has no `to`), session pods get DNS only from it.
    ("baseline", "baseline-plain", None, {}, WEB | OUTSIDE_DNS | {DNS}),
    ("baseline", "baseline-allow-443", ALLOW_443, {}, {("tcp", TARGET_A, 443), DNS}),
    # Sortie's chart default: it widens every session it selects to TCP 80/443 anywhere, and it
    # allows no DNS, so its own sessions cannot look anything up. The controller flags it.
    ("sortie-chart", "chart-plain", None, {}, EVERYTHING),
    ("sortie-chart", "chart-session", None, SESSION, WEB),
    ("sortie-chart", "chart-allow-443", ALLOW_443, SESSION, WEB | {DNS}),
]


def _pod(namespace: str, name: str, policy: dict[str, Any] | str | None,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if policy is not None:
        metadata["labels"]["sortie.io/session-id"] = name
        metadata["annotations"] = {"sortie.io/egress-policy": policy if isinstance(policy, str) else json.dumps(policy)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": "probe", "image": PROBE_IMAGE, "imagePullPolicy": "Never",
                                     "command": ["/bin/busybox", "sleep", "3600"]}],
                     "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1}}


def _apply(plane: ControlPlane, manifest: dict[str, Any]) -> None:
    result = plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert result.returncode == 0, result.stderr


def _before_install(cluster: NodeCluster) -> None:
    """What exists before the product: the namespaces, their policies, and a pod admission would refuse."""
    plane = cluster.plane
    for namespace in ("baseline", "sortie-chart"):
        _apply(plane, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    overlay = cluster.node.root / "baseline-overlay"
    overlay.mkdir()
    components = Path(__file__).resolve().parents[1] / "manifests" / "components" / "baseline"
    (overlay / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "baseline",
        "components": [os.path.relpath(components, overlay)]}))
    result = plane.kubectl("apply", "-k", str(overlay))
    assert result.returncode == 0, result.stderr
    _apply(plane, SORTIE_CHART_DEFAULT)
    wait_for(lambda: plane.kubectl("get", "serviceaccount", "default").returncode == 0, 30, "the default ServiceAccount")
    _apply(plane, _pod("default", "fail-closed", INVALID_ANNOTATION))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    control_plane_binaries()  # a failure in CI, a skip elsewhere, when the control plane cannot be had
    try:
        with installed_cluster(tmp_path_factory.mktemp("node"), _before_install) as product:
            yield product
    except NodeUnavailable as exc:
        if IN_CI:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


def _probe(plane: ControlPlane, namespace: str, pod: str, cell: tuple[str, str, int]) -> bool:
    """From the pod: a TCP connection made, a UDP datagram echoed back, or a name resolved."""
    protocol, address, port = cell
    command = (["/bin/busybox", "nslookup", address] if protocol == "dns"
               else ["/probe", protocol, f"{address}:{port}"])
    result = plane.kubectl("-n", namespace, "exec", pod, "--", *command, timeout=40)
    if protocol != "dns" and result.returncode not in (0, 1):
        raise AssertionError(f"probe {protocol} {address}:{port} in {pod} could not run: {result.stderr}")
    return result.returncode == 0


def _running_ip(plane: ControlPlane, namespace: str, name: str) -> str | None:
    pod = json.loads(plane.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)
    return pod["status"].get("podIP") if pod["status"].get("phase") == "Running" else None


def _in_dataplane(pod_ip: str) -> bool:
    """kube-router has put the pod into the ipsets of the policies that select it."""
    return pod_ip in run("ipset", "list").stdout


def test_the_product_runs_from_our_image_as_shipped(installed: Installed) -> None:
    plane = installed.plane
    pods = json.loads(plane.kubectl("-n", SYSTEM_NAMESPACE, "get", "pods", "-o", "json").stdout)["items"]
    accounts = sorted({p["spec"]["serviceAccountName"] for p in pods})
    assert accounts == ["sortie-egress", "sortie-egress-webhook"], accounts
    assert {c["image"] for p in pods for c in p["spec"]["containers"]} == {installed.image}
    assert all(p["status"]["phase"] == "Running" for p in pods), diagnose(plane)
    # From inside: not root, and the root filesystem refuses writes (only /tmp, an emptyDir, takes them).
    check = ("import os\ntry:\n    open('/probe-write', 'w')\n    print('writable')\nexcept OSError:\n"
             "    print('read-only')\nprint(os.getuid(), os.getgid())")
    for deployment in ("sortie-egress-webhook", "sortie-egress-controller"):
        result = plane.kubectl("-n", SYSTEM_NAMESPACE, "exec", f"deployment/{deployment}", "--", "python", "-c", check)
        assert result.stdout.split() == ["read-only", "65532", "65532"], (deployment, result.stdout, result.stderr)
    # The API server reaches the webhook through its Service (no URL), with the CA the controller injected.
    webhooks = json.loads(plane.kubectl("get", "mutatingwebhookconfiguration", MUTATING_CONFIGURATION,
                                        "-o", "json").stdout)["webhooks"]
    assert [w["clientConfig"]["service"]["name"] for w in webhooks] == ["sortie-egress"]
    assert all("url" not in w["clientConfig"] and w["clientConfig"].get("caBundle") for w in webhooks)
    print(f"installed with kubectl apply -k in {installed.install_seconds:.1f} s")


def test_what_each_pod_can_reach_on_packets(installed: Installed) -> None:
    plane = installed.plane
    for namespace, name, policy, labels, _ in TABLE:
        if name != "fail-closed":
            _apply(plane, _pod(namespace, name, policy, labels))
    ips = {name: wait_for(lambda namespace=namespace, name=name: _running_ip(plane, namespace, name), 90,
                          f"pod {name} running")
           for namespace, name, *_ in TABLE}
    for namespace, name, _, _, allowed in TABLE:
        if allowed != EVERYTHING:  # selected by some policy: wait until the dataplane has it
            wait_for(lambda ip=ips[name]: _in_dataplane(ip), 30, f"kube-router to enforce {name}")
    wait_for(lambda: plane.kubectl("get", "networkpolicy", "sortie-egress-fail-closed").returncode == 0, 30,
             "the fail-closed pod's policy")

    header = f"{'namespace':<13}{'pod':<19}" + "".join(
        ("dns" if proto == "dns" else f"{proto}/{t.rsplit('.', 1)[1]}:{p}").rjust(11) for proto, t, p in COLUMNS)
    lines, differences = [header], []
    for namespace, name, _, _, allowed in TABLE:
        cells = ""
        for cell in COLUMNS:
            expected, observed = cell in allowed, _probe(plane, namespace, name, cell)
            cells += f"{('ok' if observed else '--') + ('' if observed == expected else '!'):>11}"
            if observed != expected:
                differences.append(f"{namespace}/{name} -> {cell[0]} {cell[1]}:{cell[2]}: expected "
                                   f"{'open' if expected else 'blocked'}, observed {'open' if observed else 'blocked'}")
        lines.append(f"{namespace:<13}{name:<19}{cells}")
    print(f"{len(TABLE)} pods x {len(COLUMNS)} destinations = {len(TABLE) * len(COLUMNS)} cells")
    print("\n".join(lines))  # ok = reached, -- = blocked, ! = differs from the expectation
    assert differences == [], "\n".join(differences)


def test_the_widening_chart_default_is_reported(installed: Installed) -> None:
    plane = installed.plane
    _apply(plane, _pod("sortie-chart", "chart-widened", ALLOW_443, SESSION))

    def warning() -> str | None:
        events = json.loads(plane.kubectl("-n", "sortie-chart", "get", "events", "-o", "json",
                                          "--field-selector", "involvedObject.name=chart-widened,reason=EgressWidened"
                                          ).stdout)["items"]
        return events[0]["message"] if events else None

    message = wait_for(warning, 60, "the EgressWidened Event")
    assert message.startswith("NetworkPolicy sortie-session-isolation: egress[0] allows TCP 80, TCP 443 to 0.0.0.0/0")


def test_deleting_a_session_pod_removes_its_policy_and_its_rules(installed: Installed) -> None:
    plane = installed.plane
    _apply(plane, _pod("default", "short-lived", ALLOW_443))
    ip = wait_for(lambda: _running_ip(plane, "default", "short-lived"), 90, "pod short-lived running")
    wait_for(lambda: _in_dataplane(ip), 30, "kube-router to enforce short-lived")
    assert plane.kubectl("delete", "pod", "short-lived", "--wait=true").returncode == 0
    wait_for(lambda: plane.kubectl("get", "networkpolicy", "sortie-egress-short-lived").returncode != 0, 60,
             "the garbage collector to delete the policy")
    wait_for(lambda: not _in_dataplane(ip), 60, "kube-router to drop the pod's address")


def _watching(name: str, policy: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """A pod whose only container tries TCP TARGET_A:80 from its first instant, for ``seconds``."""
    pod = _pod("default", name, policy)
    pod["spec"]["containers"][0]["command"] = ["/probe", "watch", "tcp", f"{TARGET_A}:80", str(seconds)]
    return pod


def _watch_result(plane: ControlPlane, name: str, seconds: float) -> dict[str, int]:
    line = wait_for(lambda: next((line for line in plane.kubectl("logs", name).stdout.splitlines()
                                  if line.startswith("attempts=")), None), seconds + 90, f"{name}'s probe result")
    return {key: int(value) for key, value in (part.split("=") for part in line.split())}


def test_no_denied_connection_gets_through_from_a_containers_first_instant(installed: Installed) -> None:
    """CONTRACT §6 on packets: the session container starts only once its policy is enforced (the
    injected init container waits on the canary), so not one attempt to a denied destination
    succeeds; plain pods doing the same get through at once, or the probe would prove nothing."""
    plane = installed.plane
    seconds = 2.0
    sessions, plains = [f"startup-session-{i}" for i in range(4)], [f"startup-plain-{i}" for i in range(2)]
    for name in sessions:
        _apply(plane, _watching(name, ALLOW_443, seconds))
    for name in plains:
        _apply(plane, _watching(name, None, seconds))
    results = {name: _watch_result(plane, name, seconds) for name in sessions + plains}
    print({name: (r["attempts"], r["open"]) for name, r in results.items()})
    assert all(results[name]["open"] > 0 and 0 <= results[name]["first_open_ms"] < 1000 for name in plains), results
    assert all(results[name]["attempts"] > 0 for name in sessions), results
    assert {name: results[name]["open"] for name in sessions} == {name: 0 for name in sessions}
    pod = json.loads(plane.kubectl("get", "pod", sessions[0], "-o", "json").stdout)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["sortie-egress-wait"]
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_uninstall_leaves_nothing_that_blocks_pods(installed: Installed) -> None:
    """Last in this module: it removes the product."""
    plane = installed.plane
    uninstall(plane, installed.overlay)
    leftovers = {kind: plane.kubectl("get", kind, "-o", "name").stdout.split()
                 for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations",
                              "validatingadmissionpolicies", "validatingadmissionpolicybindings")}
    assert {kind: [n for n in names if "sortie" in n] for kind, names in leftovers.items()} == {
        kind: [] for kind in leftovers}
    # A session pod is created and runs: nothing of ours holds it or refuses it any more.
    _apply(plane, _pod("default", "after-uninstall", ALLOW_443))
    wait_for(lambda: _running_ip(plane, "default", "after-uninstall"), 90, "a session pod after uninstall")
