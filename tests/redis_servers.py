"""Real redis-server processes for tests: standalone and a 3-master cluster.

Every server runs on a free port in a temporary directory and is killed at teardown,
also when a test fails. Without a redis-server binary the tests are skipped, except
under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def require_redis() -> str:
    """The redis-server path; skips (fails under CI) when it is missing."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        reason = "redis-server/redis-cli not found on PATH (install them: `make redis-server`)"
        if IN_CI:
            pytest.fail(reason + "; required under CI=true", pytrace=False)
        pytest.skip(reason)
    return REDIS_SERVER


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ephemeral_ports() -> range:
    """The range the kernel draws connect()'s source ports from (Linux's default when
    /proc does not say; macOS's 49152-65535 lies inside it)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


_handed_out: set[int] = set()  # ports (and bus ports) free_port gave in this process


def _worker_share() -> tuple[int, int]:
    """(this pytest-xdist worker's index, the number of workers); (0, 1) without xdist.
    Worker i takes only ports p with p % 10000 % workers == i, so a cluster node's bus port
    (p + 10000) is in its share too, and no two workers can hand out the same port between
    its bind check and the server's own bind."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return 0, 1
    return int(worker[2:]) % count, count


def free_port(cluster_bus: bool = False) -> int:
    """A free port for a test server, outside the ephemeral range; for a cluster node one
    whose bus port (+10000) is free and outside it too. No port is handed out twice in a
    process, bus ports included (a cluster's nodes get their ports before any starts),
    and each pytest-xdist worker has its own share of the ports (``_worker_share``).

    Outside the ephemeral range, because a client connecting to a port where nothing
    listens yet (wait_ready's PING before redis-server binds, a client of a stopped
    node) can be given that very port as its source port: a TCP self-connect, whose
    peer is the socket itself. redis-py then reads its own HELLO back as the reply
    (['HELLO', '3']: "'list' object has no attribute 'get'"), and the socket holds the
    port the server is about to bind. connect() never picks a port outside the range.
    If the range leaves no room (a widened ip_local_port_range), any port will do.
    """
    ephemeral = ephemeral_ports()
    span = 10_000 if cluster_bus else 0
    worker, workers = _worker_share()

    def usable(port: int, anywhere: bool) -> bool:
        ports = (port, port + span) if cluster_bus else (port,)
        return all(p <= 65_535 and p % 10_000 % workers == worker and p not in _handed_out and (anywhere or p not in ephemeral)
                   for p in ports)

    rng = random.Random()
    for anywhere in (False, True):
        candidates = [port for port in range(10_000, 65_536 - span) if usable(port, anywhere)]
        for port in rng.sample(candidates, min(len(candidates), 1000)):
            if _bindable(port) and (not cluster_bus or _bindable(port + span)):
                _handed_out.update((port, port + span))
                return port
    raise RuntimeError("no free port" + (" pair for a cluster node" if cluster_bus else ""))


class RedisServer:
    """One redis-server process. ``appendonly`` turns AOF on with fsync on every write."""

    def __init__(
        self, directory: Path, port: int | None = None, appendonly: bool = False, extra: Sequence[str] = (), cluster: bool = False
    ) -> None:
        self.directory = directory
        self.port = port or free_port(cluster_bus=cluster)
        self.appendonly = appendonly
        self.extra = list(extra)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            require_redis(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.process = subprocess.Popen(argv + self.extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)
        return self

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, **kwargs)

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client(socket_timeout=1.0, socket_connect_timeout=1.0) as client:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    log = (self.directory / "redis.log").read_text() if (self.directory / "redis.log").exists() else ""
                    raise RuntimeError(f"redis-server on port {self.port} exited with {self.process.returncode}:\n{log[-2000:]}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout} s")
                time.sleep(0.02)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it accepts connections but never answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, no shutdown save; the AOF (if on) is all that survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


class RedisClusterServers:
    """Cluster-enabled redis-servers joined by `redis-cli --cluster create`: ``masters``
    primaries with ``replicas`` replicas each (replicas take over a primary that dies
    after ``node_timeout_ms``)."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                directory / f"node{n}",
                extra=["--cluster-enabled", "yes", "--cluster-config-file", str(directory / f"node{n}" / "nodes.conf"),
                       "--cluster-node-timeout", str(node_timeout_ms)],
                cluster=True,
            )
            for n in range(masters * (1 + replicas))
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis-cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            with node.client() as client:
                while client.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the test cluster did not reach cluster_state:ok")
                    time.sleep(0.05)
                # A replica counts once its first sync is done: WAIT and failover need it.
                while (info := client.info("replication")).get("role") == "slave" and info.get("master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise RuntimeError("a replica of the test cluster did not sync")
                    time.sleep(0.05)
        return self

    def flushall(self) -> None:
        for node in self.primaries():
            with node.client() as client:
                client.flushall()

    def primaries(self) -> list[RedisServer]:
        """The nodes serving as primaries now (a replica becomes one after a failover)."""
        alive = [node for node in self.nodes if node.process is not None and node.process.poll() is None]
        primaries = []
        for node in alive:
            with node.client(socket_timeout=2.0) as client:
                if client.info("replication").get("role") == "master":
                    primaries.append(node)
        return primaries

    def wait_ok(self, timeout: float = 30.0) -> float:
        """Seconds until every live node reports cluster_state:ok."""
        started = time.monotonic()
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with node.client(socket_timeout=2.0) as client:
                while client.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() - started > timeout:
                        raise RuntimeError(f"the cluster did not recover in {timeout} s")
                    time.sleep(0.05)
        return time.monotonic() - started

    def move_slot(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """Move ``slot`` from primary ``source`` to primary ``target`` with its keys, as
        `redis-cli --cluster reshard` does (IMPORTING, MIGRATING, MIGRATE, SETSLOT NODE)."""
        with source.client() as src, target.client() as dst:
            source_id, target_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in self.primaries():
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A session-wide standalone redis-server; use ``redis_url`` for an empty database."""
    require_redis()
    with tempfile.TemporaryDirectory(prefix="feedrank-redis-") as tmp:
        server = RedisServer(Path(tmp))
        try:
            yield server.start()
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A session-wide 3-master Redis Cluster; use ``redis_cluster_url`` for an empty one."""
    require_redis()
    with tempfile.TemporaryDirectory(prefix="feedrank-cluster-") as tmp:
        cluster = RedisClusterServers(Path(tmp))
        try:
            yield cluster.start()
        finally:
            cluster.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the standalone server, flushed before the test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """URL of the cluster, flushed before the test."""
    redis_cluster.flushall()
    return redis_cluster.url
