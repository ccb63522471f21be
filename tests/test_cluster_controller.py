"""The controller against the real control plane, with the webhook registered and the shipped RBAC."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import NODE_NAME, ControlPlane, wait_for
from tests.support import MODE_EXISTS, ControllerProcess, WebhookProcess, session_pod
from sortie_egress.admission.registration import MUTATING_NAME, mutating_configuration
from sortie_egress.protection.tamper import admission_policies

pytestmark = pytest.mark.cluster

POLICY = {"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}
# What the controller must make of POLICY, written out by hand (CONTRACT §3).
CANONICAL = '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}'
KUBE_DNS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
             "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
DNS_RULE = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}], "to": KUBE_DNS}
POLICY_EGRESS = [DNS_RULE, {"ports": [{"protocol": "TCP", "port": 443}], "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]


@pytest.fixture
def controller(control_plane: ControlPlane, registered_webhook: WebhookProcess, controller_kubeconfig: Path,
               tmp_path: Path) -> Iterator[ControllerProcess]:
    process = ControllerProcess(controller_kubeconfig, tmp_path / "controller.log").start()
    yield process
    process.stop()


def _api(plane: ControlPlane) -> tuple[Any, Any, Any]:
    from kubernetes import client

    api = plane.admin.api_client()
    return api, client.CoreV1Api(api), client.NetworkingV1Api(api)


def _policy(networking: Any, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return json.loads(networking.read_namespaced_network_policy(name, namespace, _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _pod(core: Any, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(core.read_namespaced_pod(name, namespace, _preload_content=False).data)


def _gates(pod: dict[str, Any]) -> list[str]:
    return [gate["name"] for gate in pod["spec"].get("schedulingGates") or []]


def digest(canonical: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _converged(core: Any, networking: Any, namespace: str, name: str) -> dict[str, Any] | None:
    pod = _pod(core, namespace, name)
    policy = _policy(networking, namespace, "sortie-egress-" + pod["metadata"]["labels"]["sortie.io/session-id"])
    if policy is None or "sortie.io/egress-policy" in _gates(pod):
        return None
    return policy


def _assert_exactly_their_policies(core: Any, networking: Any, namespace: str, pods: list[dict[str, Any]]) -> list[Any]:
    """Wait until every one of ``pods`` is released, then: exactly their policies, nothing missing, nothing extra."""

    def all_released() -> bool:
        listed = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]
        return len(listed) == len(pods) and all("sortie.io/egress-policy" not in _gates(pod) for pod in listed)

    wait_for(all_released, 90, "every gate released", interval=0.5)
    policies = json.loads(networking.list_namespaced_network_policy(namespace, _preload_content=False).data)["items"]
    assert sorted(p["metadata"]["name"] for p in policies) == sorted(
        "sortie-egress-" + pod["metadata"]["labels"]["sortie.io/session-id"] for pod in pods)
    return policies


@contextlib.contextmanager
def webhook_unregistered(plane: ControlPlane, webhook: WebhookProcess, ca_bundle: str,
                         creation_policy: bool = False) -> Iterator[None]:
    """As before the product was installed: pods are created unmutated and ungated. The admission
    policy that checks the final pod at CREATE goes too (it would refuse them), unless
    ``creation_policy``: then the webhook alone is away, as in an outage of it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.protection.authorship import POD_CREATION_POLICY

    api, core, _ = _api(plane)
    admission = client.AdmissionregistrationV1Api(api)
    admission.delete_mutating_webhook_configuration(MUTATING_NAME)
    binding = next((doc for doc in admission_policies("sortie-system")
                    if doc["kind"] == "ValidatingAdmissionPolicyBinding" and doc["metadata"]["name"] == POD_CREATION_POLICY))
    if not creation_policy:
        try:
            admission.delete_validating_admission_policy_binding(POD_CREATION_POLICY)
        except ApiException as exc:
            if exc.status != 404:
                raise
    # The webhook takes our gate off a pod without a policy: it is out of the way once the gate stays.
    probe = session_pod(policy={"mode": ""}, gates=["sortie.io/egress-policy"])
    with_policy = session_pod(policy={"mode": "allowlist"})

    def out_of_the_way() -> bool:
        gates = core.create_namespaced_pod("default", probe, dry_run="All").spec.scheduling_gates or []
        if not gates:
            return False
        if creation_policy:
            return True
        return "sortie.io/egress-mode" not in (core.create_namespaced_pod("default", with_policy, dry_run="All")
                                              .metadata.labels or {})

    wait_for(out_of_the_way, 30, "the webhook to be out of the way")
    try:
        yield
    finally:
        if not creation_policy:
            try:
                admission.create_validating_admission_policy_binding(binding)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        admission.create_mutating_webhook_configuration(mutating_configuration(url=webhook.url, ca_bundle=ca_bundle))
        wait_for(lambda: (core.create_namespaced_pod("default", with_policy, dry_run="All").metadata.labels or {}).get(
            "sortie.io/egress-mode") == "allowlist", 30, "the webhook to be back")


def test_session_pod_gets_its_policy_then_is_released_and_bound(control_plane: ControlPlane, controller: ControllerProcess,
                                                                 namespace: str) -> None:
    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    name = pod["metadata"]["name"]
    core.create_namespaced_pod(namespace, pod)
    policy = wait_for(lambda: _converged(core, networking, namespace, name), 30, "policy and gate release")
    stored = _pod(core, namespace, name)
    session = pod["metadata"]["labels"]["sortie.io/session-id"]
    assert policy["spec"] == {"podSelector": {"matchLabels": {"sortie.io/session-id": session}, "matchExpressions": MODE_EXISTS},
                              "policyTypes": ["Egress"], "egress": POLICY_EGRESS}
    assert policy["metadata"]["labels"] == {"sortie.io/session-id": session, "sortie.io/app-id": "firefox",
                                            "sortie.io/egress-policy": "true", "app.kubernetes.io/managed-by": "sortie-egress"}
    assert policy["metadata"]["annotations"] == {"sortie.io/policy-digest": digest(CANONICAL)}
    owner = policy["metadata"]["ownerReferences"]
    assert owner == [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": stored["metadata"]["uid"],
                      "controller": True, "blockOwnerDeletion": True}]
    assert wait_for(lambda: _pod(core, namespace, name)["spec"].get("nodeName"), 30, "binding") == NODE_NAME

    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    wait_for(lambda: _policy(networking, namespace, policy["metadata"]["name"]) is None, 60, "GC of the policy")


def test_metrics_count_writes_and_sigterm_stops_cleanly(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                         controller_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    import urllib.request

    from tests.cluster.harness import free_port

    _, core, networking = _api(control_plane)
    port = free_port()
    process = ControllerProcess(controller_kubeconfig, tmp_path / "controller.log",
                                extra_args=("--metrics-port", str(port), "--namespace", namespace)).start()
    try:
        pod = session_pod(policy=POLICY, namespace=namespace)
        core.create_namespaced_pod(namespace, pod)
        wait_for(lambda: _converged(core, networking, namespace, pod["metadata"]["name"]), 30, "convergence")

        def scrape() -> str | None:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return text if "sortie_egress_managed_policies 1.0" in text else None

        text = wait_for(scrape, 10, "the managed-policy gauge")
        assert 'sortie_egress_api_writes_total{kind="create_policy"} 1.0' in text
        assert 'sortie_egress_api_writes_total{kind="release_gate"} 1.0' in text
        assert "sortie_egress_gate_release_seconds_count 1.0" in text
        assert "sortie_egress_leader 1.0" in text
    finally:
        code = process.stop()
    assert code == 0
    assert "controller stopped" in process.log_path.read_text()


def test_other_gates_stay(control_plane: ControlPlane, controller: ControllerProcess, namespace: str) -> None:
    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace, gates=["example.com/quota"])
    core.create_namespaced_pod(namespace, pod)
    name = pod["metadata"]["name"]
    wait_for(lambda: _converged(core, networking, namespace, name), 30, "gate release")
    assert _gates(_pod(core, namespace, name)) == ["example.com/quota"]


def test_edited_and_relabelled_policies_are_restored(control_plane: ControlPlane, controller: ControllerProcess,
                                                    namespace: str) -> None:
    from kubernetes import client

    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    core.create_namespaced_pod(namespace, pod)
    policy = wait_for(lambda: _converged(core, networking, namespace, pod["metadata"]["name"]), 30, "first policy")
    name = policy["metadata"]["name"]
    # An operator listed in the admission policies' privilegedUsers: the one kind of user who can make drift.
    drifter = client.NetworkingV1Api(control_plane.credentials_for_user("drift-maker", ("system:masters",)).api_client())
    drifter.patch_namespaced_network_policy(name, namespace, {"spec": {"egress": [{}]}})  # allow everything
    wait_for(lambda: _policy(networking, namespace, name)["spec"] == policy["spec"], 30, "the edit to be undone")
    # Taking our label off makes it someone else's policy with our name: adopted back.
    drifter.patch_namespaced_network_policy(name, namespace, {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}},
                                                              "spec": {"egress": [{}]}})

    def restored() -> bool:
        current = _policy(networking, namespace, name) or {}
        labels = current.get("metadata", {}).get("labels", {})
        return labels.get("app.kubernetes.io/managed-by") == "sortie-egress" and current["spec"] == policy["spec"]

    wait_for(restored, 30, "the policy to be adopted back")


def test_an_orphaned_managed_policy_is_retired_and_deleted(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                           controller_kubeconfig: Path, namespace: str,
                                                           tmp_path: Path) -> None:
    """Its pod deleted with --cascade=orphan (the garbage collector strips the owner reference and
    leaves it): nothing will collect it, so the controller does, by retiring it first."""
    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    name = "sortie-egress-" + pod["metadata"]["labels"]["sortie.io/session-id"]
    process = ControllerProcess(controller_kubeconfig, tmp_path / "first.log", ("--namespace", namespace)).start()
    try:
        core.create_namespaced_pod(namespace, pod)
        wait_for(lambda: _converged(core, networking, namespace, pod["metadata"]["name"]), 30, "the policy")
    finally:
        process.stop()
    orphaned = control_plane.kubectl("delete", "pod", pod["metadata"]["name"], "-n", namespace, "--cascade=orphan",
                                     "--grace-period=0", "--force")
    assert orphaned.returncode == 0, orphaned.stderr
    wait_for(lambda: not (_policy(networking, namespace, name) or {"metadata": {"ownerReferences": [1]}})["metadata"]
             .get("ownerReferences"), 30, "the owner reference to be stripped")
    assert _policy(networking, namespace, name)["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sortie-egress"
    process = ControllerProcess(controller_kubeconfig, tmp_path / "second.log", ("--namespace", namespace)).start()
    try:
        wait_for(lambda: _policy(networking, namespace, name) is None, 30, "the orphan to be deleted")
    finally:
        process.stop()


def test_backfill_and_fail_closed_for_pods_from_before(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                       webhook_certs: tuple[Path, str], controller_kubeconfig: Path,
                                                       namespace: str, tmp_path: Path) -> None:
    _, core, networking = _api(control_plane)
    good = session_pod(policy=POLICY, namespace=namespace)
    bad = session_pod(policy='{"mode": "allowlist", "rules": [{"cidr": "10.0.0.300/8"}]}', namespace=namespace)
    with webhook_unregistered(control_plane, registered_webhook, webhook_certs[1]):
        core.create_namespaced_pod(namespace, good)
        core.create_namespaced_pod(namespace, bad)
    assert "sortie.io/egress-mode" not in _pod(core, namespace, good["metadata"]["name"])["metadata"]["labels"]
    process = ControllerProcess(controller_kubeconfig, tmp_path / "controller.log").start()
    try:
        backfilled = wait_for(lambda: _policy(networking, namespace, "sortie-egress-" + good["metadata"]["labels"]["sortie.io/session-id"]),
                              30, "the backfilled policy")
        assert backfilled["spec"]["egress"] == POLICY_EGRESS
        closed = wait_for(lambda: _policy(networking, namespace, "sortie-egress-" + bad["metadata"]["labels"]["sortie.io/session-id"]),
                          30, "the fail-closed policy")
        assert closed["spec"]["egress"] == [DNS_RULE]
        assert closed["metadata"]["annotations"] == {"sortie.io/policy-digest": digest('{"mode": "allowlist", "rules": []}')}
        # Both now carry the mode label, added by the controller, so the baseline split holds for them.
        for pod, mode in ((good, "allowlist"), (bad, "allowlist")):
            wait_for(lambda pod=pod: _pod(core, namespace, pod["metadata"]["name"])["metadata"]["labels"].get(
                "sortie.io/egress-mode") == mode, 30, "the mode label")

        def warning_event() -> list[Any]:
            events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={bad['metadata']['name']}")
            return [e for e in events.items if e.type == "Warning" and e.reason == "InvalidEgressPolicy"]

        events = wait_for(warning_event, 30, "the Warning Event")
        assert '"10.0.0.300/8" is not an IP network' in events[0].message
    finally:
        process.stop()


def test_killed_in_a_burst_then_restarted_converges(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                    controller_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    _, core, networking = _api(control_plane)
    first = ControllerProcess(controller_kubeconfig, tmp_path / "first.log").start()
    pods = [session_pod(policy=POLICY, namespace=namespace) for _ in range(40)]
    for index, pod in enumerate(pods):
        core.create_namespaced_pod(namespace, pod)
        if index == 20:
            first.kill()
    second = ControllerProcess(controller_kubeconfig, tmp_path / "second.log").start()
    try:
        _assert_exactly_their_policies(core, networking, namespace, pods)
    finally:
        second.stop()


def test_two_controllers_one_leader_and_a_takeover(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                                   controller_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    import time

    from kubernetes import client

    api, core, networking = _api(control_plane)
    coordination = client.CoordinationV1Api(api)
    a = ControllerProcess(controller_kubeconfig, tmp_path / "a.log").start()
    b = ControllerProcess(controller_kubeconfig, tmp_path / "b.log").start()
    try:
        def holder() -> str:
            return coordination.read_namespaced_lease("sortie-egress-controller", "sortie-system").spec.holder_identity or ""

        leader_name = wait_for(holder, 30, "a leader")
        logs = {a: a.log_path, b: b.log_path}
        leaders = wait_for(lambda: [p for p, path in logs.items() if "became leader" in path.read_text()], 30, "a leader's log")
        assert len(leaders) == 1
        leader, follower = leaders[0], (b if leaders[0] is a else a)
        leader.kill()
        killed_at = time.monotonic()
        wait_for(lambda: "became leader" in follower.log_path.read_text(), 30, "the follower to take over")
        # What the algorithm guarantees (sortie_egress/controller/lease.py, as client-go): the leader's last
        # renewal came at most one 2 s retry period before the kill; the follower sees it at its next
        # poll (up to 2 s later), and takes over at its first poll after 15 s without a change (up to
        # 2 s more). So between 15 - 2 and 15 + 2 + 2 s after the kill, plus the log line's latency.
        # Sooner would be stealing a live lease; later, a follower not watching.
        took = time.monotonic() - killed_at
        assert 15 - 2 - 0.5 <= took <= 15 + 2 + 2 + 0.5, f"took over {took:.1f} s after the kill"
        assert holder() != leader_name
        pod = session_pod(policy=POLICY, namespace=namespace)
        core.create_namespaced_pod(namespace, pod)
        wait_for(lambda: _converged(core, networking, namespace, pod["metadata"]["name"]), 30, "the new leader to work")
    finally:
        a.stop()
        b.stop()


def _audit(plane: ControlPlane, kubeconfig: Path, namespace: str) -> tuple[int, dict[str, str]]:
    import subprocess

    from tests.support import CLI

    result = subprocess.run([CLI, "audit", "--kubeconfig", str(kubeconfig), "--namespace", namespace],
                            capture_output=True, text=True, timeout=60)
    states = {}
    for line in result.stdout.splitlines()[1:]:
        columns = line.split()
        states[columns[2]] = columns[3]
    return result.returncode, states


def test_audit_reports_missing_then_ok(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                       controller_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    session = pod["metadata"]["labels"]["sortie.io/session-id"]
    core.create_namespaced_pod(namespace, pod)
    code, states = _audit(control_plane, controller_kubeconfig, namespace)
    assert code == 1 and states == {session: "missing"}
    process = ControllerProcess(controller_kubeconfig, tmp_path / "controller.log").start()
    try:
        wait_for(lambda: _audit(control_plane, controller_kubeconfig, namespace) == (0, {session: "ok"}), 30,
                 "audit to be clean")
    finally:
        process.stop()


def test_audit_judges_with_the_installed_controllers_settings_from_its_lease(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, controller_kubeconfig: Path, namespace: str,
        tmp_path: Path) -> None:
    """Issue 24's trap: audit judged with its own flags, so an operator who did not repeat the
    controller's saw healthy sessions drifted. The leader publishes its settings on its Lease."""
    import subprocess

    from tests.support import CLI

    _, core, _ = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    session = pod["metadata"]["labels"]["sortie.io/session-id"]
    core.create_namespaced_pod(namespace, pod)
    process = ControllerProcess(controller_kubeconfig, tmp_path / "controller.log", extra_args=("--dns", "any")).start()
    try:
        from kubernetes import client

        coordination = client.CoordinationV1Api(control_plane.admin.api_client())

        def published() -> dict[str, Any] | None:
            from kubernetes.client.exceptions import ApiException

            try:
                lease = coordination.read_namespaced_lease("sortie-egress-controller", "sortie-system")
            except ApiException as exc:
                assert exc.status == 404, exc
                return None
            text = (lease.metadata.annotations or {}).get("sortie.io/controller-settings")
            settings = json.loads(text) if text else None
            return settings if settings and settings["dns"] == "any" else None

        settings = wait_for(published, 30, "the leader to publish its settings")
        assert settings == {"backend": "networkpolicy", "dns": "any", "canaryPort": 0, "clusterPolicyPriority": 500,
                            "enforcementWait": "required", "version": "0.1.0"}
        wait_for(lambda: _audit(control_plane, controller_kubeconfig, namespace) == (0, {session: "ok"}), 30,
                 "audit, given no flag, to judge with --dns any")
        told = subprocess.run([CLI, "audit", "--kubeconfig", str(controller_kubeconfig), "--namespace", namespace],
                              capture_output=True, text=True, timeout=60).stderr
        assert "judging with the installed controller's settings: --backend networkpolicy, --dns any, " in told, told
        # A flag is a question ("what if"): answered, with a warning that it is not what is installed.
        asked = subprocess.run([CLI, "audit", "--kubeconfig", str(controller_kubeconfig), "--namespace", namespace,
                                "--dns", "cluster"], capture_output=True, text=True, timeout=60)
        rows = {line.split()[2]: line.split()[3] for line in asked.stdout.splitlines()[1:]}
        assert asked.returncode == 1 and rows == {session: "drifted"}, asked.stdout
        assert "warning: --dns cluster differs from the installed controller's (any): judging with the flag" in asked.stderr
    finally:
        process.stop()


def _explain(plane: ControlPlane, *args: str, stdin: str | None = None, kubectl: bool = False) -> Any:
    """``sortie-egress explain``, or (``kubectl``) ``kubectl sortie explain`` as an operator types it:
    kubectl finds the plugin on PATH and hands it every argument."""
    import os
    import subprocess

    from tests.support import CLI

    command = [str(Path(CLI).parent / "kubectl"), "sortie"] if kubectl else [CLI]
    env = {**os.environ, "PATH": f"{Path(CLI).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([*command, "explain", "--kubeconfig", str(plane.kubeconfig_path), *args], input=stdin,
                          capture_output=True, text=True, timeout=60, env=env)


def test_explain_names_the_rule_that_decides_and_the_policy_that_widens(
        control_plane: ControlPlane, controller: ControllerProcess, namespace: str, tmp_path: Path) -> None:
    """Issue 24: ``explain`` on a real API server, with the installed controller's settings (its
    Lease), for a running session, a manifest not yet created, and what an operator gets wrong."""
    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    name, session = pod["metadata"]["name"], pod["metadata"]["labels"]["sortie.io/session-id"]
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: _converged(core, networking, namespace, name), 30, "the session's policy and release")
    own = f"NetworkPolicy {namespace}/sortie-egress-{session}"

    seen: dict[str, Any] = {}

    def table() -> tuple[int, list[str], str] | None:
        done = _explain(control_plane, name, "-n", namespace, "10.1.2.3:443", "10.1.2.3:80", "192.0.2.1:443/udp", kubectl=True)
        seen["last"] = (done.returncode, done.stdout.splitlines(), done.stderr)
        return seen["last"] if done.stdout.startswith(f"pod: {namespace}/{name}") and "state: ok" in done.stdout.split("\n")[0] else None

    try:
        code, lines, stderr = wait_for(table, 30, "explain to see the session ok")
    except TimeoutError:
        raise AssertionError(f"explain never said ok: {seen.get('last')}") from None
    assert code == 0, stderr
    assert "judging with the installed controller's settings: --backend networkpolicy" in stderr, stderr
    assert lines[0] == f"pod: {namespace}/{name}    dataplane: networkpolicy    backend: networkpolicy    state: ok", lines
    assert lines[1] == f"selected by: {own} (the session's own)", lines
    rows = [line.split(None, 2) for line in lines[lines.index("") + 1:]]
    assert rows == [["DESTINATION", "VERDICT", "DECIDED BY"],
                    ["10.1.2.3:443", "allowed", f"{own} egress[1] allows (the session's own)"],
                    ["10.1.2.3:80", "denied", f"{own} selects the pod (the session's own)"],
                    ["192.0.2.1:443/udp", "denied", f"{own} selects the pod (the session's own)"]], lines

    # A namespace admin's allow-all beside it: explain names it as what lets the packet out.
    networking.create_namespaced_network_policy(namespace, {
        "metadata": {"name": "allow-all-egress"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}})
    def widened() -> dict[str, Any] | None:
        done = _explain(control_plane, name, "-n", namespace, "10.1.2.3:80", "-o", "json")
        answer = json.loads(done.stdout) if done.returncode == 0 else {}
        return answer if (answer.get("state") or {}).get("state") == "widened" else None

    answer = wait_for(widened, 30, "explain to see it widened")
    assert answer["state"]["state"] == "widened" and answer["state"]["detail"].startswith("NetworkPolicy allow-all-egress: egress[0]")
    assert [(said["name"], said["rule"], said["effect"]) for said in answer["answers"][0]["packets"][0]["decidedBy"]] == [
        ("allow-all-egress", "egress[0]", "allows")]

    # A manifest not created yet: judged with the object the controller would make for it.
    manifest = session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "192.0.2.0/24", "port": 8443}]}, namespace=namespace)
    networking.delete_namespaced_network_policy("allow-all-egress", namespace)
    done = _explain(control_plane, "-f", "-", "192.0.2.7:8443", "192.0.2.7:443", "-o", "yaml", stdin=json.dumps(manifest))
    assert done.returncode == 0, done.stderr
    import yaml

    answer = yaml.safe_load(done.stdout)
    assert [a["verdict"] for a in answer["answers"]] == ["allowed", "denied"], done.stdout
    said = answer["answers"][0]["packets"][0]["decidedBy"][0]
    assert (said["name"], said["role"]) == (f"sortie-egress-{manifest['metadata']['labels']['sortie.io/session-id']}",
                                            "the session's own")

    # What an operator gets wrong: said in one line, nothing judged.
    refused = _explain(control_plane, "-f", "-", "192.0.2.7:443", stdin=json.dumps(
        session_pod(policy={"mode": "allowlist", "rule": []}, namespace=namespace)))
    assert refused.returncode == 1 and refused.stdout == "" and (
        "\nerror: admission would refuse this pod: rule: unknown field (a policy has: mode, rules)\n" in refused.stderr), refused.stderr
    missing = _explain(control_plane, "no-such-pod", "-n", namespace, "192.0.2.7:443")
    assert missing.returncode == 2 and f"sortie-egress: no pod {namespace}/no-such-pod" in missing.stderr, missing.stderr
    bad = _explain(control_plane, name, "-n", namespace, "192.0.2.0/24:443")
    assert bad.returncode == 2 and "one address, not a network" in bad.stderr and bad.stdout == "", bad.stderr
    absent = _explain(control_plane, name, "-n", namespace, "pod/ghost:80", "10.1.2.3:443")
    assert absent.returncode == 1 and [line.split()[:2] for line in absent.stdout.splitlines()[-2:]] == [
        ["pod/ghost:80", "error"], ["10.1.2.3:443", "allowed"]], absent.stdout


def test_run_serves_the_webhook_and_reconciles(control_plane: ControlPlane, registered_webhook: WebhookProcess,
                                               controller_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    import signal
    import subprocess
    import urllib.request

    from tests.cluster.harness import free_port
    from tests.support import CLI

    _, core, networking = _api(control_plane)
    port = free_port()
    certs = registered_webhook.cert_dir
    process = subprocess.Popen([CLI, "run", "--host", "127.0.0.1", "--port", str(port), "--tls-cert", str(certs / "tls.crt"),
                                "--tls-key", str(certs / "tls.key"), "--kubeconfig", str(controller_kubeconfig),
                                "--namespace", namespace], stdout=subprocess.DEVNULL, stderr=(tmp_path / "run.log").open("wb"))
    try:
        def healthy() -> bool:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=registered_webhook.context(), timeout=2) as reply:
                return reply.status == 200

        wait_for(healthy, 30, "run's webhook")
        pod = session_pod(policy=POLICY, namespace=namespace)
        core.create_namespaced_pod(namespace, pod)
        wait_for(lambda: _converged(core, networking, namespace, pod["metadata"]["name"]), 30, "run's controller")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode in (0, -signal.SIGTERM)


def test_api_server_restarted_mid_burst_converges_with_bounded_writes(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, controller_kubeconfig: Path,
        namespace: str, tmp_path: Path) -> None:
    import re
    import urllib.request

    from tests.cluster.harness import free_port

    port = free_port()
    process = ControllerProcess(controller_kubeconfig, tmp_path / "controller.log",
                                extra_args=("--metrics-port", str(port), "--namespace", namespace)).start()
    try:
        _, core, networking = _api(control_plane)
        pods = [session_pod(policy=POLICY, namespace=namespace) for _ in range(40)]
        for pod in pods[:20]:
            core.create_namespaced_pod(namespace, pod)
        control_plane.restart_apiserver(downtime=3)
        _, core, networking = _api(control_plane)  # fresh connections
        for pod in pods[20:]:
            wait_for(lambda pod=pod: core.create_namespaced_pod(namespace, pod), 30, "a create after the restart")

        policies = _assert_exactly_their_policies(core, networking, namespace, pods)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        writes = sum(float(v) for v in re.findall(r'^sortie_egress_api_writes_total\{[^}]*\} (\S+)$', text, re.M))
        print(f"api server restart: 40 sessions, {len(policies)} policies, {writes:.0f} writes")
        assert writes <= 2 * 40 + 10, f"{writes} writes for 40 sessions: retries are not bounded"
    finally:
        process.stop()
