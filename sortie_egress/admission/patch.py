"""JSONPatch (RFC 6902) operations for a session pod: pure, and minimal.

Only what differs is patched, so a pod that already carries the mutation
(a re-invoked webhook, a re-submitted manifest) gets an empty patch: the
mutation is idempotent by construction rather than by luck.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from sortie_egress.constants import EGRESS_MODE_LABEL, EGRESS_POLICY_ANNOTATION, SCHEDULING_GATE
from sortie_egress.enforcement_wait.injection import EnforcementWait, wait_patch
from sortie_egress.admission.session import annotations_of, labels_of, spec_names

JsonPatch = list[dict[str, Any]]


def pointer(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901): ``~`` and ``/`` in keys are escaped, in that order."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


_ANNOTATION_PATH = pointer("metadata", "annotations", EGRESS_POLICY_ANNOTATION)
_LABELS_PATH = pointer("metadata", "labels")
_MODE_LABEL_PATH = pointer("metadata", "labels", EGRESS_MODE_LABEL)
_GATES_PATH = pointer("spec", "schedulingGates")


def _gate_names(pod: Mapping[str, Any]) -> list[Any] | None:
    return spec_names(pod, "schedulingGates")


def enforce_patch(pod: Mapping[str, Any], canonical_annotation: str, mode: str,
                  wait: EnforcementWait | None = None) -> JsonPatch:
    """Canonical annotation, truthful mode label, our gate after any existing ones, and (when
    configured) our init container first, holding the rest back until enforcement is seen."""
    ops: JsonPatch = []
    if annotations_of(pod).get(EGRESS_POLICY_ANNOTATION) != canonical_annotation:
        ops.append({"op": "replace", "path": _ANNOTATION_PATH, "value": canonical_annotation})
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("labels"), dict):
        ops.append({"op": "add", "path": _LABELS_PATH, "value": {EGRESS_MODE_LABEL: mode}})
    elif labels_of(pod).get(EGRESS_MODE_LABEL) != mode:
        ops.append({"op": "add", "path": _MODE_LABEL_PATH, "value": mode})
    gates = _gate_names(pod)
    if gates is None:
        ops.append({"op": "add", "path": _GATES_PATH, "value": [{"name": SCHEDULING_GATE}]})
    elif SCHEDULING_GATE not in gates:
        ops.append({"op": "add", "path": _GATES_PATH + "/-", "value": {"name": SCHEDULING_GATE}})
    if wait is not None:
        ops.extend(wait_patch(pod, wait))
    return ops


def no_policy_patch(pod: Mapping[str, Any]) -> JsonPatch:
    """A pod without a policy keeps the cluster default, so nothing may claim otherwise.

    A creator-set mode label would put the pod under the DNS-only baseline, and
    our gate would hold it forever (no NetworkPolicy is ever made for it).
    """
    ops: JsonPatch = []
    if EGRESS_MODE_LABEL in labels_of(pod):
        ops.append({"op": "remove", "path": _MODE_LABEL_PATH})
    gates = _gate_names(pod) or []
    for index in reversed(range(len(gates))):
        if gates[index] == SCHEDULING_GATE:
            ops.append({"op": "remove", "path": f"{_GATES_PATH}/{index}"})
    return ops


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(document: Any, ops: JsonPatch) -> Any:
    """Apply add/replace/remove/test operations to a copy of ``document``.

    Just what the webhook emits, for ``sortie-egress review`` to show the pod
    as the API server will store it; the cluster tests check it against the
    API server's own application of the same patch.
    """


    result = copy.deepcopy(document)
    for op in ops:
        tokens = [_unescape(token) for token in op["path"].split("/")[1:]]
        parent = result
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        last = tokens[-1]
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent[last]
            if current != op["value"]:
                raise ValueError(f"JSONPatch test failed at {op['path']}")
            continue
        if isinstance(parent, list):
            if kind == "add":
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[int(last)] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[int(last)]
            else:
                raise ValueError(f"unsupported JSONPatch op {kind!r}")
        elif kind in ("add", "replace"):
            if kind == "replace" and last not in parent:
                raise KeyError(op["path"])
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[last]
        else:
            raise ValueError(f"unsupported JSONPatch op {kind!r}")
    return result
