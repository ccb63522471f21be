"""Tamper protection (CONTRACT §5): what may change once a session exists."""

from __future__ import annotations

import json
from collections.abc import Collection

from ..constants import (
    EGRESS_MODE_LABEL,
    EGRESS_POLICY_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SESSION_ID_LABEL,
)
from ..session import annotations_of, labels_of
from .response import Decision, allow, deny
from .review import AdmissionRequest


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pod_update(request: AdmissionRequest) -> Decision:
    old, new = request.old_obj, request.obj
    problems = []
    for what, key, read in (
        ("annotation", EGRESS_POLICY_ANNOTATION, annotations_of),
        ("label", SESSION_ID_LABEL, labels_of),
        ("label", EGRESS_MODE_LABEL, labels_of),
    ):
        before, after = read(old).get(key), read(new).get(key)
        if before != after:
            problems.append(f"{what} {key} cannot change after creation (was {_shown(before)}, now {_shown(after)})")
    if problems:
        return deny(problems, "sortie-egress protects session pods")
    return allow()


def _managed(request: AdmissionRequest) -> bool:
    return any(labels_of(obj).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE for obj in (request.old_obj, request.obj))


def validate(request: AdmissionRequest, privileged: Collection[str]) -> Decision:
    """Pod UPDATE keeps its egress identity; managed NetworkPolicies are ours alone.

    ``privileged`` are the usernames that may change managed NetworkPolicies:
    the controller, Kubernetes' garbage collector and namespace controller,
    and whoever the operator lists.
    """
    if request.kind == "Pod" and request.operation == "UPDATE" and not request.sub_resource:
        return _pod_update(request)
    if request.kind == "NetworkPolicy" and request.operation in ("UPDATE", "DELETE") and _managed(request):
        if request.username in privileged:
            return allow()
        verb = "changed" if request.operation == "UPDATE" else "deleted"
        who = request.username or "an anonymous user"
        return deny(
            [f"{request.namespace}/{request.name} is managed by sortie-egress and cannot be {verb} by {who}"],
            "sortie-egress protects session NetworkPolicies",
        )
    return allow()
