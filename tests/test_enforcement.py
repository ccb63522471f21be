"""The start-up wait (CONTRACT §6): the injected init container, the canary rule in every
session policy, and the prober, each against expectations written out by hand."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import kubernetes_validate
import pytest

from webhook.controller.canary import canary_for, project_canary_pod, serve_canary
from webhook.enforcement import INIT_CONTAINER_NAME, EnforcementWait, wait_patch
from webhook.patch import apply_patch
from webhook.policy import parse_policy
from webhook.render import Canary, DnsDestination, render_network_policy
from webhook.session import SessionPod
from webhook.wait import enforced_once, wait_for_enforcement

WAIT = EnforcementWait("registry.invalid/sortie-egress:1", "sortie-egress-canary.sortie-system.svc", 9445)
LABELS = (("app.kubernetes.io/component", "controller"), ("app.kubernetes.io/name", "sortie-egress"))
CANARY = Canary("sortie-system", LABELS, 9445, ("10.244.1.7", "10.244.2.9", "fd00::7"))
CANARY_RULE = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "sortie-system"}},
                       "podSelector": {"matchLabels": {"app.kubernetes.io/component": "controller",
                                                       "app.kubernetes.io/name": "sortie-egress"}}}],
               "ports": [{"protocol": "TCP", "port": 9445}]}
DNS_RULE = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]}
POD = SessionPod(namespace="sessions", name="firefox-1", uid="uid-1", session_id="s1", app_id=None, annotation=None)


def egress(document: dict, canary: Canary | None = CANARY) -> list[dict]:
    parsed = parse_policy(json.dumps(document))
    assert parsed.policy is not None, parsed.errors
    rendered = render_network_policy(POD, parsed.policy, DnsDestination(), canary)
    kubernetes_validate.validate(rendered, "1.37.0", strict=True)
    return rendered["spec"]["egress"]


# --- the canary in every session policy ----------------------------------------------------

def test_without_a_canary_the_rendering_is_unchanged() -> None:
    assert egress({"mode": "allowlist", "rules": [{"cidr": "0.0.0.0/0", "port": 443}]}, None) == [
        DNS_RULE, {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                   "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 443}]}]


def test_an_allowlist_that_covers_the_canary_loses_its_addresses_and_the_open_port_is_added_last() -> None:
    assert egress({"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8"}, {"cidr": "192.0.2.0/24", "port": 443}]}) == [
        DNS_RULE,
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.1.7/32", "10.244.2.9/32"]}}]},
        {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}],
         "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 443}]},
        CANARY_RULE,
    ]


def test_a_denylist_adds_the_canary_to_its_exceptions_per_family() -> None:
    assert egress({"mode": "denylist", "rules": [{"cidr": "203.0.113.0/24"}, {"cidr": "2001:db8::/32"}]}) == [
        DNS_RULE,
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["203.0.113.0/24", "10.244.1.7/32", "10.244.2.9/32"]}},
                {"ipBlock": {"cidr": "::/0", "except": ["2001:db8::/32", "fd00::7/128"]}}]},
        CANARY_RULE,
    ]


def test_an_address_already_excepted_is_not_excepted_twice() -> None:
    assert egress({"mode": "denylist", "rules": [{"cidr": "10.244.0.0/16"}]}, Canary("sortie-system", LABELS, 9445,
                                                                                       ("10.244.1.7",))) == [
        DNS_RULE, {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]}}, {"ipBlock": {"cidr": "::/0"}}]},
        CANARY_RULE]


def test_a_rule_for_the_canarys_address_alone_is_dropped_not_left_without_peers() -> None:
    # A rule with no peers would allow every destination: the rule must go instead.
    assert egress({"mode": "allowlist", "rules": [{"cidr": "10.244.1.7/32", "port": 9446}]}) == [DNS_RULE, CANARY_RULE]


def test_an_empty_allowlist_gets_dns_and_the_open_port_only() -> None:
    assert egress({"mode": "allowlist", "rules": []}) == [DNS_RULE, CANARY_RULE]


def test_the_canary_follows_the_controller_pods_addresses() -> None:
    pods = [project_canary_pod({"metadata": {"name": "a", "namespace": "sortie-system"},
                                "status": {"podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}, {"ip": "fd00::9"}]}}),
            project_canary_pod({"metadata": {"name": "b", "namespace": "sortie-system"}, "status": {}}),
            project_canary_pod({"metadata": {"name": "c", "namespace": "sortie-system"}, "status": {"podIP": "10.0.0.3"}})]
    assert canary_for("sortie-system", 9445, pods) == Canary("sortie-system", LABELS, 9445,
                                                               ("10.0.0.3", "10.0.0.9", "fd00::9"))


# --- the init container ----------------------------------------------------------------------

def pod_with(inits: list[dict] | None) -> dict:
    spec: dict = {"containers": [{"name": "app", "image": "app:1"}]}
    if inits is not None:
        spec["initContainers"] = inits
    return {"metadata": {"name": "p"}, "spec": spec}


def init_names(pod: dict) -> list[str]:
    return [container["name"] for container in pod["spec"]["initContainers"]]


def test_the_wait_goes_first_whatever_else_the_pod_has() -> None:
    for inits, expected in [(None, [INIT_CONTAINER_NAME]), ([], [INIT_CONTAINER_NAME]),
                            ([{"name": "setup"}], [INIT_CONTAINER_NAME, "setup"]),
                            ([{"name": "a"}, {"name": "b"}], [INIT_CONTAINER_NAME, "a", "b"])]:
        pod = pod_with(inits)
        assert init_names(apply_patch(pod, wait_patch(pod, WAIT))) == expected


def test_a_look_alike_is_replaced_and_moved_first() -> None:
    fake = {"name": INIT_CONTAINER_NAME, "image": "evil:1", "command": ["true"]}
    pod = pod_with([{"name": "setup"}, fake])
    patched = apply_patch(pod, wait_patch(pod, WAIT))
    assert init_names(patched) == [INIT_CONTAINER_NAME, "setup"]
    assert patched["spec"]["initContainers"][0] == WAIT.container()


NO_TOKEN = {"name": "sortie-egress-wait-no-token", "emptyDir": {"sizeLimit": "1Ki"}}


def test_a_reinvoked_webhook_changes_nothing() -> None:
    pod = pod_with([WAIT.container(), {"name": "setup"}])
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}, dict(NO_TOKEN)]
    assert wait_patch(pod, WAIT) == []


def test_the_token_less_volume_is_added_without_touching_the_pods_own() -> None:
    pod = pod_with(None)
    assert apply_patch(pod, wait_patch(pod, WAIT))["spec"]["volumes"] == [NO_TOKEN]
    own = [{"name": "data", "emptyDir": {}}, {"name": "config", "configMap": {"name": "app"}}]
    pod = pod_with(None)
    pod["spec"]["volumes"] = [dict(volume) for volume in own]
    assert apply_patch(pod, wait_patch(pod, WAIT))["spec"]["volumes"] == [*own, NO_TOKEN]


def test_a_look_alike_volume_is_replaced() -> None:
    pod = pod_with(None)
    pod["spec"]["volumes"] = [{"name": "sortie-egress-wait-no-token", "hostPath": {"path": "/"}}, {"name": "data", "emptyDir": {}},
                              {"name": "sortie-egress-wait-no-token", "emptyDir": {}}]
    assert apply_patch(pod, wait_patch(pod, WAIT))["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}, NO_TOKEN]


def test_the_wait_gets_no_api_token() -> None:
    """The ServiceAccount admission plugin skips a container whose token path is taken: ours is,
    by an empty read-only volume (and so the plugin's change cannot re-invoke the webhook)."""
    assert WAIT.container()["volumeMounts"] == [
        {"name": "sortie-egress-wait-no-token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}]


def test_the_container_is_restricted_and_runs_the_prober() -> None:
    container = WAIT.container()
    assert container["command"] == ["python", "-m", "webhook.wait", "--canary", "sortie-egress-canary.sortie-system.svc",
                                    "--port", "9445", "--timeout", "600"]
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


# --- the prober against a real canary on loopback ----------------------------------------------

def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports")


@pytest.fixture
def canary() -> Iterator[int]:
    stop = threading.Event()
    port = free_port_pair()
    thread = serve_canary("127.0.0.1", port, stop)
    yield port
    stop.set()
    thread.join(5)


def test_with_both_ports_answering_the_policy_is_not_enforced(canary: int) -> None:
    enforced, seen = enforced_once("127.0.0.1", canary)
    assert (enforced, seen) == (False, f"canary 127.0.0.1:{canary + 1} still reachable: egress policy not enforced yet")


def test_with_the_closed_port_refused_the_policy_is_enforced() -> None:
    # Only the open port answers: what a session pod sees once its policy rejects the closed one.
    stop, port = threading.Event(), free_port_pair()
    thread = serve_canary("127.0.0.1", port, stop)
    stop.set()
    thread.join(5)  # both closed now; open only the first again, by hand
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen(8)

        def answer() -> None:
            connection, _ = server.accept()
            connection.sendall(b"sortie-egress-canary\n")
            connection.close()

        threading.Thread(target=answer, daemon=True).start()
        enforced, seen = enforced_once("127.0.0.1", port)
    assert enforced, seen
    assert seen.startswith(f"enforced: 127.0.0.1:{port} answered, 127.0.0.1:{port + 1} blocked")


def test_a_canary_that_is_down_holds_the_pod_back() -> None:
    port = free_port_pair()  # nothing listens on either port: "blocked" must not be mistaken for enforced
    assert enforced_once("127.0.0.1", port)[0] is False
    assert wait_for_enforcement("127.0.0.1", port, timeout=0.3) == 1


def test_serve_refuses_a_canary_without_an_image(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.cli import main

    monkeypatch.delenv("SORTIE_EGRESS_IMAGE", raising=False)
    assert main(["serve", "--port", "0", "--enforcement-canary", "sortie-egress-canary"]) == 2
    assert "--enforcement-canary needs --enforcement-image (or $SORTIE_EGRESS_IMAGE)" in capsys.readouterr().err
