"""The Grafana dashboard the chart ships (issue 24): every query names a metric the product really
exports (read from the exposition of the webhook's and the controller's registries, not from a
list kept by hand), and the panels the issue asks for are there."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sortie_egress.controller.metrics import ControllerMetrics
from sortie_egress.server.metrics import WebhookMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "manifests" / "helm" / "sortie-egress" / "dashboards" / "sortie-egress.json"
METRIC = re.compile(r"\bsortie_egress_[a-z_]+\b")


def _exported() -> set[str]:
    """Every sample name the two /metrics endpoints serve, once each family has a sample."""
    webhook = WebhookMetrics()
    webhook.observe("/mutate", "allowed", 0.001)
    webhook.cert_reloads.labels("ok").inc()
    controller = ControllerMetrics()
    for counter in (controller.reconciles, controller.writes, controller.watch_restarts):
        counter.labels("x").inc()
    controller.backend.labels("networkpolicy").set(1)
    from prometheus_client import generate_latest

    text = webhook.render().decode() + generate_latest(controller.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_query_names_only_metrics_the_product_exports() -> None:
    exported = _exported()
    assert "sortie_egress_admissions_total" in exported and "sortie_egress_gate_release_seconds_bucket" in exported
    for title, expr in _queries():
        named = set(METRIC.findall(expr))
        assert named, f"{title}: {expr} names no metric of ours"
        assert named <= exported, f"{title}: {sorted(named - exported)} not exported (exported: {sorted(exported)})"


def test_the_panels_the_issue_asks_for_are_there() -> None:
    titles = {title for title, _ in _queries()}
    assert {"Admissions by decision", "Refused admissions", "Admission latency p50 / p99", "Sessions enforced, by backend",
            "Widened sessions", "Pin violations", "Write conflicts", "Gate release latency p50 / p99",
            "Canary health"} <= titles, titles


def test_the_dashboard_is_importable_json_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "sortie-egress" and dashboard["templating"]["list"][0]["name"] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
