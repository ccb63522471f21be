"""Running the webhook: uvicorn with our TLS context and the certificate watcher."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn

from .. import logs
from .app import WebhookSettings, create_app
from .fastpath import admission_protocol
from .tls import ReloadingTLS

log = logging.getLogger("sortie.server")


@dataclass
class ServeOptions:
    host: str
    port: int
    cert_file: str | None = None
    key_file: str | None = None
    #: (namespace, name) of a kubernetes.io/tls Secret to serve from instead of files.
    tls_secret: tuple[str, str] | None = None
    kubeconfig: str | None = None
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    cert_poll_seconds: float = 1.0
    keep_alive_seconds: float = 120.0  # above the API server's 90 s idle timeout: see serve --help
    max_connections: int = 2048
    request_timeout: float = 10.0


def uvicorn_config(options: ServeOptions, tls: ReloadingTLS) -> uvicorn.Config:
    app = create_app(options.webhook)
    config = uvicorn.Config(
        app.asgi,
        host=options.host,
        port=options.port,
        loop="uvloop",
        http=admission_protocol(options.request_timeout, app.endpoints, options.webhook.body_budget),
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # the API server dials us directly; no proxy headers to trust
        date_header=False,
        # The API server keeps connections open and reuses them; idle ones go after this.
        timeout_keep_alive=options.keep_alive_seconds,
        limit_concurrency=options.max_connections,
        timeout_graceful_shutdown=10,
    )
    config.load()
    # Our own context (TLS 1.2+, AEAD suites, live rotation) instead of uvicorn's.
    config.ssl = tls.listener
    return config


def watch_secret(tls: ReloadingTLS, secret: tuple[str, str], kubeconfig: str | None) -> threading.Event:
    """Follow one Secret through the API (no kubelet sync delay) and hand its pair to ``tls``."""
    import base64
    from functools import partial

    from kubernetes import client

    from ..kube.client import api_client
    from ..kube.informer import Informer, Store

    namespace, name = secret
    core = client.CoreV1Api(api_client(kubeconfig, connections=2))
    stop = threading.Event()

    def changed(obj: dict[str, Any]) -> None:
        data = obj.get("data") or {}
        if "tls.crt" in data and "tls.key" in data:
            tls.load_pem(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))

    informer = Informer(f"secret-{name}", partial(core.list_namespaced_secret, namespace, field_selector=f"metadata.name={name}"),
                        lambda obj: obj, Store(), changed, stop, namespace)
    informer.start()
    return stop


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: its C TLS and transports cost a fraction of asyncio's pure-Python sslproto."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return None
    return uvloop.new_event_loop


def run(options: ServeOptions) -> None:
    """Serve on uvloop (``asyncio.run`` would silently pick the slow default loop)."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(options))


async def serve(options: ServeOptions, sockets: list[socket.socket] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers), reloading certificates as they change."""
    metrics = options.webhook.metrics

    def count(result: str) -> None:
        metrics.cert_reloads.labels(result).inc()

    if options.tls_secret is not None:
        tls = ReloadingTLS.awaiting_secret(on_reload=count)
        watch_secret(tls, options.tls_secret, options.kubeconfig)
    else:
        assert options.cert_file and options.key_file
        tls = ReloadingTLS.from_files(options.cert_file, options.key_file, on_reload=count)
    options.webhook.ready = lambda: tls.ready

    async def watch_certificates() -> None:
        while tls.files is not None:  # a Secret is followed by its own watch, not polled
            await asyncio.sleep(options.cert_poll_seconds)
            tls.reload_if_changed()

    server = uvicorn.Server(uvicorn_config(options, tls))
    watcher = asyncio.create_task(watch_certificates())
    try:
        log.info("serving admission on https://%s:%s", options.host, options.port)
        with logs.batched_per_loop_turn(asyncio.get_running_loop()):
            await server.serve(sockets=sockets)
    finally:
        watcher.cancel()
