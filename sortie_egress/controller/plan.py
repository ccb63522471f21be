"""What a session should have, and whether what it has matches: pure functions of manifests.

The controller's decisions live here so they can be tested without a cluster;
``reconciler`` only turns a :class:`SessionPlan` into API calls, in the order
that never widens what a pod can reach: the policy first, then labels and
gates, Events last.

A session is every pod carrying one ``sortie.io/session-id`` in a namespace,
and one NetworkPolicy named after it (CONTRACT §3):

- *Pinning*: the policy records (annotation ``sortie.io/policy-digest``) the
  canonical policy it was rendered for. While a pod that owns it exists, that
  is the session's policy; a released pod whose policy now differs (possible
  only by bypassing admission) turns the session DNS-only. The new policy is
  never rendered.
- *Several pods*: the pods whose policy equals the session's are released and
  own the policy (the oldest, ties by uid, as controller), so the garbage
  collector keeps it until the last of them is gone. Pods with another policy
  stay gated.
- *The name is ours*: a policy with the session's name that we do not manage
  is replaced by ours (adopted) when the session has a policy to enforce.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any

from sortie_egress.constants import (
    APP_ID_LABEL,
    EGRESS_MODE_LABEL,
    EGRESS_POLICY_LABEL,
    MANAGED_BY_LABEL,
    MAX_MEMO_ANNOTATION,
    POLICY_DIGEST_ANNOTATION,
    SCHEDULING_GATE,
    SESSION_ID_LABEL,
    SESSION_PODS_ANNOTATION,
)
from sortie_egress.admission.patch import JsonPatch, pointer
from sortie_egress.kube.projections import spec_digest
from sortie_egress.managed import is_managed
from sortie_egress import backends
from sortie_egress.backends import DEFAULT_BACKEND, BackendSettings, backend_problems
from sortie_egress.policy.model import FAIL_CLOSED_POLICY, EgressPolicy, parse_policy
from sortie_egress.render.session import Canary, DnsDestination
from sortie_egress.admission.session import session_id_problem, session_pod

FINISHED_PHASES = ("Succeeded", "Failed")
_OUR_LABELS = (SESSION_ID_LABEL, APP_ID_LABEL, EGRESS_POLICY_LABEL, MANAGED_BY_LABEL)
_OWNER_FIELDS = ("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")

# Event reasons, one per thing an operator may need to act on.
INVALID_POLICY = "InvalidEgressPolicy"
POLICY_MISMATCH = "EgressPolicyMismatch"
POLICY_CHANGED = "EgressPolicyChanged"
ADOPTED = "Adopted"
WIDENED = "EgressWidened"
CONFLICT = "EgressPolicyConflict"
JOINED_WITHOUT_POLICY = "EgressPolicyMissing"
BASELINE_MISSING = "EnforcementBaselineMissing"
#: An allowlist session held on Cilium until the node guard is in place (node_guard.py).
NODE_GUARD_MISSING = "NodeGuardMissing"


def policy_digest(canonical: str) -> str:
    """The pin: what the session was admitted with, as recorded on its NetworkPolicy."""
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


FAIL_CLOSED_DIGEST = policy_digest(FAIL_CLOSED_POLICY.canonical_json())


@dataclass(frozen=True, slots=True)
class Enforced:
    """What one pod's annotation asks to be enforced."""

    policy: EgressPolicy | None  # None: no per-app policy (the cluster default applies)
    digest: str | None = None
    invalid_reason: str | None = None  # set when the annotation is invalid: ``policy`` is then DNS only


def enforced_for(pod: dict[str, Any], backend: str = DEFAULT_BACKEND) -> Enforced:
    session = session_pod(pod)
    annotation = None if session is None else session.annotation
    if annotation is not None and len(annotation) > MAX_MEMO_ANNOTATION:
        return _enforced(annotation, backend)
    return _memoised_enforced(annotation, backend)


def _enforced(annotation: str | None, backend: str) -> Enforced:
    parsed = parse_policy(annotation)
    problems = list(parsed.errors) + backend_problems(parsed.policy, backend)
    if problems:  # invalid, or what this backend cannot enforce (admitted while the webhook was down, say)
        reason = "invalid egress policy, enforcing DNS only: " + "; ".join(problems)
        return Enforced(FAIL_CLOSED_POLICY, FAIL_CLOSED_DIGEST, reason)
    if parsed.policy is None:
        return Enforced(None)
    assert parsed.canonical is not None
    return Enforced(parsed.policy, policy_digest(parsed.canonical))


#: Memoised like parse_policy (short annotations only, so the memo stays small whatever pods are
#: created): a resync judges every session again, and a cluster's sessions share a few apps'
#: policies. Enforced and its policy are frozen, so sharing one is safe.
_memoised_enforced = lru_cache(maxsize=1024)(_enforced)


@dataclass(frozen=True, slots=True)
class Note:
    """An Event to record on a pod, after the writes it explains."""

    pod: dict[str, Any]
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class SessionPlan:
    """Everything one reconcile of a session should bring about."""

    policy: dict[str, Any] | None = None  # the policy object to have (the backend's kind); None: none of ours
    delete: bool = False  # delete the existing (managed) policy
    adopt: bool = False  # the existing policy is someone else's, with our name: replace it
    pin_violated: bool = False
    release: list[dict[str, Any]] = field(default_factory=list)  # pods whose gate to remove
    labels: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (pod, mode) to add
    notes: list[Note] = field(default_factory=list)
    #: The pods the policy selects that it was made for: what effective egress is judged on.
    enforced_pods: list[dict[str, Any]] = field(default_factory=list)
    #: What other NetworkPolicies are judged against (a NetworkPolicy manifest): the policy itself on
    #: the networkpolicy backend; None where nothing a NetworkPolicy says can widen the session.
    reference: dict[str, Any] | None = None


def is_active(pod: dict[str, Any]) -> bool:
    """Being deleted or finished: nothing new is created for it."""
    metadata = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return not metadata.get("deletionTimestamp") and phase not in FINISHED_PHASES


def age_order(pod: dict[str, Any]) -> tuple[str, str]:
    """Oldest first, ties by uid: the same order on every replica and every run."""
    metadata = pod.get("metadata") or {}
    return metadata.get("creationTimestamp") or "", metadata.get("uid") or ""


def has_gate(pod: dict[str, Any]) -> bool:
    return gate_removal_patch(pod) is not None


#: The backend's settings the plan renders with (the served version, the Admin-tier priority).
ClusterPolicyOptions = BackendSettings


def _render(owners: list[dict[str, Any]], policy: EgressPolicy, digest: str, dns: DnsDestination,
            canary: Canary | None, backend: str = DEFAULT_BACKEND,
            cluster: BackendSettings = BackendSettings()) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the object to have, the NetworkPolicy that others are judged against, if any can widen it)."""
    return backends.get(backend).session_object(owners, policy, digest, dns, canary, cluster)


def _owner_uids(metadata: dict[str, Any]) -> set[str]:
    """The pods a session policy is for: its owner references, or (cluster-scoped) its annotation."""
    uids = {ref.get("uid") for ref in metadata.get("ownerReferences") or []}
    listed = (metadata.get("annotations") or {}).get(SESSION_PODS_ANNOTATION)
    if isinstance(listed, str):
        uids |= {uid for uid in listed.split(",") if uid}
    return uids


def _pin(existing: dict[str, Any] | None, pods: list[dict[str, Any]]) -> str | None:
    """The digest the session is pinned to: ours, and owned by a pod that still exists."""
    if existing is None or not is_managed(existing):
        return None
    owners = _owner_uids(existing.get("metadata") or {})
    if not owners & {(pod.get("metadata") or {}).get("uid") for pod in pods}:
        return None  # left from pods that are gone: the garbage collector's, not a pin
    annotations = (existing.get("metadata") or {}).get("annotations") or {}
    return annotations.get(POLICY_DIGEST_ANNOTATION)


def describe_policy(policy: dict[str, Any], kind: str = "NetworkPolicy") -> str:
    """A policy someone else made, in a line: what an Adopted Event says it replaced."""
    metadata = policy.get("metadata") or {}
    labels = metadata.get("labels") or {}
    shown = ", ".join(f"{key}={value}" for key, value in sorted(labels.items())) or "no labels"
    return f"{kind} {metadata.get('name')} (uid {metadata.get('uid', '?')}, {shown})"


def plan_session(pods: list[dict[str, Any]], existing: dict[str, Any] | None, dns: DnsDestination,
                 canary: Canary | None = None, backend: str = DEFAULT_BACKEND,
                 cluster: BackendSettings = BackendSettings()) -> SessionPlan:
    """CONTRACT §3 for one session: every pod of it (any state), and the policy with its name, if any.
    ``canary``: the enforcement canary every session policy must open and cut out (render.Canary).
    ``backend``: the kind of object that enforces it (backends/); ``existing`` is of that kind."""
    plan = SessionPlan()
    if not pods:
        plan.delete = is_managed(existing)  # an orphan: its pods are all gone
        return plan
    active = sorted((pod for pod in pods if is_active(pod)), key=age_order)
    if not active:
        return plan  # finishing or being deleted: the garbage collector takes the policy along
    session_id = (active[0]["metadata"].get("labels") or {}).get(SESSION_ID_LABEL, "")
    naming = session_id_problem(session_id)
    if naming:
        # No valid name exists for its policy; admission refuses such pods, so one that
        # exists anyway gets nothing it could be matched by, and its gate stays.
        plan.notes = [Note(pod, "Warning", INVALID_POLICY, naming) for pod in active]
        return plan

    enforced = {id(pod): enforced_for(pod, backend) for pod in active}
    for pod in active:
        reason = enforced[id(pod)].invalid_reason
        if reason:
            plan.notes.append(Note(pod, "Warning", INVALID_POLICY, reason))
    pin = _pin(existing, pods)
    # A pod without a policy that carries a session's id where the session has one (a pin, or a pod
    # with a policy) is someone joining it without authoring it (CONTRACT §7): it never counts. It
    # neither decides the session's policy nor turns the session DNS only. A pod that owns the pin
    # and lost its annotation is no joiner: that is a changed policy (below).
    pin_owners = _owner_uids(existing.get("metadata") or {}) if is_managed(existing) and existing else set()
    if pin is not None or any(enforced[id(pod)].policy is not None for pod in active):
        joiners = [pod for pod in active if enforced[id(pod)].policy is None
                   and (pod.get("metadata") or {}).get("uid") not in pin_owners]
        for pod in joiners:
            plan.notes.append(Note(pod, "Warning", JOINED_WITHOUT_POLICY,
                                   "carries the session id of a session with an egress policy but has no policy "
                                   "itself; sortie-egress ignores it for that session (it never changes it)"))
        active = [pod for pod in active if pod not in joiners]
        if not active:
            return plan
    session_digest = pin if pin is not None else enforced[id(active[0])].digest
    matching = [pod for pod in active if enforced[id(pod)].digest == session_digest]
    others = [pod for pod in active if enforced[id(pod)].digest != session_digest]

    # Released pods whose policy is no longer the pinned one: only bypassing admission gets here.
    changed = [pod for pod in others if pin is not None and not has_gate(pod)]
    plan.pin_violated = bool(changed)
    for pod in changed:
        plan.notes.append(Note(pod, "Warning", POLICY_CHANGED,
                               "egress policy differs from the one the session was admitted with "
                               f"({pin}); the session is now limited to DNS, the new policy is never enforced"))
    for pod in others:
        if pod not in changed:
            plan.notes.append(Note(pod, "Warning", POLICY_MISMATCH,
                                   "egress policy differs from the session's (the policy of its oldest pod "
                                   f"{matching[0]['metadata'].get('name') if matching else active[0]['metadata'].get('name')}); "
                                   "this pod stays gated"))

    for pod in active:
        own = enforced[id(pod)]
        if own.policy is not None and EGRESS_MODE_LABEL not in (pod["metadata"].get("labels") or {}):
            plan.labels.append((pod, own.policy.mode))

    if plan.pin_violated:
        assert pin is not None
        plan.policy, plan.reference = _render(active, FAIL_CLOSED_POLICY, pin, dns, canary, backend, cluster)
        plan.enforced_pods = active
    elif session_digest is None:
        # The session has no per-app policy: nothing of ours, and gates a creator set are lifted.
        plan.delete = is_managed(existing)
        plan.release = [pod for pod in matching if has_gate(pod)]
        return plan
    elif matching:
        policy = enforced[id(matching[0])].policy
        assert policy is not None
        plan.policy, plan.reference = _render(matching, policy, session_digest, dns, canary, backend, cluster)
        plan.release = [pod for pod in matching if has_gate(pod)]
        plan.enforced_pods = matching
    else:
        return plan  # pinned by pods that are all on their way out: leave it to the garbage collector

    if existing is not None and not is_managed(existing):
        plan.adopt = True
        plan.notes.append(Note((active if plan.pin_violated else matching)[0], "Normal", ADOPTED,
                               f"replaced {describe_policy(existing, backends.get(backend).kind.kind)}, which sortie-egress did not manage, "
                               "with the session's egress policy"))
    return plan


def _owners_of(metadata: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(tuple(ref.get(key) for key in _OWNER_FIELDS) for ref in metadata.get("ownerReferences") or [])


def policy_matches(existing: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Drift check: spec, our labels, the pin and the owners must be exactly ours.

    ``existing`` is an API object, or the controller's projection of one (with
    ``spec_digest`` in place of ``spec``).
    """
    have_digest = existing.get("spec_digest") or spec_digest(existing.get("spec"))
    if have_digest != spec_digest(desired["spec"]):
        return False
    have = existing.get("metadata") or {}
    want = desired["metadata"]
    labels = have.get("labels") or {}
    if any(labels.get(key) != want["labels"].get(key) for key in _OUR_LABELS):
        return False
    have_annotations, want_annotations = have.get("annotations") or {}, want["annotations"]
    if any(have_annotations.get(key) != want_annotations.get(key)
           for key in (POLICY_DIGEST_ANNOTATION, SESSION_PODS_ANNOTATION)):
        return False
    return _owners_of(have) == _owners_of(want)


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


def pod_patch(pod: dict[str, Any], mode: str | None, release: bool) -> JsonPatch:
    """One write for a pod: add the missing mode label, and/or remove our gate."""
    ops: JsonPatch = []
    if mode is not None:
        ops.append({"op": "add", "path": pointer("metadata", "labels", EGRESS_MODE_LABEL), "value": mode})
    if release:
        ops.extend(gate_removal_patch(pod) or [])
    return ops

