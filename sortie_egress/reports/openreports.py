"""audit's rows as OpenReports: one ``Report`` per session namespace, one result per session pod.

OpenReports (``openreports.io/v1alpha1``) is the successor of the wg-policy PolicyReport that
Kyverno and others write, so report viewers (Policy Reporter, Kyverno's UI, kubectl) show sessions
next to their results. A result is ``pass`` (ok), ``fail`` with the state as its rule (missing,
drifted, widened, gated, changed, conflict, ...; the detail as its message, the widening policy
named there), or ``skip`` (a finished pod, a pod without a policy). Every field written is one the
CRD's schema has (tests/test_reports.py holds it against the published CRD), and ``timestamp``
carries both of its required parts. Pure: kube/reports.py writes them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Final

from sortie_egress.constants import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from sortie_egress.controller.audit import WRONG, AuditRow

GROUP: Final = "openreports.io"
VERSION: Final = "v1alpha1"
PLURAL: Final = "reports"
#: One per namespace, so a viewer's namespace page shows the namespace's sessions.
REPORT_NAME: Final = "sortie-egress-sessions"
SOURCE: Final = "sortie-egress"
POLICY: Final = "sortie-egress/session-egress"
MANAGED_LABELS: Final = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, "app.kubernetes.io/part-of": MANAGED_BY_VALUE}
#: How bad each wrong state is: a session that reaches more than it may is high; one that may not
#: be enforced as written is medium; one held back or not yet judged is low.
SEVERITY: Final = {"widened": "high", "unguarded": "high", "conflict": "high", "orphan": "low",
                   "missing": "medium", "drifted": "medium", "changed": "medium", "mismatch": "medium",
                   "invalid": "medium", "gated": "low", "unlabelled": "low"}
SKIPPED: Final = ("finished", "no-policy")


def result_of(row: AuditRow) -> str:
    if row.state in WRONG:
        return "fail"
    return "skip" if row.state in SKIPPED else "pass"


def _result(row: AuditRow, backend: str, seconds: int) -> dict[str, Any]:
    outcome = result_of(row)
    entry: dict[str, Any] = {
        "source": SOURCE, "policy": POLICY, "rule": row.state, "category": "egress", "result": outcome,
        "scored": outcome != "skip", "timestamp": {"seconds": seconds, "nanos": 0},
        "message": row.detail or {"pass": "the session's policy is in place and nothing widens it",
                                  "skip": "nothing to enforce"}.get(outcome, row.state),
        "properties": {"session": row.session, "backend": backend, "state": row.state},
    }
    if outcome == "fail":
        entry["severity"] = SEVERITY.get(row.state, "medium")
    if row.pod != "-":
        entry["resources"] = [{"apiVersion": "v1", "kind": "Pod", "namespace": row.namespace, "name": row.pod}]
    return entry


def reports(rows: Iterable[AuditRow], backend: str, now: dt.datetime, namespaces: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """namespace -> its Report (``namespaces``: also those with no row, which get an empty one)."""
    seconds = int(now.timestamp())
    by_namespace: dict[str, list[AuditRow]] = defaultdict(list)
    for namespace in namespaces:
        by_namespace[namespace] = by_namespace[namespace]
    for row in rows:
        by_namespace[row.namespace].append(row)
    out = {}
    for namespace, members in sorted(by_namespace.items()):
        results = [_result(row, backend, seconds) for row in sorted(members, key=lambda r: (r.pod, r.session))]
        summary = {key: sum(1 for r in results if r["result"] == key) for key in ("pass", "fail", "warn", "error", "skip")}
        out[namespace] = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Report",
            "metadata": {"name": REPORT_NAME, "namespace": namespace, "labels": dict(MANAGED_LABELS)},
            "source": SOURCE,
            "scope": {"apiVersion": "v1", "kind": "Namespace", "name": namespace},
            "summary": summary,
            "results": results,
        }
    return out


def content_digest(report: Mapping[str, Any]) -> str:
    """What a report says, without when: a controller that writes only on a change compares these."""
    results = [{key: value for key, value in result.items() if key != "timestamp"} for result in report.get("results") or []]
    text = json.dumps({"summary": report.get("summary"), "results": results}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["GROUP", "PLURAL", "REPORT_NAME", "SEVERITY", "VERSION", "content_digest", "reports", "result_of"]
