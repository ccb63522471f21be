"""The Starlette application: routes, body limits, and the admission pipeline.

decode (review) -> decide (mutate, pure) -> encode (response).
Every failure is answered: a malformed envelope with 400, an oversized one
with 413, a wrong method with 405, and a bug in a decision with the answer
the endpoint's failurePolicy would give anyway (the mutating webhook fails
closed) instead of a 500 the API server would turn into the same thing less
clearly. Tamper protection is not here: it runs inside the API server as
ValidatingAdmissionPolicies (sortie_egress/protection/tamper.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sortie_egress import logs
from sortie_egress.admission.memo import EncodedAnswer, encoded, memoised_mutation
from sortie_egress.admission.mutate import mutate_pod
from sortie_egress.admission.response import Decision
from sortie_egress.admission.review import AdmissionRequest, ReviewError, ReviewRequest, admission_request, decode_request
from sortie_egress.backends import DEFAULT_BACKEND
from sortie_egress.constants import MAX_REVIEW_BYTES
from sortie_egress.enforcement_wait.injection import EnforcementWait
from sortie_egress.server.budget import BodyBudget
from sortie_egress.server.metrics import WebhookMetrics

log = logging.getLogger("sortie.webhook")
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


@dataclass
class WebhookSettings:
    """What the operator decides about admission."""

    max_body_bytes: int = MAX_REVIEW_BYTES
    metrics: WebhookMetrics = field(default_factory=WebhookMetrics)
    #: False while there is no real serving certificate yet (it comes from a Secret).
    ready: Callable[[], bool] = field(default=lambda: True)
    #: The init container that holds session pods back until enforcement is seen (CONTRACT §6).
    wait: EnforcementWait | None = None
    #: What the cluster enforces with (backends/): admission refuses what it cannot enforce exactly.
    backend: str = DEFAULT_BACKEND
    #: The bytes of admission bodies all connections hold at once, on both routes (budget.py).
    body_budget: BodyBudget = field(default_factory=BodyBudget)


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def declares_too_much(headers: list[tuple[bytes, bytes]], limit: int) -> bool:
    """A Content-Length (lower-cased header names, as uvicorn gives them) over ``limit``, or not a number.

    Both routes refuse on it before reading any of the body: the ASGI route
    here, the protocol fast path in server/fastpath.py.
    """
    for name, value in headers:
        if name == b"content-length":
            return not value.isdigit() or int(value) > limit
    return False


class OverBudget(Exception):
    """The bodies in flight, all connections together, would pass the budget (budget.py)."""


async def read_body(scope: Scope, receive: Receive, limit: int, budget: BodyBudget | None = None) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit``, or the shared budget.

    A declared Content-Length over the limit is refused before any of the
    body is read; a chunked body is refused at the chunk that crosses it. The
    bytes held count against ``budget`` until this returns or raises: a client
    can reach this route on purpose (``Expect: 100-continue``), so it must not
    be a way around the fast path's budget.
    """
    if declares_too_much(scope["headers"], limit):
        raise BodyTooLarge
    chunks = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if size + len(chunk) > limit:
                raise BodyTooLarge
            if budget is not None and not budget.take(len(chunk)):
                raise OverBudget
            size += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    finally:
        if budget is not None:
            budget.give_back(size)


async def respond(send: Send, status: int, payload: bytes, content_type: bytes, close: bool = False) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
    if close:
        # The rest of the body was never read: the connection cannot carry another request.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _object_name(request: ReviewRequest) -> str:
    if request.name:
        return request.name
    source = request.object or request.oldObject
    metadata = None if source is None else source.metadata
    if metadata is None:
        return ""
    return metadata.name or metadata.generateName or ""


class Reply(NamedTuple):
    """An HTTP answer as data, so the ASGI route and the protocol fast path send the same bytes."""

    status: int
    payload: bytes
    content_type: bytes
    #: The rest of the request was never read: the connection cannot carry another one.
    close: bool = False


#: The answer to a body past the shared budget: the API server counts it a failed call (and, with
#: failurePolicy Fail, refuses that one session pod); the connection closes, so its bytes go back.
BUSY = Reply(503, b"webhook busy: the request bodies in flight are over its memory budget\n", TEXT, close=True)


class AdmissionEndpoint:
    """One admission path: the I/O around a pure ``decide`` function.

    ``answer`` is synchronous and whole (decode, decide, encode, count, log),
    so it can be called from the protocol fast path without a task; the ASGI
    ``__call__`` wraps it for requests that take uvicorn's ordinary route.
    """

    def __init__(self, name: str, decide: Callable[[AdmissionRequest], Decision], fail_open: bool, settings: WebhookSettings,
                 memo: Callable[[ReviewRequest], EncodedAnswer | None] | None = None):
        self.name = name
        self.decide = decide
        #: Encoded answers for requests that repeat what matters (admission/memo.py); None: decide each.
        self.memo = memo
        self.fail_open = fail_open
        self.settings = settings
        self.max_body_bytes = settings.max_body_bytes

    def _on_bug(self, uid: str) -> Decision:
        log.exception("%s: decision failed for uid %s", self.name, uid)
        note = f"sortie-egress internal error on {self.name} (uid {uid}); see the webhook's logs"
        if self.fail_open:
            return Decision(allowed=True, warnings=(note,))
        return Decision(allowed=False, message=note, code=500)

    def too_large(self, started: float) -> Reply:
        self.settings.metrics.observe(self.name, "too_large", time.perf_counter() - started)
        return Reply(413, f"request body over {self.max_body_bytes} bytes\n".encode(), TEXT, close=True)

    def answer(self, body: bytes, started: float) -> Reply:
        """The whole admission for one request body; never raises for any input."""
        metrics = self.settings.metrics
        try:
            request = decode_request(body)
        except ReviewError as exc:
            metrics.observe(self.name, "bad_request", time.perf_counter() - started)
            logs.event("admission", level="warning", endpoint=self.name, decision="bad_request", reason=str(exc))
            return Reply(400, f"bad AdmissionReview: {exc}\n".encode(), TEXT)
        try:
            memoised = None if self.memo is None else self.memo(request)
            if memoised is None:
                memoised = encoded(self.decide(admission_request(request)))
        except Exception:  # a bug must still get the failurePolicy's answer, never a 500
            memoised = encoded(self._on_bug(request.uid))
        verdict, warnings, payload = memoised.verdict, memoised.warnings, memoised.for_uid(request.uid)
        elapsed = time.perf_counter() - started
        metrics.observe(self.name, verdict, elapsed)
        kind, user = request.kind, request.userInfo
        logs.emit(logs.AdmissionLine(
            ts=logs.now(),
            endpoint=self.name,
            uid=request.uid,
            operation=request.operation,
            kind="" if kind is None else kind.kind,
            namespace=request.namespace,
            name=_object_name(request),
            user="" if user is None else user.username,
            dry_run=request.dryRun is True,
            decision=verdict,
            warnings=warnings,
            duration_ms=int(elapsed * 1_000_000) / 1000,  # to the microsecond, without round()'s cost
        ))
        return Reply(200, payload, JSON)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A raw ASGI app: on this path, Starlette's Request/Response objects are pure overhead."""
        started = time.perf_counter()
        try:
            body = await read_body(scope, receive, self.max_body_bytes, self.settings.body_budget)
        except BodyTooLarge:
            reply = self.too_large(started)
        except OverBudget:
            reply = BUSY
        except ClientGone:
            return
        else:
            reply = self.answer(body, started)
        await respond(send, reply.status, reply.payload, reply.content_type, close=reply.close)


@dataclass(frozen=True)
class WebhookApp:
    """The Starlette application, and the admission endpoints that the protocol's fast path
    (server/fastpath.py) answers itself; the same endpoints are Starlette's routes for the
    requests that take uvicorn's ordinary route."""

    asgi: Starlette
    endpoints: dict[str, AdmissionEndpoint]


def create_app(settings: WebhookSettings | None = None) -> WebhookApp:
    settings = settings or WebhookSettings()

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        if settings.ready():
            return PlainTextResponse("ok\n")
        return PlainTextResponse("waiting for the serving certificate (and the CA that pins the canary)\n",
                                 status_code=503)

    async def metrics(_: Request) -> Response:
        return Response(settings.metrics.render(), media_type=settings.metrics.content_type)

    # The wait is read per request: its pin follows the serving Secret's CAs (serve.pin_canary).
    def decide(request: AdmissionRequest) -> Decision:
        return mutate_pod(request, wait=settings.wait, backend=settings.backend)

    def memo(request: ReviewRequest) -> EncodedAnswer | None:
        return memoised_mutation(request, wait=settings.wait, backend=settings.backend)

    mutate = AdmissionEndpoint("mutate", decide, fail_open=False, settings=settings, memo=memo)
    routes = [
        Route("/mutate", mutate, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.settings = settings
    return WebhookApp(app, {"/mutate": mutate})
