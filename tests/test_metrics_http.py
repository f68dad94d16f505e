"""The Prometheus /metrics port of serving.metrics.FeedMetrics."""

from __future__ import annotations

import select
import socket
import time
import urllib.request

import pytest

from serving import metrics
from serving.metrics import FeedMetrics
from tests.redis_servers import free_port


def test_a_burst_of_new_connections_is_queued_for_accept_not_dropped():
    """A scraper fleet or a load tool opens its connections at once. With socketserver's
    listen backlog of 5, the kernel dropped the handshakes past it and the clients retried
    after 1 s, 3 s ...: of 100 connections opened at once, 6 were established within 0.5 s."""
    burst = 64
    port = free_port()
    stop = FeedMetrics().serve_http(port)
    connections = [socket.socket() for _ in range(burst)]
    try:
        for connection in connections:
            connection.setblocking(False)
            connection.connect_ex(("127.0.0.1", port))
        assert _established_within(connections, seconds=0.5) == burst
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200
    finally:
        for connection in connections:
            connection.close()
        stop()


def _established_within(connecting: list[socket.socket], seconds: float) -> int:
    """How many of the non-blocking ``connecting`` sockets complete their handshake in time."""
    pending, established = set(connecting), 0
    deadline = time.monotonic() + seconds
    while pending and (left := deadline - time.monotonic()) > 0:
        _, writable, _ = select.select([], list(pending), [], left)
        for connection in writable:
            pending.discard(connection)
            established += connection.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return established


def test_a_port_past_65535_is_refused_not_served_on_another():
    """The address came from getaddrinfo, which takes the port modulo 65536: asked for
    65536 (a --metrics-port 65535 of --workers 2's second worker), /metrics listened on
    a free port of the kernel's choosing, and said nothing."""
    with pytest.raises(OverflowError):
        FeedMetrics().serve_http(65536)


def test_a_connection_that_sends_nothing_is_closed_after_a_while_quietly(monkeypatch, capfd):
    """A connection holds a thread until its request has been read, and the server waited
    for it forever: 500 idle connections (scrapers gone without a FIN, a port scan) held
    500 threads for as long as they stayed open."""
    monkeypatch.setattr(metrics, "IDLE_SECONDS", 0.5)
    port = free_port()
    stop = FeedMetrics().serve_http(port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""  # the server closed it
            assert time.monotonic() - started < 4
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200
    finally:
        stop()
    assert "Traceback" not in capfd.readouterr().err


def test_stopping_the_port_is_prompt_not_a_wait_for_socketserver_s_half_second_poll():
    """serve_forever looked for a stop every 0.5 s: a server's stop waited up to half a
    second for its /metrics thread, whatever else it had to do."""
    for idle in (0.05, 0.2, 0.35):
        port = free_port()
        stop = FeedMetrics().serve_http(port)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200
        time.sleep(idle)
        started = time.monotonic()
        stop()
        assert time.monotonic() - started < 0.25  # the old poll: 0.45, 0.3 and 0.15 s here; a loaded machine may delay a thread a little
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            again.bind(("127.0.0.1", port))  # freed


def _info_series(registry, name: str) -> list[dict[str, str]]:
    return [sample.labels for family in registry.collect() for sample in family.samples if sample.name == name]


@pytest.mark.parametrize("gauge, change, name", [
    ("model", lambda m, v: m.set_model(v), "feedrank_model_info"),
    ("arm_model", lambda m, v: m.set_arm_models({"control": v, "treatment": v + "-t"}), "feedrank_arm_model_info"),
])
def test_a_scrape_while_the_model_changes_still_finds_an_info_series(gauge, change, name):
    """A model reload swapped the info series by clearing the gauge, then setting the new
    version: a scrape in between found no series, which an absent() alert reads as a server
    serving no model. Every change to the gauge is checked against a scrape taken just before it."""
    feed_metrics = FeedMetrics()
    change(feed_metrics, "v1")
    metric, seen = getattr(feed_metrics, gauge), []
    for method in ("labels", "remove", "clear"):
        original = getattr(metric, method)

        def scraped_first(*args, _original=original):
            seen.append(_info_series(feed_metrics.registry, name))
            return _original(*args)

        setattr(metric, method, scraped_first)
    change(feed_metrics, "v2")
    assert seen and all(seen), f"a scrape during the change found no {name}: {seen}"
    versions = {labels["version"] for labels in _info_series(feed_metrics.registry, name)}
    assert versions == ({"v2"} if gauge == "model" else {"v2", "v2-t"})
