"""Prometheus metrics for the controller."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter("sortie_egress_reconciles", "Session reconciles, by result.", ("result",),
                                  registry=self.registry)
        self.reconcile_latency = Histogram("sortie_egress_reconcile_duration_seconds", "Time to reconcile one session.",
                                           buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("sortie_egress_queue_depth", "Sessions waiting to be reconciled.", registry=self.registry)
        self.managed_policies = Gauge("sortie_egress_managed_policies", "Managed NetworkPolicies in the cache.",
                                      registry=self.registry)
        self.gate_release = Histogram("sortie_egress_gate_release_seconds",
                                      "From pod creation to its scheduling gate's removal.",
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.writes = Counter("sortie_egress_api_writes", "API writes, by kind.", ("kind",), registry=self.registry)
        self.watch_restarts = Counter("sortie_egress_watch_restarts", "Lists after a watch ended: expired (410) or error.",
                                      ("reason",), registry=self.registry)
        self.conflicts = Counter("sortie_egress_conflicts", "Writes that found the object changed or taken; retried with backoff.",
                                 registry=self.registry)
        self.pin_violations = Counter("sortie_egress_pin_violations",
                                      "Reconciles that found a released pod's policy changed (bypassed admission): DNS only.",
                                      registry=self.registry)
        self.events_failed = Counter("sortie_egress_events_failed", "Events the API server refused (enforcement was written).",
                                     registry=self.registry)
        self.widened_sessions = Gauge("sortie_egress_widened_sessions",
                                      "Sessions whose pods another NetworkPolicy lets reach more than their own policy.",
                                      registry=self.registry)
        self.backend = Gauge("sortie_egress_backend_info", "1 for the backend this controller enforces sessions with.",
                             ("backend",), registry=self.registry)
        self.leader = Gauge("sortie_egress_leader", "1 while this replica holds the leader lease.", registry=self.registry)
        self.canary_healthy = Gauge("sortie_egress_canary_healthy",
                                    "1 while this replica's enforcement canary answers on both ports (as of the last "
                                    "liveness check); 0 otherwise, and always 0 without --canary-port.", registry=self.registry)
