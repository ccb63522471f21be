"""``sortie-egress explain`` (``kubectl sortie explain``): can this session pod reach that, and why.

The edge of explain/: it reads the pod (or takes a manifest with ``-f``, labelled as admission
would leave it and judged with the object the controller would create for it), the installed
controller's settings, and what explain/view.py needs; the verdicts are explain/'s.
Exit codes: 0 every destination answered, 1 a destination names nothing there or admission would
refuse the manifest, 2 the command could not run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from sortie_egress import backends
from sortie_egress.cli.cluster import cluster_errors, installed_settings
from sortie_egress.cli.common import CommandError, dump, load_manifest, warn
from sortie_egress.constants import EGRESS_MODE_LABEL, SESSION_ID_LABEL


def _destinations(args: argparse.Namespace, texts: list[str]) -> list[Any]:
    from sortie_egress.explain.asked import parse_destination, read_destinations

    asked = []
    try:
        asked = [parse_destination(text) for text in texts]
        if args.to_file:
            lines = (sys.stdin if args.to_file == "-" else Path(args.to_file).open(encoding="utf-8")).read().splitlines()
            asked += read_destinations(lines)
    except OSError as exc:
        raise CommandError(f"cannot read {args.to_file}: {exc}") from None
    except ValueError as exc:
        raise CommandError(f"bad destination: {exc}") from None
    if not asked:
        raise CommandError("which destination? Give DEST[:PORT][/PROTO] (an address, a name, pod/NAME, service/NAME, "
                           "node/NAME or dns), or --to-file FILE")
    return asked


def _as_admitted(manifest: dict[str, Any], namespace: str, backend: str) -> tuple[dict[str, Any], Any]:
    """The manifest with the labels admission would leave it (the mode label set or removed), and
    its policy (None: it has none); CommandError(1) where admission would refuse it."""
    from sortie_egress.cli.local import _judge

    pod = copy.deepcopy(manifest)
    metadata = pod.setdefault("metadata", {})
    metadata["namespace"] = metadata.get("namespace") or namespace
    labels = metadata.setdefault("labels", {})
    session, parsed, problems, warnings = _judge(pod, backend)
    warn(warnings)
    if problems:
        raise _Refused("admission would refuse this pod: " + "; ".join(problems))
    if session is None or parsed.policy is None:
        labels.pop(EGRESS_MODE_LABEL, None)
        return pod, None
    labels[EGRESS_MODE_LABEL] = parsed.policy.mode
    metadata.setdefault("name", "explained-pod")
    metadata.setdefault("uid", "00000000-0000-0000-0000-000000000000")
    return pod, parsed.policy


class _Refused(Exception):
    """Admission would refuse the manifest: explain has nothing to judge (exit 1)."""


def cmd_explain(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.controller.audit import audit_snapshot
    from sortie_egress.explain.report import as_data, as_json, as_table, explain
    from sortie_egress.kube.client import api_client
    from sortie_egress.kube.snapshot import read_explain_view, read_snapshot

    texts = list(args.targets)
    if not args.file:
        if not texts:
            raise CommandError("explain POD DEST... or explain -f pod.yaml DEST...")
        pod_name = texts.pop(0)
    asked = _destinations(args, texts)
    manifest = load_manifest(args.file) if args.file else None
    try:
        api = api_client(args.kubeconfig)
        chosen = installed_settings(args, api)
        backend = backends.get(args.backend)
        if manifest is not None:
            namespace = args.namespace or (manifest.get("metadata") or {}).get("namespace") or "default"
            try:
                pod, policy = _as_admitted(manifest, namespace, args.backend)
            except _Refused as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        else:
            from kubernetes import client

            namespace = args.namespace or "default"
            try:
                pod = json.loads(client.CoreV1Api(api).read_namespaced_pod(pod_name, namespace, _preload_content=False).data)
            except ApiException as exc:
                if exc.status == 404:
                    raise CommandError(f"no pod {namespace}/{pod_name}") from None
                raise
            policy = None
        session_id = ((pod.get("metadata") or {}).get("labels") or {}).get(SESSION_ID_LABEL)
        session_object, state, extra = None, None, ()
        if isinstance(session_id, str):
            session_object = (backend.kind.kind, backend.name_for(namespace, session_id))
            snapshot = read_snapshot(api, args.backend, [namespace], args.dns, canary_port=chosen["canary_port"],
                                     system_namespace=args.system_namespace,
                                     priority=chosen["cluster_policy_priority"])
            if policy is not None:
                from sortie_egress.controller.plan import policy_digest

                digest = policy_digest(policy.canonical_json())
                rendered, _ = backend.session_object([pod], policy, digest, args.dns, snapshot.canary,
                                                     snapshot.settings)
                rendered["kind"] = backend.kind.kind
                extra = (rendered,)
            else:
                rows = audit_snapshot(snapshot, args.dns)
                row = next((r for r in rows if r.pod == pod["metadata"].get("name")), None)
                state = None if row is None else (row.state, row.detail)
        view = read_explain_view(api, pod, asked, dataplane=None if args.dataplane == "auto" else args.dataplane,
                                 session_object=session_object, state=state, extra=extra)
    except backends.BackendUnavailable as exc:
        raise CommandError(f"cannot explain: {exc}") from None
    except ApiException as exc:
        raise CommandError(f"cannot read the cluster: {exc.status} {exc.reason}") from None
    except cluster_errors() as exc:
        raise CommandError(f"cannot read the cluster: {exc}") from None
    explanation = explain(view, asked, args.backend)
    if args.output in ("table", "wide"):
        sys.stdout.write(as_table(explanation, wide=args.output == "wide"))
    elif args.output == "json":
        sys.stdout.write(as_json(explanation))
    else:
        sys.stdout.write(dump(as_data(explanation), "yaml"))
    return 1 if any(answer.verdict == "error" for answer in explanation.answers) else 0
