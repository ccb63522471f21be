"""What a session pod can actually reach (CONTRACT §3-4), against the real control plane.

Each test is a way the union of NetworkPolicies selecting a session pod used to be
widened, or its policy lost: a policy squatting on our name, a session with two pods,
a refused Event, a fail-closed pod under the shipped baseline, another policy in the
namespace, a pod whose policy is changed behind admission's back, a re-applied
manifest. Expected NetworkPolicies are written out by hand.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.harness import ControlPlane, free_port, wait_for
from tests.conftest import install_admission_policies
from tests.netpol_eval import Packet, egress_allows
from tests.support import CLI, MODE_EXISTS, ControllerProcess, WebhookProcess, pod_events, session_pod
from tests.test_cluster_controller import (
    DNS_RULE,
    POLICY,
    POLICY_EGRESS,
    _api,
    _converged,
    _gates,
    _pod,
    _policy,
    digest,
    webhook_unregistered,
)
from sortie_egress.protection.tamper import PODS_POLICY

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent
CANONICAL = '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443, "protocol": "TCP"}]}'
WIDE = {"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0"}]}
# What Sortie's own Helm chart installs by default next to its sessions.
SORTIE_SESSION_ISOLATION = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "sortie-session-isolation"},
    "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "session"}}, "policyTypes": ["Egress"],
             "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                         "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]}]},
}


class Controller:
    """The controller under its shipped RBAC, with its metrics endpoint, for one namespace."""

    def __init__(self, kubeconfig: Path, log: Path, namespace: str) -> None:
        self.port = free_port()
        self.process = ControllerProcess(kubeconfig, log, ("--metrics-port", str(self.port), "--namespace", namespace))

    def __enter__(self) -> Controller:
        self.process.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.process.stop()

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0


@pytest.fixture
def controller(control_plane: ControlPlane, registered_webhook: WebhookProcess, controller_kubeconfig: Path,
               namespace: str, tmp_path: Path) -> Iterator[Controller]:
    with Controller(controller_kubeconfig, tmp_path / "controller.log", namespace) as running:
        yield running


def _session(pod: dict[str, Any]) -> str:
    return pod["metadata"]["labels"]["sortie.io/session-id"]


def _owners(policy: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(ref["name"], ref.get("controller", False)) for ref in policy["metadata"].get("ownerReferences") or []]


# --- the name is ours -------------------------------------------------------------------

def test_a_policy_squatting_on_the_session_name_is_adopted(control_plane: ControlPlane, controller: Controller,
                                                           namespace: str) -> None:
    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    name = "sortie-egress-" + _session(pod)
    # As the original Sortie does for apps with an egress policy: our name, not our label, allow-all.
    networking.create_namespaced_network_policy(namespace, {
        "metadata": {"name": name, "labels": {"sortie.io/egress-policy": "true", "sortie.io/session-id": _session(pod)}},
        "spec": {"podSelector": {"matchLabels": {"sortie.io/session-id": _session(pod)}, "matchExpressions": MODE_EXISTS}, "policyTypes": ["Egress"],
                 "egress": [{}]}})
    core.create_namespaced_pod(namespace, pod)
    adopted = wait_for(lambda: _converged(core, networking, namespace, pod["metadata"]["name"]), 30, "adoption")
    assert adopted["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sortie-egress"
    assert adopted["spec"]["egress"] == POLICY_EGRESS
    assert adopted["metadata"]["annotations"] == {"sortie.io/policy-digest": digest(CANONICAL)}
    events = wait_for(lambda: pod_events(core, namespace, pod["metadata"]["name"], "Adopted"), 30, "the Adopted Event")
    assert events[0].type == "Normal" and f"replaced NetworkPolicy {name} (uid " in events[0].message


# --- sessions with several pods -----------------------------------------------------------

def test_a_two_pod_session_keeps_its_policy_while_the_older_pod_goes(control_plane: ControlPlane, controller: Controller,
                                                                     namespace: str) -> None:
    _, core, networking = _api(control_plane)
    older = session_pod(name="older", policy=POLICY, namespace=namespace)
    younger = session_pod(name="younger", session_id=_session(older), policy=POLICY, namespace=namespace)
    name = "sortie-egress-" + _session(older)
    core.create_namespaced_pod(namespace, older)
    wait_for(lambda: _converged(core, networking, namespace, "older"), 30, "the first pod")
    # creationTimestamp has one-second resolution: wait for the clock to pass it, so "older" is older (not a uid tie).
    created = _pod(core, namespace, "older")["metadata"]["creationTimestamp"]
    wait_for(lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > created, 5, "the next second")
    core.create_namespaced_pod(namespace, younger)
    policy = wait_for(lambda: _converged(core, networking, namespace, "younger")
                      if _owners(_policy(networking, namespace, name)) == [("older", True), ("younger", False)] else None,
                      30, "both pods released and owning the policy")
    assert policy["spec"]["egress"] == POLICY_EGRESS

    bad_polls: list[str] = []
    polls = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal polls
        _, _, watcher = _api(control_plane)
        while not stop.is_set():
            current = _policy(watcher, namespace, name)
            polls += 1
            if current is None or current["spec"]["egress"] != POLICY_EGRESS:
                bad_polls.append("missing" if current is None else "changed")
            stop.wait(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        core.delete_namespaced_pod("older", namespace, grace_period_seconds=0)
        wait_for(lambda: _owners(_policy(networking, namespace, name) or {"metadata": {}}) == [("younger", True)],
                 30, "the younger pod to own the policy alone")
        wait_for(lambda: polls > 40, 10, "a few more polls after the handover")
    finally:
        stop.set()
        poller.join()
    assert bad_polls == [], f"{len(bad_polls)} of {polls} polls saw the policy {set(bad_polls)}"
    core.delete_namespaced_pod("younger", namespace, grace_period_seconds=0)
    wait_for(lambda: _policy(networking, namespace, name) is None, 60, "the garbage collector after the last pod")


def test_a_pod_with_another_policy_stays_gated(control_plane: ControlPlane, controller: Controller, namespace: str) -> None:
    _, core, networking = _api(control_plane)
    first = session_pod(name="first", policy=POLICY, namespace=namespace)
    other = session_pod(name="other", session_id=_session(first), policy=WIDE, namespace=namespace)
    core.create_namespaced_pod(namespace, first)
    wait_for(lambda: _converged(core, networking, namespace, "first"), 30, "the first pod")
    core.create_namespaced_pod(namespace, other)
    events = wait_for(lambda: pod_events(core, namespace, "other", "EgressPolicyMismatch"), 30, "the mismatch Event")
    assert events[0].type == "Warning" and "this pod stays gated" in events[0].message
    assert "sortie.io/egress-policy" in _gates(_pod(core, namespace, "other"))
    policy = _policy(networking, namespace, "sortie-egress-" + _session(first))
    assert policy["spec"]["egress"] == POLICY_EGRESS and _owners(policy) == [("first", True)]


# --- fail closed first, tell afterwards -------------------------------------------------------

@pytest.fixture
def events_refused(control_plane: ControlPlane, namespace: str) -> Iterator[None]:
    """The API server refuses every Event in ``namespace`` (an admission policy of the test's own)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    admission = client.AdmissionregistrationV1Api(control_plane.admin.api_client())
    name = f"test-no-events-{namespace}"
    admission.create_validating_admission_policy({
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["", "events.k8s.io"], "apiVersions": ["*"],
                                                         "operations": ["CREATE"], "resources": ["events"]}]},
                 "validations": [{"expression": "false", "message": "no Events here (test)"}]}})
    admission.create_validating_admission_policy_binding({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}})
    core = client.CoreV1Api(control_plane.admin.api_client())

    def refused() -> bool:
        try:
            core.create_namespaced_event(namespace, {"metadata": {"generateName": "probe."},
                                                     "involvedObject": {"kind": "Pod", "name": "x", "namespace": namespace},
                                                     "reason": "Probe", "message": "probe"})
        except ApiException as exc:
            return "no Events here" in (exc.body or "")
        return False

    wait_for(refused, 30, "Events to be refused")
    try:
        yield
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)


def test_the_fail_closed_policy_is_written_although_the_event_is_refused(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, webhook_certs: tuple[Path, str],
        controller_kubeconfig: Path, namespace: str, events_refused: None, tmp_path: Path) -> None:
    _, core, networking = _api(control_plane)
    bad = session_pod(policy='{"mode": "allowlist", "rules": [{"cidr": "10.0.0.300/8"}]}', namespace=namespace)
    with webhook_unregistered(control_plane, registered_webhook, webhook_certs[1]):
        core.create_namespaced_pod(namespace, bad)  # as if created while the webhook was not installed
    with Controller(controller_kubeconfig, tmp_path / "controller.log", namespace) as controller:
        closed = wait_for(lambda: _policy(networking, namespace, "sortie-egress-" + _session(bad)), 30, "the policy")
        assert closed["spec"]["egress"] == [DNS_RULE]
        wait_for(lambda: controller.metric("sortie_egress_events_failed_total") >= 1, 30, "the refused Event to be counted")
    assert pod_events(core, namespace, bad["metadata"]["name"], "InvalidEgressPolicy") == []


def _select(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    """NetworkPolicy pod selection, written here independently of sortie_egress/effective/networkpolicy.py."""
    selector = policy["spec"].get("podSelector") or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        present = expression["key"] in labels
        value = labels.get(expression["key"])
        ok = {"Exists": present, "DoesNotExist": not present,
              "In": present and value in expression.get("values", []),
              "NotIn": not present or value not in expression.get("values", [])}[expression["operator"]]
        if not ok:
            return False
    return True


def _reachable(networking: Any, core: Any, namespace: str, pod_name: str) -> dict[str, bool]:
    """For a few external destinations: does any egress policy selecting the pod allow it?"""
    labels = _pod(core, namespace, pod_name)["metadata"]["labels"]
    policies = json.loads(networking.list_namespaced_network_policy(namespace, _preload_content=False).data)["items"]
    selecting = [p for p in policies if "Egress" in p["spec"].get("policyTypes", []) and _select(p, labels)]
    probes = {"tcp/443 93.184.216.34": Packet(ipaddress.ip_address("93.184.216.34"), 443, "TCP"),
              "tcp/80 93.184.216.34": Packet(ipaddress.ip_address("93.184.216.34"), 80, "TCP"),
              "udp/53 8.8.8.8": Packet(ipaddress.ip_address("8.8.8.8"), 53, "UDP")}
    return {what: any(egress_allows(policy, packet) for policy in selecting) for what, packet in probes.items()}


def test_a_fail_closed_pod_under_the_shipped_baseline_reaches_no_external_address(
        control_plane: ControlPlane, registered_webhook: WebhookProcess, webhook_certs: tuple[Path, str],
        controller_kubeconfig: Path, namespace: str, tmp_path: Path) -> None:
    _, core, networking = _api(control_plane)
    rendered = subprocess.run([str(Path(CLI).parent / "kubectl"), "kustomize", str(ROOT / "manifests" / "examples" /
                                                                                    "session-namespace")],
                              capture_output=True, text=True, check=True).stdout
    baseline = [dict(doc, metadata={**doc["metadata"], "namespace": namespace}) for doc in yaml.safe_load_all(rendered)]
    applied = control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(baseline))
    assert applied.returncode == 0, applied.stderr
    bad = session_pod(policy='{"mode": "allowlist", "rules": [{"cidr": "10.0.0.300/8"}]}', namespace=namespace)
    with webhook_unregistered(control_plane, registered_webhook, webhook_certs[1]):
        core.create_namespaced_pod(namespace, bad)
    # Without the mode label, the shipped default (DNS + HTTP/HTTPS anywhere) selects it:
    assert _reachable(networking, core, namespace, bad["metadata"]["name"]) == {
        "tcp/443 93.184.216.34": True, "tcp/80 93.184.216.34": True, "udp/53 8.8.8.8": True}
    with Controller(controller_kubeconfig, tmp_path / "controller.log", namespace):
        wait_for(lambda: _pod(core, namespace, bad["metadata"]["name"])["metadata"]["labels"].get(
            "sortie.io/egress-mode") == "allowlist", 30, "the controller to add the mode label")
        wait_for(lambda: _policy(networking, namespace, "sortie-egress-" + _session(bad)), 30, "the DNS-only policy")
        assert _reachable(networking, core, namespace, bad["metadata"]["name"]) == {
            "tcp/443 93.184.216.34": False, "tcp/80 93.184.216.34": False, "udp/53 8.8.8.8": False}


# --- effective egress --------------------------------------------------------------------------

def _audit(kubeconfig: Path, namespace: str) -> tuple[int, dict[str, tuple[str, str]]]:
    result = subprocess.run([CLI, "audit", "--kubeconfig", str(kubeconfig), "--namespace", namespace],
                            capture_output=True, text=True, timeout=60)
    rows = {}
    for line in result.stdout.splitlines()[1:]:
        columns = line.split(None, 4)
        rows[columns[2]] = (columns[3], columns[4] if len(columns) > 4 else "")
    return result.returncode, rows


def test_a_widening_policy_is_reported_and_left_alone(control_plane: ControlPlane, controller: Controller,
                                                      controller_kubeconfig: Path, namespace: str) -> None:
    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace, extra_labels={"app.kubernetes.io/component": "session"})
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: _converged(core, networking, namespace, pod["metadata"]["name"]), 30, "the session")
    assert _audit(controller_kubeconfig, namespace) == (0, {_session(pod): ("ok", "")})
    networking.create_namespaced_network_policy(namespace, SORTIE_SESSION_ISOLATION)

    events = wait_for(lambda: pod_events(core, namespace, pod["metadata"]["name"], "EgressWidened"), 30, "the Event")
    assert events[0].type == "Warning"
    assert events[0].message.startswith("NetworkPolicy sortie-session-isolation: egress[0] allows TCP 80, TCP 443 to 0.0.0.0/0")
    wait_for(lambda: controller.metric("sortie_egress_widened_sessions") == 1, 30, "the gauge")
    code, rows = _audit(controller_kubeconfig, namespace)
    assert code == 1 and rows[_session(pod)][0] == "widened"
    assert "NetworkPolicy sortie-session-isolation" in rows[_session(pod)][1]
    # Nobody else's object is modified.
    theirs = _policy(networking, namespace, "sortie-session-isolation")
    assert theirs["spec"] == SORTIE_SESSION_ISOLATION["spec"] and "app.kubernetes.io/managed-by" not in (
        theirs["metadata"].get("labels") or {})

    networking.delete_namespaced_network_policy("sortie-session-isolation", namespace)
    wait_for(lambda: controller.metric("sortie_egress_widened_sessions") == 0, 30, "the gauge to clear")
    assert _audit(controller_kubeconfig, namespace) == (0, {_session(pod): ("ok", "")})


# --- never widened after release ----------------------------------------------------------------

def test_a_policy_changed_behind_admission_turns_the_session_dns_only(
        control_plane: ControlPlane, controller: Controller, namespace: str) -> None:
    from kubernetes import client

    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    name = pod["metadata"]["name"]
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: _converged(core, networking, namespace, name), 30, "the session")
    admission = client.AdmissionregistrationV1Api(control_plane.admin.api_client())
    # Bypassing admission: an operator takes the pod policy's binding away for a moment.
    admission.delete_validating_admission_policy_binding(PODS_POLICY)
    try:
        wait_for(lambda: core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": {
            "sortie.io/egress-policy": json.dumps(WIDE)}}}), 30, "the annotation to be rewritten")
    finally:
        install_admission_policies(control_plane, ("drift-maker",))
    policy_name = "sortie-egress-" + _session(pod)
    closed = wait_for(lambda: (p := _policy(networking, namespace, policy_name)) and p["spec"]["egress"] == [DNS_RULE] and p,
                      30, "the session to be limited to DNS")
    assert closed["metadata"]["annotations"] == {"sortie.io/policy-digest": digest(CANONICAL)}  # still the admitted pin
    events = wait_for(lambda: pod_events(core, namespace, name, "EgressPolicyChanged"), 30, "the Warning Event")
    assert "the new policy is never enforced" in events[0].message
    assert controller.metric("sortie_egress_pin_violations_total") >= 1


# --- deployment traps ------------------------------------------------------------------------------

@pytest.mark.parametrize("how", [(), ("--server-side",)], ids=["client-side", "server-side"])
def test_reapplying_an_unchanged_session_pod_manifest_succeeds(control_plane: ControlPlane,
                                                               registered_webhook: WebhookProcess, namespace: str,
                                                               how: tuple[str, ...]) -> None:
    _, core, _ = _api(control_plane)
    pod = session_pod(policy={"rules": [{"port": 443, "cidr": "10.0.0.1/8"}], "mode": "allowlist"}, namespace=namespace)
    manifest = yaml.safe_dump(pod)
    for attempt in range(2):
        applied = control_plane.kubectl("apply", *how, "-f", "-", input=manifest)
        assert applied.returncode == 0, f"apply #{attempt + 1}: {applied.stderr}"
    stored = _pod(core, namespace, pod["metadata"]["name"])
    assert stored["metadata"]["annotations"]["sortie.io/egress-policy"] == (
        '{"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]}')
    assert stored["metadata"]["labels"]["sortie.io/egress-mode"] == "allowlist"
    assert "sortie.io/egress-policy" in _gates(stored)
    # A real change is still refused.
    changed = yaml.safe_dump(session_pod(name=pod["metadata"]["name"], session_id=_session(pod), policy=WIDE,
                                         namespace=namespace))
    refused = control_plane.kubectl("apply", *how, "-f", "-", input=changed)
    assert refused.returncode != 0 and "cannot change after creation" in refused.stderr


def test_one_webhook_call_per_session_start(control_plane: ControlPlane, controller: Controller,
                                            registered_webhook: WebhookProcess, namespace: str) -> None:
    """The gate removal (a pod UPDATE) no longer calls out to any webhook: one round trip, the CREATE."""
    _, core, networking = _api(control_plane)
    pod = session_pod(policy=POLICY, namespace=namespace)
    core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: _converged(core, networking, namespace, pod["metadata"]["name"]), 30, "the session")
    core.patch_namespaced_pod(pod["metadata"]["name"], namespace, {"metadata": {"labels": {"team": "blue"}}})
    calls = [line for line in registered_webhook.log_lines()
             if line.get("name") == pod["metadata"]["name"] and line.get("namespace") == namespace]
    assert [(line["operation"], line["endpoint"]) for line in calls] == [("CREATE", "mutate")]
