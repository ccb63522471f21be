"""The canary proves who it is (CONTRACT §6, issue 22): real sockets, real TLS, real certificates.

A pod's creator controls the name the wait resolves (``hostAliases``, ``dnsPolicy: None``), so
whatever answers there must prove it is ours: a certificate for the pinned name from the pinned
CAs, which only our pods' key can present. Expectations are written out by hand.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sortie_egress.enforcement_wait.pin import pin_from
from sortie_egress.certs.authority import Authority, generate
from sortie_egress.controller.canary import CanaryProcess, CanaryServer, _listener
from sortie_egress.enforcement_wait.injection import EnforcementWait
from sortie_egress.server.tls import ReloadingTLS, pem_context
from sortie_egress.wait import Trust, ask, enforced_once, main as wait_main
from tests.test_enforcement import FakeCanary, free_port_pair, truthful

IDENTITY = "sortie-egress.sortie-system.svc"
DAY = dt.timedelta(days=1)


def served(cert_pem: bytes, key_pem: bytes) -> ReloadingTLS:
    return ReloadingTLS(pem_context(cert_pem, key_pem))


class RunningCanary:
    """Our canary server on 127.0.0.1 (both ports), with ``tls`` on its open port."""

    def __init__(self, tls: ReloadingTLS | None) -> None:
        self.port = free_port_pair()
        self.stop = threading.Event()
        self.server = CanaryServer(_listener("127.0.0.1", self.port), _listener("127.0.0.1", self.port + 1), tls)
        self.thread = threading.Thread(target=self.server.serve, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def ours() -> Iterator[tuple[RunningCanary, Trust]]:
    """The real canary with the product's serving certificate, and the trust the webhook would pin."""
    certificates = generate((IDENTITY, "sortie-egress.sortie-system.svc.cluster.local"))
    pin = pin_from(certificates.ca_pem, certificates.cert_pem)
    canary = RunningCanary(served(certificates.cert_pem, certificates.key_pem))
    yield canary, Trust.pinned(pin.ca_bundle, pin.identity)
    canary.close()


def until_fresh(port: int, trust: Trust | None) -> None:
    deadline = time.monotonic() + 10
    while True:
        answer = ask("127.0.0.1", port, 2.0, trust)
        if answer.status is not None and answer.status.checked_ago <= 0.5:
            return
        assert time.monotonic() < deadline, answer
        time.sleep(0.02)


# --- the pin ----------------------------------------------------------------------------------

def test_the_pin_is_the_secrets_cas_and_the_first_name_of_its_certificate() -> None:
    old, new = Authority.create("old CA", DAY), Authority.create("new CA", DAY)
    cert_pem, _ = new.issue("webhook", DAY, hosts=("sortie-egress.sortie-system.svc", "other.example"))
    pin = pin_from(old.pem + new.pem, cert_pem)
    assert pin.identity == "sortie-egress.sortie-system.svc"
    from cryptography.hazmat.primitives.serialization import Encoding
    assert base64.b64decode(pin.ca_bundle) == old.cert.public_bytes(Encoding.DER) + new.cert.public_bytes(Encoding.DER)
    assert "\n" not in pin.ca_bundle


@pytest.mark.parametrize(("ca", "cert", "message"), [
    (b"", "good", "ca.crt holds no PEM certificate: the canary cannot be pinned"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "good",
     "ca.crt holds no PEM certificate: the canary cannot be pinned"),
    ("good", b"garbage", "tls.crt holds no PEM certificate: the canary cannot be pinned"),
    ("good", "client", "tls.crt carries no DNS name: the canary's identity cannot be pinned"),
])
def test_a_secret_that_cannot_pin_the_canary_is_said_so(ca: bytes | str, cert: bytes | str, message: str) -> None:
    authority = Authority.create("CA", DAY)
    client_pem, _ = authority.issue("someone", DAY, client=True)
    serving_pem, _ = authority.issue("webhook", DAY, hosts=(IDENTITY,))
    ca_pem = authority.pem if ca == "good" else ca
    cert_pem = {"good": serving_pem, "client": client_pem}.get(cert, cert)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as raised:
        pin_from(ca_pem, cert_pem)  # type: ignore[arg-type]
    assert str(raised.value) == message


def test_the_injected_wait_carries_the_pin_in_its_arguments() -> None:
    wait = EnforcementWait("registry.invalid/sortie-egress:1", "sortie-egress-canary.sortie-system.svc", 9445,
                           ca_bundle="QUJD", identity=IDENTITY)
    assert wait.container()["command"] == [
        "python", "-m", "sortie_egress.wait", "--canary", "sortie-egress-canary.sortie-system.svc", "--port", "9445",
        "--timeout", "600", "--ca-bundle", "QUJD", "--identity", IDENTITY]
    unpinned = EnforcementWait("registry.invalid/sortie-egress:1", "sortie-egress-canary.sortie-system.svc", 9445)
    assert "--ca-bundle" not in unpinned.container()["command"] and not unpinned.pinned


@pytest.mark.parametrize(("arguments", "message"), [
    (["--ca-bundle", "QUJD"], "--ca-bundle needs --identity (the name the canary's certificate carries)"),
    (["--ca-bundle", "not base64!", "--identity", IDENTITY], "--ca-bundle is not base64"),
    (["--ca-bundle", "QUJD", "--identity", IDENTITY], "--ca-bundle holds no usable CA certificate"),
])
def test_the_wait_refuses_a_pin_it_cannot_use(arguments: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        wait_main(["--canary", "127.0.0.1", *arguments])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


# --- our canary, proving who it is ------------------------------------------------------------

def test_our_canary_answers_a_pinned_wait_inside_tls(ours: tuple[RunningCanary, Trust]) -> None:
    canary, trust = ours
    until_fresh(canary.port, trust)
    answer = ask("127.0.0.1", canary.port, 2.0, trust)
    assert answer.status is not None and answer.error == ""
    assert (answer.status.local, answer.status.peer) == ("127.0.0.1", "127.0.0.1")
    # Both its ports answer here (nothing blocks on loopback): authenticated, and not enforced.
    assert enforced_once("127.0.0.1", canary.port, trust) == (
        False, f"canary 127.0.0.1:{canary.port + 1} accepted a connection: egress policy not enforced yet")


def test_a_wait_from_before_tls_still_gets_its_answer_in_the_clear(ours: tuple[RunningCanary, Trust]) -> None:
    """Pods admitted before the canary spoke TLS rerun their init container after a node restart."""
    canary, _ = ours
    until_fresh(canary.port, None)
    with socket.create_connection(("127.0.0.1", canary.port), timeout=2) as connection:
        received = b""
        while not received.endswith(b"\n") or received.count(b"\n") < 2:
            chunk = connection.recv(4096)
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"sortie-egress-canary\nsortie-egress-canary-status {")


def test_a_look_alike_with_a_certificate_from_another_ca_proves_nothing(ours: tuple[RunningCanary, Trust]) -> None:
    """What answers a name pointed elsewhere: the same software, the same name on its certificate,
    a CA of its own."""
    _, trust = ours
    impostor = generate((IDENTITY,))
    look_alike = RunningCanary(served(impostor.cert_pem, impostor.key_pem))
    try:
        answer = ask("127.0.0.1", look_alike.port, 2.0, trust)
        assert answer.status is None
        assert answer.error == "the canary did not prove it is ours (unable to get local issuer certificate)"
        # Its closed port is not even listening, as if a policy blocked it: still no round passes.
        look_alike.server.closed_listener.close()
        enforced, seen = enforced_once("127.0.0.1", look_alike.port, trust)
        assert (enforced, seen) == (False, f"canary 127.0.0.1:{look_alike.port} did not answer "
                                           "(the canary did not prove it is ours (unable to get local issuer certificate))")
    finally:
        look_alike.close()


def test_a_certificate_from_our_ca_for_another_name_proves_nothing() -> None:
    """A CA that signs more than our certificate (a shared cert-manager issuer): the name decides."""
    authority = Authority.create("shared CA", DAY)
    ours_pem, _ = authority.issue("webhook", DAY, hosts=(IDENTITY,))
    other_pem, other_key = authority.issue("other", DAY, hosts=("other.team.svc",))
    pin = pin_from(authority.pem, ours_pem)
    look_alike = RunningCanary(served(other_pem, other_key))
    try:
        answer = ask("127.0.0.1", look_alike.port, 2.0, Trust.pinned(pin.ca_bundle, pin.identity))
        assert answer.status is None
        assert answer.error.startswith("the canary did not prove it is ours (Hostname mismatch")
    finally:
        look_alike.close()


def test_a_look_alike_that_speaks_the_protocol_in_the_clear_proves_nothing(ours: tuple[RunningCanary, Trust]) -> None:
    """The look-alike that fooled the unauthenticated wait: a truthful-looking status, the closed
    port refused. A pinned wait does not believe it; an unpinned one (the old wait) did."""
    _, trust = ours
    port = free_port_pair()
    fake = FakeCanary(port, truthful())
    try:
        assert enforced_once("127.0.0.1", port)[0] is True  # the hole, for an unauthenticated wait
        enforced, seen = enforced_once("127.0.0.1", port, trust)
        assert enforced is False and seen.startswith(f"canary 127.0.0.1:{port} did not answer (SSL"), seen
    finally:
        fake.close()


def test_a_canary_without_its_certificate_yet_holds_pinned_waits_back(ours: tuple[RunningCanary, Trust]) -> None:
    """The canary process before the controller hands it the serving Secret's pair: a placeholder."""
    _, trust = ours
    waiting = RunningCanary(ReloadingTLS.awaiting_secret())
    try:
        answer = ask("127.0.0.1", waiting.port, 2.0, trust)
        assert answer.status is None and answer.error.startswith("the canary did not prove it is ours"), answer
    finally:
        waiting.close()


def test_a_stalled_handshake_holds_only_its_own_connection(ours: tuple[RunningCanary, Trust]) -> None:
    """Clients that start a TLS record and stall are answered on worker threads: a pinned wait
    is still answered beside a few of them."""
    canary, trust = ours
    stalled = []
    try:
        for _ in range(4):
            connection = socket.create_connection(("127.0.0.1", canary.port), timeout=2)
            connection.sendall(b"\x16\x03\x01")  # a handshake record that never completes
            stalled.append(connection)
        until_fresh(canary.port, trust)
    finally:
        for connection in stalled:
            connection.close()


def test_the_canary_process_takes_its_certificate_from_the_controller_and_health_checks_it() -> None:
    certificates = generate((IDENTITY,))
    pin = pin_from(certificates.ca_pem, certificates.cert_pem)
    trust = Trust.pinned(pin.ca_bundle, pin.identity)
    port = free_port_pair()
    process = CanaryProcess("127.0.0.1", port)
    try:
        deadline = time.monotonic() + 15
        while not process.healthy()[0]:  # in the clear: alive before any certificate
            assert time.monotonic() < deadline, process.healthy()
            time.sleep(0.05)
        assert ask("127.0.0.1", port, 2.0, trust).status is None  # the placeholder proves nothing
        process.use_certificate(certificates.cert_pem, certificates.key_pem, trust)
        deadline = time.monotonic() + 15
        while ask("127.0.0.1", port, 2.0, trust).status is None:
            assert time.monotonic() < deadline, ask("127.0.0.1", port, 2.0, trust)
            time.sleep(0.05)
        assert process.healthy() == (True, "ok")
        # A pair from another CA than the one the health check holds it to: unhealthy, and said why.
        impostor = generate((IDENTITY,))
        process.use_certificate(impostor.cert_pem, impostor.key_pem, trust)
        deadline = time.monotonic() + 15
        while process.healthy()[0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert process.healthy() == (False, "the canary gave no status on its open port (the canary did not prove it "
                                            "is ours (unable to get local issuer certificate))")
    finally:
        process.stop()


def test_the_wait_speaks_tls_1_2_or_newer_only() -> None:
    certificates = generate((IDENTITY,))
    pin = pin_from(certificates.ca_pem, certificates.cert_pem)
    trust = Trust.pinned(pin.ca_bundle, pin.identity)
    assert trust.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert trust.context.verify_mode == ssl.CERT_REQUIRED and trust.context.check_hostname


def test_serve_refuses_to_inject_a_wait_it_cannot_pin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sortie_egress.certs.authority import write
    from sortie_egress.cli import main

    write(generate((IDENTITY,)), tmp_path)
    (tmp_path / "ca.crt").unlink()
    assert main(["serve", "--port", "0", "--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key"),
                 "--enforcement-canary", "sortie-egress-canary.sortie-system.svc",
                 "--enforcement-image", "registry.invalid/sortie-egress:1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "sortie-egress: --enforcement-canary needs the CA of the canary's certificate (the serving Secret's ca.crt): "
        f"give --enforcement-ca FILE ({tmp_path / 'ca.crt'} does not exist)")
