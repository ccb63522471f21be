"""Running the webhook: uvicorn with our TLS context and the certificate watcher."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import threading
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn

from sortie_egress import logs
from sortie_egress.server.app import WebhookSettings, create_app
from sortie_egress.server.fastpath import admission_protocol
from sortie_egress.server.tls import ReloadingTLS, file_stamp

log = logging.getLogger("sortie.server")


@dataclass
class ServeOptions:
    host: str
    port: int
    cert_file: str | None = None
    key_file: str | None = None
    #: (namespace, name) of a kubernetes.io/tls Secret to serve from instead of files.
    tls_secret: tuple[str, str] | None = None
    #: The CAs of the canary's certificate, when the pair comes from files (the wait is pinned to them).
    canary_ca_file: str | None = None
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


def pin_canary(settings: WebhookSettings, ca_pem: bytes | None, cert_pem: bytes | None, source: str) -> None:
    """Pin the injected wait to the canary's certificate (enforcement_wait/pin.py): its CAs and its name.
    An unusable pair keeps the previous pin; with none yet, the webhook stays not ready."""
    if settings.wait is None:
        return
    from dataclasses import replace

    from sortie_egress.enforcement_wait.pin import pin_from

    if ca_pem is None or cert_pem is None:
        log.error("%s has no %s: the injected wait cannot authenticate the canary", source,
                  "ca.crt" if ca_pem is None else "tls.crt")
        return
    try:
        pin = pin_from(ca_pem, cert_pem)
    except ValueError as exc:
        log.error("%s: %s", source, exc)
        return
    if (pin.ca_bundle, pin.identity) != (settings.wait.ca_bundle, settings.wait.identity):
        settings.wait = replace(settings.wait, ca_bundle=pin.ca_bundle, identity=pin.identity)
        log.info("injected waits believe a canary certificate for %s from %s", pin.identity, source)


def watch_secret(tls: ReloadingTLS, secret: tuple[str, str], kubeconfig: str | None,
                 settings: WebhookSettings | None = None) -> threading.Event:
    """Follow the serving Secret through the API: its pair to ``tls``, its CAs and name to the wait."""
    from sortie_egress.kube.secret_follower import follow_secret

    namespace, name = secret

    def changed(data: dict[str, bytes]) -> None:
        if "tls.crt" in data and "tls.key" in data:
            tls.load_pem(data["tls.crt"], data["tls.key"])
        if settings is not None:
            pin_canary(settings, data.get("ca.crt"), data.get("tls.crt"), f"Secret {namespace}/{name}")

    return follow_secret(namespace, name, kubeconfig, changed)


class PinnedFiles:
    """The wait's pin from files (--enforcement-ca and --tls-cert), read again when they change."""

    def __init__(self, settings: WebhookSettings, ca_file: str, cert_file: str) -> None:
        self.settings, self.files = settings, (Path(ca_file), Path(cert_file))
        self._stamps: tuple[object, ...] | None = None

    def refresh(self) -> None:
        stamps = tuple(file_stamp(path) for path in self.files)
        if stamps == self._stamps:
            return
        self._stamps = stamps
        try:
            ca_pem, cert_pem = (path.read_bytes() for path in self.files)
        except OSError as exc:
            log.error("cannot read the canary's pin: %s", exc)
            return
        pin_canary(self.settings, ca_pem, cert_pem, f"{self.files[0]} and {self.files[1]}")


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

    settings = options.webhook
    pinned_files: PinnedFiles | None = None
    if options.tls_secret is not None:
        tls = ReloadingTLS.awaiting_secret(on_reload=count)
        watch_secret(tls, options.tls_secret, options.kubeconfig, settings)
    else:
        assert options.cert_file and options.key_file
        tls = ReloadingTLS.from_files(options.cert_file, options.key_file, on_reload=count)
        if settings.wait is not None and options.canary_ca_file:
            pinned_files = PinnedFiles(settings, options.canary_ca_file, options.cert_file)
            pinned_files.refresh()
    # Not ready without a serving pair, nor while a wait would be injected that cannot tell our
    # canary from a look-alike.
    settings.ready = lambda: tls.ready and (settings.wait is None or settings.wait.pinned)

    async def watch_certificates() -> None:
        while tls.files is not None:  # a Secret is followed by its own watch, not polled
            await asyncio.sleep(options.cert_poll_seconds)
            tls.reload_if_changed()
            if pinned_files is not None:
                pinned_files.refresh()

    server = uvicorn.Server(uvicorn_config(options, tls))
    watcher = asyncio.create_task(watch_certificates())
    # Everything imported and built so far (the kubernetes client alone is hundreds of thousands
    # of objects) lives as long as the process: out of the collector's full passes, which would
    # otherwise walk it all on an admission's hot path now and then.
    gc.collect()
    gc.freeze()
    try:
        log.info("serving admission on https://%s:%s", options.host, options.port)
        with logs.batched_per_loop_turn(asyncio.get_running_loop()):
            await server.serve(sockets=sockets)
    finally:
        watcher.cancel()
