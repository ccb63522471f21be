"""The enforcement canary the controller serves (enforcement_wait/injection.py has the why, enforcement_wait/protocol.py
what makes one round of the wait sound).

Every replica listens, leader or not. Both ports answer every connection with the token and
close it; the open port then adds a status line about this very endpoint: the address it was
reached on, the address the connection came from, its instance, how long ago its closed
listener last accepted the canary's own loopback connection, and its listen queues' overflow
count. The wait believes a refused or unanswered closed port only between two such answers
that show the closed listener up and never overflowing.

The open port answers inside TLS, with the webhook's serving certificate (the controller follows
its Secret and hands each version to the canary process): the wait believes only that
certificate (enforcement_wait/pin.py). A client that sends no TLS ClientHello within ``LEGACY_GRACE`` (a
wait admitted before the canary spoke TLS, whose init container reruns after a node restart)
gets the answer in the clear as before. Each open-port connection is answered on a worker thread
(at most ``MAX_IN_FLIGHT`` at once, beyond that closed at once), so a client that stalls its
handshake holds only its own connection.

The canary runs in a process of its own (``start_canary``): the controller's workers, relists
and reconciles share one interpreter lock, and a stall there must not be what a wait measures.
The listeners are bound by the controller (so a port in use fails it at start) and handed over.
The addresses that policies must cut out are the canary pods' own, followed through the API,
since pod addresses change with every rollout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from sortie_egress import logs
from sortie_egress.enforcement_wait.protocol import CANARY_TOKEN, SELF_CHECK_INTERVAL, CanaryStatus
from sortie_egress.enforcement_wait.injection import CANARY_POD_LABELS, closed_port
from sortie_egress.render.session import Canary
from sortie_egress.server.tls import ReloadingTLS
from sortie_egress.wait import Trust, ask  # the wait's own reader: the controller checks its canary as a session pod would

log = logging.getLogger("sortie.controller.canary")

CANARY_SELECTOR = ",".join(f"{key}={value}" for key, value in sorted(CANARY_POD_LABELS.items()))
#: What the status says when the closed listener has never accepted the self-check.
NEVER = 1e9
_NETSTAT = "/proc/net/netstat"
#: How long an open-port client may take to start its TLS handshake before it is taken for a wait
#: that speaks the protocol in the clear.
LEGACY_GRACE = 0.1
TLS_HANDSHAKE_RECORD = 0x16
WORKERS = 16
#: Open-port connections being answered at once; more are closed unanswered (a flood holds
#: waits back, it never lets one through).
MAX_IN_FLIGHT = 256


def _listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(512)
    server.setblocking(False)
    return server


def loopback_for(host: str) -> str:
    """Where the canary itself reaches a listener bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def listen_overflows(path: str = _NETSTAT) -> int:
    """The network namespace's TcpExt ListenOverflows + ListenDrops (-1 where they cannot be read):
    a SYN a full queue dropped looks, to the client, just like a dataplane that drops."""
    try:
        with open(path, encoding="ascii") as stats:
            lines = stats.read().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines, lines[1:]):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            try:
                return int(table.get("ListenOverflows", 0)) + int(table.get("ListenDrops", 0))
            except ValueError:
                return -1
    return -1


class CanaryServer:
    """Both listeners, their accept loop and the closed listener's self-check. ``tls``: the
    certificate the open port proves itself with (None: in the clear only, as in unit tests)."""

    def __init__(self, open_listener: socket.socket, closed_listener: socket.socket,
                 tls: ReloadingTLS | None = None) -> None:
        self.open_listener, self.closed_listener = open_listener, closed_listener
        self.tls = tls
        self._in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self.instance = secrets.token_hex(8)
        self.generation = 1  # the closed listener is opened once per instance
        self._checked_at: float | None = None
        host, port = closed_listener.getsockname()[:2]
        self._self_check_address = (loopback_for(host), port)

    def status(self, connection: socket.socket) -> CanaryStatus:
        checked_at = self._checked_at
        return CanaryStatus(instance=self.instance, generation=self.generation,
                            checked_ago=NEVER if checked_at is None else round(time.monotonic() - checked_at, 4),
                            overflows=listen_overflows(), local=connection.getsockname()[0],
                            peer=connection.getpeername()[0])

    def self_check_once(self, timeout: float = 0.2) -> bool:
        """Connect to our own closed listener over loopback: it is up and its queue has room."""
        try:
            with socket.create_connection(self._self_check_address, timeout=timeout):
                pass
        except OSError:
            return False
        self._checked_at = time.monotonic()
        return True

    def _self_check(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.self_check_once()
            stop.wait(SELF_CHECK_INTERVAL)

    def serve(self, stop: threading.Event) -> None:
        """Accept and answer until ``stop``; the listeners are closed on the way out."""
        threading.Thread(target=self._self_check, args=(stop,), name="canary-self-check", daemon=True).start()
        selector = selectors.DefaultSelector()
        for server in (self.open_listener, self.closed_listener):
            selector.register(server, selectors.EVENT_READ)
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="canary-open") as workers:
            try:
                while not stop.is_set():
                    for key, _ in selector.select(timeout=0.5):
                        self._accept(key.fileobj, workers)  # type: ignore[arg-type]
            finally:
                for server in (self.open_listener, self.closed_listener):
                    server.close()

    def _accept(self, server: socket.socket, workers: ThreadPoolExecutor) -> None:
        try:
            connection, _peer = server.accept()
        except OSError:
            return  # the client gave up meanwhile
        connection.setblocking(True)
        connection.settimeout(1.0)
        if server is self.closed_listener:  # a few bytes into an empty send buffer: never blocks
            self._reply(connection, CANARY_TOKEN)
        elif self._in_flight.acquire(blocking=False):
            workers.submit(self._answer_open, connection)
        else:
            connection.close()

    @staticmethod
    def _reply(connection: socket.socket, reply: bytes) -> None:
        try:
            connection.sendall(reply)
        except OSError:
            pass
        finally:
            connection.close()

    def _answer_open(self, connection: socket.socket) -> None:
        """The token and this endpoint's status: inside TLS to a client that starts a handshake,
        in the clear to one that says nothing (an older wait)."""
        try:
            try:
                status = self.status(connection).encode()
                starts_tls = self._starts_tls(connection)
            except OSError:
                connection.close()
                return
            if not starts_tls:
                self._reply(connection, CANARY_TOKEN + status)
            elif self.tls is None:
                connection.close()  # no certificate to prove anything with: the handshake fails
            else:
                self._reply_tls(connection, self.tls, CANARY_TOKEN + status)
        finally:
            self._in_flight.release()

    @staticmethod
    def _starts_tls(connection: socket.socket) -> bool:
        readable, _, _ = select.select([connection], [], [], LEGACY_GRACE)
        if not readable:
            return False
        first = connection.recv(1, socket.MSG_PEEK)
        return first[:1] == bytes([TLS_HANDSHAKE_RECORD])

    @staticmethod
    def _reply_tls(connection: socket.socket, tls: ReloadingTLS, reply: bytes) -> None:
        try:
            wrapped = tls.listener.wrap_socket(connection, server_side=True)
        except OSError:
            connection.close()
            return
        CanaryServer._reply(wrapped, reply)


def serve_canary(host: str, port: int, stop: threading.Event, tls: ReloadingTLS | None = None) -> threading.Thread:
    """In this process, in a thread (tests): ports ``port`` and the next."""
    server = CanaryServer(_listener(host, port), _listener(host, closed_port(port)), tls)
    thread = threading.Thread(target=server.serve, args=(stop,), name="canary", daemon=True)
    thread.start()
    return thread


class CanaryProcess:
    """The canary in a child process, on listeners bound here (binding errors raise at start).
    Certificates reach it over its standard input (``use_certificate``), one JSON line each."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.trust: Trust | None = None
        self._feed = threading.Lock()
        listeners = [_listener(host, port), _listener(host, closed_port(port))]
        fds = [listener.fileno() for listener in listeners]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sortie_egress.controller.canary", "--open-fd", str(fds[0]), "--closed-fd", str(fds[1])],
            pass_fds=fds, stdin=subprocess.PIPE)
        for listener in listeners:
            listener.close()
        log.info("enforcement canary (pid %d) on %s ports %d (open) and %d (closed)", self.process.pid, host, port,
                 closed_port(port))

    def use_certificate(self, cert_pem: bytes, key_pem: bytes, trust: Trust | None = None) -> None:
        """Hand the open port a certificate (the serving Secret's, as it changes); ``trust``: what
        the health check then requires of it, as a wait would."""
        line = json.dumps({"cert": cert_pem.decode("ascii"), "key": key_pem.decode("ascii")}) + "\n"
        with self._feed:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(line.encode("ascii"))
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError):
                log.warning("the canary process is gone: its certificate was not handed over")
                return
            self.trust = trust

    def healthy(self, timeout: float = 1.0) -> tuple[bool, str]:
        """Alive, answering on the open port (proving who it is, once it has a certificate), and
        its closed listener seen up lately."""
        if self.process.poll() is not None:
            return False, f"the canary process exited ({self.process.returncode})"
        answer = ask(loopback_for(self.host), self.port, timeout, self.trust)
        status = answer.status
        if status is None:
            return False, f"the canary gave no status on its open port ({answer.error})"
        if status.checked_ago > 5.0:
            return False, f"the canary's closed listener last accepted its self-check {status.checked_ago:.1f} s ago"
        return True, "ok"

    def stop(self) -> None:
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def project_canary_pod(pod: dict[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    addresses = [entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, dict)]
    if not addresses and status.get("podIP"):
        addresses = [status["podIP"]]
    return {"metadata": {key: metadata[key] for key in ("name", "namespace", "uid", "resourceVersion") if key in metadata},
            "addresses": [address for address in addresses if isinstance(address, str)]}


def canary_for(namespace: str, port: int, pods: list[dict[str, Any]]) -> Canary:
    addresses = sorted({address for pod in pods for address in pod.get("addresses", [])})
    return Canary(namespace, tuple(sorted(CANARY_POD_LABELS.items())), port, tuple(addresses))


def follow_certificates(feed: IO[bytes], tls: ReloadingTLS) -> None:
    """Each JSON line from the controller is a certificate pair for the open port."""
    for line in feed:
        try:
            pair = json.loads(line)
            tls.load_pem(pair["cert"].encode("ascii"), pair["key"].encode("ascii"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignored an unreadable certificate line from the controller: %s", type(exc).__name__)


def main(argv: list[str] | None = None) -> int:
    """The child: serve the two listeners it was handed until SIGTERM or its parent is gone."""
    parser = argparse.ArgumentParser(prog="python -m sortie_egress.controller.canary")
    parser.add_argument("--open-fd", type=int, required=True)
    parser.add_argument("--closed-fd", type=int, required=True)
    args = parser.parse_args(argv)
    logs.configure("INFO")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    # Until the controller hands over the serving certificate, a throwaway one: no wait believes it.
    tls = ReloadingTLS.awaiting_secret()
    threading.Thread(target=follow_certificates, args=(sys.stdin.buffer, tls), name="canary-certificates",
                     daemon=True).start()
    server = CanaryServer(socket.socket(fileno=args.open_fd), socket.socket(fileno=args.closed_fd), tls)
    for listener in (server.open_listener, server.closed_listener):
        listener.setblocking(False)
    thread = threading.Thread(target=server.serve, args=(stop,), name="canary", daemon=True)
    thread.start()
    while not stop.is_set():
        if os.getppid() != parent:  # the controller is gone: so is its canary
            stop.set()
        stop.wait(0.5)
    thread.join(5)
    return 0


__all__ = ["CANARY_SELECTOR", "LEGACY_GRACE", "CanaryProcess", "CanaryServer", "canary_for", "follow_certificates",
           "listen_overflows", "loopback_for", "project_canary_pod", "serve_canary"]


if __name__ == "__main__":
    sys.exit(main())
