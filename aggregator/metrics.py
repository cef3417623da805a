"""Prometheus metrics, one registry per app so several apps can live in one process.

Counters (requests, cache lookups, connector outcomes) and the request-latency histogram
are plain Python numbers exported when scraped: an event loop has one thread, so they
need no lock, and a cached hit only adds to three pre-bound series. The connector-latency
histogram and the circuit-state gauge, updated once per upstream call, use
prometheus-client's own classes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from connectors.base import FetchOutcome

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FIRST_BUCKET = LATENCY_BUCKETS[0]
CIRCUIT_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class CounterChild:
    """One labelled series of a FastCounter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add to the count."""
        self.value += amount


class FastCounter:
    """A labelled counter kept in plain numbers."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], CounterChild] = {}

    def labels(self, *values: str) -> CounterChild:
        """The series for these label values (created on first use)."""
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = CounterChild()
        return child

    def collect(self) -> Metric:
        """The exposition family."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in sorted(self.children.items()):
            family.add_metric(list(values), child.value)
        return family


class HistogramChild:
    """One labelled series of a FastHistogram."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        index = bisect_left(LATENCY_BUCKETS, value)
        if index < len(self.buckets):
            self.buckets[index] += 1
        self.count += 1
        self.total += value


class FastHistogram:
    """A labelled histogram over LATENCY_BUCKETS kept in plain numbers."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], HistogramChild] = {}

    def labels(self, *values: str) -> HistogramChild:
        """The series for these label values (created on first use)."""
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = HistogramChild(len(LATENCY_BUCKETS))
        return child

    def collect(self) -> Metric:
        """The exposition family, with cumulative buckets."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in sorted(self.children.items()):
            cumulative, running = [], 0
            for bound, count in zip(LATENCY_BUCKETS, child.buckets, strict=True):
                running += count
                cumulative.append((str(bound), float(running)))
            cumulative.append(("+Inf", float(child.count)))
            family.add_metric(list(values), cumulative, child.total)
        return family


class _FastCollector(Collector):
    def __init__(self, *metrics: FastCounter | FastHistogram) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.collect()


class Metrics:
    """The counters and histograms the proxy exposes on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = FastCounter(
            "aggregator_requests",
            "HTTP requests answered, by route and status",
            ("route", "status"),
        )
        self.latency = FastHistogram(
            "aggregator_request_seconds", "Time to answer a profile request", ("cache",)
        )
        self.cache = FastCounter(
            "aggregator_cache",
            "Profile cache lookups, by result (hit, miss, refresh; stale: expired fields served)",
            ("result",),
        )
        self.registry.register(_FastCollector(self.requests, self.latency, self.cache))
        self.connector_latency = Histogram(
            "aggregator_connector_seconds",
            "Time each connector took",
            ["connector"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.connector_outcomes = FastCounter(
            "aggregator_connector_outcomes",
            "Connector fetches, by outcome",
            ("connector", "status"),
        )
        self.registry.register(_FastCollector(self.connector_outcomes))
        self.circuit = Gauge(
            "aggregator_connector_circuit_state",
            "Circuit breaker state per connector (0 closed, 1 half-open, 2 open)",
            ["connector"],
            registry=self.registry,
        )
        self._hit = self.cache.labels("hit")
        self._hit_latency = self.latency.labels("hit")
        self._ok_profile = self.requests.labels("profile", "200")

    def cached_hit(self, seconds: float) -> None:
        """Record a profile answered from cache (the hot path: pre-bound series, and a hit
        under the first bucket's bound, nearly every one, is counted without a search)."""
        self._hit.value += 1
        self._ok_profile.value += 1
        latency = self._hit_latency
        if seconds <= FIRST_BUCKET:
            latency.buckets[0] += 1
            latency.count += 1
            latency.total += seconds
        else:
            latency.observe(seconds)

    def connector(self, outcome: FetchOutcome, circuit_state: str) -> None:
        """Record one connector fetch."""
        self.connector_latency.labels(outcome.name).observe(outcome.elapsed)
        self.connector_outcomes.labels(outcome.name, outcome.status).inc()
        self.circuit.labels(outcome.name).set(CIRCUIT_VALUES.get(circuit_state, 0.0))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
