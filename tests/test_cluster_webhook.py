"""Our webhook, registered in the real API server, called by it over real TLS."""

from __future__ import annotations

from typing import Any

import json
import subprocess

import pytest

from tests.cluster.harness import NODE_NAME, ControlPlane, wait_for
from tests.support import CLI, MODE_EXISTS, WebhookProcess, session_pod

pytestmark = pytest.mark.cluster

POLICY = {"mode": "allowlist", "rules": [
    {"cidr": "10.0.0.1/8", "port": 443, "protocol": "tcp"},
    {"cidr": "2001:db8::/32", "port": 8000, "end_port": 8100},
]}
CANONICAL = ('{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}, '
             '{"cidr": "2001:db8::/32", "end_port": 8100, "port": 8000}]}')


def _apply(plane: ControlPlane, manifest: dict, *flags: str) -> subprocess.CompletedProcess[str]:
    return plane.kubectl("apply", "-f", "-", "-o", "json", *flags, input=json.dumps(manifest))


def test_kubectl_apply_comes_back_mutated_with_warning(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                         namespace: str) -> None:
    pod = session_pod(policy=POLICY, namespace=namespace, gates=["example.com/other"])
    result = _apply(control_plane, pod)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)
    assert stored["metadata"]["labels"]["sortie.io/egress-mode"] == "allowlist"
    assert stored["metadata"]["annotations"]["sortie.io/egress-policy"] == CANONICAL
    assert [gate["name"] for gate in stored["spec"]["schedulingGates"]] == ["example.com/other", "sortie.io/egress-policy"]
    assert 'Warning: rules[0].cidr: "10.0.0.1/8" has host bits set; using 10.0.0.0/8' in result.stderr


def test_invalid_policy_is_refused_with_every_problem(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                       namespace: str) -> None:
    bad = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}, {"cidr": "10.0.0.300/8", "port": "443"}]}
    result = _apply(control_plane, session_pod(policy=bad, namespace=namespace))
    assert result.returncode != 0
    assert 'rules[1].cidr: "10.0.0.300/8" is not an IP network' in result.stderr
    assert 'rules[1].port: must be an integer, got "443"' in result.stderr
    assert "denied the request" in result.stderr
    listed = control_plane.kubectl("get", "pods", "-n", namespace, "-o", "name")
    assert listed.stdout.strip() == ""


def test_server_side_dry_run_is_mutated_and_stores_nothing(control_plane: ControlPlane,
                                                            registered_webhook: WebhookProcess, namespace: str) -> None:
    pod = session_pod(policy=POLICY, namespace=namespace)
    result = _apply(control_plane, pod, "--dry-run=server")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metadata"]["labels"]["sortie.io/egress-mode"] == "allowlist"
    listed = control_plane.kubectl("get", "pods", "-n", namespace, "-o", "name")
    assert listed.stdout.strip() == ""


def test_pod_without_policy_loses_a_lying_mode_label(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                      namespace: str) -> None:
    pod = session_pod(namespace=namespace, extra_labels={"sortie.io/egress-mode": "allowlist"})
    result = _apply(control_plane, pod)
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)
    assert "sortie.io/egress-mode" not in stored["metadata"]["labels"]
    assert not stored["spec"].get("schedulingGates")


def test_gated_pod_waits_then_is_bound_when_the_gate_goes(control_plane: ControlPlane,
                                                          registered_webhook: WebhookProcess, namespace: str) -> None:
    from kubernetes import client

    pod = session_pod(policy=POLICY, namespace=namespace)
    name = pod["metadata"]["name"]
    with control_plane.admin.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_pod(namespace, pod)

        def gated() -> bool:
            conditions = core.read_namespaced_pod(name, namespace).status.conditions or []
            return any(c.type == "PodScheduled" and c.reason == "SchedulingGated" for c in conditions)

        wait_for(gated, 30, "the scheduler to report the pod SchedulingGated")
        assert core.read_namespaced_pod(name, namespace).spec.node_name is None
        # Only the controller's identity may lift our gate (the admission policies refuse anyone else).
        controller = control_plane.credentials_for_service_account("sortie-system", "sortie-egress", create=False)
        with controller.api_client() as as_controller:
            client.CoreV1Api(as_controller).patch_namespaced_pod(
                name, namespace, [{"op": "remove", "path": "/spec/schedulingGates"}])
        bound = wait_for(lambda: core.read_namespaced_pod(name, namespace).spec.node_name, 30, "the pod to be bound")
        assert bound == NODE_NAME
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_review_cli_predicts_what_the_api_server_stores(control_plane: ControlPlane,
                                                         registered_webhook: WebhookProcess, namespace: str,
                                                         tmp_path) -> None:
    pod = session_pod(policy=POLICY, namespace=namespace, gates=["example.com/first"])
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps(pod))
    review = subprocess.run(
        [CLI, "review", "-f", str(manifest), "--url", f"{registered_webhook.url}/mutate",
         "--ca", str(registered_webhook.cert_dir / "ca.crt"), "-o", "json"],
        capture_output=True, text=True,
    )
    assert review.returncode == 0, review.stderr
    predicted = json.loads(review.stdout)
    # create, not apply: apply adds its own last-applied annotation.
    created = control_plane.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(pod))
    assert created.returncode == 0, created.stderr
    stored = json.loads(created.stdout)
    for key in ("labels", "annotations"):
        assert predicted["metadata"][key] == stored["metadata"][key]
    assert predicted["spec"]["schedulingGates"] == stored["spec"]["schedulingGates"]


def test_egress_annotation_cannot_change_after_creation(control_plane: ControlPlane,
                                                        registered_webhook: WebhookProcess, namespace: str) -> None:
    pod = session_pod(policy=POLICY, namespace=namespace)
    assert _apply(control_plane, pod).returncode == 0
    name = pod["metadata"]["name"]
    widened = json.dumps({"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0"}]})
    result = control_plane.kubectl("annotate", "pod", name, "-n", namespace, "--overwrite",
                                   f"sortie.io/egress-policy={widened}")
    assert result.returncode != 0
    assert "annotation sortie.io/egress-policy cannot change after creation" in result.stderr
    relabel = control_plane.kubectl("label", "pod", name, "-n", namespace, "--overwrite", "sortie.io/egress-mode=denylist")
    assert relabel.returncode != 0 and "label sortie.io/egress-mode cannot change" in relabel.stderr
    unrelated = control_plane.kubectl("label", "pod", name, "-n", namespace, "team=blue")
    assert unrelated.returncode == 0, unrelated.stderr


def test_managed_networkpolicy_is_protected_from_everyone_but_the_controller(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, namespace: str) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    managed = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "sortie-egress-abc", "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "sortie-egress"}},
        "spec": {"podSelector": {"matchLabels": {"sortie.io/session-id": "abc"}, "matchExpressions": MODE_EXISTS},
                 "policyTypes": ["Egress"]},
    }
    # Only the controller's identity may create one (granted RBAC on networkpolicies for this check).
    with control_plane.admin.api_client() as api:
        controller = control_plane.credentials_for_service_account("sortie-system", "sortie-egress")
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_namespaced_role(namespace, {"metadata": {"name": "np"}, "rules": [
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
             "verbs": ["get", "create", "update", "patch", "delete"]}]})
        rbac.create_namespaced_role_binding(namespace, {"metadata": {"name": "np"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "np"},
            "subjects": [{"kind": "ServiceAccount", "name": "sortie-egress", "namespace": "sortie-system"}]})
    forged = control_plane.kubectl("apply", "-f", "-", input=json.dumps(managed))
    assert forged.returncode != 0 and "cannot be created by sortie-test-admin" in forged.stderr

    def as_controller(call: str, *args: Any) -> bool:
        with controller.api_client() as api:
            try:
                getattr(client.NetworkingV1Api(api), call)(*args)
            except ApiException as exc:
                if exc.status == 403 and "RBAC" in (exc.body or ""):
                    return False  # the binding is not visible yet
                raise
        return True

    wait_for(lambda: as_controller("create_namespaced_network_policy", namespace, managed), 30, "the controller to create")
    # An admin may do anything RBAC allows, but not to our policies.
    deleted = control_plane.kubectl("delete", "networkpolicy", "sortie-egress-abc", "-n", namespace)
    assert deleted.returncode != 0
    assert "managed by sortie-egress and cannot be deleted by sortie-test-admin" in deleted.stderr
    # Not even the controller deletes a managed policy outright: only Kubernetes does. It retires
    # one first (takes its label off, an update it may make), and then it is no longer protected.
    with pytest.raises(ApiException) as refused:
        as_controller("delete_namespaced_network_policy", "sortie-egress-abc", namespace)
    assert refused.value.status == 403 and "it goes with the session's last pod" in refused.value.body
    assert as_controller("patch_namespaced_network_policy", "sortie-egress-abc", namespace,
                         {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}})
    assert as_controller("delete_namespaced_network_policy", "sortie-egress-abc", namespace)


def _exists(api, name: str) -> bool:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CoreV1Api(api).read_namespace(name)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


EDGE_POLICIES = [
    {"mode": "denylist", "rules": [{"cidr": "0.0.0.0/0"}, {"cidr": "2001:db8::/32"}]},
    {"mode": "denylist", "rules": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]},
    {"mode": "denylist", "rules": [{"cidr": "10.0.0.0/8"}, {"cidr": "10.1.0.0/16"}, {"cidr": "fd00::/8"}]},
    {"mode": "denylist", "rules": []},
    {"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0", "port": 443}]},
    {"mode": "allowlist", "rules": [{"cidr": "2001:db8::1", "port": 1, "end_port": 65535, "protocol": "SCTP"},
                                    {"cidr": "192.0.2.7/24", "protocol": "udp"}, {"cidr": "198.51.100.0/24", "port": 8443}]},
    {"mode": "allowlist", "rules": []},
]


@pytest.mark.parametrize("dns", ["cluster", "any", "169.254.20.10,fd00::53"])
@pytest.mark.parametrize("policy", EDGE_POLICIES, ids=[f"edge{i}" for i in range(len(EDGE_POLICIES))])
def test_the_real_api_server_accepts_what_render_prints(control_plane: ControlPlane, tmp_path, policy: dict, dns: str) -> None:
    """The schema cannot see NetworkPolicy validation rules (except inside cidr, ports); the API server can."""
    pod = session_pod(policy=policy, namespace="default")
    pod["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps(pod))
    rendered = subprocess.run([CLI, "render", "-f", str(manifest), "-o", "json", "--dns", dns], capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    # As an operator listed in the admission policies: only such users (and the controller) may make managed policies.
    operator = control_plane.kubeconfig_for("drift-maker", control_plane.credentials_for_user("drift-maker", ("system:masters",)))
    created = control_plane.kubectl("create", "--dry-run=server", "-f", "-", "-o", "json", input=rendered.stdout,
                                    kubeconfig=operator)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["spec"]["egress"] == json.loads(rendered.stdout)["spec"]["egress"]


def test_webhook_killed_under_load_refuses_never_admits_unmutated_and_recovers(
        control_plane: ControlPlane, registered_webhook: WebhookProcess) -> None:
    """failurePolicy Fail: while no replica is up, session pods are refused, never admitted as they came."""
    import threading
    import time

    from kubernetes import client

    results: list[tuple[float, str]] = []
    done = threading.Event()

    def load() -> None:
        with control_plane.admin.api_client() as api:
            core = client.CoreV1Api(api)
            while not done.is_set():
                pod = session_pod(policy=POLICY)
                try:
                    created = core.create_namespaced_pod("default", pod, dry_run="All", _request_timeout=15)
                    mutated = (created.metadata.labels or {}).get("sortie.io/egress-mode") == "allowlist"
                    results.append((time.monotonic(), "mutated" if mutated else "UNMUTATED"))
                except Exception:  # refused: what failurePolicy Fail promises
                    results.append((time.monotonic(), "refused"))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: sum(r == "mutated" for _, r in results) > 20, 30, "load before the kill")
        registered_webhook.process.kill()
        registered_webhook.process.wait(10)
        killed_at = time.monotonic()
        wait_for(lambda: any(r == "refused" and t > killed_at for t, r in results), 30, "refusals while down")
        time.sleep(2)  # the outage being simulated
        registered_webhook.start()  # same port, same certificates
        ready_at = time.monotonic()
        wait_for(lambda: sum(r == "mutated" and t > ready_at for t, r in results) > 20, 30, "load after the restart")
    finally:
        done.set()
        for worker in workers:
            worker.join(30)
    first_after = min(t for t, r in results if r == "mutated" and t > ready_at)
    print(f"webhook kill: {len(results)} admissions, {sum(r == 'refused' for _, r in results)} refused while down, "
          f"{sum(r == 'UNMUTATED' for _, r in results)} unmutated, recovered {first_after - ready_at:.2f} s after ready")
    assert not any(r == "UNMUTATED" for _, r in results)
    first_after = min(t for t, r in results if r == "mutated" and t > ready_at)
    assert first_after - ready_at <= 2.0, f"recovered {first_after - ready_at:.2f} s after the webhook was ready"
    refusals_after_recovery = [t for t, r in results if r == "refused" and t > first_after + 0.5]
    assert refusals_after_recovery == []
