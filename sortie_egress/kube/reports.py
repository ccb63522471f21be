"""Writing OpenReports (reports/openreports.py) to the cluster: create, replace, and remove ours
where a namespace has no session left. Only objects with our labels are ever replaced or deleted:
a Report of the same name written by someone else is left alone and said so."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sortie_egress.reports.openreports import GROUP, MANAGED_LABELS, PLURAL, REPORT_NAME, VERSION, content_digest


class ReportsUnavailable(RuntimeError):
    """The cluster does not serve openreports.io/v1alpha1 Report."""


@dataclass
class ReportWriter:
    """Writes a namespace's report only when what it says changed (a controller that rewrote every
    report on every pass would load the API server for nothing at 50,000 sessions)."""

    custom: Any
    written: dict[str, str] = field(default_factory=dict)

    def write(self, reports: dict[str, dict[str, Any]], stale: Iterable[str] = ()) -> tuple[int, list[str]]:
        """(API writes made, what was left alone and why); ``stale``: namespaces whose report of ours
        should go (no session there any more)."""
        from kubernetes.client.exceptions import ApiException

        writes, notes = 0, []
        try:
            for namespace, report in reports.items():
                digest = content_digest(report)
                if self.written.get(namespace) == digest:
                    continue
                existing = self._read(namespace)
                if existing is None:
                    self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, report)
                elif not _ours(existing):
                    notes.append(f"Report {namespace}/{REPORT_NAME} is not ours (no {MANAGED_LABELS}): left alone")
                    continue
                elif content_digest(existing) != digest:
                    body = {**report, "metadata": {**report["metadata"],
                                                   "resourceVersion": existing["metadata"]["resourceVersion"]}}
                    self.custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, REPORT_NAME, body)
                else:
                    self.written[namespace] = digest
                    continue
                writes += 1
                self.written[namespace] = digest
            for namespace in stale:
                existing = self._read(namespace)
                if existing is not None and _ours(existing):
                    self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, REPORT_NAME)
                    writes += 1
                self.written.pop(namespace, None)
        except ApiException as exc:
            if exc.status == 404 and _missing_kind(exc):
                raise ReportsUnavailable(_unserved()) from None
            raise
        return writes, notes

    def _read(self, namespace: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return json.loads(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, REPORT_NAME,
                                                                       _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404 and not _missing_kind(exc):
                return None
            if exc.status == 404:
                raise ReportsUnavailable(_unserved()) from None
            raise


def _missing_kind(exc: Any) -> bool:
    """A 404 for the kind itself (CRD not installed), not for one object: its body is no Status of a NotFound object."""
    try:
        status = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return True
    return (status.get("details") or {}).get("name") != REPORT_NAME


def _unserved() -> str:
    return (f"the cluster does not serve {GROUP}/{VERSION} Report: install its CRD (manifests/components/openreports, "
            "or the chart's openReports.installCRD), or let Kyverno's install bring it")


def _ours(report: dict[str, Any]) -> bool:
    labels = (report.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in MANAGED_LABELS.items())


def our_report_namespaces(custom: Any) -> set[str]:
    """Where a report of ours is stored (to remove it when its namespace has no session left)."""
    from kubernetes.client.exceptions import ApiException

    selector = ",".join(f"{key}={value}" for key, value in MANAGED_LABELS.items())
    try:
        listed = json.loads(custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=selector,
                                                              _preload_content=False).data)
    except ApiException as exc:
        if exc.status == 404:
            raise ReportsUnavailable(_unserved()) from None
        raise
    return {item["metadata"]["namespace"] for item in listed.get("items") or []
            if item["metadata"].get("name") == REPORT_NAME}


__all__ = ["ReportWriter", "ReportsUnavailable", "our_report_namespaces"]
