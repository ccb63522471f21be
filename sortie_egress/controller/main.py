"""Wiring the controller to a cluster: clients, informers, workers, leader election, health, signals."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sortie_egress import backends
from sortie_egress.backends import DEFAULT_BACKEND, BackendUnavailable
from sortie_egress.guards import node_guard, session_baseline
from sortie_egress.constants import POLICY_NAME_PREFIX, SESSION_ID_LABEL
from sortie_egress.enforcement_wait.injection import INIT_CONTAINER_NAME, init_container_names
from sortie_egress.kube.client import api_client
from sortie_egress.kube.informer import Informer, Store
from sortie_egress.render.session import DnsDestination
from sortie_egress.certs.rotation import RotationPolicy
from sortie_egress.controller.canary import CANARY_SELECTOR, CanaryProcess, canary_for, project_canary_pod
from sortie_egress.controller.plan import is_managed
from sortie_egress.controller.metrics import ControllerMetrics
from sortie_egress.kube.projections import pod_session_key, policy_ownership_key, project_policy, project_pod
from sortie_egress.controller.queue import WorkQueue
from sortie_egress.controller.reconciler import Conflict, Deferred, Reconciler, SessionKey, WriteBudget
from sortie_egress.render.clusternetworkpolicy import DEFAULT_PRIORITY
from sortie_egress.controller.plan import BASELINE_MISSING, NODE_GUARD_MISSING
from sortie_egress.kube.policy_objects import JudgedKind, clusterwide_kind, judged_kinds

log = logging.getLogger("sortie.controller")
RESYNC_SECONDS = 300.0
#: Liveness: work waiting, and no reconcile finished for this long, means the workers are stuck.
STUCK_SECONDS = 120.0
#: Canaries before the current one whose renderings count as "only the canary moved" (a rollout of a
#: few replicas changes the address set a few times).
CANARIES_KEPT = 8


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
    #: The namespace the product runs in: its Lease and its certificate Secrets live there.
    system_namespace: str = "sortie-system"
    lease_name: str = "sortie-egress-controller"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    #: Self-managed webhook certificates (None: someone else, e.g. cert-manager, provides them).
    certificates: RotationPolicy | None = None
    #: The enforcement canary's open port (the closed one is the next; CONTRACT §6). 0: no canary,
    #: and session policies carry no canary rule.
    canary_port: int = 0
    canary_host: str = "0.0.0.0"
    #: (namespace, name) of the Secret whose pair the canary's open port serves (the webhook's
    #: serving Secret: the waits are pinned to it). None: the canary cannot prove who it is.
    canary_tls_secret: tuple[str, str] | None = None
    #: What enforces sessions (backends/): networkpolicy, cilium or clusternetworkpolicy.
    backend: str = DEFAULT_BACKEND
    #: clusternetworkpolicy: the Admin-tier priority of session policies (lower wins).
    cluster_policy_priority: int = DEFAULT_PRIORITY
    #: enforcement.WAIT_MODES: with "auto" on the cilium backend, pods without the wait are
    #: released only while the session baseline is in place (session_baseline.py).
    enforcement_wait: str = "required"
    #: Seconds between two OpenReports passes of the leader (reports/openreports.py); 0: none.
    report_interval: float = 0.0
    #: Policy updates per second that only follow the canary's new addresses (a controller rollout),
    #: for sessions none of whose pods is starting; 0: no limit.
    canary_update_rate: float = 20.0


class Controller:
    def __init__(self, options: ControllerOptions, api: Any | None = None) -> None:
        from kubernetes import client

        self.options = options
        self.api = api or api_client(options.kubeconfig, connections=options.workers + len(options.namespaces or [None]) * 2 + 4)
        self.core = client.CoreV1Api(self.api)
        self.networking = client.NetworkingV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        try:
            self.backend = backends.get(options.backend)
        except KeyError:
            raise BackendUnavailable(f"unknown --backend {options.backend}") from None
        self.cluster = self.backend.discover(client.CustomObjectsApi(self.api), options.cluster_policy_priority)
        self.objects = self.backend.objects(self.api, self.cluster)
        # The backend's objects, when they are not NetworkPolicies (every one of those is kept in
        # ``policies``: any may widen a session).
        self.owned: Store | None = None if self.backend.kind.kind == "NetworkPolicy" else Store()
        if self.cluster.version is not None:
            log.info("%s backend: writing %s/%s at priority %d", self.backend.name, self.backend.kind.group,
                     self.cluster.version, options.cluster_policy_priority)
        # Found at start() (discovery is a request): where Cilium runs, its policies widen sessions
        # whatever the backend, read, judged, kept; and its clusterwide policies, where the ones
        # the install ships are verified (the session baseline, the node guard).
        self.judged_kinds: list[JudgedKind] = []
        self.judged: tuple[Store, ...] = ()
        self.clusterwide: Store | None = None
        self.baseline_required = False
        self.node_guard_required = False
        self.stop = threading.Event()
        self.canary: CanaryProcess | None = None
        self._canary_secret_stop: threading.Event | None = None
        self.metrics = ControllerMetrics()
        self.metrics.backend.labels(options.backend).set(1)
        self.pods = Store(index=pod_session_key)
        # Indexed by (namespace, ours?): effective egress reads only others' policies of a
        # namespace, a handful, not the thousands of ours beside them.
        self.policies = Store(index=policy_ownership_key)
        self.queue: WorkQueue[SessionKey] = WorkQueue()
        self.reconciler = Reconciler(self.core, self.objects, self.pods, self.policies, options.dns, self.metrics,
                                     owned=self.owned, backend=options.backend, cluster=self.cluster)
        self.canary_pods = Store()
        if options.canary_port:
            self.reconciler.canary = canary_for(options.system_namespace, options.canary_port, [])
            if options.canary_update_rate > 0:
                self.reconciler.canary_budget = WriteBudget(options.canary_update_rate)
                self.reconciler.canary_pace = WriteBudget(options.canary_update_rate, burst=1.0)
        self.informers = self._informers()
        self.workers: list[threading.Thread] = []
        self.last_progress = time.monotonic()
        self.elector = None
        if options.leader_elect:
            from sortie_egress.controller.lease import LeaderElector

            from sortie_egress import __version__
            from sortie_egress.controller.settings import SETTINGS_ANNOTATION, Published

            published = Published(options.backend, str(options.dns), options.canary_port,
                                  options.cluster_policy_priority, options.enforcement_wait, __version__)
            self.elector = LeaderElector(self.coordination, options.system_namespace, options.lease_name,
                                         options.identity, self.stop, annotations={SETTINGS_ANNOTATION: published.encode()})

    def _pod_changed(self, pod: dict[str, Any]) -> None:
        key = Reconciler.key_for(pod)
        if key is not None:
            self.queue.add(key)

    def _policy_changed(self, policy: dict[str, Any]) -> None:
        """Ours: its session. Someone else's: every session of its namespace, since any of them
        may be widened by it (and the one it names may adopt it)."""
        metadata = policy.get("metadata") or {}
        if is_managed(policy):
            key = Reconciler.key_for(policy)
            if key is not None:
                self.queue.add(key)
            return
        namespace = metadata.get("namespace", "")
        name = metadata.get("name", "")
        if name.startswith(POLICY_NAME_PREFIX):
            self.queue.add((namespace, name[len(POLICY_NAME_PREFIX):]))
        self._enqueue_namespace(namespace)

    def _enqueue_namespace(self, namespace: str) -> None:
        """Every session with a pod in ``namespace``: another policy there may widen any of them."""
        for key in {pod_session_key(pod) for pod in self.pods.by_namespace(namespace)}:
            self.queue.add(key)

    def _owned_changed(self, obj: dict[str, Any]) -> None:
        """One of the backend's objects (not a NetworkPolicy): its session, ours or named like ours;
        someone else's of a namespaced kind (a CiliumNetworkPolicy) also every session of its
        namespace (it may widen any of them); of a cluster-scoped kind (a ClusterNetworkPolicy),
        every session (effective/clusternetworkpolicy.py)."""
        key = Reconciler.key_for(obj)
        if key is not None:
            self.queue.add(key)
        if is_managed(obj):
            return
        if self.backend.kind.namespaced:
            self._enqueue_namespace((obj.get("metadata") or {}).get("namespace", ""))
        elif key is None:
            self.enqueue_all()  # someone else's cluster-scoped policy may come before any session's

    def _judged_changed(self, obj: dict[str, Any]) -> None:
        """Someone else's Cilium policy: every session it may select (its namespace's; a clusterwide
        one's, every session). The session baseline: every session now, and again once it has
        settled (pods held for it are released then)."""
        metadata = obj.get("metadata") or {}
        namespace = metadata.get("namespace")
        if namespace:
            self._enqueue_namespace(namespace)
            return
        self.enqueue_all()
        if metadata.get("name") in (session_baseline.NAME, node_guard.NAME):
            timer = threading.Timer(session_baseline.SETTLE_SECONDS + 0.5, self.enqueue_all)
            timer.daemon = True
            timer.start()

    def _release_hold(self, pod: dict[str, Any], mode: str | None) -> tuple[str, str] | None:
        """Why a session pod (whose mode label will say ``mode``) stays gated although its policy is
        written, as an Event's (reason, message), or None: without the wait (--enforcement-wait
        auto), until the session baseline is in place; an allowlist on Cilium, until the node guard is."""
        assert self.clusterwide is not None
        now = dt.datetime.now(dt.timezone.utc)
        if self.baseline_required and INIT_CONTAINER_NAME not in (init_container_names(pod) or []):
            held = session_baseline.problem(self.clusterwide.get(("", session_baseline.NAME)), self.options.dns, now)
            if held is not None:
                return BASELINE_MISSING, (f"{held}: this pod carries no enforcement wait (--enforcement-wait auto), so it "
                                          "stays gated until the session baseline is in place")
        if self.node_guard_required and mode == node_guard.GUARDED_MODE:
            held = node_guard.problem(self.clusterwide.get(("", node_guard.NAME)), self.options.dns, now)
            if held is not None:
                return NODE_GUARD_MISSING, (f"{held}: on Cilium an allowlist session is released only while the node guard "
                                            "keeps every node closed to it")
        return None

    def _canary_changed(self, _pod: dict[str, Any]) -> None:
        """A canary pod came, went or got its address: every session policy cuts out the new set."""
        canary = canary_for(self.options.system_namespace, self.options.canary_port, self.canary_pods.items())
        if canary != self.reconciler.canary:
            log.info("canary addresses now %s", ", ".join(canary.addresses) or "(none)")
            previous = self.reconciler.canary
            if previous is not None and previous.addresses:
                # What a session policy written before may have been rendered with: an update from
                # one of these to the new addresses is spread by the write budget (a rollout).
                self.reconciler.previous_canaries = [previous, *self.reconciler.previous_canaries][:CANARIES_KEPT]
            self.reconciler.canary = canary
            self.reconciler.canary_changed_at = time.monotonic()
            self.enqueue_all()

    def _informers(self) -> list[Informer]:
        informers = []
        if self.options.canary_port:
            canary_pods = partial(self.core.list_namespaced_pod, self.options.system_namespace,
                                  label_selector=CANARY_SELECTOR)
            informers.append(Informer("canary-pods", canary_pods, project_canary_pod, self.canary_pods,
                                      self._canary_changed, self.stop, self.options.system_namespace,
                                      self._watch_restarted))
        for namespace in self.options.namespaces or [None]:
            if namespace is None:
                pods = partial(self.core.list_pod_for_all_namespaces, label_selector=SESSION_ID_LABEL)
                policies = self.networking.list_network_policy_for_all_namespaces
            else:
                pods = partial(self.core.list_namespaced_pod, namespace, label_selector=SESSION_ID_LABEL)
                policies = partial(self.networking.list_namespaced_network_policy, namespace)
            suffix = namespace or "all"
            restarted = self._watch_restarted
            informers.append(Informer(f"pods-{suffix}", pods, project_pod, self.pods, self._pod_changed, self.stop,
                                      namespace, restarted))
            # Every policy, not only ours: one with our name must be seen to be adopted, and
            # any that selects a session pod is judged for effective egress.
            informers.append(Informer(f"policies-{suffix}", policies, project_policy, self.policies,
                                      self._policy_changed, self.stop, namespace, restarted))
            if self.owned is not None:
                owned = self.objects.list_all if namespace is None else self.objects.list_namespaced(namespace)
                informers.append(Informer(f"{self.objects.kind.lower()}-{suffix}", owned, self.objects.project, self.owned,
                                          self._owned_changed, self.stop, namespace, restarted))
        return informers

    def _discover_judged_kinds(self) -> None:
        """Which of Cilium's policy kinds the cluster serves (judged_kinds), their stores and
        informers; where clusterwide ones are served, which of the policies the install ships are
        required (the node guard on the exact backends, the session baseline with
        --enforcement-wait auto on a backend that leaves the wait out; BackendUnavailable if that
        baseline's kind is not served)."""
        from kubernetes import client

        custom = client.CustomObjectsApi(self.api)
        self.judged_kinds = judged_kinds(custom, self.options.backend)
        self.judged = tuple(Store() for _ in self.judged_kinds)
        self.reconciler.judged = self.judged
        if self.judged_kinds:
            log.info("judging %s too, for effective egress", " and ".join(k.kind.removesuffix("y") + "ies"
                                                                          for k in self.judged_kinds))
        kinds = list(zip(self.judged_kinds, self.judged))
        self.clusterwide = next((store for kind, store in kinds if kind.kind == session_baseline.KIND), None)
        if self.clusterwide is None and self.backend.has(backends.NODE_GUARDED):
            kind = clusterwide_kind(custom)  # not judged (the Admin tier comes first), but the node guard is read
            if kind is not None:
                self.clusterwide = Store()
                kinds.append((kind, self.clusterwide))
        self.baseline_required = self.options.enforcement_wait == "auto" and not backends.wait_needed("auto", self.options.backend)
        if self.baseline_required and self.clusterwide is None:
            raise BackendUnavailable(
                f"--enforcement-wait auto on the {self.options.backend} backend needs the session baseline, a "
                f"{session_baseline.KIND} (cilium.io/v2), which this cluster does not serve")
        self.node_guard_required = self.clusterwide is not None and self.backend.has(backends.NODE_GUARDED)
        if self.node_guard_required:
            log.info("Cilium: allowlist sessions are released only while the %s %s is in place",
                     node_guard.KIND, node_guard.NAME)
        if self.baseline_required or self.node_guard_required:
            self.reconciler.hold_release = self._release_hold
        for kind, store in kinds:
            # A cluster-scoped kind: one informer, whatever --namespace says (it may select a pod anywhere).
            for namespace in [None] if kind.cluster_scoped else self.options.namespaces or [None]:
                self.informers.append(Informer(f"judged-{kind.kind.lower()}-{namespace or 'all'}", kind.listing(namespace),
                                               kind.project, store, self._judged_changed, self.stop, namespace,
                                               self._watch_restarted))

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
                result = self.reconciler.reconcile(key, conflicts=self.queue.failures(key))
                self.queue.forget(key)
                if not self.pods.by_index(key):
                    self.reconciler.forget(key)
            except Deferred as exc:
                result = "deferred"
                self.queue.add_after(key, exc.delay)
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
                self.last_progress = time.monotonic()
            self.metrics.reconciles.labels(result.split("+")[0]).inc()
            self.metrics.reconcile_latency.observe(time.perf_counter() - started)

    def _resync(self) -> None:
        """Every session again now and then: a missed event cannot leave drift behind for long."""
        was_leading = False
        while not self.stop.wait(1.0):
            self.metrics.queue_depth.set(self.queue.depth())
            owned = self.policies if self.owned is None else self.owned
            self.metrics.managed_policies.set(sum(1 for policy in owned.items() if is_managed(policy)))
            self.metrics.leader.set(1 if self.leading else 0)
            leading = self.leading
            if leading and not was_leading:
                self.enqueue_all()  # a new leader starts from a full reconcile
                self._last_resync = time.monotonic()
            was_leading = leading
            if leading and time.monotonic() - self._last_resync > RESYNC_SECONDS:
                self.enqueue_all()
                self._last_resync = time.monotonic()

    def report_rows(self) -> list[Any]:
        """audit's rows from the caches (what ``sortie-egress audit`` would say, without a list)."""
        from sortie_egress.controller.audit import audit

        guard = None
        if self.node_guard_required and self.clusterwide is not None:
            guard = node_guard.problem(self.clusterwide.get(("", node_guard.NAME)), self.options.dns,
                                       dt.datetime.now(dt.timezone.utc))
        return audit(self.pods.items(), self.policies.items(), self.options.dns, self.reconciler.canary,
                     self.options.backend, None if self.owned is None else self.owned.items(), self.cluster,
                     self.objects.name_for, [obj for store in self.judged for obj in store.items()], guard)

    def _report(self) -> None:
        """The leader writes OpenReports every report_interval seconds, each only when it changed."""
        from kubernetes import client

        from sortie_egress.kube.reports import ReportsUnavailable, ReportWriter, our_report_namespaces
        from sortie_egress.reports.openreports import reports

        writer, told = ReportWriter(client.CustomObjectsApi(self.api)), False
        while not self.stop.wait(self.options.report_interval):
            if not self.leading or not all(informer.synced.is_set() for informer in self.informers):
                writer.written.clear()  # a new leader compares with what is stored, not what it once wrote
                continue
            try:
                built = reports(self.report_rows(), self.options.backend, dt.datetime.now(dt.timezone.utc),
                                self.options.namespaces)
                stale = [] if self.options.namespaces else sorted(our_report_namespaces(writer.custom) - set(built))
                writes, notes = writer.write(built, stale)
                self.metrics.writes.labels("Report").inc(writes)
                (log.info if writes else log.debug)("report pass: %d namespace(s), %d write(s)", len(built), writes)
                for note in notes:
                    log.warning("%s", note)
                told = False
            except ReportsUnavailable as exc:
                if not told:
                    log.error("cannot write reports: %s", exc)
                    told = True
            except Exception:  # noqa: BLE001 - a report pass must never take the controller down
                log.exception("report pass failed; the next one tries again")

    def enqueue_all(self) -> None:
        for obj in self.pods.items() + self.policies.items() + (self.owned.items() if self.owned is not None else []):
            key = Reconciler.key_for(obj)
            if key is not None:
                self.queue.add(key)

    # --- health ---------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Readiness: every cache has synced (before that, nothing it would do is informed)."""
        waiting = [informer.name for informer in self.informers if not informer.synced.is_set()]
        return (not waiting, "ok" if not waiting else "caches not synced: " + ", ".join(waiting))

    def healthy(self) -> tuple[bool, str]:
        """Liveness: its threads run, its canary answers with its closed listener seen up lately,
        and queued work is being worked off."""
        dead = [thread.name for thread in (*self.informers, *self.workers) if not thread.is_alive()]
        if dead:
            return False, "threads exited: " + ", ".join(dead)
        if self.canary is not None:
            canary_ok, detail = self.canary.healthy()
            self.metrics.canary_healthy.set(1 if canary_ok else 0)
            if not canary_ok:
                return False, detail
        idle = time.monotonic() - self.last_progress
        if self.leading and self.queue.depth() and idle > STUCK_SECONDS:
            return False, f"{self.queue.depth()} sessions waiting and no reconcile finished for {idle:.0f} s"
        return True, "ok"

    def start(self, sync_timeout: float = 60.0) -> None:
        self._discover_judged_kinds()
        self._last_resync = time.monotonic()
        if self.options.canary_port:
            self.canary = CanaryProcess(self.options.canary_host, self.options.canary_port)
            if self.options.canary_tls_secret is not None:
                self._follow_canary_certificate(*self.options.canary_tls_secret)
        for informer in self.informers:
            informer.start()
        deadline = time.monotonic() + sync_timeout
        for informer in self.informers:
            if not informer.synced.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{informer.name} did not sync within {sync_timeout:.0f} s")
        log.info("caches synced: %d session pods, %d NetworkPolicies%s", len(self.pods), len(self.policies),
                 "" if self.owned is None else f", {len(self.owned)} {self.objects.kind.replace('Policy', 'Policies')}")
        # What the caches hold now lives as long as the process (50,000 sessions: millions of small
        # objects). Left to the collector, each of its full passes walks all of them while holding the
        # GIL, stalling every reconcile (the tail of gate-release latency); frozen, they are skipped.
        # They are still freed when dropped (projections hold no cycles, so reference counts do it).
        gc.collect()
        gc.freeze()
        if self.elector is not None:
            self.elector.start()
        self.workers = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                        for i in range(self.options.workers)]
        self.last_progress = time.monotonic()
        for worker in self.workers:
            worker.start()
        threading.Thread(target=self._resync, name="resync", daemon=True).start()
        if self.options.report_interval > 0:
            threading.Thread(target=self._report, name="reports", daemon=True).start()
        if self.options.certificates is not None:
            from kubernetes import client

            from sortie_egress.controller.certificates import CertificateManager

            policy = self.options.certificates
            self.certificates = CertificateManager(self.core, client.AdmissionregistrationV1Api(self.api), policy,
                                                   namespace=self.options.system_namespace)
            # Often enough to renew a third of the way before expiry, and to end an overlap on time.
            interval = max(1.0, min(30.0, policy.overlap.total_seconds() / 3, policy.serving_lifetime.total_seconds() / 10))
            leading = self.elector.leading if self.elector is not None else None
            threading.Thread(target=self.certificates.run, args=(self.stop, leading, interval),
                             name="certificates", daemon=True).start()

    def _follow_canary_certificate(self, namespace: str, name: str) -> None:
        """Hand each version of the serving Secret's pair to the canary, and check it with the
        Secret's own CAs, as the waits pinned to them will."""
        from sortie_egress.enforcement_wait.pin import pin_from
        from sortie_egress.kube.secret_follower import follow_secret
        from sortie_egress.wait import Trust

        canary = self.canary
        assert canary is not None

        def changed(data: dict[str, bytes]) -> None:
            if "tls.crt" not in data or "tls.key" not in data:
                log.warning("Secret %s/%s has no tls.crt/tls.key yet: the canary cannot prove who it is", namespace, name)
                return
            trust = None
            try:
                pin = pin_from(data.get("ca.crt", b""), data["tls.crt"])
                trust = Trust.pinned(pin.ca_bundle, pin.identity)
            except ValueError as exc:
                log.warning("Secret %s/%s: %s", namespace, name, exc)
            canary.use_certificate(data["tls.crt"], data["tls.key"], trust)

        self._canary_secret_stop = follow_secret(namespace, name, self.options.kubeconfig, changed)

    def shutdown(self, grace: float = 10.0) -> None:
        """Finish in-flight reconciles, hand the lease back."""
        self.stop.set()
        self.queue.shutdown()
        deadline = time.monotonic() + grace
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if self.elector is not None:
            self.elector.release()
        if self.canary is not None:
            self.canary.stop()
        if self._canary_secret_stop is not None:
            self._canary_secret_stop.set()


def run(options: ControllerOptions) -> int:
    """Run until SIGTERM/SIGINT."""
    controller = Controller(options)
    if options.metrics_port is not None:
        from sortie_egress.controller.health import serve_health

        serve_health(options.metrics_host, options.metrics_port, controller)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: controller.stop.set())
    controller.start()
    controller.stop.wait()
    controller.shutdown()
    log.info("controller stopped")
    return 0
