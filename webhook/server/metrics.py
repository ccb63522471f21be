"""Prometheus metrics for the webhook, on a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Admission sits on the API server's hot path: buckets resolve the sub-millisecond range.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class WebhookMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.admissions = Counter(
            "sortie_egress_admissions",
            "Admission reviews answered, by endpoint and decision (allowed, patched, denied, bad_request).",
            ("endpoint", "decision"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "sortie_egress_admission_duration_seconds",
            "Time from request received to response ready, by endpoint.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cert_reloads = Counter(
            "sortie_egress_certificate_reloads",
            "Serving certificate reloads, by result.",
            ("result",),
            registry=self.registry,
        )
        # Children resolved once: label lookup is a dict walk under a lock per call.
        self._counters: dict[tuple[str, str], Counter] = {}
        self._histograms: dict[str, Histogram] = {}

    def observe(self, endpoint: str, decision: str, seconds: float) -> None:
        counter = self._counters.get((endpoint, decision))
        if counter is None:
            counter = self._counters[(endpoint, decision)] = self.admissions.labels(endpoint, decision)
        histogram = self._histograms.get(endpoint)
        if histogram is None:
            histogram = self._histograms[endpoint] = self.latency.labels(endpoint)
        counter.inc()
        histogram.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
