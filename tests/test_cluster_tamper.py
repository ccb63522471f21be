"""Tamper protection (CONTRACT §5) against the real API server, tried as an attacker would.

The attacker is a namespace admin (a ServiceAccount bound to Kubernetes' own
``admin`` ClusterRole in the session's namespace: it may patch pods and edit
NetworkPolicies) and not our controller. Every attempt is made with our
webhook process *stopped* and its registration removed: the protection must
live in the API server's admission policies alone. Each
refusal is paired with an allowed change of the same kind by the same user,
so a refusal cannot come from RBAC or from the webhook being away.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import ControlPlane, wait_for
from tests.support import ControllerProcess, WebhookProcess, session_pod
from sortie_egress.protection.tamper import NETWORK_POLICIES_POLICY, PODS_POLICY, binding

pytestmark = pytest.mark.cluster

POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}
PROTECTED = "sortie-egress protects session"


def _api(plane: ControlPlane) -> tuple[Any, Any]:
    from kubernetes import client

    api = plane.admin.api_client()
    return client.CoreV1Api(api), client.NetworkingV1Api(api)


@pytest.fixture
def namespace_admin(control_plane: ControlPlane, namespace: str) -> tuple[Any, Any]:
    """Clients for a namespace admin of ``namespace`` who is not our controller."""
    from kubernetes import client

    with control_plane.admin.api_client() as api:
        client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(namespace, {
            "metadata": {"name": "tenant-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant-admin", "namespace": namespace}]})
    tenant = control_plane.credentials_for_service_account(namespace, "tenant-admin").api_client()
    return client.CoreV1Api(tenant), client.NetworkingV1Api(tenant)


@pytest.fixture
def session(control_plane: ControlPlane, registered_webhook: WebhookProcess, controller_kubeconfig: Path,
            namespace: str, tmp_path: Path) -> dict[str, Any]:
    """A session pod admitted, enforced and released by our controller, which is then stopped."""
    core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    name = pod["metadata"]["name"]
    policy_name = "sortie-egress-" + pod["metadata"]["labels"]["sortie.io/session-id"]
    controller = ControllerProcess(controller_kubeconfig, tmp_path / "controller.log", ("--namespace", namespace)).start()
    try:
        core.create_namespaced_pod(namespace, pod)

        def released() -> bool:
            stored = core.read_namespaced_pod(name, namespace)
            gated = any(g.name == "sortie.io/egress-policy" for g in stored.spec.scheduling_gates or [])
            return not gated and bool(networking.list_namespaced_network_policy(
                namespace, field_selector=f"metadata.name={policy_name}").items)

        wait_for(released, 30, "the session to be enforced and released")
    finally:
        controller.stop()
    return {"pod": name, "policy": policy_name}


@pytest.fixture
def webhook_stopped(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                    webhook_certs: tuple[Path, str]) -> Iterator[None]:
    """No webhook at all: its process stopped and its registration gone, so nothing the webhook
    does (not even its fail-closed refusal of an annotation rewrite) can stand in for the
    admission policies. Both are back afterwards."""
    from tests.test_cluster_controller import webhook_unregistered

    with webhook_unregistered(control_plane, registered_webhook, webhook_certs[1]):
        registered_webhook.stop()
        try:
            yield
        finally:
            registered_webhook.start()  # before the registration returns, which waits for it to answer


def _refused(call: Any, *args: Any, **kwargs: Any) -> str:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    assert caught.value.status == 403, caught.value.body
    body = json.loads(caught.value.body)
    assert PROTECTED in body["message"], body["message"]
    return body["message"]


def test_with_the_webhook_process_stopped_an_annotation_rewrite_is_refused_too(
        control_plane: ControlPlane, session: dict[str, Any], namespace_admin: tuple[Any, Any], namespace: str,
        registered_webhook: WebhookProcess) -> None:
    """Registered but down: the webhook's UPDATE path (it keeps a re-applied manifest's canonical
    text) fails closed, so the rewrite is refused before the admission policy even sees it."""
    from kubernetes.client.exceptions import ApiException

    pods, _ = namespace_admin
    registered_webhook.stop()
    try:
        with pytest.raises(ApiException) as caught:
            pods.patch_namespaced_pod(session["pod"], namespace, {"metadata": {"annotations": {
                "sortie.io/egress-policy": json.dumps({"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0"}]})}}})
        assert caught.value.status == 500 and 'failed calling webhook \\"pods.egress.sortie.io\\"' in caught.value.body
        # ...and an update that leaves the annotation alone never calls the webhook: it goes through.
        pods.patch_namespaced_pod(session["pod"], namespace, {"metadata": {"labels": {"team": "green"}}})
    finally:
        registered_webhook.start()


def test_a_namespace_admin_cannot_rewrite_a_session_pod_while_the_webhook_is_down(
        control_plane: ControlPlane, session: dict[str, Any], namespace_admin: tuple[Any, Any], namespace: str,
        webhook_stopped: None) -> None:
    pods, _ = namespace_admin
    name = session["pod"]
    wider = json.dumps({"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0"}]})
    message = _refused(pods.patch_namespaced_pod, name, namespace,
                       {"metadata": {"annotations": {"sortie.io/egress-policy": wider}}})
    assert "the annotation sortie.io/egress-policy cannot change after creation" in message
    _refused(pods.patch_namespaced_pod, name, namespace,
             {"metadata": {"annotations": {"sortie.io/egress-policy": None}}})
    message = _refused(pods.patch_namespaced_pod, name, namespace, {"metadata": {"labels": {"sortie.io/egress-mode": None}}})
    assert "the label sortie.io/egress-mode cannot change" in message
    _refused(pods.patch_namespaced_pod, name, namespace, {"metadata": {"labels": {"sortie.io/egress-mode": "denylist"}}})
    message = _refused(pods.patch_namespaced_pod, name, namespace, {"metadata": {"labels": {"sortie.io/session-id": "other"}}})
    assert "the label sortie.io/session-id cannot change" in message
    # The same user may change what is not the session's egress identity: the refusals are ours.
    patched = pods.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {"team": "blue"}}})
    assert patched.metadata.labels["team"] == "blue"


def test_only_the_controller_lifts_the_gate(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                            namespace_admin: tuple[Any, Any], namespace: str) -> None:
    core, _ = _api(control_plane)
    pods, _ = namespace_admin
    pod = session_pod(policy=POLICY, namespace=namespace, gates=["example.com/quota"])
    name = pod["metadata"]["name"]
    core.create_namespaced_pod(namespace, pod)  # no controller runs: it stays gated
    gates = [g.name for g in core.read_namespaced_pod(name, namespace).spec.scheduling_gates]
    assert gates == ["example.com/quota", "sortie.io/egress-policy"]
    message = _refused(pods.patch_namespaced_pod, name, namespace,
                       [{"op": "remove", "path": "/spec/schedulingGates/1"}])
    assert "only the sortie-egress controller removes the scheduling gate" in message
    pods.patch_namespaced_pod(name, namespace, [{"op": "remove", "path": "/spec/schedulingGates/0"}])  # not ours: fine


@pytest.mark.parametrize("attempt", ["edit", "delete", "relabel"])
def test_a_namespace_admin_cannot_touch_a_managed_policy_while_the_webhook_is_down(
        control_plane: ControlPlane, session: dict[str, Any], namespace_admin: tuple[Any, Any], namespace: str,
        webhook_stopped: None, attempt: str) -> None:
    _, policies = namespace_admin
    name = session["policy"]
    if attempt == "edit":
        message = _refused(policies.patch_namespaced_network_policy, name, namespace, {"spec": {"egress": [{}]}})
        assert f"{namespace}/{name} is managed by sortie-egress and cannot be changed by system:serviceaccount:" in message
    elif attempt == "delete":
        message = _refused(policies.delete_namespaced_network_policy, name, namespace)
        assert "cannot be deleted by system:serviceaccount:" in message and "it goes with the session's last pod" in message
    else:
        _refused(policies.patch_namespaced_network_policy, name, namespace,
                 {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}})
    # Their own policies are theirs to change.
    own = {"metadata": {"name": "tenant-own"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}
    policies.create_namespaced_network_policy(namespace, own)
    policies.delete_namespaced_network_policy("tenant-own", namespace)


def test_nobody_but_the_controller_creates_a_managed_policy(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                            namespace_admin: tuple[Any, Any], namespace: str) -> None:
    _, policies = namespace_admin
    forged = {"metadata": {"name": "looks-managed", "labels": {"app.kubernetes.io/managed-by": "sortie-egress"}},
              "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}}
    assert "cannot be created by" in _refused(policies.create_namespaced_network_policy, namespace, forged)


def test_garbage_collection_works_with_the_controller_stopped(control_plane: ControlPlane, session: dict[str, Any],
                                                              namespace: str, webhook_stopped: None) -> None:
    """The session fixture stopped the controller; the webhook is down too. Only Kubernetes acts."""
    core, networking = _api(control_plane)
    core.delete_namespaced_pod(session["pod"], namespace, grace_period_seconds=0)
    wait_for(lambda: not networking.list_namespaced_network_policy(
        namespace, field_selector=f"metadata.name={session['policy']}").items, 60, "the garbage collector")


def test_without_the_parameter_tampering_is_refused_and_garbage_collection_still_works(
        control_plane: ControlPlane, session: dict[str, Any], namespace_admin: tuple[Any, Any], namespace: str) -> None:
    """A careless operator deletes or renames the controller's ServiceAccount, the policies' parameter:
    fail closed, but never block the garbage collector. Deleting the shared account would end the
    other tests' tokens, so a second binding of the same policies, scoped to this namespace and
    naming an account that does not exist, stands for it: the API server treats both alike."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core, networking = _api(control_plane)
    admission = client.AdmissionregistrationV1Api(control_plane.admin.api_client())
    scoped = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    names = []
    for policy in (PODS_POLICY, NETWORK_POLICIES_POLICY):
        missing = binding(policy, "sortie-system", account="deleted-by-mistake")
        missing["metadata"]["name"] = f"{policy}-missing-parameter"
        missing["spec"]["matchResources"] = scoped
        admission.create_validating_admission_policy_binding(missing)
        names.append(missing["metadata"]["name"])
    try:
        pods, _ = namespace_admin

        def refused() -> bool:
            try:
                pods.patch_namespaced_pod(session["pod"], namespace, {"metadata": {"labels": {"team": "red"}}})
            except ApiException as exc:
                return exc.status == 422 and "no params found" in (exc.body or "")
            return False

        # A missing parameter denies every matched change (parameterNotFoundAction: Deny)...
        wait_for(refused, 30, "updates to be refused without the parameter")
        # ...but deletion is judged without parameters: the garbage collector still works.
        core.delete_namespaced_pod(session["pod"], namespace, grace_period_seconds=0)
        wait_for(lambda: not networking.list_namespaced_network_policy(
            namespace, field_selector=f"metadata.name={session['policy']}").items, 60, "the garbage collector")
    finally:
        for name in names:
            admission.delete_validating_admission_policy_binding(name)


