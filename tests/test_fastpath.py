"""The admission fast path (sortie_egress/server/fastpath.py), over real TLS against ``sortie-egress serve``.

The fast path answers admissions inside the protocol; everything it does not
own falls back to uvicorn and Starlette. These tests pin the HTTP behaviour
at that seam: order of pipelined answers across both routes, keep-alive and
close semantics, chunked bodies, idle and graceful-shutdown closing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.cluster.harness import wait_for
from tests.support import WebhookProcess, generate_certs, session_pod
from sortie_egress.server.app import JSON, TEXT, Reply, declares_too_much
from sortie_egress.server.fastpath import http_response


def review(uid: str, pod: dict | None = None) -> bytes:
    pod = pod or session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]})
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
        "namespace": "sessions", "userInfo": {"username": "system:apiserver"}, "object": pod}}).encode()


def post(path: str, body: bytes, *, version: str = "1.1", extra: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + extra + b"\r\n" + body


class Reader:
    """Reads HTTP/1.1 responses off a TLS socket, one at a time, as a client would."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.tls.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a whole response head: {self.buffer!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode().split("\r\n")
        headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("closed inside a response body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """True once the server has hung up (EOF or reset), within the socket's timeout."""
        try:
            return not self._fill()
        except (ConnectionResetError, ssl.SSLError):
            return True


def connect(server: WebhookProcess, timeout: float = 10) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return server.context().wrap_socket(raw, server_hostname="127.0.0.1")


def _tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(send queue, receive queue) in bytes of the IPv4 socket local_port -> remote_port, from /proc/net/tcp."""
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
                tx, rx = queues.split(":")
                return int(tx, 16), int(rx, 16)
    return None


def server_has_read(tls: ssl.SSLSocket, server_port: int) -> bool:
    """Everything we sent was delivered (our send queue is empty) and read by the server
    process (its socket's receive queue is empty): the kernel's word, not a guess."""
    client_port = tls.getsockname()[1]
    ours, theirs = _tcp_queues(client_port, server_port), _tcp_queues(server_port, client_port)
    return ours is not None and theirs is not None and ours[0] == 0 and theirs[1] == 0


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def uid_of(body: bytes) -> str:
    return json.loads(body)["response"]["uid"]


def test_the_api_servers_query_string_is_served(server: WebhookProcess) -> None:
    """The API server calls ``/mutate?timeout=10s``: the path, not the URL, picks the endpoint."""
    with connect(server) as tls:
        tls.sendall(post("/mutate?timeout=10s", review("q-1")))
        status, headers, body = Reader(tls).response()
    assert status == 200 and headers["content-type"] == "application/json" and uid_of(body) == "q-1"


def test_pipelined_admissions_are_answered_in_order_on_one_connection(server: WebhookProcess) -> None:
    with connect(server) as tls:
        tls.sendall(b"".join(post("/mutate", review(f"p-{index}")) for index in range(20)))
        reader = Reader(tls)
        uids = [uid_of(reader.response()[2]) for _ in range(20)]
        tls.sendall(post("/mutate", review("after")))  # and the connection is still good
        assert uid_of(reader.response()[2]) == "after"
    assert uids == [f"p-{index}" for index in range(20)]


def test_answers_keep_their_order_across_the_fast_and_the_ordinary_route(server: WebhookProcess) -> None:
    """/metrics is served by Starlette in a task; an admission pipelined behind it must wait for it."""
    with connect(server) as tls:
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" + post("/mutate", review("behind-metrics"))
                    + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post("/mutate", review("behind-health")))
        reader = Reader(tls)
        first, second, third, fourth = (reader.response() for _ in range(4))
    assert first[0] == 200 and b"sortie_egress_admissions_total" in first[2]
    assert second[0] == 200 and uid_of(second[2]) == "behind-metrics"
    assert third == (200, third[1], b"ok\n")
    assert fourth[0] == 200 and uid_of(fourth[2]) == "behind-health"


def test_a_chunked_admission_body_is_assembled(server: WebhookProcess) -> None:
    body = review("chunked-1")
    pieces = [body[index:index + 97] for index in range(0, len(body), 97)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    with connect(server) as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for index in range(0, len(chunked), 300):  # in several TLS records
            tls.sendall(chunked[index:index + 300])
        status, _, reply = Reader(tls).response()
    assert status == 200 and uid_of(reply) == "chunked-1"


@pytest.mark.parametrize(("version", "extra"), [("1.1", b"Connection: close\r\n"), ("1.0", b"")])
def test_a_client_that_asks_to_close_gets_its_answer_then_the_close(server: WebhookProcess, version: str, extra: bytes) -> None:
    with connect(server) as tls:
        tls.sendall(post("/mutate", review("closing"), version=version, extra=extra))
        reader = Reader(tls)
        status, headers, body = reader.response()
        assert status == 200 and uid_of(body) == "closing" and headers.get("connection") == "close"
        assert reader.closed()


def test_an_oversized_body_closes_the_connection_after_the_413(server: WebhookProcess) -> None:
    with connect(server) as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 3145729\r\n\r\n")
        reader = Reader(tls)
        status, headers, body = reader.response()
        assert status == 413 and headers["connection"] == "close" and b"3145728" in body
        assert reader.closed()


def test_a_malformed_review_on_the_fast_path_keeps_the_connection(server: WebhookProcess) -> None:
    with connect(server) as tls:
        tls.sendall(post("/mutate", b"{not json") + post("/mutate", review("next")))
        reader = Reader(tls)
        status, headers, body = reader.response()
        assert status == 400 and headers["content-type"].startswith("text/plain") and b"bad AdmissionReview" in body
        assert uid_of(reader.response()[2]) == "next"


def test_expect_100_continue_takes_the_ordinary_route_and_is_answered(server: WebhookProcess) -> None:
    """The fast path does not speak 100-continue: were it to take this request, the client would
    wait for the interim answer and the server for the body until the read deadline."""
    body = review("expecting")
    with connect(server) as tls:
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        reader = Reader(tls)
        while b"\r\n\r\n" not in reader.buffer:
            assert reader._fill(), "closed before the interim answer"
        assert reader.buffer.startswith(b"HTTP/1.1 100 ")
        reader.buffer = reader.buffer.split(b"\r\n\r\n", 1)[1]
        tls.sendall(body)
        status, _, reply = reader.response()
    assert status == 200 and uid_of(reply) == "expecting"


def test_idle_connections_are_closed_after_the_keep_alive(tmp_path: Path) -> None:
    generate_certs(tmp_path / "c")
    server = WebhookProcess(tmp_path / "c", tmp_path / "log", extra_args=("--keep-alive", "1")).start()
    try:
        with connect(server) as tls:
            tls.sendall(post("/mutate", review("then-idle")))
            reader = Reader(tls)
            assert uid_of(reader.response()[2]) == "then-idle"
            answered = time.monotonic()
            tls.settimeout(5)
            assert reader.closed(), "an idle connection outlived its keep-alive"
            idle = time.monotonic() - answered
        assert 0.9 <= idle <= 2.5, f"closed after {idle:.2f} s for a 1 s keep-alive"
        with connect(server) as busy:  # a connection in use is not cut by the same sweep
            reader = Reader(busy)
            for index in range(8):
                busy.sendall(post("/mutate", review(f"busy-{index}")))
                assert uid_of(reader.response()[2]) == f"busy-{index}"
                time.sleep(0.3)  # paced requests: each well inside the keep-alive, 2.4 s in all
    finally:
        server.stop()


def test_graceful_shutdown_answers_an_admission_it_has_begun_reading(tmp_path: Path) -> None:
    generate_certs(tmp_path / "c")
    server = WebhookProcess(tmp_path / "c", tmp_path / "log").start()
    try:
        body = review("in-flight")
        head, half = post("/mutate", body)[: -len(body)], len(body) // 2
        with connect(server) as tls:
            tls.sendall(head + body[:half])
            wait_for(lambda: server_has_read(tls, server.port), 10, "the server to read the first half")
            assert server.process is not None
            os.killpg(server.process.pid, signal.SIGTERM)
            wait_for(lambda: not accepting(server.port), 10, "the server to stop accepting (shutdown begun)")
            tls.sendall(body[half:])
            reader = Reader(tls)
            status, headers, reply = reader.response()
            assert status == 200 and uid_of(reply) == "in-flight" and headers.get("connection") == "close"
            assert reader.closed()
        assert server.process.wait(15) in (0, -signal.SIGTERM)
    finally:
        server.stop()


def test_http_response_is_one_buffer_with_exact_framing() -> None:
    reply = Reply(200, b'{"a":1}', JSON)
    assert http_response(reply, close=False) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}")
    closing = http_response(Reply(413, b"too big\n", TEXT, close=True), close=True)
    assert closing.startswith(b"HTTP/1.1 413 ") and b"\r\nconnection: close\r\n\r\ntoo big\n" in closing
    assert b"content-length: 8\r\n" in closing


def test_a_declared_length_over_the_limit_or_not_a_number_is_too_much() -> None:
    assert declares_too_much([(b"host", b"x"), (b"content-length", b"42")], 42) is False
    assert declares_too_much([(b"host", b"x"), (b"content-length", b"43")], 42) is True
    assert declares_too_much([(b"content-length", b"-1")], 42) is True
    assert declares_too_much([(b"host", b"x"), (b"transfer-encoding", b"chunked")], 42) is False


def test_a_client_that_never_reads_its_answers_is_stopped_from_sending(server: WebhookProcess) -> None:
    """Backpressure: answers the client does not read must not pile up in the server without bound.

    Once its write buffer is full the server stops reading this connection, so the client's
    sends block. Without that, the server would keep reading, answering and buffering: all
    64 MiB of requests below would go through and leave ~15 MiB of answers in its memory.
    """
    request = post("/mutate", review("never-read"))
    batch = request * 64
    sent = 0
    with connect(server, timeout=3) as tls:
        try:
            while sent < 64 * 1024 * 1024:
                tls.sendall(batch)
                sent += len(batch)
        except (TimeoutError, socket.timeout):
            pass
    assert sent < 32 * 1024 * 1024, f"the server kept reading: {sent // 1024} KiB of requests accepted"
    status, _ = _post_one(server)
    assert status == 200  # and the server serves others meanwhile


def _post_one(server: WebhookProcess) -> tuple[int, bytes]:
    with connect(server) as tls:
        tls.sendall(post("/mutate", review("other")))
        status, _, body = Reader(tls).response()
    return status, body
