"""The clusternetworkpolicy backend's objects end to end against a real control plane (issue 14):
network-policy-api's own CRD (v0.3.0), our webhook registered over TLS and the controller, both
with --backend clusternetworkpolicy, under the shipped RBAC plus the component's, with tamper
protection as the component ships it. Cluster-scoped objects have no owner, so what matters most
here is clean-up without the garbage collector, and that nothing ever waits on the controller to
let a pod or namespace go. No dataplane here (the node tests check packets)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import describe_install
from tests.cluster.harness import ControlPlane, free_port, wait_for
from tests.support import (
    MODE_EXISTS,CLI, ControllerProcess, WebhookProcess, backend_audit, control_plane_binaries, generate_certs,
                           pod_events, policy_crds, session_pod)
from sortie_egress.admission.registration import mutating_configuration
from sortie_egress.protection.tamper import CLUSTER_NETWORK_POLICIES, admission_policies, backend_admission_policies

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent
COMPONENT = ROOT / "manifests" / "components" / "clusternetworkpolicy-backend"
GROUP, PLURAL = "policy.networking.k8s.io", "clusternetworkpolicies"
CRD = "clusternetworkpolicies.policy.networking.k8s.io"

POLICY = {"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8", "port": 22, "protocol": "TCP"}, {"cidr": "169.254.169.254"}]}
CANONICAL = ('{"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8", "port": 22, "protocol": "TCP"}, '
             '{"cidr": "169.254.169.254/32"}]}')
# What the controller must make of POLICY, written out by hand.
EGRESS = [
    {"name": "dns", "action": "Accept",
     "to": [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                      "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}}],
     "protocols": [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"number": 53}}}]},
    {"name": "denylist-1", "action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
     "protocols": [{"tcp": {"destinationPort": {"number": 22}}}]},
    {"name": "denylist-2", "action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]},
    {"name": "everything-else", "action": "Accept", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
]


def _custom(plane: ControlPlane) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(plane.admin.api_client())


def _read(plane: ControlPlane, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return json.loads(_custom(plane).get_cluster_custom_object(GROUP, "v1beta1", PLURAL, name, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _controller_args(plane: ControlPlane) -> list[str]:
    credentials = plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False)
    kubeconfig = plane.kubeconfig_for("sortie-egress-controller", credentials)
    return [CLI, "controller", "--kubeconfig", str(kubeconfig), "--backend", "clusternetworkpolicy", "--metrics-port", "0",
            "--no-leader-elect"]


def _apply_crd(plane: ControlPlane, path: Path) -> None:
    applied = plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    wait_for(lambda: plane.kubectl("get", PLURAL).returncode == 0, 30, "the CRD to be served")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(control_plane_binaries(), root=tmp_path_factory.mktemp("cnp-backend"), with_scheduler=False).start()
    for manifest in ("namespace.yaml", "rbac.yaml"):
        assert plane.kubectl("apply", "-f", str(ROOT / "manifests" / "base" / manifest)).returncode == 0
    assert plane.kubectl("apply", "-f", str(COMPONENT / "rbac.yaml")).returncode == 0
    yield plane
    plane.stop()


def test_the_controller_refuses_where_the_kind_is_not_served_or_cannot_hold_names(plane: ControlPlane) -> None:
    missing = subprocess.run(_controller_args(plane), capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and (
        "--backend clusternetworkpolicy writes ClusterNetworkPolicies (policy.networking.k8s.io v1beta1 or v1alpha2), "
        "which this cluster does not serve") in missing.stderr, missing.stderr[-700:]
    _apply_crd(plane, policy_crds() / "network-policy-api-v0.3.0-standard.yaml")
    try:
        standard = subprocess.run(_controller_args(plane), capture_output=True, text=True, timeout=60)
        assert standard.returncode != 0 and (
            "the cluster's ClusterNetworkPolicy v1beta1 cannot hold domainNames, which FQDN rules need (the standard "
            "channel's CRD?): install the experimental channel (ClusterNetworkPolicy in version \"v1beta1\" cannot be "
            "handled as a ClusterNetworkPolicy: strict decoding error: unknown field "
            "\"spec.egress[0].to[0].domainNames\")") in standard.stderr, standard.stderr[-700:]
    finally:
        assert plane.kubectl("delete", "crd", CRD, "--wait").returncode == 0


@pytest.fixture(scope="module")
def cnp_cluster(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    _apply_crd(plane, policy_crds() / "network-policy-api-v0.3.0-experimental.yaml")
    policies = admission_policies("sortie-system") + backend_admission_policies(CLUSTER_NETWORK_POLICIES, "sortie-system")
    applied = plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(policies))
    assert applied.returncode == 0, applied.stderr
    describe_install(plane, "clusternetworkpolicy")
    work = tmp_path_factory.mktemp("cnp-backend-processes")
    generate_certs(work / "certs")
    webhook = WebhookProcess(work / "certs", work / "webhook.log", extra_args=("--backend", "clusternetworkpolicy")).start()
    controller = None
    try:
        from kubernetes import client

        api = plane.admin.api_client()
        client.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(mutating_configuration(
            url=webhook.url, ca_bundle=base64.b64encode((work / "certs" / "ca.crt").read_bytes()).decode()))
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "team-b"}})
        wait_for(lambda: core.read_namespaced_service_account("default", "team-b"), 30, "the default ServiceAccount")
        probe = session_pod(policy=POLICY, namespace="team-b")
        wait_for(lambda: (core.create_namespaced_pod("team-b", probe, dry_run="All").metadata.labels or {})
                 .get("sortie.io/egress-mode") == "denylist", 30, "the webhook to be called")
        metrics_port = free_port()
        controller = ControllerProcess(Path(_controller_args(plane)[3]), work / "controller.log",
                                       extra_args=("--backend", "clusternetworkpolicy", "--no-leader-elect",
                                                   "--metrics-port", str(metrics_port))).start()
        yield {"core": core, "controller": controller, "work": work, "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        if controller is not None:
            controller.stop()
        webhook.stop()


def _released(core: Any, name: str) -> bool:
    gates = core.read_namespaced_pod(name, "team-b").spec.scheduling_gates or []
    return not any(gate.name == "sortie.io/egress-policy" for gate in gates)


def test_a_session_gets_an_admin_tier_policy_and_is_released(plane: ControlPlane, cnp_cluster: dict[str, Any]) -> None:
    core = cnp_cluster["core"]
    created = core.create_namespaced_pod("team-b", session_pod(name="desk-1", session_id="s-1", policy=POLICY,
                                                               namespace="team-b"))
    assert created.metadata.annotations["sortie.io/egress-policy"] == CANONICAL
    wait_for(lambda: _read(plane, "sortie-egress.team-b.s-1") is not None, 30, "the ClusterNetworkPolicy")
    policy = _read(plane, "sortie-egress.team-b.s-1")
    assert policy is not None
    assert policy["spec"] == {
        "tier": "Admin", "priority": 500,
        "subject": {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-b"}},
                             "podSelector": {"matchLabels": {"sortie.io/session-id": "s-1"}, "matchExpressions": MODE_EXISTS}}},
        "egress": EGRESS}
    assert policy["metadata"]["annotations"] == {
        "sortie.io/policy-digest": "sha256:" + hashlib.sha256(CANONICAL.encode()).hexdigest(),
        "sortie.io/session-pods": created.metadata.uid}
    assert policy["metadata"]["labels"]["sortie.io/session-namespace"] == "team-b"
    assert "ownerReferences" not in policy["metadata"] and "finalizers" not in policy["metadata"]
    wait_for(lambda: _released(core, "desk-1"), 30, "the gate to be released")
    assert json.loads(plane.kubectl("get", "networkpolicies", "-A", "-o", "json", check=True).stdout)["items"] == []
    code, rows, stderr = backend_audit(plane, "clusternetworkpolicy", "team-b")
    assert (code, rows["s-1"]) == (0, ("ok", "")) and "(backend: clusternetworkpolicy)" in stderr

    # A namespace admin has no say over a cluster-scoped object; someone granted edit rights on the
    # kind who is not the controller (nor listed) is refused by the admission policies.
    assert plane.kubectl("create", "clusterrole", "cnp-editor", "--verb", "get,list,update,patch,delete",
                         "--resource", CRD).returncode == 0
    assert plane.kubectl("create", "clusterrolebinding", "mallory-cnp", "--clusterrole", "cnp-editor",
                         "--user", "mallory").returncode == 0
    mallory = plane.kubeconfig_for("mallory", plane.credentials_for_user("mallory"))
    wait_for(lambda: plane.kubectl("auth", "can-i", "delete", CRD, kubeconfig=mallory).returncode == 0, 30, "RBAC")
    widen = plane.kubectl("patch", CRD, "sortie-egress.team-b.s-1", "--type", "json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/egress/1/action", "value": "Accept"}]), kubeconfig=mallory)
    assert widen.returncode != 0 and ("sortie-egress protects session ClusterNetworkPolicies: sortie-egress.team-b.s-1 is "
                                      "managed by sortie-egress and cannot be changed by mallory") in widen.stderr
    delete = plane.kubectl("delete", CRD, "sortie-egress.team-b.s-1", kubeconfig=mallory)
    assert delete.returncode != 0 and "cannot be deleted by mallory" in delete.stderr


def test_an_admin_policy_that_comes_first_and_widens_a_session_is_told(plane: ControlPlane,
                                                                     cnp_cluster: dict[str, Any]) -> None:
    """Issue 22: no NetworkPolicy can widen an Admin-tier session, another Admin-tier
    ClusterNetworkPolicy with a lower priority number can: an EgressWidened Event, `audit` widened;
    a NetworkPolicy that allows everything in the namespace is not told (it cannot widen it)."""
    core = cnp_cluster["core"]
    core.create_namespaced_pod("team-b", session_pod(name="desk-5", session_id="s-5", policy=POLICY, namespace="team-b"))
    wait_for(lambda: _released(core, "desk-5"), 30, "the gate to be released")
    allow_all = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "allow-all"},
                 "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}}
    assert plane.kubectl("apply", "-n", "team-b", "-f", "-", input=json.dumps(allow_all)).returncode == 0
    guard = {"apiVersion": f"{GROUP}/v1beta1", "kind": "ClusterNetworkPolicy", "metadata": {"name": "ops-ssh"},
             "spec": {"tier": "Admin", "priority": 100,
                      "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "team-b"}}},
                      "egress": [{"name": "let-ssh", "action": "Accept", "to": [{"networks": ["0.0.0.0/0"]}],
                                  "protocols": [{"tcp": {"destinationPort": {"number": 22}}}]}]}}
    try:
        assert plane.kubectl("apply", "-f", "-", input=json.dumps(guard)).returncode == 0

        told = wait_for(lambda: pod_events(core, "team-b", "desk-5", "EgressWidened"), 30, "the EgressWidened Event")
        assert [event.message for event in told] == [
            "ClusterNetworkPolicy ops-ssh: egress let-ssh (Accept) allows TCP 22 to 0.0.0.0/0; this pod can reach more "
            "than its egress policy allows"]
        code, rows, _ = backend_audit(plane, "clusternetworkpolicy", "team-b")
        assert (code, rows["s-5"]) == (1, ("widened", "ClusterNetworkPolicy ops-ssh: egress let-ssh (Accept) allows TCP 22 "
                                               "to 0.0.0.0/0"))
    finally:
        plane.kubectl("delete", "clusternetworkpolicy", "ops-ssh")
        plane.kubectl("delete", "networkpolicy", "allow-all", "-n", "team-b")


def test_clean_up_needs_no_garbage_collector_and_nothing_waits_on_the_controller(
        plane: ControlPlane, cnp_cluster: dict[str, Any]) -> None:
    core, controller = cnp_cluster["core"], cnp_cluster["controller"]
    core.create_namespaced_pod("team-b", session_pod(name="desk-2", session_id="s-2", policy=POLICY, namespace="team-b"))
    wait_for(lambda: _released(core, "desk-2"), 30, "the gate to be released")
    # With the controller running, the policy goes with the last pod.
    core.delete_namespaced_pod("desk-2", "team-b", grace_period_seconds=0)
    wait_for(lambda: _read(plane, "sortie-egress.team-b.s-2") is None, 30, "the controller to delete the policy")

    core.create_namespaced_pod("team-b", session_pod(name="desk-3", session_id="s-3", policy=POLICY, namespace="team-b"))
    wait_for(lambda: _released(core, "desk-3"), 30, "the gate to be released")
    controller.stop()
    try:
        # The pod goes at once with the controller down: nothing of ours holds it (no finalizer)...
        core.delete_namespaced_pod("desk-3", "team-b", grace_period_seconds=0)
        wait_for(lambda: not [p for p in core.list_namespaced_pod("team-b").items if p.metadata.name == "desk-3"], 30,
                 "the pod to be gone")
        # ...and its policy waits, selecting no pod (the garbage collector does not know it); audit says so.
        assert _read(plane, "sortie-egress.team-b.s-3") is not None
        code, rows, _ = backend_audit(plane, "clusternetworkpolicy", "team-b")
        assert code == 1 and rows["s-3"] == ("orphan", "ClusterNetworkPolicy sortie-egress.team-b.s-3 has no pod")
    finally:
        controller.start()
    wait_for(lambda: _read(plane, "sortie-egress.team-b.s-3") is None, 30,
             "the restarted controller to delete the orphan")


def test_the_backend_is_in_the_controllers_metrics(cnp_cluster: dict[str, Any]) -> None:
    import urllib.request

    with urllib.request.urlopen(cnp_cluster["metrics"], timeout=10) as reply:
        text = reply.read().decode()
    assert 'sortie_egress_backend_info{backend="clusternetworkpolicy"} 1.0' in text.splitlines()


def test_an_unmanaged_policy_with_the_sessions_name_is_adopted(plane: ControlPlane, cnp_cluster: dict[str, Any]) -> None:
    core = cnp_cluster["core"]
    squatter = {"apiVersion": f"{GROUP}/v1beta1", "kind": "ClusterNetworkPolicy", "metadata": {"name": "sortie-egress.team-b.s-4"},
                "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                         "egress": [{"action": "Accept", "to": [{"networks": ["0.0.0.0/0"]}]}]}}
    _custom(plane).create_cluster_custom_object(GROUP, "v1beta1", PLURAL, squatter)
    core.create_namespaced_pod("team-b", session_pod(name="desk-4", session_id="s-4", policy=POLICY, namespace="team-b"))

    def adopted() -> bool:
        policy = _read(plane, "sortie-egress.team-b.s-4") or {}
        return policy.get("spec", {}).get("egress") == EGRESS and policy["spec"]["subject"] != {"namespaces": {}}

    wait_for(adopted, 30, "the squatting policy to be replaced by the session's")
    wait_for(lambda: _released(core, "desk-4"), 30, "the gate to be released")


def test_an_uninstall_leaves_cluster_policies_that_the_documented_command_removes(
        plane: ControlPlane, cnp_cluster: dict[str, Any]) -> None:
    """Issue 21: nothing deletes a session's ClusterNetworkPolicy once the controller is gone (no owner,
    no garbage collector). While tamper protection is installed, nobody but the controller may; after
    the uninstall removes the admission policies, docs/operations.md's one command does. Last in this
    module: it uninstalls."""
    core, controller = cnp_cluster["core"], cnp_cluster["controller"]
    core.create_namespaced_pod("team-b", session_pod(name="desk-9", session_id="s-9", policy=POLICY, namespace="team-b"))
    wait_for(lambda: _released(core, "desk-9"), 30, "the gate to be released")
    controller.stop()
    core.delete_namespaced_pod("desk-9", "team-b", grace_period_seconds=0)
    command = ("delete", "clusternetworkpolicies", "-l", "app.kubernetes.io/managed-by=sortie-egress")
    refused = plane.kubectl(*command)
    assert refused.returncode != 0 and "cannot be deleted by sortie-test-admin" in refused.stderr, refused.stderr
    assert _read(plane, "sortie-egress.team-b.s-9") is not None
    # The uninstall (the kustomize order: bindings first, then the rest) takes tamper protection away...
    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        removed = plane.kubectl("delete", kind, "-l", "app.kubernetes.io/managed-by=sortie-egress")
        assert removed.returncode == 0, removed.stderr
    # ...and the documented command removes what is left (as soon as the API server has seen them go).
    wait_for(lambda: plane.kubectl(*command).returncode == 0 and _read(plane, "sortie-egress.team-b.s-9") is None,
             30, "the leftover ClusterNetworkPolicies to be deleted")
