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
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.harness import NODE_PORTS, ControlPlane, wait_for
from tests.cluster.host import run
from tests.cluster.install import MUTATING_CONFIGURATION, SYSTEM_NAMESPACE, diagnose, uninstall
from tests.cluster.nodecluster import Installed, NodeUnavailable, installed_cluster
from tests.cluster.targets import TARGET_A
from tests.node_matrix import (ALLOW_443, COLUMNS, EVERYTHING, SESSION, TABLE, apply, assert_churn_held,
                               assert_flood_held, assert_look_alike_held, assert_shutdown_held, canary_churn_on_packets,
                               flood_on_packets, kubelet_port, LOOK_ALIKE_ROUTES, look_alike_on_packets, pod_manifest, prepare_round, run_matrix,
                               running_ip, shutdown_on_packets, start_rows)
from tests.support import IN_CI, control_plane_binaries

pytestmark = pytest.mark.cluster

# The table (tests/node_matrix.py) in its untagged round: namespaces default, baseline,
# sortie-chart and widening; this dataplane runs the networkpolicy backend only.


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    control_plane_binaries()  # a failure in CI, a skip elsewhere, when the control plane cannot be had
    scratch = tmp_path_factory.mktemp("node")
    try:
        with installed_cluster(scratch, lambda cluster: prepare_round(cluster.plane, "", scratch, True)) as product:
            yield product
    except NodeUnavailable as exc:
        if IN_CI:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


def _in_dataplane(pod_ip: str) -> bool:
    """kube-router has put the pod into the ipsets of the policies that select it."""
    return pod_ip in run("ipset", "list").stdout


def _input_rules() -> str:
    """What decides pod-to-node traffic, for a failure's message."""
    return "\n".join(run("iptables", "-S", chain, check=False).stdout for chain in ("INPUT", "KUBE-ROUTER-INPUT"))


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
    ips = start_rows(plane, TABLE, "", "networkpolicy")
    for row in TABLE:
        if row.pod in ips and (row.expected("networkpolicy") != EVERYTHING or row.namespace == "widening"):
            # selected by some policy: wait until the dataplane has it
            wait_for(lambda ip=ips[row.pod]: _in_dataplane(ip), 30, f"kube-router to enforce {row.pod}")
    wait_for(lambda: plane.kubectl("get", "networkpolicy", "sortie-egress-fail-closed").returncode == 0, 30,
             "the fail-closed pod's policy")
    # kube-router lets every pod reach its node's NodePort range (30000-32767) whatever the policies say:
    # a kubelet listening there would open the node column for all (a6e8bb5 .. 7606ff9, one run in four).
    assert not NODE_PORTS[0] <= kubelet_port(plane) <= NODE_PORTS[1], (kubelet_port(plane), _input_rules())
    lines, differences, disagreements = run_matrix(plane, TABLE, "", "networkpolicy")
    print(f"{len(TABLE)} pods x {len(COLUMNS)} destinations = {len(TABLE) * len(COLUMNS)} cells")
    print("\n".join(lines))  # ok = reached, -- = blocked, ! = differs from the expectation
    assert differences == [], "\n".join(differences) + "\n" + _input_rules()
    # Every cell the packets answered, asked of `sortie-egress explain` too (issue 24).
    assert disagreements == [], "\n".join(disagreements)


def test_the_widening_chart_default_is_reported(installed: Installed) -> None:
    plane = installed.plane
    apply(plane, pod_manifest("sortie-chart", "chart-widened", ALLOW_443, SESSION))

    def warning() -> str | None:
        events = json.loads(plane.kubectl("-n", "sortie-chart", "get", "events", "-o", "json",
                                          "--field-selector", "involvedObject.name=chart-widened,reason=EgressWidened"
                                          ).stdout)["items"]
        return events[0]["message"] if events else None

    message = wait_for(warning, 60, "the EgressWidened Event")
    assert message.startswith("NetworkPolicy sortie-session-isolation: egress[0] allows TCP 80, TCP 443 to 0.0.0.0/0")


def test_deleting_a_session_pod_removes_its_policy_and_its_rules(installed: Installed) -> None:
    plane = installed.plane
    apply(plane, pod_manifest("default", "short-lived", ALLOW_443))
    ip = wait_for(lambda: running_ip(plane, "default", "short-lived"), 90, "pod short-lived running")
    wait_for(lambda: _in_dataplane(ip), 30, "kube-router to enforce short-lived")
    assert plane.kubectl("delete", "pod", "short-lived", "--wait=true").returncode == 0
    wait_for(lambda: plane.kubectl("get", "networkpolicy", "sortie-egress-short-lived").returncode != 0, 60,
             "the garbage collector to delete the policy")
    wait_for(lambda: not _in_dataplane(ip), 60, "kube-router to drop the pod's address")


def _watching(name: str, policy: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """A pod whose only container tries TCP TARGET_A:80 from its first instant, for ``seconds``."""
    pod = pod_manifest("default", name, policy)
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
        apply(plane, _watching(name, ALLOW_443, seconds))
    for name in plains:
        apply(plane, _watching(name, None, seconds))
    results = {name: _watch_result(plane, name, seconds) for name in sessions + plains}
    print({name: (r["attempts"], r["open"]) for name, r in results.items()})
    assert all(results[name]["open"] > 0 and 0 <= results[name]["first_open_ms"] < 1000 for name in plains), results
    assert all(results[name]["attempts"] > 0 for name in sessions), results
    assert {name: results[name]["open"] for name in sessions} == {name: 0 for name in sessions}
    pod = json.loads(plane.kubectl("get", "pod", sessions[0], "-o", "json").stdout)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["sortie-egress-wait"]
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


@pytest.mark.parametrize("via", LOOK_ALIKE_ROUTES)
def test_a_look_alike_canary_cannot_start_a_session_before_its_policy(installed: Installed, via: str) -> None:
    """CONTRACT §6, issue 22: the pod's creator points the canary's name at a look-alike
    (hostAliases, or a resolver of its own with dnsPolicy None) that speaks the protocol with a
    certificate of its own; the wait, pinned to our CA by the webhook, does not believe it, and the
    session's container never starts. (Before the canary was authenticated, this pod started at
    once, before kube-router had its rules.)"""
    seen = look_alike_on_packets(installed.plane, "default", installed.cluster.node.root, via)
    print(seen)
    assert_look_alike_held(seen)


def test_sessions_started_while_canary_replicas_are_deleted_in_a_loop_are_held(installed: Installed) -> None:
    """CONTRACT §6, issue 22: 20 session pods start while the canary's replicas are deleted one at
    a time in a loop. A replica that is terminating or not yet up refuses the closed port without
    its listener; the wait believes a refusal only between two answers of that very endpoint, so
    not one session container reaches its denied destination. (Before the sound round, a refusal
    from a terminating replica passed for kube-router's, before its rules existed.)"""
    seen = canary_churn_on_packets(installed.plane, "default")
    print({key: value for key, value in seen.items() if key != "logs"})
    assert_churn_held(seen)


def test_a_flood_of_connections_to_the_canary_holds_sessions_back_never_lets_one_through(installed: Installed) -> None:
    """CONTRACT §6, issue 22: a plain pod floods both canary ports of every replica while session
    pods start; a SYN the flood makes the canary drop looks like a dataplane that drops, so the
    wait counts a silent closed port only while the canary's listen queues did not overflow."""
    seen = flood_on_packets(installed.plane, "default")
    print({key: value for key, value in seen.items() if key != "logs"})
    assert_flood_held(seen)


def test_a_terminating_session_keeps_its_policy_until_its_containers_stop(installed: Installed) -> None:
    """CONTRACT §8 on packets: Sortie's graceful deletion and its deletion of the policy by name at
    once; a session container that ignores SIGTERM probes a denied target throughout (kube-router)."""
    results, deletion = shutdown_on_packets(installed.plane, "default")
    print(results, deletion)
    assert_shutdown_held(results, deletion, "networkpolicy", "default")


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
    apply(plane, pod_manifest("default", "after-uninstall", ALLOW_443))
    wait_for(lambda: running_ip(plane, "default", "after-uninstall"), 90, "a session pod after uninstall")
