"""Prometheus metrics of one server process, in a registry of its own (no globals)."""

from __future__ import annotations

import selectors
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

IDLE_SECONDS = 10.0
"""How long /metrics waits for each read or write of a connection before closing it: a
scraper sends its request at once (and Prometheus's scrape_timeout defaults to 10 s)."""

# Buckets around the 10 ms p99 target.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class _Children:
    """A labelled metric's children by label values, each looked up in the metric once:
    ``labels()`` validates and takes a lock on every call, twice the cost of the update
    itself, and a feed updates some twenty series. The label values are few (methods,
    codes, sources, filters, arms), so the cache stays small."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:  # a race adds the same child twice: labels() returns one per values
            child = self._children[values] = self.metric.labels(*values)
        return child


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
        self.model_reload_failures = Counter(
            "feedrank_model_reload_failures", "Attempts to load a new model version that failed (the served one stays)",
            registry=self.registry,
        )
        self.arms_reload_failures = Counter(
            "feedrank_arms_reload_failures", "Attempts to load a changed A/B arms file (and the versions it pins) that "
            "failed (the arms in force stay)", registry=self.registry,
        )
        self.credentials_reload_failures = Counter(
            "feedrank_credentials_reload_failures", "Changed credential files (credential: tokens, tls) that failed to "
            "load (those in force stay)", ["credential"], registry=self.registry,
        )
        # Feed processes (--feed-processes): read when scraped, so a call pays nothing for them.
        self.feed_processes = Gauge("feedrank_feed_processes", "Feed processes alive", registry=self.registry)
        self.feed_queue = Gauge("feedrank_feed_queue", "GetFeeds waiting for a free feed process", registry=self.registry)
        self.feed_process_exits = Counter(
            "feedrank_feed_process_exits", "Feed processes that exited while serving (each is replaced)", registry=self.registry
        )
        self._requests, self._latency = _Children(self.requests), _Children(self.latency)
        self._arm_requests, self._arm_latency = _Children(self.arm_requests), _Children(self.arm_latency)
        self._gathered, self._removed = _Children(self.gathered), _Children(self.removed)
        self._model_labels: set[tuple[str, ...]] = set()
        self._arm_model_labels: set[tuple[str, ...]] = set()

    def observe_request(self, method: str, code: str, seconds: float, arm: str | None = None) -> None:
        """One RPC; ``arm`` (a GetFeed's A/B arm, "" for none) also counts it per arm."""
        self._requests(method, code).inc()
        self._latency(method).observe(seconds)
        if arm is not None:
            self._arm_requests(arm, code).inc()
            self._arm_latency(arm).observe(seconds)

    def observe_feed(self, gathered: Mapping[str, int], removed: Mapping[str, int]) -> None:
        """Count a feed's candidates by source and its removals by filter (a zero count
        still makes its series appear)."""
        for counters, counts in ((self._gathered, gathered), (self._removed, removed)):
            for name, count in counts.items():
                child = counters(name)
                if count:
                    child.inc(count)

    def track_feed_processes(self, alive: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Report ``alive()`` feed processes and ``waiting()`` queued GetFeeds at each scrape."""
        self.feed_processes.set_function(alive)
        self.feed_queue.set_function(waiting)

    def track_open_streams(self, open_streams: Callable[[], int]) -> None:
        """Report ``open_streams()`` at each scrape: the health Watch and reflection streams open now."""
        Gauge("feedrank_open_streams", "Health Watch and reflection streams open now (--max-open-streams bounds them)",
              registry=self.registry).set_function(open_streams)

    def track_certificate_expiry(self, seconds_left: Callable[[], float]) -> None:
        """Report ``seconds_left()`` at each scrape: how long the served TLS certificate has
        before it expires (a server without TLS has no such series, rather than a 0 that
        would read as expired)."""
        Gauge("feedrank_tls_certificate_expires_in_seconds", "Seconds until the TLS certificate served to new "
              "connections expires (the earliest notAfter of its chain); negative once it has", registry=self.registry,
              ).set_function(seconds_left)

    def observe_ingest(self, applied: int, duplicates: int) -> None:
        self.events.labels("applied").inc(applied)
        self.events.labels("duplicate").inc(duplicates)

    def set_model(self, version: str) -> None:
        self._model_labels = _swap_info(self.model, self._model_labels, {(version,)})

    def set_arm_models(self, versions: Mapping[str, str]) -> None:
        """The model version of each A/B arm, by arm name (empty: no arms)."""
        self._arm_model_labels = _swap_info(self.arm_model, self._arm_model_labels, set(versions.items()))

    def serve_http(self, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
        """Expose /metrics on ``port`` (a daemon thread); OSError when it cannot be bound.
        Returns what stops it and frees the port."""
        httpd = _MetricsHttpServer(host, port)
        httpd.set_app(make_wsgi_app(self.registry))
        thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
        thread.start()

        def stop() -> None:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)

        return stop


def _swap_info(gauge: Gauge, shown: set[tuple[str, ...]], wanted: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Set ``gauge``'s series ``wanted`` to 1, then remove the others ``shown`` so far: in
    that order a scrape between the two still finds the info series (cleared first, a
    scrape in the gap found none, which an ``absent()`` alert reads as a server with no model)."""
    for labels in wanted:
        gauge.labels(*labels).set(1)
    for labels in shown - wanted:
        gauge.remove(*labels)
    return wanted


class _MetricsHttpServer(ThreadingWSGIServer):
    """prometheus_client's server, listening with the kernel's backlog: socketserver's 5
    dropped the handshakes of a burst of new connections (scrapers, load tools), which the
    clients retried after 1 s, 3 s ... Bound to ``host`` in its own address family (IPv6 too)."""

    request_queue_size = socket.SOMAXCONN

    def __init__(self, host: str, port: int) -> None:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.address_family = family
        self._wake, self._waker = socket.socketpair()  # before binding, which closes them when it fails
        self._stopping = False
        self._stopped = threading.Event()
        # Not getaddrinfo's port: it takes the port modulo 65536 (65536 became "any free port").
        super().__init__((address[0], port), _QuietRequestHandler)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """socketserver's loop, woken by ``shutdown`` rather than looking for it every
        ``poll_interval`` (0.5 s): a server's stop waited up to half a second for it."""
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake, selectors.EVENT_READ)
                while not self._stopping:
                    ready = selector.select()
                    if self._stopping:
                        break
                    if any(key.fileobj is self for key, _ in ready):
                        self._handle_request_noblock()
                    self.service_actions()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` and wait for it (call from another thread)."""
        self._stopping = True
        self._waker.send(b"\0")
        self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        self._wake.close()
        self._waker.close()

    def get_request(self) -> tuple[socket.socket, Any]:
        # Each connection holds a thread until its request is read: without a timeout, an
        # idle one (a scraper gone without a FIN, a port scan) held it for good.
        connection, address = super().get_request()
        connection.settimeout(IDLE_SECONDS)
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], TimeoutError):  # an idle client, closed: no traceback
            super().handle_error(request, client_address)


class _QuietRequestHandler(WSGIRequestHandler):
    """No line on stderr for each scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
