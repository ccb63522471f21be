"""What the controller keeps of each pod and NetworkPolicy: the fields it reads, and no more.

5,000 full session pods would be most of the controller's memory budget, so
its caches hold projections. Pods keep every label (other policies select
them by any label: effective egress needs them all), under interned strings,
since most pods of an app share their label keys and values. Our own policies
keep a digest of their spec; other policies keep the spec itself, since their
egress rules are what effective egress is judged against.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from sortie_egress.constants import EGRESS_POLICY_ANNOTATION, POLICY_DIGEST_ANNOTATION, SESSION_ID_LABEL, SESSION_PODS_ANNOTATION
from sortie_egress.managed import is_managed

SessionKey = tuple[str, str]  # namespace, session id


def spec_digest(spec: Any) -> bytes:
    """A fingerprint of a policy spec: the controller caches this, not the spec (5,000 specs as
    Python objects were a fifth of its memory), and compares it with what it would write."""
    return hashlib.blake2b(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode(), digest_size=16).digest()


def _only(mapping: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """The entries we read, under the code's own (interned) key strings: 5,000 pods
    would otherwise each carry their own copies of every other tool's annotations."""
    if not isinstance(mapping, dict):
        return {}
    return {key: mapping[key] for key in keys if key in mapping}


def _interned(mapping: Any) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        return {}
    return {sys.intern(key): sys.intern(value) if isinstance(value, str) else value for key, value in mapping.items()}


def project_pod(pod: dict[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata") or {}
    projected = _only(metadata, ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp", "creationTimestamp"))
    if "namespace" in projected:
        projected["namespace"] = sys.intern(projected["namespace"])
    projected["labels"] = _interned(metadata.get("labels"))
    annotations = _only(metadata.get("annotations"), (EGRESS_POLICY_ANNOTATION,))
    if isinstance(annotations.get(EGRESS_POLICY_ANNOTATION), str):
        # Every session of an app carries the same policy text: keep one copy of it.
        annotations[EGRESS_POLICY_ANNOTATION] = sys.intern(annotations[EGRESS_POLICY_ANNOTATION])
    projected["annotations"] = annotations
    return {
        "metadata": projected,
        # The init containers' names only: whether the pod carries our wait (session_baseline.py).
        "spec": {"schedulingGates": (pod.get("spec") or {}).get("schedulingGates"),
                 "initContainers": [{"name": sys.intern(str(container.get("name", "")))}
                                    for container in (pod.get("spec") or {}).get("initContainers") or []
                                    if isinstance(container, dict)]},
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


def project_policy(policy: dict[str, Any]) -> dict[str, Any]:
    metadata = policy.get("metadata") or {}
    projected = _only(metadata, ("name", "namespace", "uid", "labels", "ownerReferences", "resourceVersion",
                                 "deletionTimestamp"))
    if "namespace" in projected:
        projected["namespace"] = sys.intern(projected["namespace"])
    projected["annotations"] = _only(metadata.get("annotations"), (POLICY_DIGEST_ANNOTATION, SESSION_PODS_ANNOTATION))
    spec = policy.get("spec")
    projection: dict[str, Any] = {"metadata": projected, "spec_digest": spec_digest(spec)}
    if not is_managed(policy):
        projection["spec"] = spec  # someone else's: judged for effective egress, and replaced when adopted
    return projection


def pod_session_key(pod: dict[str, Any]) -> SessionKey:
    metadata = pod["metadata"]
    return metadata.get("namespace", ""), (metadata.get("labels") or {}).get(SESSION_ID_LABEL, "")


def policy_ownership_key(policy: dict[str, Any]) -> tuple[str, bool]:
    """(namespace, managed by us): the policies store's index."""
    return (policy.get("metadata") or {}).get("namespace", ""), is_managed(policy)
