"""Commands that run the product: ``serve``, ``controller``, ``run``, ``wait-for-enforcement``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

from sortie_egress import __version__

from sortie_egress.cli.common import DEFAULT_CERT_DIR, LOCAL_CERT_MIN_VALIDITY, CommandError


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
    try:
        ipaddress.ip_address(args.canary_address)
    except ValueError:
        raise CommandError(f"--canary-address must be an IP address to listen on, not {args.canary_address!r}") from None
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
        certificates=certificates, canary_port=args.canary_port, canary_host=args.canary_address, canary_tls_secret=canary_secret, backend=args.backend,
        cluster_policy_priority=args.cluster_policy_priority, enforcement_wait=args.enforcement_wait,
        report_interval=args.report_interval, canary_update_rate=args.canary_update_rate,
    )
    logs.event("starting", component="controller", version=__version__, namespaces=options.namespaces or "all",
               dns=str(args.dns), leader_elect=args.leader_elect, system_namespace=args.system_namespace,
               backend=args.backend, enforcement_wait=args.enforcement_wait)
    try:
        return run(options)
    except (OSError, TimeoutError, ValueError) as exc:
        raise CommandError(f"controller: {exc}") from None


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
