"""OpenReports (issue 24): audit's rows as the standard Report, checked against the CRD OpenReports
publishes, on a real API server that validates every object written with it."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sortie_egress.controller.audit import AuditRow
from sortie_egress.reports.openreports import content_digest, reports
from tests.support import CLI, policy_crds

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
SECONDS = 1796644800  # NOW, by hand
OUR_CRD = Path(__file__).resolve().parents[1] / "manifests" / "components" / "openreports-crd" / "crd.yaml"


def _published_crd() -> dict[str, Any]:
    return yaml.safe_load((policy_crds() / "openreports-v0.2.1-reports.yaml").read_text())


def _without_descriptions(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_descriptions(item) for key, item in value.items() if key != "description"}
    if isinstance(value, list):
        return [_without_descriptions(item) for item in value]
    return value


def test_the_shipped_crd_is_the_published_one_field_for_field() -> None:
    """A later install of OpenReports (or Kyverno) over ours, or ours over theirs, loses no field."""
    ours, published = yaml.safe_load(OUR_CRD.read_text()), _published_crd()
    assert ours["metadata"]["name"] == published["metadata"]["name"] == "reports.openreports.io"
    assert _without_descriptions(ours["spec"]) == _without_descriptions(published["spec"])


def test_rows_become_one_report_per_namespace_with_a_result_per_pod() -> None:
    rows = [AuditRow("team", "app-1", "s1", "ok"),
            AuditRow("team", "app-2", "s2", "widened", "NetworkPolicy allow-all: egress[0] allows TCP (all ports) to any destination"),
            AuditRow("team", "-", "s3", "orphan", "NetworkPolicy sortie-egress-s3 has no pod"),
            AuditRow("other", "done", "s4", "finished")]
    built = reports(rows, "networkpolicy", NOW, ["empty"])
    assert sorted(built) == ["empty", "other", "team"]
    assert built["empty"]["results"] == [] and built["empty"]["summary"] == {"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0}
    team = built["team"]
    assert team["apiVersion"] == "openreports.io/v1alpha1" and team["kind"] == "Report"
    assert team["metadata"] == {"name": "sortie-egress-sessions", "namespace": "team",
                                "labels": {"app.kubernetes.io/managed-by": "sortie-egress", "app.kubernetes.io/part-of": "sortie-egress"}}
    assert team["scope"] == {"apiVersion": "v1", "kind": "Namespace", "name": "team"}
    assert team["summary"] == {"pass": 1, "fail": 2, "warn": 0, "error": 0, "skip": 0}
    orphan, ok, widened = team["results"]  # by pod name: "-" sorts first
    assert ok == {"source": "sortie-egress", "policy": "sortie-egress/session-egress", "rule": "ok", "category": "egress",
                  "result": "pass", "scored": True, "timestamp": {"seconds": SECONDS, "nanos": 0},
                  "message": "the session's policy is in place and nothing widens it",
                  "properties": {"session": "s1", "backend": "networkpolicy", "state": "ok"},
                  "resources": [{"apiVersion": "v1", "kind": "Pod", "namespace": "team", "name": "app-1"}]}
    assert (widened["result"], widened["rule"], widened["severity"]) == ("fail", "widened", "high")
    assert widened["message"] == "NetworkPolicy allow-all: egress[0] allows TCP (all ports) to any destination"
    assert (orphan["result"], orphan["severity"], "resources" in orphan) == ("fail", "low", False)
    assert built["other"]["results"][0]["result"] == "skip" and built["other"]["results"][0]["scored"] is False
    # What a report says does not depend on when it was built: a writer compares this.
    later = reports(rows, "networkpolicy", NOW + dt.timedelta(minutes=5))
    assert content_digest(later["team"]) == content_digest(team)
    assert content_digest(reports(rows[:1], "networkpolicy", NOW)["team"]) != content_digest(team)




def _report(plane: Any, namespace: str) -> dict[str, Any] | None:
    got = plane.kubectl("-n", namespace, "get", "reports.openreports.io", "sortie-egress-sessions", "-o", "json")
    return json.loads(got.stdout) if got.returncode == 0 else None


def _audit_report(plane: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "audit", "--report", "--kubeconfig", str(plane.kubeconfig_path), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.cluster
def test_reports_on_a_real_api_server_with_the_published_crd(control_plane: Any, registered_webhook: Any,
                                                             controller_kubeconfig: Path, namespace: str,
                                                             tmp_path: Path) -> None:
    """The controller's leader (--report-interval) and ``audit --report`` write Reports the published
    CRD's schema accepts, with the shipped RBAC; a pass that finds nothing changed writes nothing;
    a widening policy turns the result to fail naming it; someone else's Report is left alone."""
    from kubernetes import client

    from tests.cluster.harness import wait_for
    from tests.support import ControllerProcess, session_pod

    plane = control_plane
    unserved = _audit_report(plane, "--namespace", namespace)
    assert unserved.returncode == 2 and "does not serve openreports.io/v1alpha1 Report" in unserved.stderr, unserved.stderr
    applied = plane.kubectl("apply", "-f", str(policy_crds() / "openreports-v0.2.1-reports.yaml"))
    assert applied.returncode == 0, applied.stderr
    established = plane.kubectl("wait", "--for=condition=Established", "crd/reports.openreports.io", "--timeout=60s")
    assert established.returncode == 0, established.stderr
    rbac = plane.kubectl("apply", "-f", str(Path(__file__).resolve().parents[1] / "manifests" / "components" / "openreports" / "rbac.yaml"))
    assert rbac.returncode == 0, rbac.stderr

    core = client.CoreV1Api(plane.admin.api_client())
    pod = session_pod(policy={"mode": "allowlist", "rules": [{"cidr": "10.0.0.0/8", "port": 443}]}, namespace=namespace)
    core.create_namespaced_pod(namespace, pod)
    log_path = tmp_path / "controller.log"
    process = ControllerProcess(controller_kubeconfig, log_path, extra_args=(
        "--namespace", namespace, "--report-interval", "0.5", "--log-level", "DEBUG")).start()
    try:
        def result(state: str) -> dict[str, Any] | None:
            report = _report(plane, namespace)
            found = [r for r in (report or {}).get("results") or [] if r.get("rule") == state]
            return report if found else None

        report = wait_for(lambda: result("ok"), 60, "the controller's report with the session ok")
        assert report["summary"] == {"pass": 1, "fail": 0, "warn": 0, "error": 0, "skip": 0}, report
        assert report["results"][0]["resources"] == [{"apiVersion": "v1", "kind": "Pod", "namespace": namespace,
                                                      "name": pod["metadata"]["name"]}]
        version = report["metadata"]["resourceVersion"]
        passes = log_path.read_text().count("report pass: 1 namespace(s), 0 write(s)")
        wait_for(lambda: log_path.read_text().count("report pass: 1 namespace(s), 0 write(s)") >= passes + 3, 30,
                 "three more report passes")
        assert _report(plane, namespace)["metadata"]["resourceVersion"] == version, "a pass with no change wrote"

        client.NetworkingV1Api(plane.admin.api_client()).create_namespaced_network_policy(namespace, {
            "metadata": {"name": "allow-all-egress"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}})
        report = wait_for(lambda: result("widened"), 60, "the report to say widened")
        failed = report["results"][0]
        assert (failed["result"], failed["severity"]) == ("fail", "high"), failed
        assert failed["message"].startswith("NetworkPolicy allow-all-egress: egress[0] allows"), failed
        print(yaml.safe_dump(report, sort_keys=False))  # docs/operations.md shows a run's
    finally:
        process.stop()
    # The operator's audit says the same, so it writes nothing.
    again = _audit_report(plane, "--namespace", namespace)
    assert again.returncode == 1 and "reports: 1 namespace(s), 0 removed, 0 write(s)" in again.stderr, again.stderr
    # Someone else's Report of our name: left alone, and said.
    other = {"apiVersion": "openreports.io/v1alpha1", "kind": "Report",
             "metadata": {"name": "sortie-egress-sessions", "namespace": "default"}, "source": "someone-else"}
    assert plane.kubectl("apply", "-f", "-", input=json.dumps(other)).returncode == 0
    try:
        theirs = _audit_report(plane, "--namespace", "default")
        assert "is not ours" in theirs.stderr and "0 write(s)" in theirs.stderr, theirs.stderr
        assert _report(plane, "default")["source"] == "someone-else"
    finally:
        plane.kubectl("-n", "default", "delete", "reports.openreports.io", "sortie-egress-sessions")
