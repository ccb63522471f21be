"""The start-up wait (CONTRACT §6): the injected init container, the canary rule in every
session policy, and the prober, each against expectations written out by hand."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes_validate
import pytest

from sortie_egress.enforcement_wait.protocol import CANARY_TOKEN, CanaryStatus, ClosedProbe, judge_round, parse_status, same_address
from sortie_egress.controller.canary import CanaryProcess, canary_for, listen_overflows, project_canary_pod, serve_canary
from sortie_egress.enforcement_wait.injection import INIT_CONTAINER_NAME, EnforcementWait, wait_patch
from sortie_egress.admission.patch import apply_patch
from sortie_egress.policy.model import parse_policy
from sortie_egress.render.networkpolicy import render_network_policy
from sortie_egress.render.session import Canary, DnsDestination
from sortie_egress.admission.session import SessionPod
from sortie_egress.wait import ask, enforced_once, wait_for_enforcement

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
    assert container["command"] == ["python", "-m", "sortie_egress.wait", "--canary", "sortie-egress-canary.sortie-system.svc",
                                    "--port", "9445", "--timeout", "600"]
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


# --- one round's judgement (enforcement_wait/protocol.judge_round), case by case ---------------------------

def status(**changes: object) -> CanaryStatus:
    """A healthy canary endpoint's status as this pod (10.1.0.5) sees it on 10.2.0.9."""
    fields = {"instance": "a1", "generation": 1, "checked_ago": 0.02, "overflows": 7, "local": "10.2.0.9",
              "peer": "10.1.0.5"}
    fields.update(changes)
    return CanaryStatus(**fields)  # type: ignore[arg-type]


REFUSED = ClosedProbe(connected=False, error="ConnectionRefusedError: Connection refused")


def judge(before: CanaryStatus | None, closed: ClosedProbe, after: CanaryStatus | None) -> tuple[bool, str]:
    return judge_round("10.2.0.9", 9445, "10.1.0.5", before, closed, after)


def test_a_refusal_between_two_fresh_answers_of_one_endpoint_is_enforcement() -> None:
    assert judge(status(), REFUSED, status(checked_ago=0.3)) == (
        True, "enforced: 10.2.0.9:9446 blocked (ConnectionRefusedError: Connection refused) while the canary listened there")
    assert judge(status(), ClosedProbe(False, "TimeoutError"), status())[0] is True


@pytest.mark.parametrize(("before", "closed", "after", "why"), [
    # A completed handshake is never "blocked", whatever the canary says or sends afterwards.
    (status(), ClosedProbe(connected=True), status(), "10.2.0.9:9446 accepted a connection: egress policy not enforced yet"),
    (None, REFUSED, status(), "canary 10.2.0.9:9445 gave no status"),
    (status(), REFUSED, None, "canary 10.2.0.9:9445 gave no status after the closed probe"),
    # Not listening on its closed port (terminating, restarting): a refusal proves nothing.
    (status(checked_ago=0.8), REFUSED, status(), "the canary's closed listener is not known to be up before the closed probe"),
    (status(), REFUSED, status(checked_ago=1e9), "the canary's closed listener is not known to be up after it"),
    (status(checked_ago=-1.0), REFUSED, status(), "is not known to be up before the closed probe"),
    # Another endpoint answered than the one probed (a load-balanced address, a look-alike).
    (status(local="10.2.0.10"), REFUSED, status(), "the canary reached at 10.2.0.9 says it was reached at 10.2.0.10"),
    (status(), REFUSED, status(local="10.2.0.10"), "says it was reached at 10.2.0.10 after it"),
    # Something between this pod and the canary (a relay, source NAT).
    (status(peer="10.1.0.77"), REFUSED, status(), "the canary saw this pod as 10.1.0.77, not 10.1.0.5"),
    # Restarted, or its closed listener reopened, within the round.
    (status(), REFUSED, status(instance="b2"), "canary 10.2.0.9 restarted or reopened its closed listener during the round"),
    (status(), REFUSED, status(generation=2), "restarted or reopened its closed listener"),
    # A flood overflowed a listen queue: the closed port's silence may be the queue's.
    (status(), REFUSED, status(overflows=8), "listen queues overflowed during the round (a flood?)"),
])
def test_every_other_round_is_inconclusive(before: CanaryStatus | None, closed: ClosedProbe,
                                           after: CanaryStatus | None, why: str) -> None:
    enforced, seen = judge(before, closed, after)
    assert enforced is False and why in seen, seen


def test_addresses_compare_as_addresses() -> None:
    assert same_address("::ffff:10.2.0.9", "10.2.0.9") and same_address("fd00::1", "fd00:0::1")
    assert not same_address("10.2.0.9", "10.2.0.90") and not same_address("not an address", "not an address")


def test_a_status_line_is_exactly_one_or_none() -> None:
    line = status().encode()
    assert line == (b'sortie-egress-canary-status {"checked_ago":0.02,"generation":1,"instance":"a1","local":"10.2.0.9",'
                    b'"overflows":7,"peer":"10.1.0.5"}\n')
    assert parse_status(line) == status()
    for bad in (line[:-1], line.replace(b"status", b"stat"), line.replace(b'"generation":1', b'"generation":true'),
                line.replace(b'"generation":1', b'"generation":"1"'), line.replace(b'}', b',"extra":1}'),
                b"sortie-egress-canary-status [1]\n", b"sortie-egress-canary-status {\n",
                b"sortie-egress-canary-status " + b" " * 1100 + b"{}\n"):
        assert parse_status(bad) is None, bad


def test_listen_overflows_are_read_from_netstat(tmp_path: Path) -> None:
    netstat = tmp_path / "netstat"
    netstat.write_text("TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n"
                       "TcpExt: 0 3 4 99\nIpExt: InNoRoutes\nIpExt: 0\n")
    assert listen_overflows(str(netstat)) == 7
    assert listen_overflows(str(tmp_path / "missing")) == -1


# --- the prober against canaries on loopback, real sockets --------------------------------------

def free_port_pair(host: str = "127.0.0.1") -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind((host, 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free pair of ports")


class FakeCanary:
    """A server on one port that answers connection ``n`` with ``script(n)``: (delay, bytes)."""

    def __init__(self, port: int, script: Callable[[int], tuple[float, bytes]]) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.script, self.count, self.stopped = script, 0, False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            delay, reply = self.script(self.count)
            self.count += 1
            threading.Thread(target=self._answer, args=(connection, delay, reply), daemon=True).start()

    @staticmethod
    def _answer(connection: socket.socket, delay: float, reply: bytes) -> None:
        time.sleep(delay)
        try:
            connection.sendall(reply)
        except OSError:
            pass
        connection.close()

    def close(self) -> None:
        self.stopped = True
        self.server.close()


def truthful(**changes: object) -> Callable[[int], tuple[float, bytes]]:
    """An open port that says what a healthy canary on 127.0.0.1 would say."""
    def script(_: int) -> tuple[float, bytes]:
        return 0.0, CANARY_TOKEN + status(local="127.0.0.1", peer="127.0.0.1", **changes).encode()
    return script


@pytest.fixture
def fakes() -> Iterator[list[FakeCanary]]:
    made: list[FakeCanary] = []
    yield made
    for fake in made:
        fake.close()


def test_a_truthful_open_port_and_a_refused_closed_port_pass_several_rounds(fakes: list[FakeCanary]) -> None:
    """What a session pod sees once its policy rejects the closed port (the protocol cannot tell a
    dataplane's refusal from nobody listening; the canary's status says it listens)."""
    port = free_port_pair()
    fakes.append(FakeCanary(port, truthful()))
    enforced, seen = enforced_once("127.0.0.1", port)
    assert enforced, seen
    assert wait_for_enforcement("127.0.0.1", port, timeout=5.0, rounds=3) == 0
    # Three connections a round (the name's answer, then before and after), four rounds in all.
    assert fakes[0].count == 3 * (1 + 3)


def test_the_closed_probes_window_scales_with_the_handshake_not_with_the_canarys_answer(fakes: list[FakeCanary]) -> None:
    """A slow canary process (0.3 s to answer) says nothing about how fast the endpoint's kernel
    answers a handshake: the closed probe's window follows the open port's handshake, so a
    dropping dataplane costs each round the 0.25 s floor, not ten times the canary's answer."""
    from sortie_egress.wait import CLOSED_WAIT_FACTOR, CLOSED_WAIT_FLOOR

    port = free_port_pair()
    fakes.append(FakeCanary(port, lambda _: (0.3, CANARY_TOKEN + status(local="127.0.0.1", peer="127.0.0.1").encode())))
    answer = ask("127.0.0.1", port, 2.0)
    assert answer.status is not None and answer.seconds >= 0.3, answer
    assert CLOSED_WAIT_FACTOR * answer.handshake < CLOSED_WAIT_FLOOR, answer  # a loopback handshake: well under 25 ms


@pytest.mark.parametrize("closed_reply", [(0.4, CANARY_TOKEN), (0.0, b""), (0.0, b"anything else")],
                         ids=["late-token", "silent", "other-bytes"])
def test_a_closed_port_that_completes_a_handshake_is_never_blocked(fakes: list[FakeCanary],
                                                                   closed_reply: tuple[float, bytes]) -> None:
    port = free_port_pair()
    fakes.append(FakeCanary(port, truthful()))
    fakes.append(FakeCanary(port + 1, lambda _: closed_reply))
    enforced, seen = enforced_once("127.0.0.1", port)
    assert (enforced, seen) == (False, f"canary 127.0.0.1:{port + 1} accepted a connection: egress policy not enforced yet")
    assert wait_for_enforcement("127.0.0.1", port, timeout=0.5) == 1


@pytest.mark.parametrize(("script", "why"), [
    # A canary whose closed listener is down (terminating, restarting): its self-check is stale.
    (truthful(checked_ago=2.5), "closed listener is not known to be up"),
    # A canary restarting between the two answers of a round (or two replicas behind one address).
    (lambda n: (0.0, CANARY_TOKEN + status(local="127.0.0.1", peer="127.0.0.1", instance=f"i{n}").encode()),
     "restarted or reopened its closed listener"),
    # A flood filling its listen queues meanwhile.
    (lambda n: (0.0, CANARY_TOKEN + status(local="127.0.0.1", peer="127.0.0.1", overflows=n).encode()),
     "listen queues overflowed"),
    # An old canary (or anything that only knows the token): no status, no proof.
    (lambda _: (0.0, CANARY_TOKEN), "did not answer (no status)"),
    # The token too late for the open port's own timeout is no answer either.
    (lambda _: (2.5, CANARY_TOKEN + status(local="127.0.0.1", peer="127.0.0.1").encode()), "did not answer (TimeoutError"),
])
def test_a_refused_closed_port_is_not_blocked_unless_the_canary_shows_it_listening(
        fakes: list[FakeCanary], script: Callable[[int], tuple[float, bytes]], why: str) -> None:
    port = free_port_pair()
    fakes.append(FakeCanary(port, script))
    enforced, seen = enforced_once("127.0.0.1", port)
    assert enforced is False and why in seen, seen


def test_the_round_probes_the_endpoint_that_answered_not_the_name(fakes: list[FakeCanary]) -> None:
    """A load-balanced address answers for an endpoint elsewhere (here 127.0.0.2, which listens on
    neither port): the round goes there, and finds nobody to vouch for its closed port."""
    port = free_port_pair()
    fakes.append(FakeCanary(port, lambda _: (0.0, CANARY_TOKEN + status(local="127.0.0.2", peer="127.0.0.1").encode())))
    enforced, seen = enforced_once("127.0.0.1", port)
    assert (enforced, seen) == (False, f"canary endpoint 127.0.0.2:{port} did not answer "
                                       "(ConnectionRefusedError: Connection refused)")


def test_a_canary_that_is_down_holds_the_pod_back() -> None:
    port = free_port_pair()  # nothing listens on either port: "refused" must not be mistaken for enforced
    assert enforced_once("127.0.0.1", port)[0] is False
    assert wait_for_enforcement("127.0.0.1", port, timeout=0.3) == 1


# --- the real canary ----------------------------------------------------------------------------

@pytest.fixture
def canary() -> Iterator[int]:
    stop = threading.Event()
    port = free_port_pair()
    thread = serve_canary("127.0.0.1", port, stop)
    yield port
    stop.set()
    thread.join(5)


def test_the_real_canary_says_who_it_is_and_that_its_closed_listener_is_up(canary: int) -> None:
    wait_until_fresh(canary)
    answer = ask("127.0.0.1", canary, timeout=2.0)
    assert answer.status is not None, answer
    assert (answer.status.local, answer.status.peer, answer.own) == ("127.0.0.1", "127.0.0.1", "127.0.0.1")
    assert 0 <= answer.status.checked_ago <= 0.5 and answer.status.generation == 1
    again = ask("127.0.0.1", canary, timeout=2.0).status
    assert again is not None and again.instance == answer.status.instance


def wait_until_fresh(port: int) -> None:
    def fresh() -> bool:
        answer = ask("127.0.0.1", port, timeout=2.0)
        return answer.status is not None and answer.status.checked_ago <= 0.5
    deadline = time.monotonic() + 10
    while not fresh():
        assert time.monotonic() < deadline, "the canary's self-check never succeeded"
        time.sleep(0.02)


def test_with_both_ports_of_the_real_canary_answering_the_policy_is_not_enforced(canary: int) -> None:
    wait_until_fresh(canary)
    enforced, seen = enforced_once("127.0.0.1", canary)
    assert (enforced, seen) == (False, f"canary 127.0.0.1:{canary + 1} accepted a connection: egress policy not enforced yet")


def test_the_canary_process_is_its_own_and_a_stalled_one_proves_nothing() -> None:
    """In a process of its own (the controller's interpreter lock cannot starve it); stopped
    (SIGSTOP: a stall), its open port completes handshakes in the kernel but answers nothing, and
    no round passes; it reports healthy again once it runs, and goes with stop()."""
    port = free_port_pair()
    process = CanaryProcess("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 15
        while not process.healthy()[0]:
            assert time.monotonic() < deadline, process.healthy()
            time.sleep(0.05)
        assert process.process.pid != os.getpid()
        os.kill(process.process.pid, signal.SIGSTOP)
        try:
            enforced, seen = enforced_once("127.0.0.1", port)
            assert enforced is False and "did not answer (TimeoutError" in seen, seen
            assert process.healthy(timeout=0.3)[0] is False
        finally:
            os.kill(process.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while not process.healthy()[0]:
            assert time.monotonic() < deadline, process.healthy()
            time.sleep(0.05)
    finally:
        process.stop()
    assert process.process.returncode is not None
    assert process.healthy()[0] is False


def test_a_canary_port_in_use_fails_at_start() -> None:
    port = free_port_pair()
    with socket.create_server(("127.0.0.1", port + 1)):
        with pytest.raises(OSError):
            CanaryProcess("127.0.0.1", port)


def test_serve_refuses_a_canary_without_an_image(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from sortie_egress.cli import main

    monkeypatch.delenv("SORTIE_EGRESS_IMAGE", raising=False)
    assert main(["serve", "--port", "0", "--enforcement-canary", "sortie-egress-canary"]) == 2
    assert "--enforcement-canary needs --enforcement-image (or $SORTIE_EGRESS_IMAGE)" in capsys.readouterr().err
