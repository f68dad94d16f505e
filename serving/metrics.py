"""Prometheus metrics of one server process, in a registry of its own (no globals)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

# Buckets around the 10 ms p99 target.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class FeedMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter("feedrank_requests", "RPCs by method and status code", ["method", "code"], registry=self.registry)
        self.latency = Histogram("feedrank_request_seconds", "RPC latency", ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.gathered = Counter("feedrank_candidates", "Candidates gathered, by source", ["source"], registry=self.registry)
        self.removed = Counter("feedrank_filtered", "Candidates removed, by filter", ["filter"], registry=self.registry)
        self.events = Counter("feedrank_ingested_events", "Ingested events by outcome", ["outcome"], registry=self.registry)
        self.model = Gauge("feedrank_model_info", "The model version being served (value 1)", ["version"], registry=self.registry)
        # A/B arms: GetFeed again, by arm ("" when no arms are configured), so the series
        # above keep their labels; and the model version each arm serves.
        self.arm_requests = Counter("feedrank_arm_requests", "GetFeed RPCs by A/B arm and status code", ["arm", "code"], registry=self.registry)
        self.arm_latency = Histogram("feedrank_arm_request_seconds", "GetFeed latency by A/B arm", ["arm"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.arm_model = Gauge("feedrank_arm_model_info", "The model version each A/B arm serves (value 1)", ["arm", "version"], registry=self.registry)

    def observe_request(self, method: str, code: str, seconds: float, arm: str | None = None) -> None:
        """One RPC; ``arm`` (a GetFeed's A/B arm, "" for none) also counts it per arm."""
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)
        if arm is not None:
            self.arm_requests.labels(arm, code).inc()
            self.arm_latency.labels(arm).observe(seconds)

    def observe_feed(self, gathered: Mapping[str, int], removed: Mapping[str, int]) -> None:
        for source, count in gathered.items():
            self.gathered.labels(source).inc(count)
        for name, count in removed.items():
            self.removed.labels(name).inc(count)

    def observe_ingest(self, applied: int, duplicates: int) -> None:
        self.events.labels("applied").inc(applied)
        self.events.labels("duplicate").inc(duplicates)

    def set_model(self, version: str) -> None:
        self.model.clear()
        self.model.labels(version).set(1)

    def set_arm_models(self, versions: Mapping[str, str]) -> None:
        """The model version of each A/B arm, by arm name (empty: no arms)."""
        self.arm_model.clear()
        for arm, version in versions.items():
            self.arm_model.labels(arm, version).set(1)

    def serve_http(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on ``port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
