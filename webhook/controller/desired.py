"""What a session should have, and whether what it has matches: pure functions of manifests.

The controller's decisions live here so they can be tested without a cluster;
``reconciler`` only turns their answers into API calls.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..constants import (
    APP_ID_LABEL,
    EGRESS_POLICY_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SCHEDULING_GATE,
    SESSION_ID_LABEL,
)
from ..patch import JsonPatch, pointer
from ..policy import FAIL_CLOSED_POLICY, parse_policy
from ..render import DnsDestination, render_network_policy
from ..session import session_id_problem, session_pod

FINISHED_PHASES = ("Succeeded", "Failed")
_OUR_LABELS = (SESSION_ID_LABEL, APP_ID_LABEL, EGRESS_POLICY_LABEL, MANAGED_BY_LABEL)


@dataclass(frozen=True, slots=True)
class Desired:
    """The NetworkPolicy a pod should have (None: it should have none), and
    the warning to record on the pod when its annotation is invalid."""

    policy: dict[str, Any] | None
    invalid_reason: str | None = None


def is_active(pod: dict[str, Any]) -> bool:
    """Being deleted or finished: nothing new is created for it."""
    metadata = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return not metadata.get("deletionTimestamp") and phase not in FINISHED_PHASES


def desired_for(pod: dict[str, Any], dns: DnsDestination) -> Desired:
    """CONTRACT §3: the rendered policy; DNS only (fail closed) for an invalid annotation."""
    session = session_pod(pod)
    if session is None:
        return Desired(policy=None)
    parsed = parse_policy(session.annotation)
    if parsed.ok and parsed.policy is None:
        return Desired(policy=None)
    naming = session_id_problem(session.session_id)
    if naming:
        # No valid name exists for its policy; admission refuses such pods,
        # so one that exists anyway gets nothing it could be matched by.
        return Desired(policy=None, invalid_reason=naming)
    if not parsed.ok:
        reason = "invalid egress policy, enforcing DNS only: " + "; ".join(parsed.errors)
        return Desired(policy=render_network_policy(session, FAIL_CLOSED_POLICY, dns), invalid_reason=reason)
    assert parsed.policy is not None
    return Desired(policy=render_network_policy(session, parsed.policy, dns))


def spec_digest(spec: Any) -> bytes:
    """A fingerprint of a NetworkPolicy spec: the controller caches this, not the spec
    (5,000 specs as Python objects were a fifth of its memory)."""
    return hashlib.blake2b(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode(), digest_size=16).digest()


def policy_matches(existing: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Drift check: the spec, our labels and the owner reference must be exactly ours.

    ``existing`` is an API object, or the controller's projection of one (with
    ``spec_digest`` in place of ``spec``).
    """
    have_digest = existing.get("spec_digest") or spec_digest(existing.get("spec"))
    if have_digest != spec_digest(desired["spec"]):
        return False
    have = (existing.get("metadata") or {})
    want = desired["metadata"]
    labels = have.get("labels") or {}
    if any(labels.get(key) != want["labels"].get(key) for key in _OUR_LABELS):
        return False
    owners = [ref for ref in have.get("ownerReferences") or [] if ref.get("controller")]
    wanted = want["ownerReferences"][0]
    return len(owners) == 1 and all(owners[0].get(key) == wanted[key] for key in ("uid", "kind", "name", "apiVersion"))


def gate_removal_patch(pod: dict[str, Any]) -> JsonPatch | None:
    """Remove our gate and only ours; the ``test`` op makes a concurrent change fail, not misfire."""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    for index, gate in enumerate(gates):
        if isinstance(gate, dict) and gate.get("name") == SCHEDULING_GATE:
            path = pointer("spec", "schedulingGates", index)
            return [
                {"op": "test", "path": path + "/name", "value": SCHEDULING_GATE},
                {"op": "remove", "path": path},
            ]
    return None


def is_managed(policy: dict[str, Any]) -> bool:
    return ((policy.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE

