"""Sending a pod to a running webhook exactly as the API server would."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import uuid
from typing import Any
from urllib.parse import urlsplit

from sortie_egress.admission.review import ADMISSION_API_VERSION

class ReviewFailed(Exception):
    """The webhook could not be asked, or did not answer with an AdmissionReview."""


def build_review(pod: dict[str, Any], username: str = "sortie-egress-cli") -> dict[str, Any]:
    """An AdmissionReview v1 for a Pod CREATE, shaped like the API server's."""
    metadata = pod.get("metadata") or {}
    group_version_kind = {"group": "", "version": "v1", "kind": "Pod"}
    group_version_resource = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": ADMISSION_API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": group_version_kind,
            "resource": group_version_resource,
            "requestKind": group_version_kind,
            "requestResource": group_version_resource,
            "name": metadata.get("name", ""),
            "namespace": metadata.get("namespace", "default"),
            "operation": "CREATE",
            "userInfo": {"username": username},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def send_review(pod: dict[str, Any], url: str, ca_file: str | None, timeout: float = 10.0) -> dict[str, Any]:
    """POST the review; the AdmissionReview ``response``, with the patch decoded under ``patchOps``."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ReviewFailed(f"--url must be https://HOST:PORT/PATH, got {url!r}")
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ReviewFailed(f"cannot load CA {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    review = build_review(pod)
    body = json.dumps(review).encode()
    connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=context, timeout=timeout)
    try:
        connection.request("POST", parts.path or "/", body=body, headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        payload = reply.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ReviewFailed(f"cannot reach {url}: {exc}") from None
    finally:
        connection.close()
    if reply.status != 200:
        raise ReviewFailed(f"{url} answered HTTP {reply.status}: {payload[:200].decode(errors='replace').strip()}")
    try:
        response = json.loads(payload)["response"]
    except (ValueError, KeyError, TypeError):
        raise ReviewFailed(f"{url} did not answer with an AdmissionReview") from None
    if response.get("uid") != review["request"]["uid"]:
        raise ReviewFailed("the webhook answered for another request uid")
    patch = response.get("patch")
    response["patchOps"] = json.loads(base64.b64decode(patch)) if patch else []
    return response
