"""The reachability matrix on a Cilium node (issue 14), for every backend, judged on packets.

The same node as test_node_egress.py (containerd, kubelet, kube-proxy, CoreDNS pods, the probe
targets), with Cilium 1.20.2 as CNI and dataplane in place of the bridge and kube-router
(tests/cluster/cilium.py). The product is installed with ``kubectl apply -k`` from our image,
first with the default backend (networkpolicy), then switched as an operator switches it
(``kubectl apply -k manifests/examples/<backend>``) to cilium and to clusternetworkpolicy; each
round has namespaces of its own. Cilium drops what no policy allows (time-outs, not refusals).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sortie_egress import backends
from tests.cluster.harness import ControlPlane, wait_for
from tests.cluster.install import SYSTEM_NAMESPACE, switch_backend
from tests.cluster.node import POD_SUBNET
from tests.cluster.nodecluster import Installed, NodeUnavailable, installed_cluster
from tests.cluster.targets import NAMES, TARGET_A, TARGET_B, TEST_ZONE
from tests.node_matrix import (BACKENDS, COLUMNS, DNS, TABLE, apply, assert_churn_held, assert_flood_held,
                               assert_look_alike_held, assert_shutdown_held, assert_startup_held, canary_churn_on_packets,
                               flood_on_packets, startup_on_packets,
                               LOOK_ALIKE_ROUTES, look_alike_on_packets, ns, pod_manifest, prepare_round, probe, run_matrix, running_ip,
                               shutdown_on_packets, start_rows)
from tests.support import IN_CI, control_plane_binaries

pytestmark = pytest.mark.cluster

TAGS = {"networkpolicy": "np", "cilium": "cil", "clusternetworkpolicy": "cnp"}


class CiliumCluster:
    """The installed product on the Cilium node, and which backend it runs now."""

    def __init__(self, installed: Installed, scratch: Path) -> None:
        self.installed, self.scratch, self.backend = installed, scratch, "networkpolicy"
        self.prepared = {"networkpolicy"}

    @property
    def plane(self) -> ControlPlane:
        return self.installed.plane

    def use(self, backend: str) -> str:
        """Switch the install to ``backend`` (if it is not already) and prepare its round's
        namespaces; returns the round's namespace tag."""
        if backend != self.backend:
            switch_backend(self.plane, self.scratch / f"overlay-{backend}", self.installed.image, backend,
                           dataplane="cilium")
            self.backend = backend
        if backend not in self.prepared:
            prepare_round(self.plane, TAGS[backend], self.scratch, with_fail_closed=False)
            self.prepared.add(backend)
        return TAGS[backend]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CiliumCluster]:
    control_plane_binaries()  # a failure in CI, a skip elsewhere, when the control plane cannot be had
    scratch = tmp_path_factory.mktemp("cilium-node")
    try:
        with installed_cluster(scratch, lambda c: prepare_round(c.plane, TAGS["networkpolicy"], scratch, True),
                               dataplane="cilium") as product:
            yield CiliumCluster(product, scratch)
    except NodeUnavailable as exc:
        if IN_CI:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


def test_cilium_is_the_dataplane(cluster: CiliumCluster) -> None:
    """Pods get their addresses from Cilium (Kubernetes IPAM, the node's podCIDR) and are its
    endpoints; kube-router is not running."""
    plane = cluster.plane
    pods = json.loads(plane.kubectl("-n", SYSTEM_NAMESPACE, "get", "pods", "-o", "json").stdout)["items"]
    assert pods and all(p["status"].get("podIP", "").startswith(POD_SUBNET.rsplit(".", 2)[0]) for p in pods), pods
    endpoints = json.loads(plane.kubectl("get", "ciliumendpoints", "-A", "-o", "json").stdout)["items"]
    assert {e["metadata"]["name"] for e in endpoints} >= {p["metadata"]["name"] for p in pods}
    assert "kube-router" not in {c.name for c in cluster.installed.cluster.node.components}


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_each_pod_can_reach_on_packets(cluster: CiliumCluster, backend: str) -> None:
    tag = cluster.use(backend)
    plane = cluster.plane
    # Pods made before the install: only on the first round (the default backend's install).
    rows = [row for row in TABLE if backend == backends.DEFAULT_BACKEND or not row.before_install]
    start_rows(plane, rows, tag, backend, "cilium")
    lines, differences, disagreements = run_matrix(plane, rows, tag, backend, "cilium")
    print(f"{len(rows)} pods x {len(COLUMNS)} destinations on Cilium, backend {backend}")
    print("\n".join(lines))  # ok = reached, -- = blocked, ! = differs from the expectation
    assert differences == [], "\n".join(differences)
    # Every cell the packets answered, asked of `sortie-egress explain` too (issue 24).
    assert disagreements == [], "\n".join(disagreements)


def _lookup(plane: ControlPlane, namespace: str, pod: str, name: str) -> str | None:
    """The address cluster DNS gives ``name`` (forwarded to the test zone's server), from the pod."""
    result = plane.kubectl("-n", namespace, "exec", pod, "--", "/bin/busybox", "nslookup", name, timeout=40)
    if result.returncode != 0:
        return None
    answers = result.stdout.split("Name:", 1)[-1]
    return next((line.split()[-1] for line in answers.splitlines() if line.strip().startswith("Address")), None)


@pytest.mark.parametrize("backend", [name for name in BACKENDS if backends.get(name).has(backends.NAMES_HOSTS)])
def test_fqdn_rules_open_a_name_on_its_port_only(cluster: CiliumCluster, backend: str) -> None:
    """An allowed name is open on its port once looked up, and not before (Cilium's DNS proxy
    learns the address from the lookup); its other ports, other names' addresses and names that
    merely resolve stay closed."""
    tag = cluster.use(backend)
    plane = cluster.plane
    namespace, pod, allowed = ns("default", tag), "fqdn-session", f"{tag}.allowed.{TEST_ZONE}"
    policy = {"mode": "allowlist", "rules": [{"fqdn": allowed, "port": 443, "protocol": "TCP"},
                                             {"fqdn": f"*.wild.{TEST_ZONE}", "port": 8443, "protocol": "TCP"}]}
    apply(plane, pod_manifest(namespace, pod, policy))
    wait_for(lambda: running_ip(plane, namespace, pod), 120, f"{pod} running")
    before = probe(plane, namespace, pod, ("tcp", TARGET_A, 443))
    names = [allowed, f"other.{TEST_ZONE}", f"api.wild.{TEST_ZONE}"]
    looked_up = {name: _lookup(plane, namespace, pod, name) for name in names}
    assert looked_up == {name: NAMES[name] for name in names}, looked_up  # the DNS rule allows lookups of any name
    after = {cell: probe(plane, namespace, pod, cell) for cell in [
        ("tcp", TARGET_A, 443), ("tcp", TARGET_A, 80), ("tcp", TARGET_A, 8443),
        ("tcp", TARGET_B, 8443), ("tcp", TARGET_B, 443), ("tcp", TARGET_B, 80), ("udp", TARGET_A, 53)]}
    print({"before lookup": before, **{f"{c[0]} {c[1]}:{c[2]}": v for c, v in after.items()}})
    assert before is False, "the name's address was open before any lookup"
    assert probe(plane, namespace, pod, DNS), "a name in the cluster no longer resolves"
    assert after == {("tcp", TARGET_A, 443): True, ("tcp", TARGET_A, 80): False, ("tcp", TARGET_A, 8443): False,
                     ("tcp", TARGET_B, 8443): True, ("tcp", TARGET_B, 443): False, ("tcp", TARGET_B, 80): False,
                     ("udp", TARGET_A, 53): False}


@pytest.mark.parametrize("via", LOOK_ALIKE_ROUTES)
def test_a_look_alike_canary_cannot_start_a_session(cluster: CiliumCluster, via: str) -> None:
    """CONTRACT §6, issue 22, on Cilium with the backend the tests before end on: the canary's name
    pointed at a look-alike (hostAliases, or the pod's own resolver with dnsPolicy None). The
    session's policy lets it reach the look-alike, so it is the pinned CA that holds it: the wait
    does not believe the look-alike's certificate."""
    namespace = ns("default", cluster.use(cluster.backend))
    seen = look_alike_on_packets(cluster.plane, namespace, cluster.installed.cluster.node.root, via)
    print(cluster.backend, seen)
    assert_look_alike_held(seen)


def test_sessions_started_while_canary_replicas_are_deleted_in_a_loop_are_held(cluster: CiliumCluster) -> None:
    """CONTRACT §6, issue 22, on Cilium with the backend the tests before end on: 20 session pods
    start while the canary's replicas are deleted one at a time in a loop; not one session
    container reaches its denied destination."""
    namespace = ns("default", cluster.use(cluster.backend))
    seen = canary_churn_on_packets(cluster.plane, namespace)
    print(cluster.backend, {key: value for key, value in seen.items() if key != "logs"})
    assert_churn_held(seen)


def test_a_flood_of_connections_to_the_canary_holds_sessions_back_never_lets_one_through(cluster: CiliumCluster) -> None:
    """CONTRACT §6, issue 22, on Cilium: a plain pod floods both canary ports of every replica while
    session pods start; not one session container reaches its denied destination."""
    namespace = ns("default", cluster.use(cluster.backend))
    seen = flood_on_packets(cluster.plane, namespace)
    print(cluster.backend, {key: value for key, value in seen.items() if key != "logs"})
    assert_flood_held(seen)


# Last, and from the backend the tests before end on: each switch of backends is a rollout.
@pytest.mark.parametrize("backend", tuple(reversed(BACKENDS)))
def test_a_terminating_session_keeps_its_policy_until_its_containers_stop(cluster: CiliumCluster, backend: str) -> None:
    """CONTRACT §8 on packets, on Cilium, each backend: Sortie's graceful deletion and its deletion of
    the policy by name at once; a session container that ignores SIGTERM probes a denied target
    throughout. (The cilium backend's object goes with the pod through the garbage collector; the
    clusternetworkpolicy backend's is deleted by our controller once the pod object is gone.)"""
    namespace = ns("default", cluster.use(backend))
    results, deletion = shutdown_on_packets(cluster.plane, namespace)
    print(backend, results, deletion)
    assert_shutdown_held(results, deletion, backend, namespace)


def test_with_enforcement_wait_auto_no_denied_connection_gets_through(cluster: CiliumCluster) -> None:
    """Issue 22, enforcementWait auto, last (one more rollout): the cilium backend without the wait
    (manifests/examples/cilium-auto). The session baseline puts every session pod in default-deny
    egress before its own policy may have reached the agent, and the controller releases pods only
    once the baseline has settled: no session pod carries the wait, and not one attempt from a
    session container's first instant gets through; plain pods get through at once."""
    plane = cluster.plane
    switch_backend(plane, cluster.scratch / "overlay-cilium-auto", cluster.installed.image, "cilium", wait_mode="auto",
                   dataplane="cilium")
    cluster.backend = "cilium (enforcementWait auto)"
    if "cilium" not in cluster.prepared:
        prepare_round(plane, TAGS["cilium"], cluster.scratch, with_fail_closed=False)
        cluster.prepared.add("cilium")
    assert plane.kubectl("get", "ciliumclusterwidenetworkpolicy", "sortie-egress-session-baseline").returncode == 0
    seen = startup_on_packets(plane, ns("default", TAGS["cilium"]))
    print(seen)
    assert_startup_held(seen, waits=[])
