"""The trust boundary (CONTRACT §5, §7, issue 21) against the real API server, tried as the
attacker or careless operator would: creating or editing a session pod never gets anyone more
egress than they could grant themselves, and nothing walks around tamper protection.

Every refusal is paired with an allowed request of the same kind by the same identity (so the
refusal is ours, not RBAC's), and every expectation is written out here by hand.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import ControlPlane, wait_for
from tests.support import MODE_EXISTS, ControllerProcess, WebhookProcess, session_pod
from tests.test_cluster_tamper import _api, namespace_admin, session, webhook_stopped  # noqa: F401  (fixtures)

pytestmark = pytest.mark.cluster

POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}
OPEN_EVERYTHING = {"mode": "denylist", "rules": []}
WAIT = "sortie-egress-wait"
ROOT = Path(__file__).resolve().parent.parent


def _status_and_message(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    body = json.loads(caught.value.body)
    return caught.value.status, body["message"]


def _user(plane: ControlPlane, namespace: str, name: str, rules: list[dict[str, Any]]) -> Any:
    """A ServiceAccount of ``namespace`` with exactly ``rules`` there; its API client once RBAC has it."""
    from kubernetes import client

    with plane.admin.api_client() as api:
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
    api = plane.credentials_for_service_account(namespace, name).api_client()
    core = client.CoreV1Api(api)
    # The authorizer's cache takes a moment: wait until the first rule is in effect.
    wait_for(lambda: core.list_namespaced_pod(namespace) is not None, 30, f"{name}'s RBAC")
    return api


POD_RIGHTS = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create", "patch", "update"]}]


def _default_deny(plane: ControlPlane, namespace: str) -> None:
    _, networking = _api(plane)
    networking.create_namespaced_network_policy(namespace, {
        "metadata": {"name": "default-deny-egress"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}})


# --- §7: policy authors ----------------------------------------------------------------------


def test_a_pod_creator_without_policy_rights_cannot_open_a_default_deny_namespace(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, namespace: str) -> None:
    """Case 1 (confused deputy): pods rights only, a default-deny namespace, a policy that opens
    everything. Refused, the message names what to grant; after the grant, admitted."""
    from kubernetes import client

    _default_deny(control_plane, namespace)
    user = _user(control_plane, namespace, "pods-only", POD_RIGHTS)
    pods = client.CoreV1Api(user)
    for policy in (OPEN_EVERYTHING, {"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0"}]}):
        status, message = _status_and_message(pods.create_namespaced_pod, namespace,
                                              session_pod(policy=policy, namespace=namespace))
        assert status == 403, message
        assert (f"sortie-egress refused the session pod: system:serviceaccount:{namespace}:pods-only may not give "
                f"session pods egress in namespace {namespace} (networkpolicy backend): it needs create on "
                "networkpolicies.networking.k8s.io in that namespace, or create on sessionpolicies.egress.sortie.io "
                f"there; grant it with: kubectl create rolebinding sortie-egress-policy-author -n {namespace} "
                f"--clusterrole=sortie-egress:policy-author --serviceaccount={namespace}:pods-only") in message, message
    # The same user's session pod without a policy is not judged: it keeps the namespace's default-deny.
    pods.create_namespaced_pod(namespace, session_pod(namespace=namespace), dry_run="All")
    # The grant, exactly as the message spells it.
    granted = control_plane.kubectl("create", "rolebinding", "sortie-egress-policy-author", "-n", namespace,
                                    "--clusterrole=sortie-egress:policy-author", f"--serviceaccount={namespace}:pods-only")
    assert granted.returncode == 0, granted.stderr

    def admitted() -> bool:
        created = pods.create_namespaced_pod(namespace, session_pod(policy=OPEN_EVERYTHING, namespace=namespace),
                                             dry_run="All")
        return created.metadata.labels["sortie.io/egress-mode"] == "denylist"

    wait_for(admitted, 30, "the delegated permission to take effect")


def test_networkpolicy_create_rights_make_a_policy_author(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                          namespace: str) -> None:
    """Sortie's own case: its ServiceAccount may create NetworkPolicies in the namespace."""
    from kubernetes import client

    user = _user(control_plane, namespace, "broker", POD_RIGHTS + [
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["create"]}])
    created = client.CoreV1Api(user).create_namespaced_pod(namespace, session_pod(policy=POLICY, namespace=namespace))
    assert created.metadata.labels["sortie.io/egress-mode"] == "allowlist"
    assert [gate.name for gate in created.spec.scheduling_gates] == ["sortie.io/egress-policy"]


def _deployment(name: str, policy: dict[str, Any] | None) -> dict[str, Any]:
    template = session_pod(policy=policy, session_id=f"{name}-{uuid.uuid4().hex[:6]}")
    template["metadata"].pop("name")
    labels = {"app": name, **template["metadata"]["labels"]}
    template["metadata"]["labels"] = labels
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": template["metadata"], "spec": template["spec"]}}}


WORKLOAD_RIGHTS = POD_RIGHTS + [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "patch", "get"]}]


def test_a_workload_with_a_session_template_is_judged_for_its_author(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, namespace: str) -> None:
    """A Deployment whose template is a session pod with a policy: refused for a non-author; for an
    author, its ReplicaSet's pods (made by Kubernetes' controllers) are admitted and held."""
    from kubernetes import client

    apps = client.AppsV1Api(_user(control_plane, namespace, "deployer", WORKLOAD_RIGHTS))
    status, message = _status_and_message(apps.create_namespaced_deployment, namespace, _deployment("web", OPEN_EVERYTHING))
    assert status == 403 and "sortie-egress refused the workload (its pod template is a session pod with an egress " \
        f"policy): system:serviceaccount:{namespace}:deployer may not give session pods egress" in message, message
    apps.create_namespaced_deployment(namespace, _deployment("plain", None))  # no policy: not judged
    # Changing the template to carry a policy is authoring it too.
    status, message = _status_and_message(apps.patch_namespaced_deployment, "plain", namespace, {
        "spec": {"template": {"metadata": {"annotations": {"sortie.io/egress-policy": json.dumps(OPEN_EVERYTHING)}}}}})
    assert status == 403 and "may not give session pods egress" in message, message

    author = client.AppsV1Api(_user(control_plane, namespace, "author", WORKLOAD_RIGHTS + [
        {"apiGroups": ["egress.sortie.io"], "resources": ["sessionpolicies"], "verbs": ["create"]}]))
    author.create_namespaced_deployment(namespace, _deployment("authored", POLICY))
    core, _ = _api(control_plane)

    def held_pod() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="app=authored").items
        return pods[0] if pods else None

    pod = wait_for(held_pod, 60, "the ReplicaSet's pod (created by replicaset-controller, admitted)")
    assert pod.metadata.labels["sortie.io/egress-mode"] == "allowlist"
    assert [gate.name for gate in pod.spec.scheduling_gates] == ["sortie.io/egress-policy"]


# --- §5: the final pod at CREATE -------------------------------------------------------------


def test_with_failure_policy_ignore_and_the_webhook_down_a_session_pod_is_refused_not_run(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, namespace: str) -> None:
    """Case 7: failurePolicy Ignore (documented before as safe) with the webhook process stopped: the
    API server admits without our mutation, and the admission policy refuses the pod for lacking it."""
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(control_plane.admin.api_client())
    patch = [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]
    admission.patch_mutating_webhook_configuration("sortie-egress", patch)
    registered_webhook.stop()
    core, _ = _api(control_plane)
    try:
        status, message = _status_and_message(core.create_namespaced_pod, namespace,
                                              session_pod(policy=POLICY, namespace=namespace))
        assert status == 422, message
        assert "sortie-egress refused the session pod: it has an egress policy but reached the API server without " \
               "sortie-egress's admission" in message and "the label sortie.io/egress-mode is missing" in message, message
        assert core.list_namespaced_pod(namespace).items == []
        # A session pod without a policy is not ours to hold: admitted as it is.
        core.create_namespaced_pod(namespace, session_pod(policy={"mode": ""}, namespace=namespace), dry_run="All")
    finally:
        registered_webhook.start()
        admission.patch_mutating_webhook_configuration(
            "sortie-egress", [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"}])


@pytest.mark.parametrize(("spec", "expected"), [
    ({"hostNetwork": True}, "spec.hostNetwork is true"),
    ({"containers": [{"name": "app", "image": "registry.invalid/app:1",
                      "securityContext": {"capabilities": {"add": ["NET_RAW"]}}}]}, "adds NET_RAW"),
    # privileged: this API server, as most, runs without --allow-privileged and refuses it itself
    # before admission; tests/test_pod_shape.py has the webhook's answer.
])
def test_pods_a_policy_cannot_hold_are_refused_by_the_webhook_and_without_it(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, webhook_certs: tuple[Path, str], namespace: str,
        spec: dict[str, Any], expected: str) -> None:
    """Case 5: with the webhook (422, its message) and with no webhook at all (the admission policy)."""
    from tests.test_cluster_controller import webhook_unregistered

    core, _ = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    pod["spec"].update(spec)
    status, message = _status_and_message(core.create_namespaced_pod, namespace, pod, dry_run="All")
    assert status == 422 and "sortie-egress refused the session pod (sortie.io/egress-policy)" in message, message
    # Without our webhook, the pod even carries our label, gate and wait as a forger would write them.
    forged = json.loads(json.dumps(pod))
    forged["metadata"]["labels"]["sortie.io/egress-mode"] = "allowlist"
    forged["spec"]["schedulingGates"] = [{"name": "sortie.io/egress-policy"}]
    with webhook_unregistered(control_plane, registered_webhook, webhook_certs[1], creation_policy=True):
        status, message = _status_and_message(core.create_namespaced_pod, namespace, forged, dry_run="All")
    assert status == 422 and "sortie-egress refused the session pod: " in message and expected in message, message


@pytest.mark.parametrize(("module", "admitted"), [
    ("sortie_egress.wait", True),  # what the webhook injects
    ("webhook.wait", True),  # what the release before the rename injected: its pods keep being created
    ("webhook.waits", False),
    ("sortie_egress.wait.x", False),
])
def test_the_creation_policy_accepts_the_wait_under_both_names_for_one_release(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, webhook_certs: tuple[Path, str], namespace: str,
        module: str, admitted: bool) -> None:
    """Issue 23: during an upgrade a webhook of the release before still injects ``python -m
    webhook.wait``; the admission policy (and the image's shim, tests/test_packaging.py) take it,
    and nothing else that merely looks like it."""
    from sortie_egress.enforcement_wait.injection import EnforcementWait
    from tests.conftest import describe_install
    from tests.test_cluster_controller import webhook_unregistered

    wait = EnforcementWait("registry.invalid/sortie-egress:1", "sortie-egress-canary.sortie-system.svc")

    def pod_running(running: str) -> dict[str, Any]:
        pod = session_pod(policy=POLICY, namespace=namespace)
        pod["metadata"]["labels"]["sortie.io/egress-mode"] = "allowlist"
        pod["spec"]["schedulingGates"] = [{"name": "sortie.io/egress-policy"}]
        container = wait.container()
        container["command"] = ["python", "-m", running, *container["command"][3:]]
        pod["spec"]["initContainers"] = [container]
        pod["spec"]["volumes"] = [wait.volume()]
        return pod

    def refusal(running: str) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            core.create_namespaced_pod(namespace, pod_running(running), dry_run="All")
        except ApiException as exc:
            assert exc.status == 422, exc.body
            return str(json.loads(exc.body)["message"])
        return None

    core, _ = _api(control_plane)
    with webhook_unregistered(control_plane, registered_webhook, webhook_certs[1], creation_policy=True):
        describe_install(control_plane, wait=True)  # this install injects the wait: the policy requires it
        try:
            # The parameter is read: a wait running something else entirely is refused.
            wait_for(lambda: refusal("attacker.wait"), 30, "the creation policy to require the wait")
            message = refusal(module)
        finally:
            # Back as the other tests' webhook runs (no wait), before the webhook is registered again.
            describe_install(control_plane, wait=False)
            wait_for(lambda: refusal("attacker.wait") is None, 30, "the creation policy to read wait off again")
    if admitted:
        assert message is None, message
    else:
        assert message is not None and f"the init container {WAIT} is not first" in message, message


def _selector_text(selector: Any) -> str:
    """A stored LabelSelector as the API's label-selector query (matchLabels and Exists only)."""
    terms = [f"{key}={value}" for key, value in sorted((selector.match_labels or {}).items())]
    for expression in selector.match_expressions or []:
        assert expression.operator == "Exists", expression
        terms.append(expression.key)
    return ",".join(terms)


def test_a_pod_without_a_policy_joining_a_running_session_borrows_nothing(
        control_plane: ControlPlane, session: dict[str, Any], registered_webhook: WebhookProcess,
        webhook_certs: tuple[Path, str], controller_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    """Case 4: a user with pod rights only creates pods without a policy (no annotation, ``mode: ""``,
    and a forged mode label, which our webhook removes) that carry a running session's id. The
    session's NetworkPolicy, as the API server evaluates its selector, still selects the session's
    own pod alone; the controller tells the joiner (EgressPolicyMissing) and leaves the session's
    policy as it was. Forging the label without our webhook needs a policy author: refused."""
    from kubernetes import client

    from tests.test_cluster_controller import webhook_unregistered

    core, networking = _api(control_plane)
    session_id = core.read_namespaced_pod(session["pod"], namespace).metadata.labels["sortie.io/session-id"]
    before = networking.read_namespaced_network_policy(session["policy"], namespace)
    joiner = client.CoreV1Api(_user(control_plane, namespace, "joiner", POD_RIGHTS))
    joiners = [session_pod(name=f"joiner-{index}", session_id=session_id, namespace=namespace, policy=policy,
                           extra_labels=labels)
               for index, (policy, labels) in enumerate(((None, None), ({"mode": ""}, None),
                                                         (None, {"sortie.io/egress-mode": "allowlist"})))]
    for pod in joiners:
        created = joiner.create_namespaced_pod(namespace, pod)
        assert "sortie.io/egress-mode" not in (created.metadata.labels or {}), created.metadata.labels
        assert not created.spec.scheduling_gates
    selected = core.list_namespaced_pod(namespace, label_selector=_selector_text(before.spec.pod_selector)).items
    assert [pod.metadata.name for pod in selected] == [session["pod"]]
    controller = ControllerProcess(controller_kubeconfig, tmp_path / "controller-joining.log",
                                   ("--namespace", namespace)).start()
    try:
        def told(name: str) -> bool:
            events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
            return any(event.reason == "EgressPolicyMissing" and event.type == "Warning" for event in events)

        for pod in joiners:
            wait_for(lambda pod=pod: told(pod["metadata"]["name"]), 30, f"the EgressPolicyMissing Event on {pod['metadata']['name']}")
    finally:
        controller.stop()
    after = networking.read_namespaced_network_policy(session["policy"], namespace)
    assert after.metadata.resource_version == before.metadata.resource_version
    assert [owner.name for owner in after.metadata.owner_references] == [session["pod"]]
    # Without our webhook, a forged label counts as a policy: even with our gate and wait written in,
    # only a policy author may create it.
    from sortie_egress.enforcement_wait.injection import EnforcementWait

    wait = EnforcementWait("registry.invalid/sortie-egress:1", "sortie-egress-canary.sortie-system.svc")
    forged = session_pod(name="joiner-forged", session_id=session_id, namespace=namespace,
                         extra_labels={"sortie.io/egress-mode": "allowlist"}, gates=["sortie.io/egress-policy"])
    forged["spec"]["initContainers"], forged["spec"]["volumes"] = [wait.container()], [wait.volume()]
    with webhook_unregistered(control_plane, registered_webhook, webhook_certs[1], creation_policy=True):
        status, message = _status_and_message(joiner.create_namespaced_pod, namespace, forged)
    assert status == 403 and "may not give session pods egress" in message, message


# --- §5: every update path -------------------------------------------------------------------


def test_pods_status_cannot_strip_a_session_and_its_policy_stays(
        control_plane: ControlPlane, session: dict[str, Any], namespace: str, webhook_stopped: None) -> None:
    """Case 3: a tenant role with pods/status (custom roles with pods/* have it) strips the session id
    and the mode label through the status subresource: refused; the NetworkPolicy stays."""
    from kubernetes import client

    user = client.CoreV1Api(_user(control_plane, namespace, "status-writer", POD_RIGHTS + [
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get", "patch", "update"]}]))
    for label in ("sortie.io/session-id", "sortie.io/egress-mode"):
        status, message = _status_and_message(user.patch_namespaced_pod_status, session["pod"], namespace,
                                              {"metadata": {"labels": {label: None}}})
        assert status == 403 and f"the label {label} cannot change" in message, message
    # The same user's status patch that leaves them alone goes through.
    user.patch_namespaced_pod_status(session["pod"], namespace, {"metadata": {"labels": {"team": "green"}}})
    _, networking = _api(control_plane)
    assert networking.read_namespaced_network_policy(session["policy"], namespace).metadata.name == session["policy"]


def _pod_with_wait(plane: ControlPlane, namespace: str) -> str:
    """A session pod whose first init container is the wait (as a webhook run with --enforcement-canary
    puts it; protection goes by its name, so the container is written here as the webhook writes it)."""
    from sortie_egress.enforcement_wait.injection import EnforcementWait

    wait = EnforcementWait("registry.invalid/sortie-egress:1", "sortie-egress-canary.sortie-system.svc")
    pod = session_pod(policy=POLICY, namespace=namespace)
    pod["spec"]["initContainers"] = [wait.container()]
    pod["spec"]["volumes"] = [wait.volume()]
    core, _ = _api(plane)
    core.create_namespaced_pod(namespace, pod)
    return pod["metadata"]["name"]


def test_the_injected_wait_cannot_be_swapped(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                             namespace_admin: tuple[Any, Any], namespace: str) -> None:
    """Case 2: a namespace admin (built-in admin role) replaces the wait's image right after the create."""
    name = _pod_with_wait(control_plane, namespace)
    pods, _ = namespace_admin
    status, message = _status_and_message(pods.patch_namespaced_pod, name, namespace, {
        "spec": {"initContainers": [{"name": WAIT, "image": "registry.invalid/attacker:1"}]}})
    assert status == 403 and f"the init container {WAIT}" in message and "cannot change" in message, message
    # The app's own image may change (Kubernetes allows it; it is not ours to fix).
    pods.patch_namespaced_pod(name, namespace, {"spec": {"containers": [{"name": "app", "image": "registry.invalid/app:2"}]}})


def test_no_ephemeral_container_joins_a_session_pod_before_its_wait_succeeded(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, namespace: str) -> None:
    """Case 3 (kubectl debug): refused while the wait has not finished; a tenant cannot forge the
    wait's status; once the pod's node reports it terminated with exit 0, a debug container may join."""
    from kubernetes import client

    name = _pod_with_wait(control_plane, namespace)
    # A custom tenant role with pods/* (the built-in admin role cannot add ephemeral containers).
    pods = client.CoreV1Api(_user(control_plane, namespace, "debugger", POD_RIGHTS + [
        {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["get", "patch", "update"]}]))
    debug = {"spec": {"ephemeralContainers": [{"name": "debugger", "image": "registry.invalid/debug:1",
                                               "targetContainerName": "app"}]}}
    status, message = _status_and_message(pods.patch_namespaced_pod_ephemeralcontainers, name, namespace, debug)
    assert status == 403 and "no ephemeral container joins a session pod before sortie-egress-wait" in message, message
    finished = {"status": {"initContainerStatuses": [{
        "name": WAIT, "image": "registry.invalid/sortie-egress:1", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}
    status_writer = client.CoreV1Api(_user(control_plane, namespace, "status-forger", POD_RIGHTS + [
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]}]))
    status, message = _status_and_message(status_writer.patch_namespaced_pod_status, name, namespace, finished)
    assert status == 403 and "only the pod's node reports the status of sortie-egress-wait" in message, message
    node = client.CoreV1Api(control_plane.credentials_for_user("system:node:node-1", ("system:masters",)).api_client())
    node.patch_namespaced_pod_status(name, namespace, finished)
    pods.patch_namespaced_pod_ephemeralcontainers(name, namespace, debug)
    # ...but never one that could forge another pod's source address.
    raw = {"spec": {"ephemeralContainers": [
        {"name": "debugger", "image": "registry.invalid/debug:1", "targetContainerName": "app"},
        {"name": "raw", "image": "registry.invalid/debug:1", "securityContext": {"capabilities": {"add": ["NET_RAW"]}}}]}}
    status, message = _status_and_message(pods.patch_namespaced_pod_ephemeralcontainers, name, namespace, raw)
    assert status == 403 and "cannot be privileged or add NET_RAW/NET_ADMIN" in message, message


# --- §5: the controller narrowed -------------------------------------------------------------


@pytest.fixture
def controller_api(control_plane: ControlPlane, registered_webhook: WebhookProcess, controller_kubeconfig: Path) -> Any:
    """The controller's own token (its ServiceAccount, with the shipped RBAC: the base's, and the
    self-managed overlay's certificate rights, which hold the webhook configuration's patch)."""
    from kubernetes import config

    applied = control_plane.kubectl("apply", "-f", str(ROOT / "manifests" / "overlays" / "self-managed" /
                                                       "rbac-certificates.yaml"))
    assert applied.returncode == 0, applied.stderr
    api = config.new_client_from_config(str(controller_kubeconfig))
    from kubernetes import client

    wait_for(lambda: client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration("sortie-egress"), 30,
             "the controller's certificate RBAC")
    return api


def test_the_controllers_own_token_can_do_only_what_the_controller_does(
        control_plane: ControlPlane, controller_api: Any, namespace: str) -> None:
    """Case 6: with the controller's identity, an image change on a plain pod of another namespace,
    a webhook rule added, a NetworkPolicy of someone else's name, and one of our name selecting
    every pod: refused. Its real work (a gate lifted, a caBundle replaced) goes through."""
    from kubernetes import client

    core, _ = _api(control_plane)
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
             "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}
    core.create_namespaced_pod(namespace, plain)
    gated = session_pod(policy=POLICY, namespace=namespace)
    core.create_namespaced_pod(namespace, gated)
    as_controller = client.CoreV1Api(controller_api)
    status, message = _status_and_message(as_controller.patch_namespaced_pod, "plain", namespace, {
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/attacker:1"}]}})
    assert status == 403 and "sortie-egress narrows its controller" in message, message
    status, message = _status_and_message(as_controller.patch_namespaced_pod, gated["metadata"]["name"], namespace, {
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/attacker:1"}]}})
    assert status == 403 and "may only lift the scheduling gate" in message, message
    # What the controller does: lift the gate and add a missing label.
    as_controller.patch_namespaced_pod(gated["metadata"]["name"], namespace, [
        {"op": "test", "path": "/spec/schedulingGates/0/name", "value": "sortie.io/egress-policy"},
        {"op": "remove", "path": "/spec/schedulingGates/0"}])

    networking = client.NetworkingV1Api(controller_api)
    managed = {"app.kubernetes.io/managed-by": "sortie-egress"}
    # Someone else's name; ours selecting every pod; ours selecting the session's pods without a
    # policy too (they may carry any session's id).
    for name, selector in (("someone-elses", {"matchLabels": {"sortie.io/session-id": "x"}, "matchExpressions": MODE_EXISTS}),
                           ("sortie-egress-x", {}), ("sortie-egress-x", {"matchLabels": {"sortie.io/session-id": "x"}})):
        status, message = _status_and_message(networking.create_namespaced_network_policy, namespace, {
            "metadata": {"name": name, "labels": managed},
            "spec": {"podSelector": selector, "policyTypes": ["Egress"], "egress": [{}]}})
        assert status == 403 and "may only write the session policies it manages" in message, message
    networking.create_namespaced_network_policy(namespace, {
        "metadata": {"name": "sortie-egress-x", "labels": managed},
        "spec": {"podSelector": {"matchLabels": {"sortie.io/session-id": "x"}, "matchExpressions": MODE_EXISTS}, "policyTypes": ["Egress"]}}, dry_run="All")

    admission = client.AdmissionregistrationV1Api(controller_api)
    status, message = _status_and_message(admission.patch_mutating_webhook_configuration, "sortie-egress", [
        {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}])
    assert status == 403 and "may only update the caBundle" in message, message
    current = client.AdmissionregistrationV1Api(control_plane.admin.api_client()).read_mutating_webhook_configuration(
        "sortie-egress").webhooks[0].client_config.ca_bundle
    admission.patch_mutating_webhook_configuration("sortie-egress", [
        {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": current}], dry_run="All")


def test_the_controller_still_enforces_and_releases_under_its_narrowed_identity(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, controller_kubeconfig: Path, namespace: str,
        tmp_path: Path) -> None:
    """The narrowing lets the controller do all of its job: create, release, repair a deleted-by-GC... here
    the normal path and a squatter's adoption, under the shipped RBAC and policies."""
    core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    squatter = "sortie-egress-" + pod["metadata"]["labels"]["sortie.io/session-id"]
    networking.create_namespaced_network_policy(namespace, {"metadata": {"name": squatter},
                                                            "spec": {"podSelector": {}, "policyTypes": ["Egress"]}})
    controller = ControllerProcess(controller_kubeconfig, tmp_path / "controller.log", ("--namespace", namespace)).start()
    try:
        core.create_namespaced_pod(namespace, pod)

        def released() -> bool:
            stored = core.read_namespaced_pod(pod["metadata"]["name"], namespace)
            adopted = networking.read_namespaced_network_policy(squatter, namespace)
            return not stored.spec.scheduling_gates and (adopted.metadata.labels or {}).get(
                "app.kubernetes.io/managed-by") == "sortie-egress"

        wait_for(released, 30, "the session adopted, enforced and released")
    finally:
        controller.stop()
    assert "narrows its controller" not in (tmp_path / "controller.log").read_text()



def test_a_gated_session_pod_cannot_be_bound_through_pods_binding(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, namespace: str) -> None:
    """CONTRACT §5 names pods/binding: binding a pod to a node is what the scheduler does, and a pod
    our gate holds must not be bound around it. The API server itself refuses a binding of a pod with
    scheduling gates (even for a cluster admin), so nothing of ours is needed; this shows it."""
    from tests.cluster.harness import NODE_NAME

    core, _ = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    core.create_namespaced_pod(namespace, pod)
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod["metadata"]["name"]},
               "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME}}
    status, message = _status_and_message(core.create_namespaced_pod_binding, pod["metadata"]["name"], namespace, binding)
    assert status == 409 and "has non-empty .spec.schedulingGates" in message, (status, message)
    assert not core.read_namespaced_pod(pod["metadata"]["name"], namespace).spec.node_name
