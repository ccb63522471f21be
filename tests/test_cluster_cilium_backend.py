"""The cilium backend's objects end to end against a real control plane (issue 14): Cilium's own
CRD (v1.20.2), our webhook registered over TLS with --backend cilium, the controller under the
shipped RBAC plus the component's, tamper protection as the component ships it. No dataplane
here: what is checked is the objects, their owners, the gate and who may touch them (the node
tests check packets)."""

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
from tests.cluster.harness import ControlPlane, wait_for
from tests.support import (
    MODE_EXISTS,CLI, ControllerProcess, WebhookProcess, backend_audit, control_plane_binaries, generate_certs,
                           pod_events, policy_crds, session_pod)
from sortie_egress.admission.registration import mutating_configuration
from sortie_egress.protection.tamper import CILIUM_NETWORK_POLICIES, admission_policies, backend_admission_policies

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent
COMPONENT = ROOT / "manifests" / "components" / "cilium-backend"
GROUP, VERSION, PLURAL = "cilium.io", "v2", "ciliumnetworkpolicies"

POLICY = {"mode": "allowlist", "rules": [{"fqdn": "API.example.com.", "port": 443, "protocol": "tcp"},
                                         {"cidr": "10.20.0.0/16", "port": 5432}]}
CANONICAL = ('{"mode": "allowlist", "rules": [{"fqdn": "api.example.com", "port": 443, "protocol": "TCP"}, '
             '{"cidr": "10.20.0.0/16", "port": 5432}]}')
# What the controller must make of POLICY, written out by hand.
EGRESS = [
    {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}],
     "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}],
                  "rules": {"dns": [{"matchPattern": "*"}]}}]},
    {"toFQDNs": [{"matchName": "api.example.com"}], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
    {"toCIDRSet": [{"cidr": "10.20.0.0/16"}],
     "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}, {"port": "5432", "protocol": "UDP"}]}]},
]
# And its deny of the cluster's pods (no canary here): CoreDNS on every port but 53, every other pod.
_ALL_BUT_53 = [{"ports": [{"port": "1", "endPort": 52, "protocol": "TCP"}, {"port": "54", "endPort": 65535, "protocol": "TCP"},
                          {"port": "1", "endPort": 52, "protocol": "UDP"}, {"port": "54", "endPort": 65535, "protocol": "UDP"},
                          {"port": "0", "protocol": "SCTP"}]}]
EGRESS_DENY = [
    {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}],
     "toPorts": _ALL_BUT_53},
    {"toEndpoints": [{"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "NotIn", "values": ["kube-system"]}]},
                     {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system"},
                      "matchExpressions": [{"key": "k8s:k8s-app", "operator": "NotIn", "values": ["kube-dns"]}]}]},
]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(control_plane_binaries(), root=tmp_path_factory.mktemp("cilium-backend"), with_scheduler=False).start()
    yield plane
    plane.stop()


def _api(plane: ControlPlane) -> tuple[Any, Any]:
    from kubernetes import client

    api = plane.admin.api_client()
    return client.CoreV1Api(api), client.CustomObjectsApi(api)


def _read(custom: Any, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return json.loads(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                              _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _controller_kubeconfig(plane: ControlPlane) -> Path:
    credentials = plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False)
    return plane.kubeconfig_for("sortie-egress-controller", credentials)


def test_the_controller_refuses_the_cilium_backend_where_cilium_is_not_served(plane: ControlPlane) -> None:
    for manifest in ("namespace.yaml", "rbac.yaml"):
        assert plane.kubectl("apply", "-f", str(ROOT / "manifests" / "base" / manifest)).returncode == 0
    result = subprocess.run([CLI, "controller", "--kubeconfig", str(_controller_kubeconfig(plane)), "--backend", "cilium",
                             "--metrics-port", "0", "--no-leader-elect"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert ("--backend cilium writes CiliumNetworkPolicies (cilium.io/v2), which this cluster does not serve: install "
            "Cilium, or choose --backend networkpolicy") in result.stderr


@pytest.fixture(scope="module")
def cilium_cluster(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Cilium's CRD, the base and the component's RBAC and admission policies, our webhook with
    --backend cilium registered, and the controller with --backend cilium."""
    crd = policy_crds() / "cilium-v1.20.2-ciliumnetworkpolicies.yaml"
    assert plane.kubectl("apply", "--server-side", "-f", str(crd)).returncode == 0
    wait_for(lambda: plane.kubectl("get", "ciliumnetworkpolicies", "-A").returncode == 0, 30, "the CRD")
    for manifest in ("namespace.yaml", "rbac.yaml"):
        assert plane.kubectl("apply", "-f", str(ROOT / "manifests" / "base" / manifest)).returncode == 0
    assert plane.kubectl("apply", "-f", str(COMPONENT / "rbac.yaml")).returncode == 0
    policies = admission_policies("sortie-system") + backend_admission_policies(CILIUM_NETWORK_POLICIES, "sortie-system")
    applied = plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(policies))
    assert applied.returncode == 0, applied.stderr
    describe_install(plane, "cilium")
    work = tmp_path_factory.mktemp("cilium-backend-processes")
    ca_bundle = generate_certs(work / "certs")
    webhook = WebhookProcess(work / "certs", work / "webhook.log", extra_args=("--backend", "cilium")).start()
    controller = None
    try:
        core, _ = _api(plane)
        from kubernetes import client

        client.AdmissionregistrationV1Api(plane.admin.api_client()).create_mutating_webhook_configuration(
            mutating_configuration(url=webhook.url, ca_bundle=base64.b64encode((work / "certs" / "ca.crt").read_bytes()).decode()))
        assert ca_bundle
        core.create_namespace({"metadata": {"name": "team-a"}})
        wait_for(lambda: core.read_namespaced_service_account("default", "team-a"), 30, "the default ServiceAccount")
        probe = session_pod(policy=POLICY, namespace="team-a")
        wait_for(lambda: (core.create_namespaced_pod("team-a", probe, dry_run="All").metadata.labels or {})
                 .get("sortie.io/egress-mode") == "allowlist", 30, "the webhook to be called")
        controller = ControllerProcess(_controller_kubeconfig(plane), work / "controller.log",
                                       extra_args=("--backend", "cilium", "--no-leader-elect")).start()
        yield {"webhook": webhook, "controller": controller}
    finally:
        if controller is not None:
            controller.stop()
        webhook.stop()


def test_a_session_gets_its_cilium_policy_owned_by_its_pod_and_is_released(plane: ControlPlane,
                                                                             cilium_cluster: dict[str, Any]) -> None:
    core, custom = _api(plane)
    from kubernetes.client.exceptions import ApiException

    pod = core.create_namespaced_pod("team-a", session_pod(name="desk-1", session_id="s-1", policy=POLICY,
                                                           namespace="team-a"), _preload_content=False)
    created = json.loads(pod.data)
    assert created["metadata"]["annotations"]["sortie.io/egress-policy"] == CANONICAL
    wait_for(lambda: _read(custom, "team-a", "sortie-egress-s-1") is not None, 30, "the CiliumNetworkPolicy")
    policy = _read(custom, "team-a", "sortie-egress-s-1")
    assert policy is not None
    assert policy["spec"] == {"endpointSelector": {"matchLabels": {"sortie.io/session-id": "s-1"}, "matchExpressions": MODE_EXISTS}, "egress": EGRESS,
                              "egressDeny": EGRESS_DENY}
    assert policy["metadata"]["annotations"] == {
        "sortie.io/policy-digest": "sha256:" + hashlib.sha256(CANONICAL.encode()).hexdigest()}
    assert [(ref["kind"], ref["name"], ref["uid"], ref["controller"]) for ref in policy["metadata"]["ownerReferences"]] == [
        ("Pod", "desk-1", created["metadata"]["uid"], True)]

    def released() -> bool:
        gates = core.read_namespaced_pod("desk-1", "team-a").spec.scheduling_gates or []
        return not any(gate.name == "sortie.io/egress-policy" for gate in gates)

    wait_for(released, 30, "the gate to be released")
    networking = json.loads(plane.kubectl("get", "networkpolicies", "-n", "team-a", "-o", "json", check=True).stdout)
    assert networking["items"] == []  # the cilium backend writes no NetworkPolicy
    code, rows, stderr = backend_audit(plane, "cilium", "team-a")
    assert (code, rows["s-1"]) == (0, ("ok", "")) and "(backend: cilium)" in stderr

    # A namespace admin who is not the controller can neither widen nor delete it.
    assert plane.kubectl("create", "rolebinding", "mallory-admin", "-n", "team-a", "--clusterrole", "admin",
                         "--user", "mallory").returncode == 0
    plane.kubectl("create", "clusterrole", "cilium-editor", "--verb", "get,list,update,patch,delete",
                  "--resource", "ciliumnetworkpolicies.cilium.io")
    assert plane.kubectl("create", "rolebinding", "mallory-cilium", "-n", "team-a", "--clusterrole", "cilium-editor",
                         "--user", "mallory").returncode == 0
    mallory = plane.kubeconfig_for("mallory", plane.credentials_for_user("mallory"))
    wait_for(lambda: plane.kubectl("auth", "can-i", "delete", "ciliumnetworkpolicies.cilium.io", "-n", "team-a",
                                   kubeconfig=mallory).returncode == 0, 30, "mallory's RBAC")
    widen = plane.kubectl("patch", "ciliumnetworkpolicy", "sortie-egress-s-1", "-n", "team-a", "--type", "json", "-p",
                          json.dumps([{"op": "add", "path": "/spec/egress/-", "value": {"toCIDRSet": [{"cidr": "0.0.0.0/0"}]}}]),
                          kubeconfig=mallory)
    assert widen.returncode != 0 and "sortie-egress protects session CiliumNetworkPolicies: team-a/sortie-egress-s-1 is " \
                                     "managed by sortie-egress and cannot be changed by mallory" in widen.stderr
    delete = plane.kubectl("delete", "ciliumnetworkpolicy", "sortie-egress-s-1", "-n", "team-a", kubeconfig=mallory)
    assert delete.returncode != 0 and "cannot be deleted by mallory" in delete.stderr

    # The pod goes, and the policy with it (the controller retires an orphan; its owner reference
    # would let the garbage collector take it too).
    core.delete_namespaced_pod("desk-1", "team-a", grace_period_seconds=0)
    wait_for(lambda: _read(custom, "team-a", "sortie-egress-s-1") is None, 60,
             "the CiliumNetworkPolicy to go with its pod")
    with pytest.raises(ApiException):
        core.read_namespaced_pod("desk-1", "team-a")


def test_an_unmanaged_cilium_policy_with_the_sessions_name_is_adopted(plane: ControlPlane,
                                                                       cilium_cluster: dict[str, Any]) -> None:
    core, custom = _api(plane)
    squatter = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "sortie-egress-s-2", "namespace": "team-a"},
                "spec": {"endpointSelector": {"matchLabels": {"sortie.io/session-id": "s-2"}, "matchExpressions": MODE_EXISTS},
                         "egress": [{"toCIDRSet": [{"cidr": "0.0.0.0/0"}]}]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, "team-a", PLURAL, squatter)
    core.create_namespaced_pod("team-a", session_pod(name="desk-2", session_id="s-2", policy=POLICY, namespace="team-a"))

    def adopted() -> bool:
        policy = _read(custom, "team-a", "sortie-egress-s-2")
        return policy is not None and policy["spec"].get("egress") == EGRESS and \
            (policy["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "sortie-egress"

    wait_for(adopted, 30, "the squatting policy to be replaced by the session's")
    events = json.loads(plane.kubectl("get", "events", "-n", "team-a", "-o", "json", check=True).stdout)["items"]
    adopted_events = [event["message"] for event in events
                      if event["reason"] == "Adopted" and event["involvedObject"]["name"] == "desk-2"]
    assert len(adopted_events) == 1 and adopted_events[0].startswith("replaced CiliumNetworkPolicy sortie-egress-s-2 (uid ")


def test_drift_by_a_listed_operator_is_repaired(plane: ControlPlane, cilium_cluster: dict[str, Any]) -> None:
    core, custom = _api(plane)
    assert plane.kubectl("annotate", "--overwrite", "serviceaccount", "sortie-egress", "-n", "sortie-system",
                         "sortie.io/privileged-users=operator").returncode == 0
    operator = plane.kubeconfig_for("operator", plane.credentials_for_user("operator", ("system:masters",)))
    core.create_namespaced_pod("team-a", session_pod(name="desk-3", session_id="s-3", policy=POLICY, namespace="team-a"))
    wait_for(lambda: _read(custom, "team-a", "sortie-egress-s-3") is not None, 30, "the CiliumNetworkPolicy")
    widen = json.dumps([{"op": "add", "path": "/spec/egress/-", "value": {"toCIDRSet": [{"cidr": "0.0.0.0/0"}]}}])
    wait_for(lambda: plane.kubectl("patch", "ciliumnetworkpolicy", "sortie-egress-s-3", "-n", "team-a", "--type", "json",
                                   "-p", widen, kubeconfig=operator).returncode == 0, 30, "the operator's edit to be allowed")
    wait_for(lambda: (_read(custom, "team-a", "sortie-egress-s-3") or {}).get("spec", {}).get("egress") == EGRESS, 30,
             "the controller to repair the drift")


def test_a_cilium_policy_that_widens_a_session_is_told_and_left_alone(plane: ControlPlane,
                                                                      cilium_cluster: dict[str, Any]) -> None:
    """CONTRACT §4 on cilium (issue 22): an allowlist that names hosts is a union with every other
    allow, so a namespace admin's CiliumNetworkPolicy that selects the session widens it: an
    EgressWidened Event on the pod, `audit` says widened, and their object is not touched."""
    core, custom = _api(plane)
    core.create_namespaced_pod("team-a", session_pod(name="desk-4", session_id="s-4", policy=POLICY, namespace="team-a"))
    wait_for(lambda: _read(custom, "team-a", "sortie-egress-s-4") is not None, 30, "the CiliumNetworkPolicy")
    ssh_out = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "ssh-out", "namespace": "team-a"},
               "spec": {"endpointSelector": {"matchLabels": {"k8s:sortie.io/session-id": "s-4"}},
                        "egress": [{"toEntities": ["world"], "toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]}]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, "team-a", PLURAL, ssh_out)

    told = wait_for(lambda: pod_events(core, "team-a", "desk-4", "EgressWidened"), 30, "the EgressWidened Event")
    assert [event.message for event in told] == [
        "CiliumNetworkPolicy ssh-out: egress[0] allows TCP 22 to 0.0.0.0/0, ::/0; this pod can reach more than its "
        "egress policy allows"]
    code, rows, _ = backend_audit(plane, "cilium", "team-a")
    assert (code, rows["s-4"]) == (1, ("widened", "CiliumNetworkPolicy ssh-out: egress[0] allows TCP 22 to 0.0.0.0/0, ::/0"))
    theirs = _read(custom, "team-a", "ssh-out")
    assert theirs is not None and theirs["spec"] == ssh_out["spec"] and "labels" not in theirs["metadata"]


def test_fqdn_rules_are_refused_by_a_webhook_on_the_networkpolicy_backend(tmp_path: Path) -> None:
    """The same pod through `sortie-egress check` for each backend: what admission would answer."""
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(session_pod(policy=POLICY)))
    refused = subprocess.run([CLI, "check", "-f", str(manifest), "--backend", "networkpolicy"], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr == (
        "error: rules[0].fqdn: the networkpolicy backend cannot enforce DNS names; FQDN rules need the "
        "clusternetworkpolicy or cilium backend (the operator's --backend)\n")
    accepted = subprocess.run([CLI, "check", "-f", str(manifest), "--backend", "cilium"], capture_output=True, text=True)
    assert (accepted.returncode, accepted.stderr) == (0, "")
