"""``sortie-egress``: the operator's and the tests' command line.

Exit codes: 0 success, 1 the policy (or the admission) was refused,
2 the command could not do its job (bad flags, unreadable file, no server).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sortie_egress import __version__
from sortie_egress import backends
from sortie_egress.backends import DEFAULT_BACKEND
from sortie_egress.render.clusternetworkpolicy import DEFAULT_PRIORITY

from sortie_egress.render.networkpolicy import DnsDestination
from sortie_egress.admission.session import session_pod
from sortie_egress.wait import add_arguments as add_wait_arguments

DEFAULT_CERT_DIR = Path("certs")
# `serve` with no certificate regenerates local ones that are this close to expiry.
LOCAL_CERT_MIN_VALIDITY = dt.timedelta(days=7)


class CommandError(Exception):
    """A failure the user can fix; printed as one line, exit status 2."""


def _dns(text: str) -> DnsDestination:
    try:
        return DnsDestination.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def load_manifest(source: str) -> dict[str, Any]:
    """One Pod manifest from a YAML or JSON file, or stdin for ``-``."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise CommandError(f"{source} is not YAML or JSON: {exc}") from None
    if len(documents) != 1:
        raise CommandError(f"{source} must hold exactly one manifest, found {len(documents)}")
    manifest = documents[0]
    if not isinstance(manifest, dict) or manifest.get("kind") != "Pod":
        kind = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
        raise CommandError(f"{source} must be a Pod manifest (kind: Pod), found {kind!r}")
    return manifest


def _dump(document: Any, output: str) -> str:
    if output == "json":
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


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
    _warn(warnings)
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
        sys.stdout.write(_dump(shipped.render(args.dns), args.output))
        return 0
    if not args.file:
        raise CommandError("render needs -f FILE (a pod), --session-baseline or --node-guard")
    outcome = _report(load_manifest(args.file), args.backend)
    if isinstance(outcome, int):
        return outcome
    session, parsed = outcome
    sys.stdout.write(_dump(_render_for(args.backend, session, parsed.policy, args.dns), args.output))
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


def _local_certificates(folder: Path) -> tuple[str, str]:
    """Certificates for a local `serve` with none given: reuse, or make fresh ones."""
    from sortie_egress.certs import authority as certs

    cert, key = folder / "tls.crt", folder / "tls.key"
    try:
        fresh_enough = cert.exists() and key.exists() and certs.remaining_validity(cert) > LOCAL_CERT_MIN_VALIDITY
    except ValueError:
        fresh_enough = False
    if not fresh_enough:
        certs.write(certs.generate(), folder)
        print(f"note: generated local certificates in {folder}/ (CA: {folder / 'ca.crt'})", file=sys.stderr)
    return str(cert), str(key)


def cmd_serve(args: argparse.Namespace) -> int:
    from sortie_egress import logs
    from sortie_egress.server.app import WebhookSettings
    from sortie_egress.server.serve import ServeOptions, run

    if bool(args.tls_cert) != bool(args.tls_key):
        raise CommandError("--tls-cert and --tls-key go together")
    if args.tls_secret and args.tls_cert:
        raise CommandError("--tls-secret and --tls-cert/--tls-key are alternatives")
    secret = None
    if args.tls_secret:
        from sortie_egress.kube.client import own_namespace

        namespace, slash, name = args.tls_secret.rpartition("/")
        if not name or (slash and not namespace):
            raise CommandError("--tls-secret takes NAME or NAMESPACE/NAME")
        secret, cert, key = (namespace or own_namespace(), name), None, None
    elif args.tls_cert:
        cert, key = args.tls_cert, args.tls_key
    else:
        cert, key = _local_certificates(DEFAULT_CERT_DIR)
    wait = _enforcement_wait(args)
    canary_ca = _canary_ca_file(args, cert) if wait is not None and secret is None else None
    logs.configure(args.log_level)
    options = ServeOptions(
        host=args.host,
        port=args.port,
        cert_file=cert,
        key_file=key,
        tls_secret=secret,
        canary_ca_file=canary_ca,
        kubeconfig=getattr(args, "kubeconfig", None),
        request_timeout=args.request_timeout,
        keep_alive_seconds=args.keep_alive,
        webhook=WebhookSettings(wait=wait, backend=args.backend),
    )
    logs.event("starting", component="webhook", version=__version__, host=args.host, port=args.port)
    try:
        run(options)
    except (OSError, ValueError) as exc:  # a port in use, an unreadable or mismatched certificate
        raise CommandError(f"cannot serve: {exc}") from None
    return 0


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
    _warn(response.get("warnings") or [])
    if not allowed:
        status = response.get("status") or {}
        print(f"error: {status.get('message', 'denied')} (code {status.get('code', '?')})", file=sys.stderr)
        return 1
    ops = response.get("patchOps") or []
    print(f"patch: {len(ops)} operation(s)", file=sys.stderr)
    sys.stdout.write(_dump(apply_patch(manifest, ops), args.output))
    return 0


def _duration(text: str) -> dt.timedelta:
    """90, 90s, 15m, 12h, 30d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 15m, 12h, 30d)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return dt.timedelta(seconds=value * units[unit])


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be a positive, finite number")
    return value


def cmd_controller(args: argparse.Namespace) -> int:
    from sortie_egress import logs
    from sortie_egress.certs.authority import service_hosts
    from sortie_egress.controller.main import ControllerOptions, run
    from sortie_egress.certs.rotation import RotationPolicy

    logs.configure(args.log_level)
    certificates = None
    if args.manage_certificates:
        hosts = (tuple(h.strip() for h in args.certificate_hosts.split(",") if h.strip()) if args.certificate_hosts
                 else service_hosts(args.system_namespace))
        certificates = RotationPolicy(hosts=hosts, ca_lifetime=args.ca_lifetime, serving_lifetime=args.serving_lifetime,
                                      overlap=args.certificate_overlap)
        if certificates.overlap * 3 >= certificates.serving_lifetime:
            raise CommandError("--certificate-overlap must be well under a third of --serving-lifetime")
    if args.canary_port and not 0 < args.canary_port < 65535:
        raise CommandError(f"--canary-port must be between 1 and 65534 (the closed port is the next), not {args.canary_port}")
    canary_secret = None
    if args.canary_tls_secret:
        namespace, slash, name = args.canary_tls_secret.rpartition("/")
        if not name or (slash and not namespace):
            raise CommandError("--canary-tls-secret takes NAME or NAMESPACE/NAME")
        if not args.canary_port:
            raise CommandError("--canary-tls-secret needs --canary-port: there is no canary to give it to")
        canary_secret = (namespace or args.system_namespace, name)
    options = ControllerOptions(
        namespaces=list(args.namespace), dns=args.dns, kubeconfig=args.kubeconfig, workers=args.workers,
        metrics_port=args.metrics_port or None, leader_elect=args.leader_elect, system_namespace=args.system_namespace,
        certificates=certificates, canary_port=args.canary_port, canary_tls_secret=canary_secret, backend=args.backend,
        cluster_policy_priority=args.cluster_policy_priority, enforcement_wait=args.enforcement_wait,
    )
    logs.event("starting", component="controller", version=__version__, namespaces=options.namespaces or "all",
               dns=str(args.dns), leader_elect=args.leader_elect, system_namespace=args.system_namespace,
               backend=args.backend, enforcement_wait=args.enforcement_wait)
    try:
        return run(options)
    except (OSError, TimeoutError, ValueError) as exc:
        raise CommandError(f"controller: {exc}") from None


def _judged_objects(api: Any, backend: str, namespaces: list[str]) -> list[dict[str, Any]]:
    """Others' policies of the kinds the dataplane enforces beside the backend's (Cilium's, where
    the cluster serves them), as the controller keeps them: judged for effective egress alike."""
    import json as _json

    from kubernetes import client

    from sortie_egress.kube.policy_objects import judged_kinds

    judged: list[dict[str, Any]] = []
    for kind in judged_kinds(client.CustomObjectsApi(api), backend):
        for namespace in ([None] if kind.cluster_scoped else namespaces or [None]):
            listing = kind.listing(namespace)
            judged += [kind.project(obj) for obj in _json.loads(listing(_preload_content=False).data)["items"]]
    return judged


def _backend_objects(api: Any, backend: str, namespaces: list[str],
                     priority: int | None) -> tuple[Any, list[dict[str, Any]] | None, Any]:
    """(the backend's object API, its objects as the controller keeps them, what the cluster
    serves) for audit; no objects on a backend whose objects are the NetworkPolicies."""
    import json as _json

    from kubernetes import client

    from sortie_egress.controller.plan import is_managed

    chosen = backends.get(backend)
    try:
        settings = chosen.served(client.CustomObjectsApi(api), priority)
    except backends.BackendUnavailable as exc:
        raise CommandError(f"cannot audit: {exc}") from None
    objects = chosen.objects(api, settings)
    if chosen.kind.kind == "NetworkPolicy":
        return objects, None, settings
    owned: list[dict[str, Any]] = []
    for namespace in namespaces or [None]:
        listing = objects.list_all if namespace is None else objects.list_namespaced(namespace)
        owned += [objects.project(obj) for obj in _json.loads(listing(_preload_content=False).data)["items"]]
    if not chosen.kind.namespaced and namespaces:
        # Someone else's cluster-scoped policies carry no session namespace, and any of them may
        # widen a session (effective/clusternetworkpolicy.py): judged for every namespace.
        everything = _json.loads(objects.list_all(_preload_content=False).data)["items"]
        owned += [objects.project(obj) for obj in everything if not is_managed(obj)]
    return objects, owned, settings


def _node_guard_problem(api: Any, backend: str, dns: DnsDestination) -> str | None:
    """Why the node guard cannot be relied on, where the controller requires it (the exact backends,
    a cluster that serves Cilium's clusterwide kind); None otherwise."""
    import datetime as dt

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from sortie_egress.guards import node_guard
    from sortie_egress.kube.policy_objects import CILIUM_CLUSTERWIDE_PLURAL, CILIUM_GROUP, CILIUM_VERSION, clusterwide_kind


    if not backends.get(backend).has(backends.NODE_GUARDED):
        return None
    custom = client.CustomObjectsApi(api)
    if clusterwide_kind(custom) is None:
        return None
    try:
        found = json.loads(custom.get_cluster_custom_object(CILIUM_GROUP, CILIUM_VERSION, CILIUM_CLUSTERWIDE_PLURAL,
                                                            node_guard.NAME, _preload_content=False).data)
    except ApiException as exc:
        if exc.status != 404:
            raise
        found = None
    return node_guard.problem(found, dns, dt.datetime.now(dt.timezone.utc))


def cmd_audit(args: argparse.Namespace) -> int:
    import json as _json

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    from sortie_egress.constants import SESSION_ID_LABEL
    from sortie_egress.controller.audit import audit, format_rows
    from sortie_egress.kube.client import api_client

    try:
        api = api_client(args.kubeconfig)
        core, networking = client.CoreV1Api(api), client.NetworkingV1Api(api)
        pods: list[dict[str, Any]] = []
        policies: list[dict[str, Any]] = []
        for namespace in args.namespace or [None]:
            if namespace is None:
                pod_list = core.list_pod_for_all_namespaces(label_selector=SESSION_ID_LABEL, _preload_content=False)
                policy_list = networking.list_network_policy_for_all_namespaces(_preload_content=False)
            else:
                pod_list = core.list_namespaced_pod(namespace, label_selector=SESSION_ID_LABEL, _preload_content=False)
                policy_list = networking.list_namespaced_network_policy(namespace, _preload_content=False)
            pods += _json.loads(pod_list.data)["items"]
            policies += _json.loads(policy_list.data)["items"]
        objects, owned, settings = _backend_objects(api, args.backend, args.namespace, args.cluster_policy_priority)
        judged = _judged_objects(api, args.backend, args.namespace)
        guard_problem = _node_guard_problem(api, args.backend, args.dns)
        canary = None
        if args.canary_port:
            from sortie_egress.controller.canary import CANARY_SELECTOR, canary_for, project_canary_pod

            canary_pods = _json.loads(core.list_namespaced_pod(args.system_namespace, label_selector=CANARY_SELECTOR,
                                                               _preload_content=False).data)["items"]
            canary = canary_for(args.system_namespace, args.canary_port, [project_canary_pod(p) for p in canary_pods])
    except ApiException as exc:
        raise CommandError(f"cannot read the cluster: {exc.status} {exc.reason}") from None
    except (ConfigException, HTTPError, OSError, ValueError) as exc:  # no kubeconfig, unreachable server
        raise CommandError(f"cannot read the cluster: {exc}") from None
    rows = audit(pods, policies, args.dns, canary, args.backend, owned, settings, objects.name_for, judged, guard_problem)
    sys.stdout.write(format_rows(rows))
    wrong = [row for row in rows if row.wrong]
    print(f"{len(rows)} rows, {len(wrong)} need attention (backend: {args.backend})", file=sys.stderr)
    return 1 if wrong else 0


def cmd_run(args: argparse.Namespace) -> int:
    """Webhook and controller in one process, for local development."""
    from sortie_egress.controller.main import Controller, ControllerOptions

    options = ControllerOptions(namespaces=list(args.namespace), dns=args.dns, kubeconfig=args.kubeconfig,
                                metrics_port=None, leader_elect=args.leader_elect, system_namespace=args.system_namespace,
                                backend=args.backend)
    from sortie_egress import logs

    logs.configure(args.log_level)
    try:
        controller = Controller(options)
        controller.start()
    except (OSError, TimeoutError, ValueError) as exc:
        raise CommandError(f"controller: {exc}") from None
    try:
        return cmd_serve(args)
    finally:
        controller.shutdown()


def _enforcement_wait(args: argparse.Namespace) -> Any:
    """The init container to inject, from --enforcement-canary/-port/-image; None without a canary."""
    from sortie_egress.backends import wait_needed
    from sortie_egress.enforcement_wait.injection import EnforcementWait

    if not args.enforcement_canary:
        return None
    if not wait_needed(args.enforcement_wait, args.backend):
        logging.getLogger("sortie.webhook").info(
            "--enforcement-wait %s on the %s backend: no wait is injected (the dataplane judges a pod's first packet; "
            "the controller releases pods only while the session baseline is in place)", args.enforcement_wait,
            args.backend)
        return None
    if not args.enforcement_image:
        raise CommandError("--enforcement-canary needs --enforcement-image (or $SORTIE_EGRESS_IMAGE): the image "
                           "the injected init container runs, normally this webhook's own")
    if not 0 < args.enforcement_port < 65535:
        raise CommandError(f"--enforcement-port must be between 1 and 65534, not {args.enforcement_port}")
    host = args.enforcement_canary
    if "." not in host and ":" not in host:  # a bare Service name: ours, in the namespace we run in
        from sortie_egress.kube.client import own_namespace

        host = f"{host}.{own_namespace()}.svc"
    return EnforcementWait(args.enforcement_image, host, args.enforcement_port)


def _canary_ca_file(args: argparse.Namespace, cert: str | None) -> str:
    """The CAs the injected wait pins, with certificates from files: --enforcement-ca, or the
    ca.crt beside the serving certificate (a mounted kubernetes.io/tls Secret has it there)."""
    candidate = args.enforcement_ca or (str(Path(cert).parent / "ca.crt") if cert else "")
    if not candidate or not Path(candidate).is_file():
        raise CommandError("--enforcement-canary needs the CA of the canary's certificate (the serving Secret's "
                           f"ca.crt): give --enforcement-ca FILE{'' if not candidate else f' ({candidate} does not exist)'}")
    return candidate


def cmd_wait_for_enforcement(args: argparse.Namespace) -> int:
    from sortie_egress.wait import trust_of, wait_for_enforcement

    try:
        trust = trust_of(args)
    except ValueError as exc:
        raise CommandError(f"wait-for-enforcement: {exc}") from None
    return wait_for_enforcement(args.canary, args.port, args.timeout, trust=trust)


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


def _backend_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", type=_backend, default=os.environ.get("SORTIE_EGRESS_BACKEND", DEFAULT_BACKEND),
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
    parser.add_argument("--request-timeout", type=_positive_seconds, default=10.0,
                        help="seconds a client has to send a whole request, headers and body (slow-loris guard)")
    parser.add_argument("--keep-alive", type=_positive_seconds, default=KEEP_ALIVE_SECONDS,
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
    controller.add_argument("--dns", type=_dns, default=DnsDestination(), help="DNS destination: cluster, any, CIDR,..., or cluster,CIDR,... (a node-local cache too)")
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
    controller.add_argument("--canary-tls-secret", metavar="[NAMESPACE/]NAME",
                            help="the canary's open port proves who it is with this kubernetes.io/tls Secret's pair "
                                 "(the webhook's serving Secret, which the injected waits are pinned to), followed "
                                 "through the API; without it, waits pinned by the webhook never pass")
    controller.add_argument("--manage-certificates", action="store_true",
                            help="the leader keeps the webhook's CA, serving certificate and caBundles (self-managed)")
    controller.add_argument("--certificate-hosts", help="serving certificate names (default: the in-cluster Service names)")
    controller.add_argument("--ca-lifetime", type=_duration, default=dt.timedelta(days=365))
    controller.add_argument("--serving-lifetime", type=_duration, default=dt.timedelta(days=30))
    controller.add_argument("--certificate-overlap", type=_duration, default=dt.timedelta(minutes=2),
                            help="how long old and new CA are both trusted around a switch")
    controller.set_defaults(handler=cmd_controller)

    audit = commands.add_parser("audit", help="list session pods and the state of their NetworkPolicies")
    audit.add_argument("--namespace", action="append", default=[], help="only this namespace (repeatable)")
    audit.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG/~/.kube/config)")
    audit.add_argument("--dns", type=_dns, default=DnsDestination(), help="the controller's DNS setting")
    audit.add_argument("--canary-port", type=int, default=0, help="the controller's --canary-port (0: none)")
    _backend_flag(audit)
    audit.add_argument("--cluster-policy-priority", type=_cnp_priority, default=DEFAULT_PRIORITY,
                       help="the controller's --cluster-policy-priority (clusternetworkpolicy backend)")
    _system_namespace_flag(audit)
    audit.set_defaults(handler=cmd_audit)

    run = commands.add_parser("run", help="webhook and controller in one process (local development)")
    _serve_flags(run)
    run.add_argument("--namespace", action="append", default=[])
    run.add_argument("--kubeconfig")
    run.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=False)
    run.add_argument("--dns", type=_dns, default=DnsDestination(), help="DNS destination: cluster, any, CIDR,..., or cluster,CIDR,... (a node-local cache too)")
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
    render.add_argument("--dns", type=_dns, default=DnsDestination(), help="DNS destination: cluster, any, CIDR,..., or cluster,CIDR,... (a node-local cache too)")
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
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CommandError as exc:
        print(f"sortie-egress: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
