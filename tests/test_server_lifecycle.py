"""The server process's start and stop, as an operator sees them: one-line errors, signals
while loading, the port file, the drain at SIGTERM, /metrics while loading."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.config import ServerConfig
from serving.feed_processes import FeedProcesses, FeedProcessError
from serving.server import SHUTDOWN_GRACE_SECONDS
from tests.conftest import REPO
from tests.feed_world import TOKEN_SECRET, build_world
from tests.processes import alive, cmdline
from tests.redis_servers import free_port

EXIT_SECONDS = 30


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("lifecycle-world"), users=120, sellers=12, items=300)


def serving_argv(world, *extra: str) -> list[str]:
    return [sys.executable, "-m", "serving", "--models", str(world.models_dir), "--data", str(world.data_dir),
            "--no-progress", *extra]


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEEDRANK_TOKEN_SECRET": TOKEN_SECRET.decode()}
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=EXIT_SECONDS, env=env, **kwargs)


@contextlib.contextmanager
def started(argv: list[str]) -> Iterator[subprocess.Popen]:
    """A server process, killed at the end if the test left it running."""
    env = {**os.environ, "FEEDRANK_TOKEN_SECRET": TOKEN_SECRET.decode()}
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def wait_for_line(process: subprocess.Popen, needle: str, seen: list[str]) -> None:
    for line in process.stderr:
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"{needle!r} never logged:\n{''.join(seen)}")


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the port file never appeared"
        time.sleep(0.05)


def assert_one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "excepthook" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert errors[0] == result.stderr.rstrip().splitlines()[-1], result.stderr  # nothing after it


# --- ports in use ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--metrics-port", "--http-port"])
def test_a_metrics_or_http_port_in_use_exits_at_once_with_one_line(world, flag):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = run(serving_argv(world, "--port", "0", flag, str(port)))
    assert_one_error_line(result, flag)


# --- errors and signals during the start ------------------------------------------------------

FAIL_AFTER_FEED_PROCESSES = """
import sys
import serving.server as server
def fail(self):
    raise OSError("injected failure after the feed processes started")
server.HealthMonitor.start = fail
from serving.__main__ import main
main(sys.argv[1:])
"""


def test_an_error_after_the_feed_processes_started_stops_them_and_exits_nonzero(world):
    argv = serving_argv(world, "--port", "0", "--feed-processes", "2")
    result = run([sys.executable, "-c", FAIL_AFTER_FEED_PROCESSES, *argv[3:]])
    assert result.returncode != 0, result.stderr
    assert "injected failure" in result.stderr
    pids = [int(pid) for pid in re.search(r"feed processes ready \(pids ([\d, ]+)\)", result.stderr).group(1).split(", ")]
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)


def test_sigterm_while_loading_stops_the_start_and_writes_no_port_file(world, tmp_path):
    port_file = tmp_path / "port"
    seen: list[str] = []
    with started(serving_argv(world, "--port", "0", "--feed-processes", "2", "--port-file", str(port_file))) as process:
        wait_for_line(process, "FEEDRANK_TOKENS", seen)  # the auth warning: logged as the loading begins
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=EXIT_SECONDS)[1]
        took = time.monotonic() - sent
    log = "".join(seen) + rest
    assert process.returncode == 0, log
    assert "stopped while starting" in log and "serving model" not in log, log
    assert took < 5, f"{took:.1f} s to stop:\n{log}"
    assert not port_file.exists()


def test_the_port_file_is_removed_at_shutdown(world, tmp_path):
    port_file = tmp_path / "port"
    with started(serving_argv(world, "--port", "0", "--feed-processes", "0", "--port-file", str(port_file))) as process:
        wait_for_file(port_file, process)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=EXIT_SECONDS)
    assert process.returncode == 0
    assert not port_file.exists()


@pytest.mark.parametrize("where", ["a-directory", "no-such-directory/port"])
def test_a_port_file_that_cannot_be_written_is_one_line_before_anything_loads(world, tmp_path, where):
    """--port-file naming a directory or a path in a missing one: the server loaded its
    store and model and served, then failed to write the file, and stopped with an
    IsADirectoryError traceback (or an error naming its temporary file, not the flag)."""
    (tmp_path / "a-directory").mkdir()
    port_file = tmp_path / where
    result = run(serving_argv(world, "--port", "0", "--feed-processes", "0", "--port-file", str(port_file)))
    assert_one_error_line(result, f"--port-file {port_file}: ")
    assert "serving model" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-directory"]  # no temporary file left


def test_metrics_answer_while_the_server_is_loading(world, tmp_path):
    port_file, metrics_port = tmp_path / "port", free_port()
    with started(serving_argv(world, "--port", "0", "--feed-processes", "2", "--port-file", str(port_file),
                              "--metrics-port", str(metrics_port))) as process:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and process.poll() is None
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                    assert response.status == 200
                    break
            time.sleep(0.05)
        assert not port_file.exists()  # still loading: the feed processes take seconds to start
        wait_for_file(port_file, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            assert b"feedrank_model_info{" in response.read()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=EXIT_SECONDS)
    assert process.returncode == 0


# --- the store ---------------------------------------------------------------------------------


def test_a_redis_db_out_of_range_is_one_line_naming_store(world, redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    started_at = time.monotonic()
    result = run([sys.executable, "-m", "serving", "--models", str(world.models_dir), "--store", url, "--port", "0",
                  "--feed-processes", "2", "--no-progress"])
    assert_one_error_line(result, f"--store {url}: DB index is out of range")
    assert "feed process" not in result.stderr
    assert time.monotonic() - started_at < 20


@pytest.mark.parametrize("query", ["", "?read_cache=0"])
def test_a_redis_user_not_allowed_scripts_is_one_line_naming_store(world, redis_server, query):
    """An ACL user without +@scripting: with --feed-processes 0 the start died in a
    traceback, and with read_cache=0 the server turned SERVING and failed every call INTERNAL."""
    with redis_server.client() as admin:
        admin.acl_setuser("noscripts", enabled=True, passwords=["+pw"], keys=["fr:*"],
                          commands=["+@read", "+@write", "+@connection", "+info"])
        try:
            url = f"redis://noscripts:pw@127.0.0.1:{redis_server.port}/0{query}"
            result = run([sys.executable, "-m", "serving", "--models", str(world.models_dir), "--store", url, "--port", "0",
                          "--feed-processes", "0", "--no-progress"])
        finally:
            admin.acl_deluser("noscripts")
    shown = url.replace(":pw@", ":***@")
    assert_one_error_line(result, f"--store {shown}: this user has no permissions to run the 'script|load' command")


def test_a_redis_cluster_url_of_a_node_that_is_no_cluster_is_one_line_naming_store(world, redis_server):
    """A redis-cluster:// URL of a standalone Redis (or for an ACL user not allowed CLUSTER
    SLOTS, which redis-py reports alike) started a server NOT_SERVING for ever, logging
    "Redis Cluster cannot be connected" as an outage, and load said "Redis unreachable"."""
    url = f"redis-cluster://127.0.0.1:{redis_server.port}"
    says = "Cluster mode is not enabled on this node: a standalone Redis (use redis://), or a user not allowed +cluster|slots"
    result = run([sys.executable, "-m", "serving", "--models", str(world.models_dir), "--store", url, "--port", "0",
                  "--feed-processes", "0", "--no-progress"])
    assert_one_error_line(result, f"--store {url}: {says}")
    result = run([sys.executable, "-m", "serving", "load", "--data", str(world.data_dir), "--redis", url])
    assert_one_error_line(result, f"--redis {url}: {says}")


def test_a_feed_process_that_cannot_start_is_reported_at_once_in_one_line(world, tmp_path):
    config = ServerConfig(models_dir=str(tmp_path / "no-models"), store_url="redis://127.0.0.1:1/0", token_secret=TOKEN_SECRET)
    loop = asyncio.new_event_loop()
    try:
        processes = FeedProcesses(config, 2, loop)
        started_at = time.monotonic()
        with pytest.raises(FeedProcessError) as error:
            processes.start(timeout=120)
        assert time.monotonic() - started_at < 20
    finally:
        loop.close()
    message = str(error.value)
    assert "\n" not in message and "could not start" in message and "no-models" in message, message
    assert "--store redis://127.0.0.1:1/0" in message
    assert not processes.pids


@pytest.mark.parametrize("setting", [["--store", "foo://x"], ["env"]])
def test_an_unknown_store_scheme_names_where_it_came_from(world, setting):
    env = {**os.environ}
    argv = [sys.executable, "-m", "serving", "--models", str(world.models_dir)]
    if setting == ["env"]:
        env["FEEDRANK_STORE"], source = "foo://x", "FEEDRANK_STORE"
    else:
        argv += setting
        source = "--store"
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=EXIT_SECONDS, env=env)
    assert result.returncode == 2
    assert f"error: {source}: unknown store 'foo://x'" in result.stderr, result.stderr


def test_the_store_help_lists_every_scheme():
    result = subprocess.run([sys.executable, "-m", "serving", "--help"], cwd=REPO, capture_output=True, text=True, timeout=EXIT_SECONDS)
    text = "".join(result.stdout.split())  # help wraps lines at hyphens
    for scheme in ("redis://", "rediss://", "unix://", "redis-cluster://"):
        assert scheme in text


# --- the drain at SIGTERM --------------------------------------------------------------------------


def test_getfeeds_in_flight_at_sigterm_succeed_or_are_refused_retryably(world, tmp_path):
    """Feeds built on the event loop, so that calls queue inside gRPC, where its own stop
    cancelled them (CANCELLED, which clients do not retry): those running finish, the
    queued ones get UNAVAILABLE."""
    port_file = tmp_path / "port"
    argv = serving_argv(world, "--port", "0", "--feed-processes", "0", "--threads", "0", "--port-file", str(port_file),
                        "--max-concurrent-rpcs", "0")
    with started(argv) as process:
        wait_for_file(port_file, process)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=10)
            calls = [stub.GetFeed.future(feed_pb2.GetFeedRequest(user_id=f"u{i % 100:05d}", limit=50), timeout=20)
                     for i in range(90)]  # within one connection's concurrent streams: no call waits in the client
            time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            codes = [call.code() for call in calls]
        process.communicate(timeout=EXIT_SECONDS)
    assert process.returncode == 0
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, {code: codes.count(code) for code in set(codes)}
    assert codes.count(grpc.StatusCode.OK) > 0


def test_a_health_watch_open_at_sigterm_sees_not_serving_and_does_not_hold_up_the_exit(world, tmp_path):
    """Clients that balance by health (grpc-go's client-side health checking) keep a Watch
    open for good. Before the fix gRPC's stop waited the whole grace for it: every
    shutdown took 5 s more, whatever was in flight."""
    port_file = tmp_path / "port"
    with started(serving_argv(world, "--port", "0", "--feed-processes", "0", "--port-file", str(port_file))) as process:
        wait_for_file(port_file, process)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="feedrank.feed.v1.FeedService"), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            started_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as ended:
                next(watch)
            process.communicate(timeout=EXIT_SECONDS)
            stopped_within = time.monotonic() - started_at
    assert ended.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert process.returncode == 0
    assert stopped_within < SHUTDOWN_GRACE_SECONDS / 2, stopped_within


def test_steady_traffic_at_sigterm_does_not_hold_the_drain_for_the_whole_grace(world, tmp_path):
    """Clients that keep their connection and keep calling never leave the server the 0.1 s
    without a call that the drain waited for: every stop under traffic took the whole grace,
    and those clients were refused all along. Once nothing is in flight the drain ends, and
    gRPC's stop tells them to go elsewhere."""
    port_file = tmp_path / "port"
    argv = serving_argv(world, "--port", "0", "--feed-processes", "0", "--port-file", str(port_file), "--log-level", "warning")
    with started(argv) as process:
        wait_for_file(port_file, process)
        target = f"127.0.0.1:{port_file.read_text()}"
        stopping = threading.Event()
        codes: list[grpc.StatusCode] = []

        def call_steadily(offset: int) -> None:
            with grpc.insecure_channel(target) as channel:
                stub = feed_pb2_grpc.FeedServiceStub(channel)
                for n in itertools.count(offset):
                    if stopping.is_set():
                        return
                    try:
                        stub.GetFeed(feed_pb2.GetFeedRequest(user_id=f"u{n % 100:05d}", limit=10), timeout=10)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as error:
                        codes.append(error.code())
                    time.sleep(0.005)

        callers = [threading.Thread(target=call_steadily, args=(offset,)) for offset in range(0, 100, 25)]
        for caller in callers:
            caller.start()
        try:
            deadline = time.monotonic() + 30
            while codes.count(grpc.StatusCode.OK) < 20:
                assert time.monotonic() < deadline and process.poll() is None, codes[-5:]
                time.sleep(0.05)
            started_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=EXIT_SECONDS)
            stopped_within = time.monotonic() - started_at
        finally:
            stopping.set()
            for caller in callers:
                caller.join()
    assert process.returncode == 0
    assert stopped_within < SHUTDOWN_GRACE_SECONDS / 2, stopped_within


def _feed_process_pids(server_pid: int) -> list[int]:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in cmdline(int(pid)) and b"resource_tracker" not in cmdline(int(pid))]


def test_a_process_killed_by_a_fatal_signal_leaves_its_python_stack_in_the_log(world, tmp_path):
    """A served model file truncated in place (knn.npz and user_neighbours.npy are
    memory-mapped) killed both feed processes, then the server process, with SIGBUS: the
    server logged the children's exit codes (-7) and nothing at all of its own death, nor
    of where either died (found by the chaos review)."""
    port_file = tmp_path / "port"
    with started(serving_argv(world, "--port", "0", "--feed-processes", "1", "--port-file", str(port_file))) as process:
        wait_for_file(port_file, process)
        (child,) = _feed_process_pids(process.pid)
        os.kill(child, signal.SIGBUS)
        seen: list[str] = []
        wait_for_line(process, f"a feed process (pid {child}) exited with code -7", seen)
        process.send_signal(signal.SIGBUS)
        _, rest = process.communicate(timeout=EXIT_SECONDS)
    log = "".join(seen) + rest
    assert process.returncode == -signal.SIGBUS
    assert log.count("Fatal Python error: Bus error") == 2, log
    assert 'File "' in log.split("Fatal Python error: Bus error")[-1], log  # the server's stack


SIGTERM_AFTER_FORK = r"""
import os, signal, sys, threading
from serving import server
from serving.config import ServerConfig

pids_file = sys.argv[1]


class Server:  # a worker that serves nothing: the test is of the signals around the forks
    port = 1

    def __init__(self, config):
        self.serving = threading.Event()

    def start(self):
        self.serving.set()

    def stop(self, grace=None):
        pass


real_fork = os.fork


def fork():  # SIGTERM to the parent the moment each worker is forked
    pid = real_fork()
    if pid:
        with open(pids_file, "a") as f:
            f.write(f"{pid}\n")
        os.kill(os.getpid(), signal.SIGTERM)
    return pid


server.FeedServer = Server
server.os.fork = fork
server.serve(ServerConfig(models_dir="m", store_url="redis://127.0.0.1:1", workers=2, port=0, token_secret=b"k" * 32))
print("stopped")
"""


def test_a_sigterm_right_after_a_worker_forks_stops_the_workers(tmp_path) -> None:
    """The parent installed its signal handlers only after forking the workers: a SIGTERM
    in that window killed it and left the workers serving, reparented to init."""
    pids_file = tmp_path / "pids"
    pids_file.touch()
    try:
        with open(tmp_path / "out", "w") as out:  # not pipes: workers left running would hold them open
            result = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_FORK, str(pids_file)], cwd=REPO,
                                    stdout=out, stderr=subprocess.STDOUT, timeout=EXIT_SECONDS)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(int(pid)) for pid in pids_file.read_text().split()):
            time.sleep(0.05)
        output = (tmp_path / "out").read_text()
        assert result.returncode == 0 and output.endswith("stopped\n"), (result.returncode, output[-2000:])
        assert not [pid for pid in pids_file.read_text().split() if alive(int(pid))]
    finally:
        for pid in pids_file.read_text().split():  # the workers this test started, should they run on
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


WORKER_OS_ERROR = r"""
import sys
from serving import server
from serving.config import ServerConfig


class Server:  # a worker whose start fails as one reading a file it may not read
    def __init__(self, config):
        pass

    def start(self):
        raise PermissionError(13, "Permission denied", "/srv/tls/server.key")

    def stop(self, grace=None):
        pass


server.FeedServer = Server
server.serve(ServerConfig(models_dir="m", store_url="redis://127.0.0.1:1", workers=2, port=0, token_secret=b"k" * 32))
"""


def test_an_os_error_that_stops_a_worker_is_one_line_naming_its_path(tmp_path) -> None:
    """A worker turned only BindError, FileNotFoundError and ValueError into one line: a
    PermissionError (or EIO) at its start was a traceback, as it was in serve() alone."""
    with open(tmp_path / "out", "w") as out:
        result = subprocess.run([sys.executable, "-c", WORKER_OS_ERROR], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                timeout=EXIT_SECONDS)
    output = (tmp_path / "out").read_text()
    assert result.returncode == 1, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    assert "worker 0: /srv/tls/server.key: Permission denied" in output, output[-2000:]
