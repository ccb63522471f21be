"""Reconciling one session: its policy object first, then labels and gates, Events last.

A session is keyed by (namespace, session id), so the pods and the policy they
name meet in one place however their events arrive. ``plan.plan_session``
decides; this module writes, in the order that never lets a pod reach more
than its policy: the policy (or its fail-closed DNS-only form) exists before
any gate is lifted, and an Event that cannot be recorded is logged and
counted, never a reason to leave enforcement unwritten. The normal path is two
writes: create the policy, remove the gate. Writes go through to the local
stores at once, so the reconcile that a write itself triggers writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from sortie_egress import backends
from sortie_egress.backends import DEFAULT_BACKEND, BackendSettings
from sortie_egress.constants import EGRESS_MODE_LABEL, MANAGED_BY_LABEL, POLICY_NAME_PREFIX, SESSION_ID_LABEL
from sortie_egress.render.clusternetworkpolicy import CLUSTER_POLICY_PREFIX
from sortie_egress.kube.informer import Store
from sortie_egress.admission.patch import pointer
from sortie_egress.render.session import Canary, DnsDestination
from sortie_egress.controller.plan import (
    CONFLICT,
    WIDENED,
    Note,
    SessionPlan,
    gate_removal_patch,
    has_gate,
    is_managed,
    plan_session,
    pod_patch,
    policy_matches,
)
from sortie_egress.controller.metrics import ControllerMetrics
from sortie_egress.kube.projections import project_pod
from sortie_egress.kube.policy_objects import SessionObjects

log = logging.getLogger("sortie.controller")

SessionKey = tuple[str, str]  # namespace, session id
#: Conflicts in a row on one session before it is told as an Event (each retry backs off further).
CONFLICTS_BEFORE_EVENT = 3


class Conflict(Exception):
    """Someone else changed the object between our read and our write: try again."""


class Deferred(Exception):
    """A write that may wait: only the canary's addresses moved (a controller rollout) and no pod of
    the session is starting, so nothing waits on it; the budget says when to try again."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"canary-only update deferred {delay:.2f} s by the write budget")
        self.delay = delay


#: A pod this young (or still gated) may be at its injected wait, which needs the canary's current
#: addresses cut out now: its session's update is never deferred.
STARTING_SECONDS = 120.0
#: A rollout changes the canary's addresses twice per replica (one comes, one goes), each step as
#: long as a replica takes to become ready: a deferrable update waits until the addresses have stood
#: this long, so each session is written once, with the final set. Running sessions lose nothing
#: meanwhile: the cut-outs matter to a pod at its wait, and those are updated at once.
CANARY_SETTLE_SECONDS = 60.0


def _created(text: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


class WriteBudget:
    """A token bucket: at most ``rate`` deferrable writes per second, a second's worth at once. What
    spreads a controller rollout's policy updates (the canary's new addresses cut out of every
    session policy whose networks hold them) so the API server's write rate stays under ``rate``."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, burst: float | None = None) -> None:
        assert rate > 0, rate
        self.rate, self.clock = rate, clock
        self.capacity = max(1.0, rate) if burst is None else max(1.0, burst)
        self.tokens, self.updated = self.capacity, clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        """Tokens accrued since the last call, up to the capacity (the lock held)."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self) -> float:
        """0 and a token taken, or the seconds until one is free (nothing taken, no debt)."""
        with self._lock:
            self._refill()
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate

    def reserve(self) -> float:
        """A token now (0) or a reservation: the seconds until the token this call took is due (the
        bucket goes into debt, so a thousand deferred sessions get a thousand distinct slots, and
        none spins)."""
        with self._lock:
            self._refill()
            self.tokens -= 1.0
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class Reconciler:
    core: Any  # kubernetes.client.CoreV1Api
    objects: SessionObjects  # the API of the kind that enforces sessions (the backend's)
    pods: Store
    policies: Store  # every NetworkPolicy: effective egress is judged against them
    dns: DnsDestination
    metrics: ControllerMetrics
    component: str = "sortie-egress"
    #: The backend's objects by (namespace, name); None: they are NetworkPolicies, kept in ``policies``.
    owned: Store | None = None
    backend: str = DEFAULT_BACKEND
    #: Someone else's policies of other kinds the dataplane enforces too (kube/policy_objects.judged_kinds:
    #: Cilium's, where it runs), each kind's store; cluster-scoped ones are kept under "".
    judged: tuple[Store, ...] = ()
    #: Why a pod must stay gated although its policy is written, as an Event's (reason, message)
    #: (main.Controller._release_hold: no wait and no session baseline in place yet, or an
    #: allowlist on Cilium without the node guard); None: nothing holds pods back.
    hold_release: Callable[[dict[str, Any], str | None], tuple[str, str] | None] | None = None
    cluster: BackendSettings = field(default_factory=BackendSettings)
    #: The enforcement canary every session policy opens and cuts out; its addresses follow the
    #: canary pods (Controller._canary_changed). None: no canary (nothing waits on one).
    canary: Canary | None = None
    #: Events already recorded, per session (dropped with the session, so this never outgrows the cluster).
    _told: dict[SessionKey, set[tuple[str, str, str]]] = field(default_factory=dict)
    #: Sessions whose pods other policies widen, and by which policies (the gauge counts the keys).
    widened: dict[SessionKey, tuple[str, ...]] = field(default_factory=dict)
    #: Spreads updates that only follow the canary's addresses (None: written at once): slots are
    #: handed out by ``canary_budget`` and each write takes a token of ``canary_pace`` (no burst).
    canary_budget: WriteBudget | None = None
    canary_pace: WriteBudget | None = None
    #: The canaries before the current one (Controller._canary_changed): a policy rendered for one
    #: of them differs from the current rendering only by the canary's addresses.
    previous_canaries: list[Canary] = field(default_factory=list)
    #: Sessions holding a slot of the budget: when it is due (monotonic), they write without another.
    _reserved: dict[SessionKey, float] = field(default_factory=dict)
    #: When the canary's addresses last changed (monotonic; Controller._canary_changed).
    canary_changed_at: float = 0.0

    # --- keys -------------------------------------------------------------

    @staticmethod
    def key_for(obj: dict[str, Any]) -> SessionKey | None:
        """The session a pod or one of our policies belongs to (by label, else by name)."""
        metadata = obj.get("metadata") or {}
        session_id = (metadata.get("labels") or {}).get(SESSION_ID_LABEL)
        if not isinstance(session_id, str):
            name = metadata.get("name", "")
            if name.startswith(POLICY_NAME_PREFIX):
                session_id = name[len(POLICY_NAME_PREFIX):]
            elif name.startswith(CLUSTER_POLICY_PREFIX) and name.count(".") >= 2:  # sortie-egress.<ns>.<id>
                session_id = name.split(".", 2)[2]
            else:
                return None
        return metadata.get("namespace", ""), session_id

    # --- the loop body ------------------------------------------------------

    def reconcile(self, key: SessionKey, conflicts: int = 0) -> str:
        """Bring one session to its plan; returns what it did, for metrics and logs.

        ``conflicts`` is how many times in a row this session just hit a conflict: past
        a few, the pod is told with an Event (the queue keeps backing off meanwhile).
        """
        namespace, session_id = key
        name = self.objects.name_for(namespace, session_id)
        existing = self._owned.get((namespace, name))
        pods = self.pods.by_index(key)
        plan = plan_session(pods, existing, self.dns, self.canary, self.backend, self.cluster)
        done: list[str] = []
        # Whether the stored object must be replaced: judged once (a resync asks it of every session).
        stale = plan.policy is not None and existing is not None and (plan.adopt or not policy_matches(existing, plan.policy))
        self._defer_canary_only(key, plan, existing, pods, stale)
        try:
            self._write_policy(plan, existing, done, stale)
        except Conflict as exc:
            self.metrics.conflicts.inc()
            if conflicts + 1 >= CONFLICTS_BEFORE_EVENT and pods:
                self._tell(key, Note(pods[0], "Warning", CONFLICT,
                                     f"{self.objects.kind} {name} could not be written ({exc}); retrying with backoff"))
            raise
        # One write per pod: its missing mode label and its gate together.
        writes: dict[int, tuple[dict[str, Any], str | None, bool]] = {}
        for pod, mode in plan.labels:
            writes[id(pod)] = (pod, mode, False)
        for pod in plan.release:
            # The mode it will carry once released: its label, or the one this write adds.
            labels = (pod.get("metadata") or {}).get("labels") or {}
            mode = writes.get(id(pod), (pod, None, False))[1] or labels.get(EGRESS_MODE_LABEL)
            held = self.hold_release(pod, mode) if self.hold_release is not None else None
            if held is not None:
                self._tell(key, Note(pod, "Warning", *held))
                done.append("held")
                continue
            writes[id(pod)] = (pod, writes.get(id(pod), (pod, None, False))[1], True)
        for pod, mode, release in writes.values():
            if self._patch_pod(pod, mode, release):
                done.append("released" if release else "labelled")
        if plan.pin_violated:
            self.metrics.pin_violations.inc()
        for note in plan.notes:
            self._tell(key, note)
        self._judge_effective_egress(key, plan)
        return "+".join(dict.fromkeys(done)) or "noop"

    @property
    def _owned(self) -> Store:
        return self.policies if self.owned is None else self.owned

    def forget(self, key: SessionKey) -> None:
        """The session has no pods left: drop what was kept about it."""
        self._told.pop(key, None)
        self.widened.pop(key, None)
        self.metrics.widened_sessions.set(len(self.widened))

    # --- effective egress ---------------------------------------------------

    def _judge_effective_egress(self, key: SessionKey, plan: SessionPlan) -> None:
        """CONTRACT §4: every other policy that lets a session pod reach more than its own."""
        found: dict[str, str] = {}
        if plan.reference is not None:
            backend = backends.get(self.backend)
            # Someone else's: NetworkPolicies of the namespace, the backend's kind (cluster-scoped
            # ones are filed under ""), and, where Cilium runs, its policies of every kind.
            own_kind = [] if self.owned is None else [
                obj for obj in self.owned.by_namespace(key[0] if backend.kind.namespaced else "") if not is_managed(obj)]
            judged = [obj for store in self.judged for obj in (*store.by_namespace(key[0]), *store.by_namespace(""))
                      if not is_managed(obj)]
            others = backend.widening_candidates(self.policies.by_index((key[0], False)), own_kind, judged)
            for pod in plan.enforced_pods:
                labels = self._labels(pod)
                for widening in backend.widenings(plan.reference, others, key[0], labels, self.cluster):
                    found.setdefault(widening.policy, widening.describe())
                    self._tell(key, Note(pod, "Warning", WIDENED,
                                         f"{widening.describe()}; this pod can reach more than its egress policy allows"))
        if found:
            if self.widened.get(key) != tuple(sorted(found)):
                log.warning("session %s/%s is widened by %s", key[0], key[1], "; ".join(found.values()))
            self.widened[key] = tuple(sorted(found))
        else:
            self.widened.pop(key, None)
        self.metrics.widened_sessions.set(len(self.widened))

    def _labels(self, pod: dict[str, Any]) -> dict[str, str]:
        """The pod's labels as stored now (our own label write included)."""
        current = self.pods.get((pod["metadata"].get("namespace", ""), pod["metadata"].get("name", ""))) or pod
        return current["metadata"].get("labels") or {}

    # --- writes ---------------------------------------------------------------

    def _only_canary_moved(self, pods: list[dict[str, Any]], existing: dict[str, Any]) -> bool:
        """The stored policy is what an earlier canary's addresses rendered, and every pod of the
        session is past its start (its wait does not need the new addresses)."""
        now = dt.datetime.now(dt.timezone.utc)
        for pod in pods:
            created = _created((pod.get("metadata") or {}).get("creationTimestamp"))
            if has_gate(pod) or created is None or (now - created).total_seconds() < STARTING_SECONDS:
                return False
        for canary in self.previous_canaries:
            earlier = plan_session(pods, existing, self.dns, canary, self.backend, self.cluster).policy
            if earlier is not None and policy_matches(existing, earlier):
                return True
        return False

    def _defer_canary_only(self, key: SessionKey, plan: SessionPlan, existing: dict[str, Any] | None,
                           pods: list[dict[str, Any]], stale: bool) -> None:
        """Deferred where the only change to write (``stale``: the stored object is to be replaced)
        follows the canary's addresses and the session can wait (``_only_canary_moved``): until the
        addresses settle, then until its slot of the budget, then until the pace lets it through."""
        if self.canary_budget is None or not stale or plan.adopt or not self._only_canary_moved(pods, existing):
            return
        due = self._reserved.get(key)
        settling = self.canary_changed_at + CANARY_SETTLE_SECONDS - time.monotonic()
        if settling > 0:
            self._reserved.pop(key, None)  # a slot taken before this change is for an old set
            raise Deferred(settling)
        if due is None:
            delay = self.canary_budget.reserve()
            if delay > 0:
                self._reserved[key] = time.monotonic() + delay
                raise Deferred(delay)
        elif time.monotonic() < due:
            raise Deferred(due - time.monotonic())
        else:
            # Due: the slot spread the sessions out; the pace itself is held here, so
            # workers that fell behind do not catch up in a burst.
            wait = self.canary_pace.take() if self.canary_pace is not None else 0.0
            if wait > 0:
                raise Deferred(wait)
            del self._reserved[key]

    def _write_policy(self, plan: SessionPlan, existing: dict[str, Any] | None, done: list[str], stale: bool) -> None:
        if plan.policy is None:
            if plan.delete and existing is not None:
                self._delete_policy(existing)
                done.append("deleted")
            return
        if existing is None:
            self._create_policy(plan.policy)
            done.append("created")
        elif stale:
            self._replace_policy(existing, plan.policy, adopting=plan.adopt)
            done.append("adopted" if plan.adopt else "repaired")

    def _create_policy(self, policy: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace = policy["metadata"].get("namespace", "")
        try:
            created = self.objects.create(namespace, policy)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{namespace}/{policy['metadata']['name']} already exists") from None
            raise
        self._owned.put(self.objects.project(created))
        self.metrics.writes.labels("create_policy").inc()

    def _replace_policy(self, existing: dict[str, Any], desired: dict[str, Any], adopting: bool) -> None:
        from kubernetes.client.exceptions import ApiException

        metadata = desired["metadata"]
        body = {**desired, "metadata": {**metadata, "resourceVersion": existing["metadata"].get("resourceVersion")}}
        if not adopting:  # keep labels others added to ours; an adopted policy is ours alone
            labels = dict(existing["metadata"].get("labels") or {})
            labels.update(metadata["labels"])
            body["metadata"]["labels"] = labels
        namespace = metadata.get("namespace", "")
        try:
            replaced = self.objects.replace(namespace, metadata["name"], body)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"{namespace}/{metadata['name']} changed under us") from None
            raise
        self._owned.put(self.objects.project(replaced))
        self.metrics.writes.labels("adopt_policy" if adopting else "replace_policy").inc()
        log.info("%s %s %s/%s", "adopted" if adopting else "repaired", self.objects.kind, namespace, metadata["name"])

    def _delete_policy(self, existing: dict[str, Any]) -> None:
        """Retire, then delete: only Kubernetes may delete a *managed* policy (sortie_egress/protection/tamper.py),
        so the controller first takes its managed-by label off (an update it may make), guarded by
        the uid it read; the policy is then no longer protected, and goes."""
        from kubernetes.client.exceptions import ApiException

        metadata = existing["metadata"]
        namespace, name, uid = metadata.get("namespace", ""), metadata.get("name", ""), metadata.get("uid")
        retire = [{"op": "test", "path": "/metadata/uid", "value": uid},
                  {"op": "remove", "path": pointer("metadata", "labels", MANAGED_BY_LABEL)}]
        try:
            self.objects.patch(namespace, name, retire)
            self.objects.delete(namespace, name, uid)
        except ApiException as exc:
            if exc.status == 404:
                pass
            elif exc.status in (409, 422):
                raise Conflict(f"{namespace}/{name} changed under us") from None
            else:
                raise
        self._owned.remove((namespace, name))
        self.metrics.writes.labels("delete_policy").inc()
        log.info("deleted %s %s/%s (no pod needs it)", self.objects.kind, namespace, name)

    def _patch_pod(self, pod: dict[str, Any], mode: str | None, release: bool) -> bool:
        """Add the missing mode label and/or lift our gate, in one write."""
        from kubernetes.client.exceptions import ApiException

        patch = pod_patch(pod, mode, release)
        if not patch:
            return False
        metadata = pod["metadata"]
        try:
            response = self.core.patch_namespaced_pod(metadata["name"], metadata["namespace"], patch,
                                                      _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status in (409, 422):  # a test op failed, or the label appeared meanwhile: look again
                raise Conflict(f"pod {metadata['namespace']}/{metadata['name']} changed") from None
            raise
        self.pods.put(project_pod(json.loads(response.data)))
        if mode is not None:
            self.metrics.writes.labels("label_pod").inc()
        if release and gate_removal_patch(pod) is not None:
            self.metrics.writes.labels("release_gate").inc()
            created = metadata.get("creationTimestamp")
            if created:
                started = dt.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
                self.metrics.gate_release.observe(max(0.0, time.time() - started))
        return True

    def _tell(self, key: SessionKey, note: Note) -> None:
        """One Event per pod, reason and message (per controller lifetime): the message, not a stream.

        Never raises: enforcement is already written when this runs, and a refused
        Event must not undo or delay it. A failure is logged and counted, and the
        Event is tried again on the next reconcile.
        """
        from kubernetes.client.exceptions import ApiException

        metadata = note.pod["metadata"]
        told = (metadata.get("uid", ""), note.reason, note.message)
        if told in self._told.get(key, ()):
            return
        now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        event = {
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
                               "namespace": metadata["namespace"], "uid": metadata.get("uid", "")},
            "reason": note.reason, "type": note.type, "message": note.message[:1024],
            "source": {"component": self.component}, "reportingComponent": self.component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.core.create_namespaced_event(metadata["namespace"], event, _preload_content=False)
        except Exception as exc:  # noqa: BLE001 - any failure: enforcement stands, the Event waits
            detail = exc.reason if isinstance(exc, ApiException) else exc
            self.metrics.events_failed.inc()
            log.warning("could not record %s Event on %s/%s (%s): %s", note.reason, metadata["namespace"],
                        metadata["name"], detail, note.message)
            return
        self._told.setdefault(key, set()).add(told)
        log.log(logging.WARNING if note.type == "Warning" else logging.INFO, "pod %s/%s: %s: %s",
                metadata["namespace"], metadata["name"], note.reason, note.message)
