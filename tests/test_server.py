"""The webhook server over real TLS on loopback, run as its own process."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path

import pytest

from tests.cluster.harness import wait_for
from tests.support import WebhookProcess, generate_certs, session_pod
from sortie_egress.server.app import AdmissionEndpoint, WebhookSettings

SECRET_MARKER = "do-not-log-this-10.99.99.0"


def review_body(pod: dict, uid: str = "uid-42") -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
        "namespace": "sessions", "userInfo": {"username": "system:apiserver"}, "object": pod}}).encode()


def request(server: WebhookProcess, method: str, path: str, body: bytes | None = None,
            context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context or server.context(), timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def test_mutate_answers_an_admission_review(server: WebhookProcess) -> None:
    pod = session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]})
    status, body = request(server, "POST", "/mutate", review_body(pod))
    assert status == 200
    answer = json.loads(body)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "uid-42" and answer["response"]["allowed"] is True
    assert answer["response"]["patchType"] == "JSONPatch"


def test_there_is_no_validating_endpoint(server: WebhookProcess) -> None:
    """Tamper protection runs in the API server (admission policies); nothing may still post here."""
    status, _ = request(server, "POST", "/validate", b"{}")
    assert status == 404


@pytest.mark.parametrize(("body", "fragment"), [(b"not json", b"bad AdmissionReview: body is not JSON"),
                                                 (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
                                                  b'"request": {"uid": "\x9e", "operation": "CREATE"}}',
                                                  b"UTF-8"),
                                     (b'{"kind": "Pod"}', b"bad AdmissionReview: not an AdmissionReview")])
def test_malformed_review_is_400_with_a_reason(server: WebhookProcess, body: bytes, fragment: bytes) -> None:
    status, reply = request(server, "POST", "/mutate", body)
    assert status == 400 and fragment in reply and b"Traceback" not in reply


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_on_admission_path_is_405(server: WebhookProcess, method: str) -> None:
    assert request(server, method, "/mutate")[0] == 405


def test_health_and_readiness(server: WebhookProcess) -> None:
    assert request(server, "GET", "/healthz") == (200, b"ok\n")
    assert request(server, "GET", "/readyz") == (200, b"ok\n")


def test_metrics_count_admissions_by_decision(server: WebhookProcess) -> None:
    request(server, "POST", "/mutate", review_body(session_pod(policy="{")))
    status, body = request(server, "GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'sortie_egress_admissions_total{decision="denied",endpoint="mutate"}' in text
    assert "sortie_egress_admission_duration_seconds_bucket" in text


def _raw_tls(server: WebhookProcess) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return server.context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_declared_oversized_body_is_refused_before_it_is_sent(server: WebhookProcess) -> None:
    with _raw_tls(server) as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 10485760\r\n\r\n")
        reply = tls.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def test_chunked_oversized_body_is_refused(server: WebhookProcess) -> None:
    chunk = b"x" * 65536
    with _raw_tls(server) as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(64):  # 4 MiB, past the 3 MiB limit
                tls.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server may hang up once it has answered
        reply = tls.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def _tls_1_1_only(context: ssl.SSLContext) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.1 above security level 0
    return context


def _negotiated_with_a_tls_1_1_server(client: ssl.SSLContext, cert_dir: Path) -> str | None:
    """The version ``client`` gets from a control server that speaks TLS 1.1 only (None: no handshake)."""
    server_context = _tls_1_1_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    server_context.load_cert_chain(str(cert_dir / "tls.crt"), str(cert_dir / "tls.key"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            connection, _ = listener.accept()
            try:
                with server_context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    return tls.version()
        except (ssl.SSLError, OSError):
            return None
        finally:
            thread.join(5)


def test_tls_below_1_2_is_refused(server: WebhookProcess) -> None:
    old = _tls_1_1_only(server.context())
    # The refusal only means something if this client really speaks TLS 1.1: prove it on a control server.
    assert _negotiated_with_a_tls_1_1_server(old, server.cert_dir) == "TLSv1.1"
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        request(server, "GET", "/healthz", context=old)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_served(server: WebhookProcess, version: ssl.TLSVersion) -> None:
    context = server.context()
    context.minimum_version = context.maximum_version = version
    assert request(server, "GET", "/healthz", context=context)[0] == 200


def test_one_log_line_per_admission_and_never_the_body(server: WebhookProcess) -> None:
    pod = session_pod(name="logged-pod", policy={"mode": "allowlist", "rules": [{"cidr": "10.99.99.0/24"}]})
    pod["metadata"]["annotations"]["note"] = SECRET_MARKER
    request(server, "POST", "/mutate", review_body(pod, uid="log-uid-1"))
    lines = wait_for(lambda: [line for line in server.log_lines() if line.get("uid") == "log-uid-1"], 10, "the log line")
    assert len(lines) == 1
    line = lines[0]
    assert (line["event"], line["namespace"], line["name"], line["decision"]) == ("admission", "sessions", "logged-pod", "patched")
    assert isinstance(line["duration_ms"], float)
    assert SECRET_MARKER not in server.log_path.read_text()
    assert "10.99.99.0" not in server.log_path.read_text()


def test_certificate_rotation_without_restart_or_failed_requests(tmp_path: Path) -> None:
    old_dir, new_dir, live = tmp_path / "old", tmp_path / "new", tmp_path / "live"
    generate_certs(old_dir)
    generate_certs(new_dir)
    shutil.copytree(old_dir, live)
    server = WebhookProcess(live, tmp_path / "webhook.log").start()
    both = ssl.create_default_context(cafile=str(old_dir / "ca.crt"))
    both.load_verify_locations(cafile=str(new_dir / "ca.crt"))
    only_new = ssl.create_default_context(cafile=str(new_dir / "ca.crt"))
    failures: list[str] = []
    done = threading.Event()
    count = 0

    def hammer() -> None:
        nonlocal count
        while not done.is_set():
            try:
                status, _ = request(server, "POST", "/mutate", review_body(session_pod(policy={"mode": "allowlist"})), context=both)
                if status != 200:
                    failures.append(f"HTTP {status}")
            except Exception as exc:  # any failure counts
                failures.append(repr(exc))
            count += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        wait_for(lambda: count > 20, 10, "traffic before the rotation")
        pid = server.process.pid
        for name in ("tls.key", "tls.crt", "ca.crt"):  # key first: as certs.write and kubelet order it
            shutil.copy(new_dir / name, live / f".{name}.tmp")
            (live / f".{name}.tmp").replace(live / name)
        wait_for(lambda: request(server, "GET", "/healthz", context=only_new)[0] == 200, 15, "the new certificate to be served")
        seen = count
        wait_for(lambda: count > seen + 20, 10, "traffic after the rotation")
        assert server.process.pid == pid and server.process.poll() is None
    finally:
        done.set()
        worker.join()
        server.stop()
    assert failures == []


def test_a_bug_in_a_decision_gets_the_failure_policy_answer_not_a_500() -> None:
    """The ASGI edge alone (no server): a decide() that raises."""

    def broken(_request: object) -> object:
        raise RuntimeError("boom")

    async def call(endpoint: AdmissionEndpoint) -> tuple[int, dict]:
        body = review_body(session_pod(policy="{}"))
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive() -> dict:
            return messages.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        await endpoint({"type": "http", "headers": []}, receive, send)
        return sent[0]["status"], json.loads(sent[1]["body"])["response"]

    closed = asyncio.run(call(AdmissionEndpoint("mutate", broken, fail_open=False, settings=WebhookSettings())))
    opened = asyncio.run(call(AdmissionEndpoint("validate", broken, fail_open=True, settings=WebhookSettings())))
    assert closed[0] == 200 and closed[1]["allowed"] is False and "internal error" in closed[1]["status"]["message"]
    assert opened[0] == 200 and opened[1]["allowed"] is True and "internal error" in opened[1]["warnings"][0]
    assert "boom" not in json.dumps(closed[1]) + json.dumps(opened[1])


def test_listener_context_refuses_anything_below_tls_1_2(tmp_path: Path) -> None:
    """The live test above can pass on a client that cannot speak 1.1 at all; this pins the server side."""
    from sortie_egress.server.tls import ReloadingTLS

    generate_certs(tmp_path)
    tls = ReloadingTLS.from_files(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert tls.listener.minimum_version == ssl.TLSVersion.TLSv1_2
    names = {cipher["name"] for cipher in tls.listener.get_ciphers() if cipher["protocol"] == "TLSv1.2"}
    assert names and all("ECDHE" in name and ("GCM" in name or "CHACHA20" in name) for name in names)


def test_half_written_rotation_keeps_serving_the_old_pair(tmp_path: Path) -> None:
    from sortie_egress.server.tls import ReloadingTLS

    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    generate_certs(old_dir)
    generate_certs(new_dir)
    heard: list[str] = []
    tls = ReloadingTLS.from_files(old_dir / "tls.crt", old_dir / "tls.key", on_reload=heard.append)
    shutil.copy(new_dir / "tls.crt", old_dir / "tls.crt")  # new certificate, old key: a mismatch
    assert tls.reload_if_changed() is False and tls.failed_reloads == 1
    shutil.copy(new_dir / "tls.key", old_dir / "tls.key")
    assert tls.reload_if_changed() is True and tls.reloads == 1
    assert tls.load_pem(b"not a certificate", b"not a key") is False
    assert tls.load_pem((new_dir / "tls.crt").read_bytes(), (new_dir / "tls.key").read_bytes()) is True
    assert heard == ["failed", "ok", "failed", "ok"]


def test_slow_loris_connections_are_cut_and_do_not_starve_others(tmp_path: Path) -> None:
    generate_certs(tmp_path / "c")
    server = WebhookProcess(tmp_path / "c", tmp_path / "log", extra_args=("--request-timeout", "1")).start()
    slow: list[ssl.SSLSocket] = []
    try:
        for index in range(40):
            tls = _raw_tls(server)
            if index % 2:
                tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never finish
            else:
                tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n{")  # body never finishes
            slow.append(tls)
        started = time.monotonic()
        status, _ = request(server, "POST", "/mutate", review_body(session_pod(policy={"mode": "allowlist"})))
        assert status == 200 and time.monotonic() - started < 0.5
        deadline = time.monotonic() + 5
        for tls in slow:
            tls.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while True:  # keep dribbling; the server must hang up
                    tls.sendall(b"a")
                    if tls.recv(1) == b"":
                        break
            except (ssl.SSLError, OSError):
                pass
            assert time.monotonic() < deadline, "a slow connection outlived its deadline"
    finally:
        for tls in slow:
            tls.close()
        server.stop()
