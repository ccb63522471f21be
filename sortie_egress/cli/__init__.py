"""``sortie-egress``: the operator's and the tests' command line.

Exit codes: 0 success, 1 the policy (or the admission) was refused,
2 the command could not do its job (bad flags, unreadable file, no server).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence

from sortie_egress import __version__
from sortie_egress import backends
from sortie_egress.backends import DEFAULT_BACKEND
from sortie_egress.render.clusternetworkpolicy import DEFAULT_PRIORITY

from sortie_egress.render.session import DnsDestination
from sortie_egress.wait import add_arguments as add_wait_arguments
from sortie_egress.cli.local import cmd_render, cmd_check, cmd_certs_generate
from sortie_egress.cli.cluster import cmd_audit, cmd_review
from sortie_egress.cli.explain import cmd_explain
from sortie_egress.cli.processes import cmd_serve, cmd_controller, cmd_run, cmd_wait_for_enforcement
from sortie_egress.cli.common import DEFAULT_CERT_DIR, CommandError, dns_flag, duration_flag, positive_seconds

#: Above the API server's idle-connection timeout (90 s): it, not we, should close an idle connection.
KEEP_ALIVE_SECONDS = 120.0


def _system_namespace_flag(parser: argparse.ArgumentParser) -> None:
    from sortie_egress.kube.client import own_namespace

    parser.add_argument("--system-namespace", "--lease-namespace", dest="system_namespace", default=own_namespace(),
                        help="the namespace the product runs in: its Lease and certificate Secrets (default: "
                             "$POD_NAMESPACE, else the service account's namespace, else sortie-system)")


def _cnp_priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{value} is out of range (0-1000, as ClusterNetworkPolicy allows)")
    return value


def _backend(text: str) -> str:
    """A backend name, checked also when it comes from $SORTIE_EGRESS_BACKEND (argparse checks
    ``choices`` only on the command line, but runs ``type`` on a string default too)."""
    if text not in backends.names():
        raise argparse.ArgumentTypeError(f"{text!r} is not a backend (choose from {', '.join(backends.names())}; "
                                         "$SORTIE_EGRESS_BACKEND counts too)")
    return text


def _backend_flag(parser: argparse.ArgumentParser, *, unset: str | None = DEFAULT_BACKEND) -> None:
    """``unset``: the value without the flag and $SORTIE_EGRESS_BACKEND (None: ask the cluster)."""
    parser.add_argument("--backend", type=_backend, default=os.environ.get("SORTIE_EGRESS_BACKEND", unset),
                        metavar="{" + ",".join(backends.names()) + "}",
                        help=f"what enforces each session's policy: {_summaries()}; a policy the backend cannot "
                             "enforce exactly is refused; webhook and controller must agree ($SORTIE_EGRESS_BACKEND)")


def _summaries() -> str:
    """Each backend in a few words: "a, b or c"."""
    summaries = [backend.summary for backend in backends.in_docs_order()]
    return ", ".join(summaries[:-1]) + " or " + summaries[-1] if len(summaries) > 1 else summaries[0]


def _wait_mode(text: str) -> str:
    """An --enforcement-wait mode, checked also when it comes from $SORTIE_EGRESS_ENFORCEMENT_WAIT."""
    from sortie_egress.enforcement_wait.injection import WAIT_MODES

    if text not in WAIT_MODES:
        raise argparse.ArgumentTypeError(f"{text!r} is not an enforcement-wait mode (choose from {', '.join(WAIT_MODES)}; "
                                         "$SORTIE_EGRESS_ENFORCEMENT_WAIT counts too)")
    return text


def _wait_mode_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--enforcement-wait", type=_wait_mode, metavar="{required,auto,off}",
                        default=os.environ.get("SORTIE_EGRESS_ENFORCEMENT_WAIT", "required"),
                        help="required (default): the webhook injects the wait (with --enforcement-canary); auto: "
                             "not on the cilium backend, whose dataplane judges a pod's first packet, where the "
                             "controller instead releases a pod only while the session baseline "
                             "(CiliumClusterwideNetworkPolicy sortie-egress-session-baseline) is in place; off: "
                             "never. Webhook, controller and the controller ServiceAccount's "
                             "sortie.io/enforcement-wait must agree ($SORTIE_EGRESS_ENFORCEMENT_WAIT)")


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("SORTIE_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SORTIE_PORT", "8443")))
    parser.add_argument("--tls-cert", help="serving certificate (PEM); reloaded when the file changes")
    parser.add_argument("--tls-key", help="serving key (PEM); with no certificate and key, local ones are made in certs/")
    parser.add_argument("--tls-secret", metavar="[NAMESPACE/]NAME",
                        help="serve the pair in this kubernetes.io/tls Secret, followed through the API (self-managed "
                             "certificates); without a namespace, the one the webhook runs in")
    parser.add_argument("--request-timeout", type=positive_seconds, default=10.0,
                        help="seconds a client has to send a whole request, headers and body (slow-loris guard)")
    parser.add_argument("--keep-alive", type=positive_seconds, default=KEEP_ALIVE_SECONDS,
                        help="seconds an idle connection stays open for the API server to reuse; keep it above the "
                             "API server's own idle timeout (90 s, Go's default transport), or a webhook call can race "
                             "a connection we are closing, and a session start is refused at random "
                             f"(default {KEEP_ALIVE_SECONDS:.0f})")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--enforcement-canary", metavar="HOST",
                        help="hold every enforced session pod's containers back until its egress policy is seen "
                             "enforced from inside the pod, against the controller's canary at HOST (its Service: a "
                             "bare name is taken in the namespace the webhook runs in); an init container is "
                             "injected first (CONTRACT §6). Default: no wait")
    parser.add_argument("--enforcement-port", type=int, default=9445,
                        help="the canary's open port; the closed one is the next (the controller's --canary-port)")
    parser.add_argument("--enforcement-ca", metavar="FILE",
                        help="the CAs the canary's certificate comes from (it serves this webhook's serving "
                             "certificate), pinned in every injected wait with the certificate's first DNS name; "
                             "default: ca.crt beside --tls-cert, or the --tls-secret's ca.crt")
    _backend_flag(parser)
    _wait_mode_flag(parser)
    parser.add_argument("--enforcement-image", default=os.environ.get("SORTIE_EGRESS_IMAGE"),
                        help="the image of the injected init container (default: $SORTIE_EGRESS_IMAGE)")


def _installed_settings_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of commands that judge with the installed controller's settings (audit, explain:
    cli/cluster.installed_settings). Not given: the installed controller's, read from its Lease
    (controller/settings.py); a flag given wins, with a warning where it differs."""
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG/~/.kube/config)")
    parser.add_argument("--dns", type=dns_flag, default=None,
                        help="the controller's DNS setting (default: the installed controller's, else cluster)")
    parser.add_argument("--canary-port", type=int, default=None,
                        help="the controller's --canary-port (default: the installed controller's, else 0: none)")
    _backend_flag(parser, unset=None)
    parser.add_argument("--cluster-policy-priority", type=_cnp_priority, default=None,
                        help="the controller's --cluster-policy-priority (clusternetworkpolicy backend; default: the "
                             f"installed controller's, else {DEFAULT_PRIORITY})")
    _system_namespace_flag(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sortie-egress", description="Per-session egress enforcement for Sortie session pods."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the admission webhook over TLS")
    _serve_flags(serve)
    serve.add_argument("--kubeconfig", help="with --tls-secret: kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    serve.set_defaults(handler=cmd_serve)

    controller = commands.add_parser("controller", help="create each session's NetworkPolicy, then release its gate")
    controller.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable; default: all)")
    controller.add_argument("--dns", type=dns_flag, default=DnsDestination(), help="DNS destination: cluster, any, CIDR,..., or cluster,CIDR,... (a node-local cache too)")
    controller.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG/~/.kube/config)")
    controller.add_argument("--workers", type=int, default=48, help="reconciles in flight (they mostly wait on the API server)")
    controller.add_argument("--metrics-port", type=int, default=8080, help="plain-HTTP /metrics port; 0 turns it off")
    controller.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True)
    _system_namespace_flag(controller)
    _backend_flag(controller)
    _wait_mode_flag(controller)
    controller.add_argument("--cluster-policy-priority", type=_cnp_priority, default=DEFAULT_PRIORITY,
                            help="clusternetworkpolicy backend: the Admin-tier priority of session policies, 0-1000 "
                                 "(lower wins: give your own cluster-wide guardrails lower numbers; default "
                                 f"{DEFAULT_PRIORITY})")
    controller.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    controller.add_argument("--canary-port", type=int, default=0,
                            help="serve the enforcement canary on this port (open) and the next (closed), and make every "
                                 "session policy open the first and block the second (CONTRACT §6); the webhook's "
                                 "--enforcement-port. 0 (default): no canary")
    controller.add_argument("--canary-address", default="0.0.0.0", metavar="IP",
                            help="the address the canary listens on (default 0.0.0.0: every IPv4 address of the pod; "
                                 ":: for IPv6); its two ports must be free there")
    controller.add_argument("--canary-tls-secret", metavar="[NAMESPACE/]NAME",
                            help="the canary's open port proves who it is with this kubernetes.io/tls Secret's pair "
                                 "(the webhook's serving Secret, which the injected waits are pinned to), followed "
                                 "through the API; without it, waits pinned by the webhook never pass")
    controller.add_argument("--manage-certificates", action="store_true",
                            help="the leader keeps the webhook's CA, serving certificate and caBundles (self-managed)")
    controller.add_argument("--certificate-hosts", help="serving certificate names (default: the in-cluster Service names)")
    controller.add_argument("--ca-lifetime", type=duration_flag, default=dt.timedelta(days=365))
    controller.add_argument("--serving-lifetime", type=duration_flag, default=dt.timedelta(days=30))
    controller.add_argument("--certificate-overlap", type=duration_flag, default=dt.timedelta(minutes=2),
                            help="how long old and new CA are both trusted around a switch")
    controller.add_argument("--canary-update-rate", type=float, default=20.0, metavar="PER_SECOND",
                            help="with --canary-port: at most this many session policy updates per second that only "
                                 "follow the canary's new addresses (a controller rollout), for sessions with no pod "
                                 "starting (those are updated at once); 0: no limit (default 20)")
    controller.add_argument("--report-interval", type=float, default=0.0, metavar="SECONDS",
                            help="the leader writes what `audit --report` writes (OpenReports, one Report per "
                                 "namespace) every SECONDS, each only when it changed; 0 (default): no reports")
    controller.set_defaults(handler=cmd_controller)

    audit = commands.add_parser("audit", help="list session pods and the state of their NetworkPolicies")
    audit.add_argument("--namespace", action="append", default=[], help="only this namespace (repeatable)")
    _installed_settings_flags(audit)
    audit.add_argument("--report", action="store_true",
                       help="also write the rows as OpenReports: one openreports.io/v1alpha1 Report "
                            "(sortie-egress-sessions) per namespace, for report viewers; removes ours where no session "
                            "is left (all namespaces only)")
    audit.set_defaults(handler=cmd_audit)

    explain = commands.add_parser(
        "explain", help="can a session pod reach a destination, and which object and rule decide",
        description="explain POD DEST... or explain -f pod.yaml DEST...: for each destination "
                    "(DEST[:PORT][/PROTO]: an address, a host name, pod/[NS/]NAME, service/[NS/]NAME, node/NAME, or "
                    "dns), allowed or denied and by which object and rule, as the installed dataplane decides.")
    explain.add_argument("targets", nargs="*", metavar="POD DEST", help="the pod (unless -f), then destinations")
    explain.add_argument("-f", "--file", help="judge this Pod manifest (YAML or JSON; - for stdin) as admission and "
                                              "the controller would leave it, instead of a running pod")
    explain.add_argument("-n", "--namespace", help="the pod's namespace (default: the manifest's, else default)")
    explain.add_argument("--to-file", metavar="FILE", help="more destinations, one a line (# comments); - for stdin")
    explain.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")
    explain.add_argument("--dataplane", choices=["auto", "cilium", "networkpolicy"], default="auto",
                         help="how the CNI decides (default: cilium where the cluster serves Cilium's kinds, else a "
                              "NetworkPolicy dataplane that matches ipBlocks by address, as kube-router does)")
    _installed_settings_flags(explain)
    explain.set_defaults(handler=cmd_explain)

    run = commands.add_parser("run", help="webhook and controller in one process (local development)")
    _serve_flags(run)
    run.add_argument("--namespace", action="append", default=[])
    run.add_argument("--kubeconfig")
    run.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=False)
    run.add_argument("--dns", type=dns_flag, default=DnsDestination(), help="DNS destination: cluster, any, CIDR,..., or cluster,CIDR,... (a node-local cache too)")
    _system_namespace_flag(run)
    run.set_defaults(handler=cmd_run)

    render = commands.add_parser("render", help="print the policy object the controller will create for a pod")
    what = render.add_mutually_exclusive_group(required=True)
    what.add_argument("-f", "--file", help="Pod manifest, YAML or JSON; - for stdin")
    what.add_argument("--session-baseline", action="store_true",
                      help="print the session baseline for --dns instead (enforcementWait auto on the cilium backend)")
    what.add_argument("--node-guard", action="store_true",
                      help="print the node guard for --dns instead (Cilium, cilium and clusternetworkpolicy backends)")
    render.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    render.add_argument("--dns", type=dns_flag, default=DnsDestination(), help="DNS destination: cluster, any, CIDR,..., or cluster,CIDR,... (a node-local cache too)")
    _backend_flag(render)
    render.set_defaults(handler=cmd_render)

    check = commands.add_parser("check", help="validate a pod's egress policy as admission would")
    check.add_argument("-f", "--file", required=True, help="Pod manifest, YAML or JSON; - for stdin")
    _backend_flag(check)
    check.set_defaults(handler=cmd_check)

    review = commands.add_parser("review", help="send a pod to a running webhook as the API server would")
    review.add_argument("-f", "--file", required=True, help="Pod manifest, YAML or JSON; - for stdin")
    review.add_argument("--url", required=True, help="https://HOST:PORT/mutate")
    review.add_argument("--ca", help="CA certificate to verify the webhook with (default: system trust)")
    review.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    review.add_argument("--timeout", type=float, default=10.0)
    review.set_defaults(handler=cmd_review)

    wait = commands.add_parser("wait-for-enforcement",
                               help="exit 0 once this pod's egress policy is seen enforced (the injected init container)")
    add_wait_arguments(wait)
    wait.set_defaults(handler=cmd_wait_for_enforcement)

    certs = commands.add_parser("certs", help="certificate tooling")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    generate = certs_commands.add_parser("generate", help="write ca.crt, tls.crt, tls.key; print the caBundle")
    generate.add_argument("--out", default=str(DEFAULT_CERT_DIR), help="folder (default: certs/)")
    generate.add_argument("--hosts", help="comma-separated DNS names and IPs (default: the in-cluster Service names and loopback)")
    generate.add_argument("--days", type=int, default=365, help="serving certificate lifetime in days")
    generate.set_defaults(handler=cmd_certs_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # explain takes its pod and destinations anywhere among its options (kubectl's habit:
    # `explain POD -n NS DEST...`): argparse gives one run of positionals to a nargs="*" argument,
    # so the rest of them come back unrecognised and are its destinations too.
    args, unrecognised = parser.parse_known_args(argv)
    if unrecognised:
        if args.command != "explain" or any(text.startswith("-") and len(text) > 1 for text in unrecognised):
            parser.error(f"unrecognized arguments: {' '.join(unrecognised)}")
        args.targets = [*args.targets, *unrecognised]
    try:
        return int(args.handler(args))
    except CommandError as exc:
        print(f"sortie-egress: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
