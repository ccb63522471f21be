"""Decisions and their AdmissionReview encoding."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import msgspec

from sortie_egress.admission.patch import JsonPatch
from sortie_egress.admission.review import ADMISSION_API_VERSION

INVALID = 422
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    patch: JsonPatch | None = None
    warnings: tuple[str, ...] = ()
    message: str | None = None
    code: int | None = None

    @property
    def verdict(self) -> str:
        """A label for logs and metrics: allowed, patched or denied."""
        if not self.allowed:
            return "denied"
        return "patched" if self.patch else "allowed"


def allow(warnings: tuple[str, ...] = (), patch: JsonPatch | None = None) -> Decision:
    return Decision(allowed=True, patch=patch or None, warnings=warnings)


def deny(problems: list[str] | tuple[str, ...], prefix: str, warnings: tuple[str, ...] = ()) -> Decision:
    """One message naming every problem, so the author fixes them in one go."""
    return Decision(allowed=False, warnings=warnings, message=f"{prefix}: {'; '.join(problems)}", code=INVALID)


def encode_response(uid: str, decision: Decision) -> bytes:
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(_encode(decision.patch)).decode("ascii")
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    if not decision.allowed:
        response["status"] = {
            "status": "Failure",
            "code": decision.code or INVALID,
            "reason": "Invalid",
            "message": decision.message or "denied",
        }
    return _encode({"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response})
