"""Decoding AdmissionReview v1 envelopes from the API server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

ADMISSION_API_VERSION = "admission.k8s.io/v1"


class ReviewError(ValueError):
    """The envelope is not an AdmissionReview v1 request: answered with HTTP 400."""


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    uid: str
    kind: str
    operation: str
    namespace: str | None
    name: str | None
    username: str
    obj: dict[str, Any] | None
    old_obj: dict[str, Any] | None
    dry_run: bool
    resource: str = ""
    sub_resource: str = ""


def _optional_str(request: dict[str, Any], key: str) -> str | None:
    value = request.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ReviewError(f"request.{key} must be a string")


def _optional_object(request: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = request.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise ReviewError(f"request.{key} must be an object")


def decode_review(body: bytes) -> AdmissionRequest:
    """Parse and check the envelope; every failure is a ReviewError with a reason."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReviewError(f"body is not JSON: {exc}") from None
    if not isinstance(review, dict):
        raise ReviewError("body must be a JSON object (an AdmissionReview)")
    if review.get("kind") != "AdmissionReview" or review.get("apiVersion") != ADMISSION_API_VERSION:
        raise ReviewError(f"expected kind AdmissionReview, apiVersion {ADMISSION_API_VERSION}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise ReviewError("request must be an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid must be a non-empty string")
    kind = request.get("kind")
    user = request.get("userInfo")
    resource = request.get("resource")
    operation = request.get("operation")
    if not isinstance(operation, str):
        raise ReviewError("request.operation must be a string")
    return AdmissionRequest(
        uid=uid,
        kind=str(kind.get("kind", "")) if isinstance(kind, dict) else "",
        operation=operation,
        namespace=_optional_str(request, "namespace"),
        name=_optional_str(request, "name"),
        username=str(user.get("username", "")) if isinstance(user, dict) else "",
        obj=_optional_object(request, "object"),
        old_obj=_optional_object(request, "oldObject"),
        dry_run=request.get("dryRun") is True,
        resource=str(resource.get("resource", "")) if isinstance(resource, dict) else "",
        sub_resource=str(request.get("subResource") or ""),
    )
