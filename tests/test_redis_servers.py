"""The test harness's ports (tests/redis_servers.py): no TCP self-connect, no collisions."""

from __future__ import annotations

import pytest

from tests.redis_servers import RedisClusterServers, ephemeral_ports, free_port


def test_test_servers_listen_outside_the_ephemeral_range(tmp_path):
    # A client connecting to a port where nothing listens yet can be handed that port as
    # its source port and connect to itself (redis-py then reads back its own HELLO:
    # "'list' object has no attribute 'get'"). Outside the range connect() draws from,
    # that cannot happen.
    ephemeral = ephemeral_ports()
    if ephemeral.start <= 20_000:
        pytest.skip(f"ip_local_port_range {ephemeral.start}-{ephemeral.stop - 1} leaves no room below it for a cluster bus")
    standalone = [free_port() for _ in range(20)]
    cluster = RedisClusterServers(tmp_path, masters=3, replicas=1)  # ports chosen, nothing started
    buses = [node.port + 10_000 for node in cluster.nodes]
    assert not [port for port in standalone + [node.port for node in cluster.nodes] + buses if port in ephemeral]


def test_no_port_is_handed_out_twice_bus_ports_included(tmp_path):
    clusters = [RedisClusterServers(tmp_path / str(n), masters=3, replicas=1) for n in range(3)]
    ports = [free_port() for _ in range(20)]
    ports += [port for cluster in clusters for node in cluster.nodes for port in (node.port, node.port + 10_000)]
    assert len(set(ports)) == len(ports)


def test_each_xdist_worker_has_its_own_share_of_the_ports(monkeypatch):
    from tests import redis_servers

    shares = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        monkeypatch.setattr(redis_servers, "_handed_out", set())  # as in a process of its own
        shares.append({free_port() for _ in range(10)} | {port + 10_000 for port in (free_port(cluster_bus=True) for _ in range(5))})
    assert [{port % 10_000 % 3 for port in share} for share in shares] == [{0}, {1}, {2}]
