"""The protocol floor: our own server (uvicorn, the admission fast path, TLS) answering a fixed body.

Everything our webhook does per admission except the admission itself:
decoding, deciding, encoding, counting and logging are replaced by a fixed
answer. The benchmark's "ours above the protocol floor" is therefore the cost
of our own admission code; the uvicorn floor beside it shows what the fast
path saves over uvicorn's ordinary ASGI route.
"""

from __future__ import annotations

from bench.common import (
    server_arguments,  # run with the repository on PYTHONPATH, as bench/admission.py does
)
from sortie_egress.server.app import JSON, AdmissionEndpoint, Reply
from sortie_egress.server.serve import ServeOptions, run

FIXED = Reply(200, b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true}}',
              JSON)


def fixed_answer(self: AdmissionEndpoint, body: bytes, started: float) -> Reply:
    return FIXED


def main() -> None:
    args = server_arguments()
    AdmissionEndpoint.answer = fixed_answer  # type: ignore[method-assign]  # this process only
    run(ServeOptions(host="127.0.0.1", port=args.port, cert_file=args.cert, key_file=args.key))


if __name__ == "__main__":
    main()
