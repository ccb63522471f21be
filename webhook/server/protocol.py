"""uvicorn's httptools protocol with a read deadline, against slow-loris clients.

uvicorn closes connections that idle between requests, but has no deadline
for reading a request: a client dribbling one header byte every few seconds
holds a connection (and a slot of ``limit_concurrency``) forever. Here every
request must arrive whole (headers and body) within ``request_timeout`` of its
first byte, or of the connection for the first request; otherwise the
connection is closed. The API server sends a whole review at once, so honest
clients never come near it.

The deadline is a number on the connection, checked by one sweep per event
loop every half second: the hot path pays a float assignment per request, not
a timer.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REQUEST_TIMEOUT = 10.0
SWEEP_SECONDS = 0.5

_connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[DeadlineHttpToolsProtocol]] = weakref.WeakKeyDictionary()


def _sweep(loop: asyncio.AbstractEventLoop) -> None:
    now = loop.time()
    for protocol in list(_connections.get(loop, ())):
        deadline = protocol.read_deadline
        if deadline is not None and deadline < now and not protocol.transport.is_closing():
            protocol.transport.close()
    if _connections.get(loop):
        loop.call_later(SWEEP_SECONDS, _sweep, loop)


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    request_timeout = REQUEST_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_deadline: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.read_deadline = self.loop.time() + self.request_timeout
        live = _connections.setdefault(self.loop, set())
        if not live:
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.loop)
        live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        _connections.get(self.loop, set()).discard(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.read_deadline is None:  # the first request keeps the deadline the connection started
            self.read_deadline = self.loop.time() + self.request_timeout

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.read_deadline = None  # from here on uvicorn's keep-alive timeout governs an idle connection


def protocol_with(request_timeout: float) -> type[DeadlineHttpToolsProtocol]:
    """A protocol class with this deadline (uvicorn takes a class, not an instance)."""
    return type("ConfiguredDeadlineHttpToolsProtocol", (DeadlineHttpToolsProtocol,), {"request_timeout": request_timeout})
