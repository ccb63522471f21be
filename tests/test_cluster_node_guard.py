"""The node guard (issue 22's hole, closed): on the clusternetworkpolicy backend in a cluster that
runs Cilium, the controller releases an allowlist session only while the node guard the install
ships is in place, unchanged, and settled. Real API server with network-policy-api's and
Cilium's CRDs, the install's RBAC and admission policies, our webhook and controller as
processes (sortie_egress/guards/node_guard.py says why; the packets are in tests/test_node_cilium.py).
Expectations written out by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import describe_install
from tests.cluster.harness import ControlPlane, wait_for
from tests.support import (WebhookProcess, backend_audit, control_plane_binaries, controller_as_installed,
                           generate_certs, held_by_our_gate, pod_events, policy_crds, register_webhook_and_namespace,
                           session_pod)
from sortie_egress.protection.tamper import CLUSTER_NETWORK_POLICIES, admission_policies, backend_admission_policies

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / "manifests" / "components" / "cilium-node-guard" / "node-guard.yaml"
ALLOWLIST = {"mode": "allowlist", "rules": [{"cidr": "10.20.0.0/16", "port": 5432, "protocol": "TCP"}]}
DENYLIST = {"mode": "denylist", "rules": [{"cidr": "169.254.169.254"}]}
NAMESPACE = "team-guard"
HELD_FOR = ": on Cilium an allowlist session is released only while the node guard keeps every node closed to it"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, Any]]:
    """As manifests/examples/cilium-clusternetworkpolicy installs it, but the guard, which the tests apply."""
    plane = ControlPlane(control_plane_binaries(), root=tmp_path_factory.mktemp("node-guard"), with_scheduler=False).start()
    webhook = controller = None
    try:
        for crd, plural in (("network-policy-api-v0.3.0-experimental.yaml", "clusternetworkpolicies"),
                            ("cilium-v1.20.2-ciliumclusterwidenetworkpolicies.yaml", "ciliumclusterwidenetworkpolicies")):
            assert plane.kubectl("apply", "--server-side", "-f", str(policy_crds() / crd)).returncode == 0
            wait_for(lambda plural=plural: plane.kubectl("get", plural).returncode == 0, 30, f"the {plural} CRD")
        for manifest in (ROOT / "manifests" / "base" / "namespace.yaml", ROOT / "manifests" / "base" / "rbac.yaml",
                         ROOT / "manifests" / "components" / "clusternetworkpolicy-backend" / "rbac.yaml"):
            assert plane.kubectl("apply", "-f", str(manifest)).returncode == 0
        policies = admission_policies("sortie-system") + backend_admission_policies(CLUSTER_NETWORK_POLICIES, "sortie-system")
        applied = plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(policies))
        assert applied.returncode == 0, applied.stderr
        describe_install(plane, "clusternetworkpolicy")  # this webhook injects no wait: it has no canary
        work = tmp_path_factory.mktemp("node-guard-processes")
        generate_certs(work / "certs")
        webhook = WebhookProcess(work / "certs", work / "webhook.log",
                                 extra_args=("--backend", "clusternetworkpolicy")).start()
        core = register_webhook_and_namespace(plane, webhook, work / "certs", NAMESPACE)
        controller = controller_as_installed(plane, work / "controller.log", "--backend", "clusternetworkpolicy",
                                             "--no-leader-elect")
        yield plane, core
    finally:
        if controller is not None:
            controller.stop()
        if webhook is not None:
            webhook.stop()
        plane.stop()


def _session_policy_written(plane: ControlPlane, session_id: str) -> bool:
    return plane.kubectl("get", "clusternetworkpolicy", f"sortie-egress.{NAMESPACE}.{session_id}").returncode == 0


def test_without_the_guard_an_allowlist_session_is_held_and_a_denylist_one_is_not(installed: Any) -> None:
    plane, core = installed
    core.create_namespaced_pod(NAMESPACE, session_pod(name="desk-a", session_id="s-a", policy=ALLOWLIST, namespace=NAMESPACE))
    core.create_namespaced_pod(NAMESPACE, session_pod(name="desk-d", session_id="s-d", policy=DENYLIST, namespace=NAMESPACE))
    told = wait_for(lambda: pod_events(core, NAMESPACE, "desk-a", "NodeGuardMissing"), 30, "the NodeGuardMissing Event")
    assert [event.message for event in told] == [
        "the CiliumClusterwideNetworkPolicy sortie-egress-node-guard does not exist" + HELD_FOR]
    assert _session_policy_written(plane, "s-a") and held_by_our_gate(core, NAMESPACE, "desk-a")  # written, yet held
    # A denylist promises everything else: the guard does not select it, nothing holds it.
    wait_for(lambda: not held_by_our_gate(core, NAMESPACE, "desk-d"), 30, "the denylist session released")
    assert not pod_events(core, NAMESPACE, "desk-d", "NodeGuardMissing")


def test_the_guard_as_shipped_releases_held_sessions_once_settled_and_a_narrowed_one_holds_them(installed: Any) -> None:
    plane, core = installed
    applied = plane.kubectl("apply", "-f", str(GUARD))
    assert applied.returncode == 0, applied.stderr
    wait_for(lambda: not held_by_our_gate(core, NAMESPACE, "desk-a"), 30, "desk-a released once the guard settled")
    core.create_namespaced_pod(NAMESPACE, session_pod(name="desk-b", session_id="s-b", policy=ALLOWLIST, namespace=NAMESPACE))
    wait_for(lambda: not held_by_our_gate(core, NAMESPACE, "desk-b"), 30, "desk-b released at once")
    # A cluster admin narrows it to the local node only: other nodes would be open again.
    narrowed = [{"op": "replace", "path": "/spec/egressDeny/0/toEntities", "value": ["host"]}]
    patched = plane.kubectl("patch", "ciliumclusterwidenetworkpolicy", "sortie-egress-node-guard", "--type=json",
                            "-p", json.dumps(narrowed))
    assert patched.returncode == 0, patched.stderr
    core.create_namespaced_pod(NAMESPACE, session_pod(name="desk-c", session_id="s-c", policy=ALLOWLIST, namespace=NAMESPACE))
    told = wait_for(lambda: pod_events(core, NAMESPACE, "desk-c", "NodeGuardMissing"), 30, "desk-c held")
    assert [event.message for event in told] == [
        "the CiliumClusterwideNetworkPolicy sortie-egress-node-guard differs from the one this controller's --dns "
        "needs (cluster)" + HELD_FOR]
    assert held_by_our_gate(core, NAMESPACE, "desk-c")
    # audit tells the operator what that means for the sessions already running (nothing re-gates them).
    code, rows, _ = backend_audit(plane, "clusternetworkpolicy", NAMESPACE)
    assert code == 1 and rows["s-b"] == ("unguarded", (
        "the CiliumClusterwideNetworkPolicy sortie-egress-node-guard differs from the one this controller's --dns "
        "needs (cluster): this allowlist session may reach the cluster's nodes")), rows
    assert rows["s-d"][0] == "ok", rows  # a denylist is not the guard's
    # Put back as shipped (a new object: it settles again), desk-c goes.
    assert plane.kubectl("delete", "-f", str(GUARD), "--wait").returncode == 0
    assert plane.kubectl("apply", "-f", str(GUARD)).returncode == 0
    wait_for(lambda: not held_by_our_gate(core, NAMESPACE, "desk-c"), 30, "desk-c released once the guard is back and settled")
    code, rows, _ = backend_audit(plane, "clusternetworkpolicy", NAMESPACE)
    assert code == 0 and {session: state for session, (state, _) in rows.items()} == {
        "s-a": "ok", "s-b": "ok", "s-c": "ok", "s-d": "ok"}, rows


def test_the_controller_cannot_write_the_guard(installed: Any) -> None:
    """Least privilege: the controller's token only reads Cilium's clusterwide policies, so a stolen
    one cannot loosen the guard it checks."""
    plane, _ = installed
    for verb in ("create", "update", "patch", "delete"):
        allowed = plane.kubectl("auth", "can-i", verb, "ciliumclusterwidenetworkpolicies.cilium.io",
                                "--as", "system:serviceaccount:sortie-system:sortie-egress")
        assert allowed.stdout.strip() == "no", (verb, allowed.stdout, allowed.stderr)
