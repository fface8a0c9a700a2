"""Prometheus metrics of one bridge app, in its own registry (two apps never collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Request latency buckets in seconds: sub-millisecond bus hops up to slow LLM calls.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bridge_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bridge_request_duration_seconds",
            "HTTP request latency (streams: until the last event), by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "bridge_requests_in_flight", "HTTP requests being handled", registry=self.registry
        )
        # Read when scraped: the edge counts with a plain int, not a locked gauge update
        # (one event loop thread changes it; a scrape from another thread reads an int).
        self.in_flight_requests = 0
        self.in_flight.set_function(lambda: self.in_flight_requests)
        self.rate_limited = Counter(
            "bridge_rate_limited",
            "requests answered 429, by tenant",
            ["tenant"],
            registry=self.registry,
        )
        self.ratelimit_fallback = Counter(
            "bridge_ratelimit_fallback",
            "rate-limit decisions taken by the in-process bucket because Redis was down",
            registry=self.registry,
        )

        # Label children looked up once per (method, route, status), not per request.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
