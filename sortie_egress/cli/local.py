"""Commands that touch only files: ``render``, ``check``, ``certs generate`` (no cluster, no server)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from sortie_egress import backends

from sortie_egress.render.session import DnsDestination
from sortie_egress.admission.session import session_pod
from sortie_egress.cli.common import CommandError, load_manifest, dump, warn


def _judge(manifest: dict[str, Any], backend: str) -> tuple[Any, Any, list[str], tuple[str, ...]]:
    """(session, parsed policy, problems) exactly as admission judges the pod."""
    from sortie_egress.admission.mutate import judge
    from sortie_egress.admission.pod_shape import pod_shape_problems

    session = session_pod(manifest)
    if session is None:
        return None, None, [], ()
    parsed, problems, warnings = judge(session, pod_shape_problems(manifest), backend)
    return session, parsed, problems, warnings


def _report(manifest: dict[str, Any], backend: str) -> tuple[Any, Any] | int:
    session, parsed, problems, warnings = _judge(manifest, backend)
    if session is None:
        print("note: the pod has no sortie.io/session-id label: not a session pod, nothing to enforce", file=sys.stderr)
        return 0
    warn(warnings)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    if parsed.policy is None:
        print("note: the pod has no egress policy: nothing is created, the cluster default applies", file=sys.stderr)
        return 0
    return session, parsed


def _render_for(backend: str, session: Any, policy: Any, dns: DnsDestination) -> dict[str, Any]:
    """What the controller creates for the session on ``backend`` (before its owners and digest)."""
    return backends.get(backend).render(session, policy, dns)


def cmd_render(args: argparse.Namespace) -> int:
    if args.session_baseline or args.node_guard:
        from sortie_egress.guards import node_guard, session_baseline

        shipped = session_baseline if args.session_baseline else node_guard
        sys.stdout.write(dump(shipped.render(args.dns), args.output))
        return 0
    if not args.file:
        raise CommandError("render needs -f FILE (a pod), --session-baseline or --node-guard")
    outcome = _report(load_manifest(args.file), args.backend)
    if isinstance(outcome, int):
        return outcome
    session, parsed = outcome
    sys.stdout.write(dump(_render_for(args.backend, session, parsed.policy, args.dns), args.output))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    outcome = _report(load_manifest(args.file), args.backend)
    return outcome if isinstance(outcome, int) else 0


def cmd_certs_generate(args: argparse.Namespace) -> int:
    from sortie_egress.certs import authority as certs

    hosts = [host for host in args.hosts.split(",") if host.strip()] if args.hosts else list(certs.DEFAULT_HOSTS)
    try:
        generated = certs.generate(hosts, serving_lifetime=dt.timedelta(days=args.days))
        paths = certs.write(generated, args.out)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot generate certificates: {exc}") from None
    print(f"wrote {paths['ca']}, {paths['cert']}, {paths['key']} for {', '.join(hosts)}", file=sys.stderr)
    print(generated.ca_bundle)
    return 0
