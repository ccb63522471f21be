"""Prometheus metrics for the webhook, on a registry of its own (no process-global state).

Admission counts and latencies are plain numbers updated on the event loop's
thread, turned into Prometheus families only when scraped. prometheus_client's
own Counter and Histogram take a lock per update (two per admission), which
cost more than the rest of the bookkeeping; here only one thread ever writes,
and the scrape runs on that same thread, so no lock is needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

# Admission sits on the API server's hot path: buckets resolve the sub-millisecond range.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class AdmissionStats(Collector):
    """Admissions by endpoint and decision, and their latency, kept by the event loop's thread."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts: dict[tuple[str, str], int] = {}
        #: Per endpoint: one count per bucket (not cumulative) and a last one for +Inf.
        self.bucket_counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, endpoint: str, decision: str, seconds: float) -> None:
        key = (endpoint, decision)
        self.counts[key] = self.counts.get(key, 0) + 1
        counts = self.bucket_counts.get(endpoint)
        if counts is None:
            counts = self.bucket_counts[endpoint] = [0] * (len(self.buckets) + 1)
            self.sums[endpoint] = 0.0
        counts[bisect_left(self.buckets, seconds)] += 1  # the first bound >= seconds: Prometheus' "le"
        self.sums[endpoint] += seconds

    def collect(self) -> Iterator[Metric]:
        admissions = CounterMetricFamily(
            "sortie_egress_admissions",
            "Admission reviews answered, by endpoint and decision (allowed, patched, denied, bad_request, too_large).",
            labels=("endpoint", "decision"),
        )
        for (endpoint, decision), count in sorted(self.counts.items()):
            admissions.add_metric((endpoint, decision), count)
        yield admissions
        latency = HistogramMetricFamily(
            "sortie_egress_admission_duration_seconds",
            "Time from request received to response ready, by endpoint.",
            labels=("endpoint",),
        )
        for endpoint, counts in sorted(self.bucket_counts.items()):
            cumulative, running = [], 0
            for bound, count in zip((*map(str, self.buckets), "+Inf"), counts):
                running += count
                cumulative.append((bound, running))
            latency.add_metric((endpoint,), cumulative, sum_value=self.sums[endpoint])
        yield latency


class WebhookMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stats = AdmissionStats()
        self.registry.register(self.stats)
        self.cert_reloads = Counter(
            "sortie_egress_certificate_reloads",
            "Serving certificate reloads, by result.",
            ("result",),
            registry=self.registry,
        )
        self.observe = self.stats.observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
