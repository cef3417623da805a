"""Prometheus metrics, one registry per app so several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from connectors.base import FetchOutcome

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CIRCUIT_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class Metrics:
    """The counters and histograms the proxy exposes on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "aggregator_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "aggregator_request_seconds",
            "Time to answer a profile request",
            ["cache"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "aggregator_cache",
            "Profile cache lookups, by result (hit, miss, refresh; stale: expired fields served)",
            ["result"],
            registry=self.registry,
        )
        self.connector_latency = Histogram(
            "aggregator_connector_seconds",
            "Time each connector took",
            ["connector"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.connector_outcomes = Counter(
            "aggregator_connector_outcomes",
            "Connector fetches, by outcome",
            ["connector", "status"],
            registry=self.registry,
        )
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
        """Record a profile answered from cache (the hot path: pre-bound children)."""
        self._hit.inc()
        self._hit_latency.observe(seconds)
        self._ok_profile.inc()

    def connector(self, outcome: FetchOutcome, circuit_state: str) -> None:
        """Record one connector fetch."""
        self.connector_latency.labels(outcome.name).observe(outcome.elapsed)
        self.connector_outcomes.labels(outcome.name, outcome.status).inc()
        self.circuit.labels(outcome.name).set(CIRCUIT_VALUES.get(circuit_state, 0.0))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
