"""What a Pod says about its session, read from its manifest as a plain dict.

Pods arrive as JSON from the API server, from a file for the CLI, or as a
dict from the kubernetes client; all three are read through here, so the
webhook, the controller and ``render`` can never disagree about a pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sortie_egress.constants import (
    APP_ID_LABEL,
    EGRESS_POLICY_ANNOTATION,
    POLICY_NAME_PREFIX,
    SESSION_ID_LABEL,
)

_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_SUBDOMAIN = 253


_EMPTY: Mapping[str, Any] = {}


def _mapping(value: Any) -> Mapping[str, Any]:
    # Manifests here are decoded JSON/YAML: plain dicts. An exact type check
    # keeps this off the ABC machinery on the admission hot path.
    return value if type(value) is dict else _EMPTY


def labels_of(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _mapping(_mapping(_mapping(obj).get("metadata")).get("labels"))


def annotations_of(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _mapping(_mapping(_mapping(obj).get("metadata")).get("annotations"))


def spec_names(pod: Mapping[str, Any], field: str) -> list[Any] | None:
    """The ``name`` of each entry of the list ``spec.<field>`` (scheduling gates, init containers);
    None when there is no such list, None for an entry that is not an object."""
    spec = pod.get("spec")
    entries = spec.get(field) if isinstance(spec, dict) else None
    if not isinstance(entries, list):
        return None
    return [entry.get("name") if isinstance(entry, dict) else None for entry in entries]


def policy_name(session_id: str) -> str:
    return POLICY_NAME_PREFIX + session_id


def session_id_problem(session_id: str) -> str | None:
    """Why ``sortie-egress-<id>`` cannot name a NetworkPolicy, or None."""
    name = policy_name(session_id)
    if len(name) > _MAX_SUBDOMAIN:
        return (
            f"{SESSION_ID_LABEL}: the NetworkPolicy name {name[:40]}... would be {len(name)} characters; "
            f"the limit is {_MAX_SUBDOMAIN}"
        )
    if not _DNS1123_SUBDOMAIN.fullmatch(name):
        return (
            f'{SESSION_ID_LABEL}: "{session_id}" cannot name a NetworkPolicy ("{name}" must be a DNS-1123 '
            "subdomain: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
        )
    return None


@dataclass(frozen=True, slots=True)
class SessionPod:
    """The facts about a session pod that the product acts on."""

    namespace: str
    name: str
    uid: str
    session_id: str
    app_id: str | None
    annotation: str | None

    @property
    def policy_name(self) -> str:
        return policy_name(self.session_id)


def session_pod(pod: Mapping[str, Any], namespace: str | None = None) -> SessionPod | None:
    """The session facts of ``pod``, or None when it is not a session pod.

    ``namespace`` overrides the manifest's: on CREATE the API server sends the
    namespace in the request and the object often has none yet.
    """
    labels = labels_of(pod)
    session_id = labels.get(SESSION_ID_LABEL)
    if not isinstance(session_id, str):
        return None
    metadata = _mapping(pod.get("metadata"))
    app_id = labels.get(APP_ID_LABEL)
    annotation = annotations_of(pod).get(EGRESS_POLICY_ANNOTATION)
    return SessionPod(
        namespace=str(namespace or metadata.get("namespace") or "default"),
        name=str(metadata.get("name") or metadata.get("generateName") or ""),
        uid=str(metadata.get("uid") or ""),
        session_id=session_id,
        app_id=app_id if isinstance(app_id, str) and app_id else None,
        annotation=annotation if isinstance(annotation, str) else None,
    )
