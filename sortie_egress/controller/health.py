"""The controller's HTTP endpoints: /metrics, and probes that say something.

``/metrics`` answering proves only that a thread can serve HTTP. The probes
report what the kubelet should act on: ``/readyz`` is 503 until every cache
has synced, ``/healthz`` is 503 when an informer or worker thread has died or
queued work is not being worked off (a restart is the remedy for both).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class Probed(Protocol):
    metrics: Any

    def ready(self) -> tuple[bool, str]: ...

    def healthy(self) -> tuple[bool, str]: ...


def _handler(target: Probed) -> type[BaseHTTPRequestHandler]:
    probes: dict[str, Callable[[], tuple[bool, str]]] = {"/readyz": target.ready, "/healthz": target.healthy}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(target.metrics.registry), CONTENT_TYPE_LATEST)
            elif path in probes:
                ok, detail = probes[path]()
                self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # probes every few seconds: not worth a log line each
            pass

    return Handler


def serve_health(host: str, port: int, target: Probed) -> ThreadingHTTPServer:
    """Serve in a daemon thread; returns the server (its port, when 0 was asked for)."""
    server = ThreadingHTTPServer((host, port), _handler(target))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
