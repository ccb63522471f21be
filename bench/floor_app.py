"""The uvicorn floor: uvicorn's ordinary ASGI route, set up like our webhook's, serving a fixed answer.

No decoding, no decision, no metrics, no log: what remains is the cost of
uvicorn's per-request machinery (scope, task, two writes), uvloop, httptools
and TLS. Our admissions no longer take this route (the protocol fast path,
sortie_egress/server/fastpath.py, answers them); bench/protocol_floor.py is the
floor of the route they do take.
"""

from __future__ import annotations

import asyncio

import uvicorn

from bench.common import (
    server_arguments,  # run with the repository on PYTHONPATH, as bench/admission.py does
)
from sortie_egress.server.serve import event_loop_factory
from sortie_egress.server.tls import ReloadingTLS

ANSWER = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true}}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


def main() -> None:
    args = server_arguments()
    tls = ReloadingTLS.from_files(args.cert, args.key)
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, http="httptools", lifespan="off",
                            access_log=False, log_config=None, proxy_headers=False, server_header=False, date_header=False)
    config.load()
    config.ssl = tls.listener
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
