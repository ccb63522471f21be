"""``sortie-egress audit``: each session pod, the state of its policy object, and what it can really reach.

The judging is pure (``audit``) and uses the controller's own plan, so "ok"
means exactly "the controller would write nothing, and no other policy lets
this pod reach more than its own".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sortie_egress import backends
from sortie_egress.backends import DEFAULT_BACKEND, BackendSettings
from sortie_egress.constants import EGRESS_MODE_LABEL, POLICY_NAME_PREFIX, SESSION_ID_LABEL
from sortie_egress.guards.node_guard import GUARDED_MODE
from sortie_egress.render.session import Canary, DnsDestination
from sortie_egress.controller.plan import (
    INVALID_POLICY,
    POLICY_CHANGED,
    POLICY_MISMATCH,
    age_order,
    enforced_for,
    has_gate,
    is_active,
    is_managed,
    plan_session,
    policy_matches,
)
from sortie_egress.kube.policy_objects import namespaced_policy_name

WRONG = ("missing", "drifted", "gated", "unlabelled", "invalid", "orphan", "conflict", "mismatch", "changed", "widened",
         "unguarded")


@dataclass(frozen=True, slots=True)
class AuditRow:
    namespace: str
    pod: str
    session: str
    state: str
    detail: str = ""

    @property
    def wrong(self) -> bool:
        return self.state in WRONG


def _name(obj: dict[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace", ""), metadata.get("name", "")


def _session_rows(namespace: str, session_id: str, pods: list[dict[str, Any]], existing: dict[str, Any] | None,
                  others: list[dict[str, Any]], dns: DnsDestination, canary: Canary | None, backend: str,
                  cluster: BackendSettings, name: str, node_guard_problem: str | None) -> list[AuditRow]:
    plan = plan_session(pods, existing, dns, canary, backend, cluster)
    kind = backends.get(backend).kind.kind
    policy_name = name
    notes = {(id(note.pod), note.reason): note.message for note in plan.notes}
    released = {id(pod) for pod in plan.release}
    unlabelled = {id(pod) for pod, _ in plan.labels}
    rows = []
    for pod in sorted(pods, key=age_order):
        name = pod["metadata"].get("name", "")

        def row(state: str, detail: str = "") -> None:
            rows.append(AuditRow(namespace, name, session_id, state, detail))

        if not is_active(pod):
            row("finished")
        elif (id(pod), POLICY_CHANGED) in notes:
            row("changed", notes[(id(pod), POLICY_CHANGED)])
        elif (id(pod), POLICY_MISMATCH) in notes:
            row("mismatch", notes[(id(pod), POLICY_MISMATCH)])
        elif plan.policy is None:
            if (id(pod), INVALID_POLICY) in notes:
                row("invalid", notes[(id(pod), INVALID_POLICY)])
            elif id(pod) in released:
                row("gated", "no egress policy, gate not released")
            else:
                row("no-policy", "cluster default applies")
        elif existing is None:
            row("missing", f"no {kind} {policy_name}")
        elif plan.adopt:
            row("conflict", f"{kind} {existing['metadata'].get('name')} is not managed by sortie-egress; "
                            "the controller replaces it with the session's")
        elif not policy_matches(existing, plan.policy):
            row("drifted", f"{kind} differs from the session's policy")
        elif id(pod) in released or has_gate(pod) and not plan.pin_violated:
            row("gated", "policy in place, gate not released")
        elif id(pod) in unlabelled:
            row("unlabelled", "no sortie.io/egress-mode label: the baseline does not select it yet")
        else:
            widened = [] if plan.reference is None else backends.get(backend).widenings(
                plan.reference, others, namespace, pod["metadata"].get("labels") or {}, cluster)
            if widened:
                row("widened", "; ".join(w.describe() for w in widened))
            elif node_guard_problem is not None and (pod["metadata"].get("labels") or {}).get(EGRESS_MODE_LABEL) == GUARDED_MODE:
                row("unguarded", f"{node_guard_problem}: this allowlist session may reach the cluster's nodes")
            elif enforced_for(pod, backend).invalid_reason:
                row("invalid", notes.get((id(pod), INVALID_POLICY), "invalid egress policy, DNS only"))
            else:
                row("ok")
    return rows


def audit(pods: list[dict[str, Any]], policies: list[dict[str, Any]], dns: DnsDestination,
          canary: Canary | None = None, backend: str = DEFAULT_BACKEND, owned: list[dict[str, Any]] | None = None,
          cluster: BackendSettings = BackendSettings(),
          name_for: Callable[[str, str], str] = namespaced_policy_name,
          judged: Iterable[dict[str, Any]] = (), node_guard_problem: str | None = None) -> list[AuditRow]:
    """Rows for every session pod and every orphaned managed policy; ``policies`` are all the
    NetworkPolicies, ``owned`` the backend's objects when they are another kind (filed under their
    session's namespace, as the controller keeps them), ``name_for`` the session's object's name,
    ``judged`` others' policies of other kinds the dataplane enforces too (Cilium's, with their
    kind: kube/policy_objects.judged_kinds), judged like the controller judges them; ``node_guard_problem``
    why the node guard cannot be relied on (node_guard.problem), where it is required: every running
    allowlist session is then ``unguarded``."""
    chosen = backends.get(backend)
    kind = chosen.kind.kind
    by_name = {_name(policy): policy for policy in (policies if owned is None else owned)}
    # Someone else's, by namespace, read as the controller reads its caches (reconciler.py): the
    # NetworkPolicies, the backend's kind (cluster-scoped ones filed under ""), Cilium's policies.
    network_policies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for policy in policies:
        if not is_managed(policy):
            network_policies[_name(policy)[0]].append(policy)
    own_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for policy in owned or []:
        if not is_managed(policy):
            own_kind[_name(policy)[0]].append(policy)
    judged_by_namespace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    clusterwide = []
    for policy in judged:
        if is_managed(policy):
            continue
        namespace = (policy.get("metadata") or {}).get("namespace")
        (judged_by_namespace[namespace] if namespace else clusterwide).append(policy)

    def others_for(namespace: str) -> list[dict[str, Any]]:
        return chosen.widening_candidates(network_policies[namespace],
                                          own_kind[namespace if chosen.kind.namespaced else ""],
                                          [*judged_by_namespace[namespace], *clusterwide])

    sessions: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for pod in pods:
        session_id = ((pod.get("metadata") or {}).get("labels") or {}).get(SESSION_ID_LABEL)
        if isinstance(session_id, str):
            sessions[(_name(pod)[0], session_id)].append(pod)
    rows = []
    for (namespace, session_id), members in sorted(sessions.items()):
        name = name_for(namespace, session_id)
        existing = by_name.get((namespace, name))
        rows += _session_rows(namespace, session_id, members, existing, others_for(namespace),
                              dns, canary, backend, cluster, name, node_guard_problem)
    for (namespace, name), policy in sorted(by_name.items()):
        labelled = ((policy.get("metadata") or {}).get("labels") or {}).get(SESSION_ID_LABEL)
        session_id = labelled if isinstance(labelled, str) else (
            name[len(POLICY_NAME_PREFIX):] if name.startswith(POLICY_NAME_PREFIX) else name)
        if is_managed(policy) and (namespace, session_id) not in sessions:
            rows.append(AuditRow(namespace, "-", session_id, "orphan", f"{kind} {name} has no pod"))
    return rows


def format_rows(rows: list[AuditRow]) -> str:
    header = ("NAMESPACE", "POD", "SESSION", "STATE", "DETAIL")
    table = [header] + [(r.namespace, r.pod, r.session, r.state, r.detail) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip()
                     for row in table) + "\n"


def audit_snapshot(snapshot: Any, dns: DnsDestination) -> list[AuditRow]:
    """``audit`` over what kube/snapshot.read_snapshot read (``audit``, ``explain``)."""
    return audit(snapshot.pods, snapshot.network_policies, dns, snapshot.canary, snapshot.backend, snapshot.owned,
                 snapshot.settings, snapshot.name_for, snapshot.judged, snapshot.node_guard_problem)
