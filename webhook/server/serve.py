"""Running the webhook: uvicorn with our TLS context and the certificate watcher."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn

from .app import WebhookSettings, create_app
from .tls import ReloadingTLS

log = logging.getLogger("sortie.server")


@dataclass
class ServeOptions:
    host: str
    port: int
    cert_file: str
    key_file: str
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    cert_poll_seconds: float = 1.0
    keep_alive_seconds: int = 60
    max_connections: int = 2048


def uvicorn_config(options: ServeOptions, tls: ReloadingTLS) -> uvicorn.Config:
    config = uvicorn.Config(
        create_app(options.webhook),
        host=options.host,
        port=options.port,
        loop="uvloop",
        http="httptools",
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
    tls = ReloadingTLS(options.cert_file, options.key_file)
    metrics = options.webhook.metrics

    async def watch_certificates() -> None:
        while True:
            await asyncio.sleep(options.cert_poll_seconds)
            before = tls.failed_reloads
            if tls.reload_if_changed():
                metrics.cert_reloads.labels("ok").inc()
            elif tls.failed_reloads != before:
                metrics.cert_reloads.labels("failed").inc()

    server = uvicorn.Server(uvicorn_config(options, tls))
    watcher = asyncio.create_task(watch_certificates())
    try:
        log.info("serving admission on https://%s:%s", options.host, options.port)
        await server.serve(sockets=sockets)
    finally:
        watcher.cancel()
