"""Commands that read a cluster or call a running webhook: ``audit``, ``review``."""

from __future__ import annotations

import argparse
import sys

from sortie_egress import backends
from sortie_egress.backends import DEFAULT_BACKEND
from sortie_egress.render.clusternetworkpolicy import DEFAULT_PRIORITY
from sortie_egress.render.session import DnsDestination

from sortie_egress.cli.common import CommandError, load_manifest, dump, warn


def cmd_review(args: argparse.Namespace) -> int:
    from sortie_egress.cli.review_client import ReviewFailed, send_review
    from sortie_egress.admission.patch import apply_patch

    manifest = load_manifest(args.file)
    try:
        response = send_review(manifest, args.url, args.ca, timeout=args.timeout)
    except ReviewFailed as exc:
        raise CommandError(str(exc)) from None
    allowed = response.get("allowed") is True
    print(f"decision: {'allowed' if allowed else 'denied'}", file=sys.stderr)
    warn(response.get("warnings") or [])
    if not allowed:
        status = response.get("status") or {}
        print(f"error: {status.get('message', 'denied')} (code {status.get('code', '?')})", file=sys.stderr)
        return 1
    ops = response.get("patchOps") or []
    print(f"patch: {len(ops)} operation(s)", file=sys.stderr)
    sys.stdout.write(dump(apply_patch(manifest, ops), args.output))
    return 0


#: What audit judges with where neither a flag nor the installed controller says (the controller's defaults).
AUDIT_DEFAULTS = {"backend": DEFAULT_BACKEND, "dns": "cluster", "canary_port": 0, "cluster_policy_priority": DEFAULT_PRIORITY}


def installed_settings(args: argparse.Namespace, api: object) -> dict[str, object]:
    """The settings to judge with (the flags given, else the installed controller's, else the
    defaults), said on stderr; ``args.backend`` and ``args.dns`` are set to them."""
    from sortie_egress.controller.settings import resolve
    from sortie_egress.kube.snapshot import read_published_settings

    published, why = read_published_settings(api, args.system_namespace)
    given = {"backend": args.backend, "dns": None if args.dns is None else str(args.dns),
             "canary_port": args.canary_port, "cluster_policy_priority": args.cluster_policy_priority}
    chosen, notes = resolve(given, published, AUDIT_DEFAULTS, why)
    for note in notes:
        print(note, file=sys.stderr)
    args.backend, args.dns = chosen["backend"], DnsDestination.parse(chosen["dns"])
    if args.backend not in backends.names():
        raise CommandError(f"the installed controller's backend {args.backend!r} is not one this sortie-egress knows "
                           f"({', '.join(backends.names())}): upgrade it, or give --backend")
    return chosen


def cluster_errors() -> tuple[type[BaseException], ...]:
    """What reading the cluster may raise that is the operator's to fix, not a bug: said in one line."""
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    return ConfigException, HTTPError, OSError, ValueError


def _write_reports(api: object, rows: list, backend: str, namespaces: list[str]) -> None:
    """audit --report: the rows as OpenReports, one Report per namespace (reports/openreports.py)."""
    import datetime as dt

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.kube.reports import ReportsUnavailable, ReportWriter, our_report_namespaces
    from sortie_egress.reports.openreports import reports

    custom = client.CustomObjectsApi(api)
    built = reports(rows, backend, dt.datetime.now(dt.timezone.utc), namespaces)
    try:
        stale = [] if namespaces else sorted(our_report_namespaces(custom) - set(built))
        writes, notes = ReportWriter(custom).write(built, stale)
    except ReportsUnavailable as exc:
        raise CommandError(f"cannot write reports: {exc}") from None
    except ApiException as exc:
        raise CommandError(f"cannot write reports: {exc.status} {exc.reason}") from None
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(f"reports: {len(built)} namespace(s), {len(stale)} removed, {writes} write(s) (openreports.io/v1alpha1 "
          "Report sortie-egress-sessions)", file=sys.stderr)


def cmd_audit(args: argparse.Namespace) -> int:
    """Each session pod's state, judged from one snapshot of the cluster (kube/snapshot.py)."""
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.controller.audit import audit_snapshot, format_rows
    from sortie_egress.kube.client import api_client
    from sortie_egress.kube.snapshot import read_snapshot

    try:
        api = api_client(args.kubeconfig)
        chosen = installed_settings(args, api)
        snapshot = read_snapshot(api, args.backend, args.namespace, args.dns, canary_port=chosen["canary_port"],
                                 system_namespace=args.system_namespace, priority=chosen["cluster_policy_priority"])
    except backends.BackendUnavailable as exc:
        raise CommandError(f"cannot audit: {exc}") from None
    except ApiException as exc:
        raise CommandError(f"cannot read the cluster: {exc.status} {exc.reason}") from None
    except cluster_errors() as exc:  # no kubeconfig, unreachable server
        raise CommandError(f"cannot read the cluster: {exc}") from None
    rows = audit_snapshot(snapshot, args.dns)
    sys.stdout.write(format_rows(rows))
    if args.report:
        _write_reports(api, rows, args.backend, args.namespace)
    wrong = [row for row in rows if row.wrong]
    print(f"{len(rows)} rows, {len(wrong)} need attention (backend: {args.backend})", file=sys.stderr)
    return 1 if wrong else 0
