"""Wiring the controller to a cluster: clients, informers, workers, leader election, signals."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..constants import MANAGED_BY_LABEL, MANAGED_BY_VALUE, SESSION_ID_LABEL
from ..render import DnsDestination
from .informer import Informer, Store, project_policy, project_pod
from .metrics import ControllerMetrics
from .queue import WorkQueue
from ..rotation import RotationPolicy
from .reconciler import Conflict, Reconciler, SessionKey

log = logging.getLogger("sortie.controller")
RESYNC_SECONDS = 300.0


@dataclass
class ControllerOptions:
    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    dns: DnsDestination = field(default_factory=DnsDestination)
    kubeconfig: str | None = None
    # Reconciles mostly wait on the API server; enough of them in flight keeps a
    # 500-pod burst under 0.5 s p99 on 2 cores (bench/controller.py).
    workers: int = 48
    metrics_port: int | None = 8080
    metrics_host: str = "0.0.0.0"
    leader_elect: bool = True
    lease_namespace: str = "sortie-system"
    lease_name: str = "sortie-egress-controller"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    #: Self-managed webhook certificates (None: someone else, e.g. cert-manager, provides them).
    certificates: RotationPolicy | None = None
    certificate_namespace: str = "sortie-system"


def api_client(kubeconfig: str | None, connections: int = 16) -> Any:
    """In-cluster configuration inside a pod, the kubeconfig otherwise; a pool for every worker."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (config.ConfigException, OSError, TypeError, KeyError, AttributeError, ValueError) as exc:
        # The loader reports a malformed file with whatever its parsing tripped over.
        source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ValueError(f"{source} is not a usable kubeconfig: {exc or type(exc).__name__}") from None
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


def pod_session_key(pod: dict[str, Any]) -> SessionKey:
    metadata = pod["metadata"]
    return metadata.get("namespace", ""), (metadata.get("labels") or {}).get(SESSION_ID_LABEL, "")


class Controller:
    def __init__(self, options: ControllerOptions, api: Any | None = None) -> None:
        from kubernetes import client

        self.options = options
        self.api = api or api_client(options.kubeconfig, connections=options.workers + len(options.namespaces or [None]) * 2 + 4)
        self.core = client.CoreV1Api(self.api)
        self.networking = client.NetworkingV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.stop = threading.Event()
        self.metrics = ControllerMetrics()
        self.pods = Store(index=pod_session_key)
        self.policies = Store()
        self.queue: WorkQueue[SessionKey] = WorkQueue()
        self.reconciler = Reconciler(self.core, self.networking, self.pods, self.policies, options.dns, self.metrics)
        self.informers = self._informers()
        self.elector = None
        if options.leader_elect:
            from .lease import LeaderElector

            self.elector = LeaderElector(self.coordination, options.lease_namespace, options.lease_name,
                                         options.identity, self.stop)

    def _enqueue(self, obj: dict[str, Any]) -> None:
        key = Reconciler.key_for(obj)
        if key is not None:
            self.queue.add(key)

    def _informers(self) -> list[Informer]:
        managed = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
        informers = []
        for namespace in self.options.namespaces or [None]:
            if namespace is None:
                pods = partial(self.core.list_pod_for_all_namespaces, label_selector=SESSION_ID_LABEL)
                policies = partial(self.networking.list_network_policy_for_all_namespaces, label_selector=managed)
            else:
                pods = partial(self.core.list_namespaced_pod, namespace, label_selector=SESSION_ID_LABEL)
                policies = partial(self.networking.list_namespaced_network_policy, namespace, label_selector=managed)
            suffix = namespace or "all"
            restarted = self._watch_restarted
            informers.append(Informer(f"pods-{suffix}", pods, project_pod, self.pods, self._enqueue, self.stop, namespace,
                                      restarted))
            informers.append(Informer(f"policies-{suffix}", policies, project_policy, self.policies, self._enqueue,
                                      self.stop, namespace, restarted))
        return informers

    def _watch_restarted(self, reason: str) -> None:
        self.metrics.watch_restarts.labels(reason).inc()

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.leading.is_set()

    def _work(self) -> None:
        while not self.stop.is_set():
            if not self.leading:
                self.stop.wait(0.2)
                continue
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            started = time.perf_counter()
            try:
                result = self.reconciler.reconcile(key)
                self.queue.forget(key)
            except Conflict as exc:
                result = "conflict"
                log.info("session %s/%s: %s; retrying", key[0], key[1], exc)
                self.queue.retry(key)
            except Exception as exc:  # the API server is down, a 5xx, a 429: back off and try again
                result = "error"
                delay = self.queue.retry(key)
                log.warning("session %s/%s failed (%s); retry in %.2f s", key[0], key[1], exc, delay)
            finally:
                self.queue.done(key)
            self.metrics.reconciles.labels(result.split("+")[0]).inc()
            self.metrics.reconcile_latency.observe(time.perf_counter() - started)

    def _resync(self) -> None:
        """Every session again now and then: a missed event cannot leave drift behind for long."""
        was_leading = False
        while not self.stop.wait(1.0):
            self.metrics.queue_depth.set(self.queue.depth())
            self.metrics.managed_policies.set(len(self.policies))
            self.metrics.leader.set(1 if self.leading else 0)
            leading = self.leading
            if leading and not was_leading:
                self.enqueue_all()  # a new leader starts from a full reconcile
                self._last_resync = time.monotonic()
            was_leading = leading
            if leading and time.monotonic() - self._last_resync > RESYNC_SECONDS:
                self.enqueue_all()
                self._last_resync = time.monotonic()

    def enqueue_all(self) -> None:
        for obj in self.pods.items() + self.policies.items():
            self._enqueue(obj)

    def start(self, sync_timeout: float = 60.0) -> None:
        self._last_resync = time.monotonic()
        for informer in self.informers:
            informer.start()
        deadline = time.monotonic() + sync_timeout
        for informer in self.informers:
            if not informer.synced.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{informer.name} did not sync within {sync_timeout:.0f} s")
        log.info("caches synced: %d session pods, %d managed policies", len(self.pods), len(self.policies))
        if self.elector is not None:
            self.elector.start()
        self.workers = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                        for i in range(self.options.workers)]
        for worker in self.workers:
            worker.start()
        threading.Thread(target=self._resync, name="resync", daemon=True).start()
        if self.options.certificates is not None:
            from kubernetes import client

            from .certificates import CertificateManager

            policy = self.options.certificates
            self.certificates = CertificateManager(self.core, client.AdmissionregistrationV1Api(self.api), policy,
                                                   namespace=self.options.certificate_namespace)
            # Often enough to renew a third of the way before expiry, and to end an overlap on time.
            interval = max(1.0, min(30.0, policy.overlap.total_seconds() / 3, policy.serving_lifetime.total_seconds() / 10))
            leading = self.elector.leading if self.elector is not None else None
            threading.Thread(target=self.certificates.run, args=(self.stop, leading, interval),
                             name="certificates", daemon=True).start()

    def shutdown(self, grace: float = 10.0) -> None:
        """Finish in-flight reconciles, hand the lease back."""
        self.stop.set()
        self.queue.shutdown()
        deadline = time.monotonic() + grace
        for worker in getattr(self, "workers", []):
            worker.join(max(0.0, deadline - time.monotonic()))
        if self.elector is not None:
            self.elector.release()


def run(options: ControllerOptions) -> int:
    """Run until SIGTERM/SIGINT."""
    controller = Controller(options)
    if options.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(options.metrics_port, options.metrics_host, registry=controller.metrics.registry)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: controller.stop.set())
    controller.start()
    controller.stop.wait()
    controller.shutdown()
    log.info("controller stopped")
    return 0
