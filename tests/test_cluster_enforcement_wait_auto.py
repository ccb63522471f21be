"""enforcementWait auto on the cilium backend (issue 22): no injected wait; the session baseline
and the controller's check of it stand in for it. Real API server with Cilium's CRDs, the
install's admission policies, our webhook and controller as processes (sortie_egress/guards/session_baseline.py
says why this is sound; the packets are in tests/test_node_cilium.py). Expectations by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.harness import ControlPlane, wait_for
from tests.support import (WebhookProcess, control_plane_binaries, controller_as_installed, generate_certs,
                           held_by_our_gate, pod_events, policy_crds, register_webhook_and_namespace, session_pod)
from sortie_egress.protection.tamper import CILIUM_NETWORK_POLICIES, admission_policies, backend_admission_policies

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "manifests" / "components" / "enforcement-wait-auto" / "session-baseline.yaml"
POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.20.0.0/16", "port": 5432, "protocol": "TCP"}]}
NAMESPACE = "team-auto"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(control_plane_binaries(), root=tmp_path_factory.mktemp("wait-auto"), with_scheduler=False).start()
    yield plane
    plane.stop()


def _annotate(plane: ControlPlane, *annotations: str) -> None:
    result = plane.kubectl("annotate", "--overwrite", "serviceaccount", "sortie-egress", "-n", "sortie-system", *annotations)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def installed(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """As manifests/examples/cilium-auto installs it (the node guard with it), but the baseline,
    which each test applies."""
    from kubernetes import client

    for plural in ("ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"):
        assert plane.kubectl("apply", "--server-side", "-f", str(policy_crds() / f"cilium-v1.20.2-{plural}.yaml")).returncode == 0
        wait_for(lambda plural=plural: plane.kubectl("get", plural, "-A").returncode == 0, 30, f"the {plural} CRD")
    for manifest in ("namespace.yaml", "rbac.yaml"):
        assert plane.kubectl("apply", "-f", str(ROOT / "manifests" / "base" / manifest)).returncode == 0
    assert plane.kubectl("apply", "-f", str(ROOT / "manifests" / "components" / "cilium-backend" / "rbac.yaml")).returncode == 0
    policies = admission_policies("sortie-system") + backend_admission_policies(CILIUM_NETWORK_POLICIES, "sortie-system")
    applied = plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(policies))
    assert applied.returncode == 0, applied.stderr
    _annotate(plane, "sortie.io/backend=cilium", "sortie.io/enforcement-wait=auto")
    guard = ROOT / "manifests" / "components" / "cilium-node-guard" / "node-guard.yaml"
    assert plane.kubectl("apply", "-f", str(guard)).returncode == 0
    work = tmp_path_factory.mktemp("wait-auto-processes")
    generate_certs(work / "certs")
    # The webhook as the component runs it: a canary is configured, but auto leaves the wait out here.
    webhook = WebhookProcess(work / "certs", work / "webhook.log", extra_args=(
        "--backend", "cilium", "--enforcement-wait", "auto", "--enforcement-canary", "sortie-egress-canary.sortie-system.svc",
        "--enforcement-image", "registry.invalid/sortie-egress:1")).start()
    controller = None
    try:
        core = register_webhook_and_namespace(plane, webhook, work / "certs", NAMESPACE)
        controller = controller_as_installed(plane, work / "controller.log", "--backend", "cilium", "--enforcement-wait",
                                             "auto", "--no-leader-elect")
        yield core, client.CustomObjectsApi(plane.admin.api_client())
    finally:
        if controller is not None:
            controller.stop()
        webhook.stop()


def test_without_the_baseline_a_session_pod_is_admitted_without_the_wait_and_held(plane: ControlPlane,
                                                                                    installed: Any) -> None:
    core, _ = installed
    created = json.loads(core.create_namespaced_pod(
        NAMESPACE, session_pod(name="desk-a", session_id="s-a", policy=POLICY, namespace=NAMESPACE),
        _preload_content=False).data)
    assert created["spec"].get("initContainers") is None  # auto on cilium: no wait injected
    assert [gate["name"] for gate in created["spec"]["schedulingGates"]] == ["sortie.io/egress-policy"]
    told = wait_for(lambda: pod_events(core, NAMESPACE, "desk-a", "EnforcementBaselineMissing"), 30,
                    "the EnforcementBaselineMissing Event")
    assert [event.message for event in told] == [
        "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline does not exist: this pod carries no "
        "enforcement wait (--enforcement-wait auto), so it stays gated until the session baseline is in place"]
    assert held_by_our_gate(core, NAMESPACE, "desk-a")  # its CiliumNetworkPolicy exists by now; the gate still holds


def test_the_baseline_as_shipped_releases_held_pods_once_settled_and_a_changed_one_holds_them(
        plane: ControlPlane, installed: Any) -> None:
    core, custom = installed
    assert plane.kubectl("apply", "-f", str(BASELINE)).returncode == 0
    wait_for(lambda: not held_by_our_gate(core, NAMESPACE, "desk-a"), 30, "desk-a released once the baseline settled")
    core.create_namespaced_pod(NAMESPACE, session_pod(name="desk-b", session_id="s-b", policy=POLICY, namespace=NAMESPACE))
    wait_for(lambda: not held_by_our_gate(core, NAMESPACE, "desk-b"), 30, "desk-b released at once")
    # A cluster admin widens the baseline: it no longer stands in for the wait.
    widened = [{"op": "replace", "path": "/spec/egress", "value": [{"toEntities": ["all"]}]}]
    assert plane.kubectl("patch", "ciliumclusterwidenetworkpolicy", "sortie-egress-session-baseline", "--type=json",
                         "-p", json.dumps(widened)).returncode == 0
    wait_for(lambda: "all" in json.dumps(custom.get_cluster_custom_object(
        "cilium.io", "v2", "ciliumclusterwidenetworkpolicies", "sortie-egress-session-baseline")), 10, "the patch")
    core.create_namespaced_pod(NAMESPACE, session_pod(name="desk-c", session_id="s-c", policy=POLICY, namespace=NAMESPACE))
    told = wait_for(lambda: pod_events(core, NAMESPACE, "desk-c", "EnforcementBaselineMissing"), 30, "desk-c held")
    assert [event.message for event in told] == [
        "the CiliumClusterwideNetworkPolicy sortie-egress-session-baseline differs from the one this controller's "
        "--dns needs (cluster): this pod carries no enforcement wait (--enforcement-wait auto), so it stays gated "
        "until the session baseline is in place"]
    assert held_by_our_gate(core, NAMESPACE, "desk-c")


def test_auto_requires_the_wait_on_every_other_backend(plane: ControlPlane, installed: Any) -> None:
    """The admission policies read auto as backends.wait_needed does: on the networkpolicy
    backend a session pod without the wait is refused, webhook or not."""
    core, _ = installed
    from kubernetes.client.exceptions import ApiException

    _annotate(plane, "sortie.io/backend=networkpolicy")
    try:
        def refused() -> str | None:
            try:
                core.create_namespaced_pod(NAMESPACE, session_pod(policy=POLICY, namespace=NAMESPACE), dry_run="All")
            except ApiException as exc:
                return str(json.loads(exc.body)["message"]) if exc.status == 403 or exc.status == 422 else None
            return None

        message = wait_for(refused, 30, "the admission policies to read auto on networkpolicy")
        assert "the init container sortie-egress-wait is not first" in message, message
    finally:
        _annotate(plane, "sortie.io/backend=cilium")
