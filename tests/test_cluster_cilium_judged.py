"""Where Cilium runs, its policies widen sessions whatever our backend (CONTRACT §4, issue 22).

On the default networkpolicy backend in a cluster that runs Cilium, a namespace admin's
CiliumNetworkPolicy, or a platform team's CiliumClusterwideNetworkPolicy, that selects a session
pod is a union with the session's NetworkPolicy, just as another NetworkPolicy is. Before this,
the controller read CiliumNetworkPolicies only on the cilium backend and never read clusterwide
ones: both widened a session unreported. Real API server, Cilium's own CRDs, our webhook and
controller as processes; expectations written out by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.harness import ControlPlane, wait_for
from tests.support import (WebhookProcess, backend_audit, control_plane_binaries, controller_as_installed, generate_certs,
                           held_by_our_gate, pod_events, policy_crds, register_webhook_and_namespace, session_pod)
from sortie_egress.protection.tamper import admission_policies

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent
GROUP, VERSION = "cilium.io", "v2"
POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.20.0.0/16", "port": 5432, "protocol": "TCP"}]}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(control_plane_binaries(), root=tmp_path_factory.mktemp("cilium-judged"), with_scheduler=False).start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def installed(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Cilium's two policy CRDs, the base's RBAC and admission policies, our webhook and our
    controller, both on the default (networkpolicy) backend."""
    from kubernetes import client

    for plural in ("ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"):
        crd = policy_crds() / f"cilium-v1.20.2-{plural}.yaml"
        assert plane.kubectl("apply", "--server-side", "-f", str(crd)).returncode == 0
        wait_for(lambda plural=plural: plane.kubectl("get", plural, "-A").returncode == 0, 30, f"the {plural} CRD")
    for manifest in ("namespace.yaml", "rbac.yaml"):
        assert plane.kubectl("apply", "-f", str(ROOT / "manifests" / "base" / manifest)).returncode == 0
    applied = plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(admission_policies("sortie-system")))
    assert applied.returncode == 0, applied.stderr
    plane.kubectl("annotate", "serviceaccount", "sortie-egress", "-n", "sortie-system", "sortie.io/enforcement-wait=off")
    work = tmp_path_factory.mktemp("cilium-judged-processes")
    generate_certs(work / "certs")
    webhook = WebhookProcess(work / "certs", work / "webhook.log").start()
    controller = None
    try:
        core = register_webhook_and_namespace(plane, webhook, work / "certs", "team-j")
        controller = controller_as_installed(plane, work / "controller.log", "--no-leader-elect")
        log = work / "controller.log"
        wait_for(lambda: "judging CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies" in log.read_text()
                 or None, 30, "the controller to find Cilium's policy kinds")
        yield core, client.CustomObjectsApi(plane.admin.api_client())
    finally:
        if controller is not None:
            controller.stop()
        webhook.stop()




def test_cilium_policies_that_select_a_session_are_told_on_the_networkpolicy_backend(plane: ControlPlane,
                                                                                    installed: Any) -> None:
    core, custom = installed
    core.create_namespaced_pod("team-j", session_pod(name="desk-j", session_id="s-j", policy=POLICY, namespace="team-j"))
    wait_for(lambda: not held_by_our_gate(core, "team-j", "desk-j"), 30, "the gate to be released")
    code, rows, _ = backend_audit(plane, "networkpolicy", "team-j")
    assert (code, rows["s-j"]) == (0, ("ok", ""))

    ssh_out = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "ssh-out", "namespace": "team-j"},
               "spec": {"endpointSelector": {"matchLabels": {"k8s:sortie.io/session-id": "s-j"}},
                        "egress": [{"toEntities": ["world"], "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, "team-j", "ciliumnetworkpolicies", ssh_out)
    # A platform team's clusterwide allow of every pod on 8080, and one for another namespace only.
    every_pod = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "every-pod-8080"},
                 "spec": {"endpointSelector": {}, "egress": [{"toEndpoints": [{}],
                                                             "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}}
    elsewhere = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "team-x-only"},
                 "spec": {"endpointSelector": {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "team-x"}},
                          "egress": [{"toEntities": ["all"]}]}}
    for body in (every_pod, elsewhere):
        custom.create_cluster_custom_object(GROUP, VERSION, "ciliumclusterwidenetworkpolicies", body)

    expected = [
        "CiliumClusterwideNetworkPolicy every-pod-8080: egress[0] allows TCP 8080 to pods selected by "
        '{"namespaceSelector":{},"podSelector":{}}',
        "CiliumNetworkPolicy ssh-out: egress[0] allows TCP 22 to 0.0.0.0/0, ::/0",
    ]

    def told() -> list[str] | None:
        messages = sorted(event.message for event in pod_events(core, "team-j", "desk-j", "EgressWidened"))
        wanted = [f"{line}; this pod can reach more than its egress policy allows" for line in expected]
        return messages if all(message in messages for message in wanted) else None

    messages = wait_for(told, 30, "EgressWidened Events for both Cilium policies")
    assert not any("team-x-only" in message for message in messages), messages
    code, rows, _ = backend_audit(plane, "networkpolicy", "team-j")
    assert (code, rows["s-j"]) == (1, ("widened", "; ".join(expected)))
    # Theirs, read and told, never touched.
    theirs = custom.get_namespaced_custom_object(GROUP, VERSION, "team-j", "ciliumnetworkpolicies", "ssh-out")
    assert theirs["spec"] == ssh_out["spec"] and "labels" not in theirs["metadata"]
