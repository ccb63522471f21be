"""Leader election on a coordination.k8s.io/v1 Lease, so two replicas never fight.

As client-go does it: a follower does not compare the holder's renewTime with
its own clock (clocks drift); it notes when it last saw the lease record
change, and takes over once it has stayed unchanged for leaseDurationSeconds.
Writes carry the resourceVersion they read, so of two candidates exactly one
wins. A leader that cannot renew within its deadline (10 s, well inside the
15 s a follower waits) stops reconciling, and keeps trying: when it holds the
lease again, it starts over with a full reconcile. It does not exit, so an API
server outage does not turn into a crash loop of every replica.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from typing import Any

log = logging.getLogger("sortie.controller.lease")


def _now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector(threading.Thread):
    def __init__(self, coordination: Any, namespace: str, name: str, identity: str, stop: threading.Event,
                 lease_seconds: int = 15, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 annotations: dict[str, str] | None = None) -> None:
        super().__init__(name="leader-elector", daemon=True)
        self.api = coordination
        self.namespace = namespace
        self.lease_name = name
        self.identity = identity
        self.stop_event = stop
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        #: Written by the leader with every acquire and renewal (controller/settings.py), beside
        #: whatever else the Lease carries.
        self.annotations = dict(annotations or {})
        self.leading = threading.Event()
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    def _read(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.api.read_namespaced_lease(self.lease_name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(response.data)

    def _spec(self, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = _now_text()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

    def try_acquire_or_renew(self) -> bool:
        from kubernetes.client.exceptions import ApiException

        lease = self._read()
        try:
            if lease is None:
                body = {"metadata": {"name": self.lease_name, "namespace": self.namespace,
                                     "annotations": dict(self.annotations)}, "spec": self._spec(0, None)}
                self.api.create_namespaced_lease(self.namespace, body, _preload_content=False)
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
            now = time.monotonic()
            if record != self._observed:
                self._observed, self._observed_at = record, now
            if holder and holder != self.identity and now - self._observed_at < (spec.get("leaseDurationSeconds") or self.lease_seconds):
                return False
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
            acquired = spec.get("acquireTime") if holder == self.identity else None
            annotations = {**(lease["metadata"].get("annotations") or {}), **self.annotations}
            body = {"metadata": {"name": self.lease_name, "namespace": self.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"], "annotations": annotations},
                    "spec": self._spec(transitions, acquired)}
            self.api.replace_namespaced_lease(self.lease_name, self.namespace, body, _preload_content=False)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False  # another candidate wrote first
            raise

    def release(self) -> None:
        """Hand the lease back on a clean stop, so a follower need not wait it out."""
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            lease = self._read()
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                self.api.replace_namespaced_lease(self.lease_name, self.namespace, lease, _preload_content=False)
        except Exception as exc:  # best effort: the lease expires anyway
            log.warning("could not release the lease: %s", exc)

    def run(self) -> None:
        last_renewal = 0.0
        while not self.stop_event.is_set():
            try:
                won = self.try_acquire_or_renew()
            except Exception as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.lease_name, exc)
                won = False
            now = time.monotonic()
            if won:
                last_renewal = now
                if not self.leading.is_set():
                    log.info("became leader (%s)", self.identity)
                    self.leading.set()
            elif self.leading.is_set() and now - last_renewal > self.renew_deadline:
                log.error("could not renew the lease for %.0f s: pausing until it is held again", now - last_renewal)
                self.leading.clear()
            self.stop_event.wait(self.retry_period)
