"""The admission fast path: answering POST /mutate inside the protocol.

uvicorn serves a request by building an ASGI scope, starting a task for the
application, and writing the status line and the body as two transport
writes: two TLS records and two send calls. For an admission, whose answer is
pure CPU work on a body that is already in memory, that machinery is most of
the cost (measured with bench/admission.py: 39 us per request for uvicorn
answering a fixed body, 26 us for the same answer written from here). So when
a request is an admission POST, the protocol collects the body, calls the
endpoint's synchronous ``answer`` and writes status line, headers and payload
in one write: no task, no coroutine, no second TLS record.

Everything else, and every case the fast path does not fully own, takes
uvicorn's ordinary route to the Starlette application, which serves the same
paths with the same endpoint objects and so gives the same answers:

- a response still in flight on this connection (pipelining: answers keep
  their order);
- ``Expect: 100-continue`` and upgrade requests;
- the connection or task limit reached (uvicorn answers 503).

Bodies held by all connections together are bounded by one budget (budget.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from sortie_egress.server.app import BUSY, AdmissionEndpoint, Reply, declares_too_much
from sortie_egress.server.budget import BodyBudget
from sortie_egress.server.protocol import DeadlineHttpToolsProtocol


def http_response(reply: Reply, close: bool) -> bytes:
    """The whole HTTP/1.1 response as one buffer: one TLS record, one send."""
    return b"%scontent-type: %s\r\ncontent-length: %d\r\n%s\r\n%s" % (
        STATUS_LINE[reply.status],
        reply.content_type,
        len(reply.payload),
        b"connection: close\r\n" if close else b"",
        reply.payload,
    )


class AdmissionProtocol(DeadlineHttpToolsProtocol):
    """uvicorn's httptools protocol (with the read deadline) that answers admissions itself."""

    #: Admission endpoints by request path; set on a subclass by ``admission_protocol``.
    endpoints: Mapping[bytes, AdmissionEndpoint] = {}
    #: The bytes every connection's admission body holds, together (budget.py); shared by the subclass.
    body_budget: BodyBudget = BodyBudget()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admission: AdmissionEndpoint | None = None
        self.admission_chunks: list[bytes] = []
        self.admission_size = 0
        self.admission_started = 0.0
        self.admission_keep_alive = True
        #: Set once this connection has been answered with "connection: close": ignore the rest.
        self.hung_up = False
        self.close_when_answered = False
        self.paused_for_writes = False

    def _fast_endpoint(self) -> AdmissionEndpoint | None:
        endpoint = self.endpoints.get(self.url.partition(b"?")[0])  # the API server adds ?timeout=10s
        if endpoint is None or self.parser.get_method() != b"POST":
            return None
        if self.expect_100_continue or self.parser.should_upgrade():
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # an earlier answer is still being written: keep the order
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            return None  # uvicorn answers 503
        return endpoint

    def data_received(self, data: bytes) -> None:
        if self.hung_up:
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        """uvicorn builds the request's ASGI scope here; that waits for ``_take_ordinary_route``,
        since only the ordinary route reads it (0.5 us of every admission otherwise)."""
        self.url = b""
        self.headers = []
        self.expect_100_continue = False
        self.request_begun()

    def _take_ordinary_route(self) -> None:
        url, headers, expect_100_continue = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)  # uvicorn's own scope, as if built at the first byte
        self.url, self.headers, self.expect_100_continue = url, headers, expect_100_continue
        self.scope["headers"] = headers
        super().on_headers_complete()

    def on_headers_complete(self) -> None:
        if self.hung_up:
            return
        endpoint = self.admission = self._fast_endpoint()
        if endpoint is None:
            self._take_ordinary_route()
            return
        self.admission_started = time.perf_counter()
        self.admission_chunks = []
        self.admission_size = 0
        self.admission_keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        if declares_too_much(self.headers, endpoint.max_body_bytes):
            self._send(endpoint.too_large(self.admission_started))  # refused before the body is read

    def on_body(self, body: bytes) -> None:
        if self.hung_up:
            return
        endpoint = self.admission
        if endpoint is None:
            super().on_body(body)
            return
        if self.admission_size + len(body) > endpoint.max_body_bytes:
            self._give_back_body()
            self._send(endpoint.too_large(self.admission_started))
            return
        if not self.body_budget.take(len(body)):
            self._give_back_body()
            self._send(BUSY)
            return
        self.admission_size += len(body)
        self.admission_chunks.append(body)

    def _give_back_body(self) -> None:
        self.body_budget.give_back(self.admission_size)
        self.admission_size = 0
        self.admission_chunks = []

    def connection_lost(self, exc: Exception | None) -> None:
        self._give_back_body()
        super().connection_lost(exc)

    def on_message_complete(self) -> None:
        if self.hung_up:
            return
        endpoint = self.admission
        if endpoint is None:
            super().on_message_complete()
            return
        self.request_read()
        chunks, self.admission_chunks, self.admission = self.admission_chunks, [], None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            self._send(endpoint.answer(body, self.admission_started))
        finally:
            self._give_back_body()

    def _send(self, reply: Reply) -> None:
        close = reply.close or not self.admission_keep_alive or self.close_when_answered
        self.transport.write(http_response(reply, close))
        self.server_state.total_requests += 1
        if close:
            self.hung_up = True
            self.admission = None
            self.transport.close()
            return
        if self.flow.write_paused and not self.paused_for_writes:
            # The client is not reading its answers: stop reading its requests until it does.
            self.paused_for_writes = True
            self.flow.pause_reading()
        # Idle from here: the deadline sweep closes the connection if no request begins in time.
        self.idle_deadline = self.loop.time() + self.timeout_keep_alive

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.paused_for_writes:
            self.paused_for_writes = False
            self.flow.resume_reading()

    def shutdown(self) -> None:
        """Graceful shutdown: an admission half read is answered first, then the connection closes."""
        if self.admission is not None:
            self.close_when_answered = True
            return
        super().shutdown()


def admission_protocol(request_timeout: float, endpoints: Mapping[str, AdmissionEndpoint],
                       body_budget: BodyBudget | None = None) -> type[AdmissionProtocol]:
    """A protocol class for uvicorn (which takes a class, not an instance) bound to these endpoints,
    its connections sharing one body budget."""
    by_path = {path.encode("ascii"): endpoint for path, endpoint in endpoints.items()}
    return type("ConfiguredAdmissionProtocol", (AdmissionProtocol,), {
        "request_timeout": request_timeout, "endpoints": by_path, "body_budget": body_budget or BodyBudget()})

