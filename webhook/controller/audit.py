"""``sortie-egress audit``: each session pod and the state of its NetworkPolicy, as read from the cluster.

The judging is pure (``audit``) and uses the controller's own decisions, so
"ok" here means exactly "the controller would write nothing".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..constants import POLICY_NAME_PREFIX, SESSION_ID_LABEL
from ..render import DnsDestination
from .desired import desired_for, gate_removal_patch, is_active, is_managed, policy_matches

WRONG = ("missing", "drifted", "gated", "invalid", "orphan")


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


def audit(pods: list[dict[str, Any]], policies: list[dict[str, Any]], dns: DnsDestination) -> list[AuditRow]:
    by_name = {(p["metadata"].get("namespace", ""), p["metadata"]["name"]): p for p in policies}
    sessions: set[tuple[str, str]] = set()
    rows = []
    for pod in sorted(pods, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])):
        metadata = pod["metadata"]
        namespace, session_id = metadata.get("namespace", ""), (metadata.get("labels") or {}).get(SESSION_ID_LABEL)
        if not isinstance(session_id, str):
            continue
        sessions.add((namespace, session_id))
        if not is_active(pod):
            rows.append(AuditRow(namespace, metadata["name"], session_id, "finished"))
            continue
        desired = desired_for(pod, dns)
        existing = by_name.get((namespace, POLICY_NAME_PREFIX + session_id))
        if desired.invalid_reason and desired.policy is None:
            rows.append(AuditRow(namespace, metadata["name"], session_id, "invalid", desired.invalid_reason))
        elif desired.policy is None:
            rows.append(AuditRow(namespace, metadata["name"], session_id, "no-policy", "cluster default applies"))
        elif existing is None:
            rows.append(AuditRow(namespace, metadata["name"], session_id, "missing", "no NetworkPolicy"))
        elif not policy_matches(existing, desired.policy):
            rows.append(AuditRow(namespace, metadata["name"], session_id, "drifted", "NetworkPolicy differs from the policy"))
        elif gate_removal_patch(pod) is not None:
            rows.append(AuditRow(namespace, metadata["name"], session_id, "gated", "policy in place, gate not released"))
        elif desired.invalid_reason:
            rows.append(AuditRow(namespace, metadata["name"], session_id, "invalid", desired.invalid_reason))
        else:
            rows.append(AuditRow(namespace, metadata["name"], session_id, "ok"))
    for (namespace, name), policy in sorted(by_name.items()):
        session_id = name[len(POLICY_NAME_PREFIX):] if name.startswith(POLICY_NAME_PREFIX) else name
        if is_managed(policy) and (namespace, session_id) not in sessions:
            rows.append(AuditRow(namespace, "-", session_id, "orphan", f"NetworkPolicy {name} has no pod"))
    return rows


def format_rows(rows: list[AuditRow]) -> str:
    header = ("NAMESPACE", "POD", "SESSION", "STATE", "DETAIL")
    table = [header] + [(r.namespace, r.pod, r.session, r.state, r.detail) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip()
                     for row in table) + "\n"
