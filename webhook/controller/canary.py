"""The enforcement canary the controller serves (enforcement.py has the why).

Every replica listens, leader or not: the canary Service spreads session pods' probes over
all of them. Both ports answer every connection with the same token and close it; what
tells them apart is only what session policies allow (the open port) and block (the
closed one). The addresses that policies must cut out are the canary pods' own, followed
through the API, since pod addresses change with every rollout.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from typing import Any

from ..enforcement import CANARY_POD_LABELS, CANARY_TOKEN, closed_port
from ..render import Canary

log = logging.getLogger("sortie.controller.canary")

CANARY_SELECTOR = ",".join(f"{key}={value}" for key, value in sorted(CANARY_POD_LABELS.items()))


def _listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(512)
    server.setblocking(False)
    return server


def serve_canary(host: str, port: int, stop: threading.Event) -> threading.Thread:
    """Answer on ``port`` and the next one until ``stop``; binding errors raise here, at start."""
    servers = [_listener(host, port), _listener(host, closed_port(port))]
    selector = selectors.DefaultSelector()
    for server in servers:
        selector.register(server, selectors.EVENT_READ)

    def loop() -> None:
        try:
            while not stop.is_set():
                for key, _ in selector.select(timeout=0.5):
                    try:
                        connection, _peer = key.fileobj.accept()  # type: ignore[union-attr]
                    except OSError:
                        continue  # the client gave up meanwhile
                    try:
                        connection.setblocking(True)
                        connection.settimeout(1.0)
                        connection.sendall(CANARY_TOKEN)
                    except OSError:
                        pass
                    finally:
                        connection.close()
        finally:
            for server in servers:
                server.close()

    thread = threading.Thread(target=loop, name="canary", daemon=True)
    thread.start()
    log.info("enforcement canary on %s ports %d (open) and %d (closed)", host, port, closed_port(port))
    return thread


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


__all__ = ["CANARY_SELECTOR", "canary_for", "project_canary_pod", "serve_canary"]
