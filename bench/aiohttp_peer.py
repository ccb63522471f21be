"""The baseline: a minimal aiohttp AdmissionReview server, served the way kopf serves webhooks.

aiohttp's web server, ``await request.json()`` (stdlib json), the decision,
``web.json_response`` (stdlib json). It makes the same decision with the same
pure code as our webhook (policy cache included), so the comparison is of
everything around the decision: framework, parsing, encoding, and TLS setup.
"""

from __future__ import annotations

import base64
import json
import ssl

from aiohttp import web

from bench.common import (
    server_arguments,  # run with the repository on PYTHONPATH, as bench/admission.py does
)
from sortie_egress.admission.mutate import mutate_pod


async def mutate(request: web.Request) -> web.Response:
    review = await request.json()
    req = review["request"]
    decision = mutate_pod(_request_from_dict(req))
    response: dict = {"uid": req["uid"], "allowed": decision.allowed}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(decision.patch).encode()).decode()
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    if not decision.allowed:
        response["status"] = {"code": decision.code, "message": decision.message}
    return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})


def _request_from_dict(req: dict):  # type: ignore[no-untyped-def]
    from sortie_egress.admission.review import AdmissionRequest

    return AdmissionRequest(
        uid=req["uid"], kind=req["kind"]["kind"], operation=req["operation"], namespace=req.get("namespace"),
        name=req.get("name"), username=req.get("userInfo", {}).get("username", ""), obj=req.get("object"),
        old_obj=req.get("oldObject"), dry_run=bool(req.get("dryRun")),
    )


def main() -> None:
    args = server_arguments()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    app = web.Application()
    app.router.add_post("/mutate", mutate)
    web.run_app(app, host="127.0.0.1", port=args.port, ssl_context=context, access_log=None, print=None)


if __name__ == "__main__":
    main()
