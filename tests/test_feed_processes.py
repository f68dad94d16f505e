"""GetFeeds built in child processes (``--feed-processes``), over real gRPC and a real Redis
(and the memory store, which each child copies).

The end-to-end feed suite also runs against such servers, on Redis and on the memory
store (tests/test_redis_grpc_feed.py); here: the same pages as a server that
builds them itself, refusals and metrics that cross the process boundary intact, a child
that dies, and the flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.feed.v1 import feed_pb2
from serving import feed_processes
from serving.config import MEMORY_COPY_MAX_BYTES, ConfigError, ServerConfig, resolve_config
from serving.feed_processes import PROCESS_LOST
from serving.load import load_into_redis
from serving.page_token import EMPTY, PageTokenCodec
from serving.servicer import Refusal, Refused
from stores.events import Event, EventKind
from stores.redis import connect
from tests.conftest import REPO
from tests.feed_world import build_world, running_server
from tests.processes import alive, cmdline
from tests.test_config_logs import parse
from tests.test_error_details import violation
from tests.test_grpc_feed import event
from training.artifact import set_current

pytestmark = pytest.mark.redis

USERS = [f"u{n:05d}" for n in range(1, 40, 3)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"), users=150, sellers=20, items=600)


@pytest.fixture()
def redis_store(redis_url, world):
    client = connect(redis_url, socket_timeout=30.0)
    try:
        load_into_redis(client, world.dataset)
    finally:
        client.close()
    return redis_url


def first_pages(stub) -> dict[str, list[str]]:
    return {
        user: [item.item_id for item in stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=10), timeout=10).items]
        for user in USERS
    }


def test_feed_processes_serve_the_pages_the_server_process_builds(world, redis_store):
    with running_server(world, store_url=redis_store) as (_, stub):
        expected = first_pages(stub)
    with running_server(world, store_url=redis_store, feed_processes=2) as (server, stub):
        assert len(server.feed_processes.pids) == 2
        assert first_pages(stub) == expected
        # Many calls in flight on one channel: every one answered, by both children.
        with futures.ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(lambda user: stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=10), timeout=10), USERS * 4))
        assert [[item.item_id for item in page.items] for page in pages] == [expected[user] for user in USERS * 4]
    assert sum(1 for n in expected.values() if n) == len(USERS), "every user has a feed"


def test_a_refusal_and_the_feed_counts_cross_from_the_child_intact(world, redis_store):
    with running_server(world, store_url=redis_store, feed_processes=1) as (server, stub):
        with pytest.raises(grpc.RpcError) as error:
            stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=0), timeout=10)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert violation(error.value)[0] == "limit"
        response = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=10)
        registry = server.service.metrics.registry
        assert registry.get_sample_value("feedrank_requests_total", {"method": "GetFeed", "code": "INVALID_ARGUMENT"}) == 1
        assert registry.get_sample_value("feedrank_requests_total", {"method": "GetFeed", "code": "OK"}) == 1
        gathered = sum(
            sample.value for metric in registry.collect() if metric.name == "feedrank_candidates"
            for sample in metric.samples if sample.name == "feedrank_candidates_total"
        )
        assert gathered >= len(response.items) > 0


def test_a_killed_feed_process_costs_at_most_retryable_errors_and_is_replaced(world, redis_store, caplog):
    caplog.set_level("INFO", logger="feedrank.serving")
    with running_server(world, store_url=redis_store, feed_processes=2) as (server, stub):
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        before = server.feed_processes.pids
        killed = before[0]
        os.kill(killed, signal.SIGKILL)
        answered, refused = 0, 0
        deadline = time.monotonic() + 60
        while answered < 10:
            assert time.monotonic() < deadline, f"no feeds again after a feed process died ({refused} refused)"
            try:
                stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=30)
                answered += 1
            except grpc.RpcError as error:
                assert error.code() is grpc.StatusCode.UNAVAILABLE and error.details() == PROCESS_LOST.message
                refused += 1
                answered = 0
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        while len(server.feed_processes.pids) < 2:
            assert time.monotonic() < deadline, "no feed process took the killed one's place"
            time.sleep(0.1)
        assert killed not in server.feed_processes.pids
        # The log said "exited ...; starting another", and never whether one started (found by the chaos review).
        (replacement,) = set(server.feed_processes.pids) - set(before)
        while f"a feed process (pid {replacement}) took the place of pid {killed} in " not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        registry = server.service.metrics.registry
        assert registry.get_sample_value("feedrank_feed_process_exits_total") == 1
        assert registry.get_sample_value("feedrank_feed_processes") == 2
        assert registry.get_sample_value("feedrank_feed_queue") == 0



def test_a_stopped_feed_process_is_killed_and_replaced_and_its_calls_fail_retryably(world, redis_store, caplog, monkeypatch):
    """A child stopped (SIGSTOP) held its calls until the client's deadline, and those of a
    client without one for ever: nothing noticed it (found by the chaos review)."""
    monkeypatch.setattr(feed_processes, "STUCK_SECONDS", 1.0)
    caplog.set_level("INFO", logger="feedrank.serving")
    with running_server(world, store_url=redis_store, feed_processes=1) as (server, stub):
        (stopped,) = server.feed_processes.pids
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=20)  # before: DEADLINE_EXCEEDED after 20 s
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE and refused.value.details() == PROCESS_LOST.message
        assert time.monotonic() - started < 10
        assert f"a feed process (pid {stopped}) has held a call for " in caplog.text
        deadline = time.monotonic() + 60
        while server.feed_processes.pids in ([], [stopped]):
            assert time.monotonic() < deadline, "no feed process took the stopped one's place"
            time.sleep(0.1)
        assert stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=30).items

def test_every_feed_process_serves_a_newly_published_model_without_a_restart(world, redis_store, tmp_path):
    from tests.feed_world import FAST_TRAINING
    from training.artifact import publish
    from training.train import default_ranker_spec, train

    models = tmp_path / "models"
    shutil.copytree(world.models_dir, models)
    world_copy = type(world)(world.dataset, world.data_dir, models)
    with running_server(world_copy, store_url=redis_store, feed_processes=2, reload_seconds=0.2) as (_, stub):
        before = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=10).model_version
        model, _ = train(world.dataset, FAST_TRAINING)
        version = publish(str(models), model, {"params": {}, "metrics": {}, "ranker": default_ranker_spec()}).rsplit("/", 1)[-1]
        deadline, in_a_row = time.monotonic() + 30, 0
        with futures.ThreadPoolExecutor(8) as pool:
            while in_a_row < 5:  # eight calls at once keep both children busy: five rounds in a row mean both switched
                assert time.monotonic() < deadline, "the new model was not picked up by every feed process"
                served = set(pool.map(
                    lambda _: stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=10).model_version, range(8)
                ))
                in_a_row = in_a_row + 1 if served == {version} else 0
    assert before != version


def children_of(pid: int) -> list[int]:
    children = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return children


def wait_for_port_file(server: subprocess.Popen, port_file, log_file=None) -> None:
    deadline = time.monotonic() + 120
    while not port_file.exists():
        assert server.poll() is None and time.monotonic() < deadline, log_file.read_text() if log_file else "the server did not start"
        time.sleep(0.1)


def test_feed_processes_exit_when_their_server_is_killed_outright(world, redis_store, tmp_path):
    port_file = tmp_path / "port"
    argv = [sys.executable, "-m", "serving", "--models", str(world.models_dir), "--store", redis_store, "--port", "0",
            "--port-file", str(port_file), "--feed-processes", "2", "--reload-seconds", "0"]  # fmt: skip
    server = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port_file(server, port_file)
        children = [pid for pid in children_of(server.pid) if b"spawn_main" in cmdline(pid)]
        assert len(children) == 2
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, "the feed processes outlived their server"
        time.sleep(0.1)


def test_a_burst_of_sigterms_to_the_whole_process_group_stops_the_server_cleanly(world, redis_store, tmp_path):
    """As timeout(1) or a service manager sends it, more than once: the server drains and
    exits 0, and its children wait for it rather than die first."""
    port_file, log_file = tmp_path / "port", tmp_path / "server.log"
    argv = [sys.executable, "-m", "serving", "--models", str(world.models_dir), "--store", redis_store, "--port", "0",
            "--port-file", str(port_file), "--feed-processes", "2", "--reload-seconds", "0"]  # fmt: skip
    with open(log_file, "w") as log:
        server = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port_file(server, port_file, log_file)
        for _ in range(50):
            os.killpg(server.pid, signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log_file.read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    text = log_file.read_text()
    assert "shutting down" in text and "a feed process" not in text, text


def test_what_is_served_is_logged_once_by_the_server_not_once_per_feed_process(world, redis_store, tmp_path):
    """The pools a model is served on and each swap are the server's to say: its feed
    processes serve the same, and three copies of each line read as three servers."""
    from training.artifact import load_current, publish
    from training.train import default_ranker_spec

    models, port_file, log_file = tmp_path / "models", tmp_path / "port", tmp_path / "server.log"
    model = load_current(str(world.models_dir)).model
    manifest = {"params": {}, "metrics": {}, "ranker": default_ranker_spec(), "feed": {"neighbours": 30}}
    publish(str(models), model, manifest)
    argv = [sys.executable, "-m", "serving", "--models", str(models), "--store", redis_store, "--port", "0",
            "--port-file", str(port_file), "--feed-processes", "2", "--reload-seconds", "0.2",
            "--neighbours", "7"]  # fmt: skip
    with open(log_file, "w") as log:
        server = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port_file(server, port_file, log_file)
        publish(str(models), model, manifest)
        deadline = time.monotonic() + 30
        while "serving model" not in log_file.read_text():
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
        time.sleep(1.0)  # every feed process's watcher has polled since
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log_file.read_text()
    assert text.count("--neighbours: model 30, served 7") == 2, text  # at start, and at the swap
    assert text.count("serving model") == 2, text  # the start line, and the swap


def kill_a_feed_process_until_replaced(server) -> None:
    killed = server.feed_processes.pids[0]
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(server.feed_processes.pids) < 2 or killed in server.feed_processes.pids:
        assert time.monotonic() < deadline, "no feed process took the killed one's place"
        time.sleep(0.1)


def test_a_replaced_feed_process_has_every_event_ingested_before_and_after_it_started(world):
    """With the memory store a new child copies the server's store as it is then, and
    follows what comes after: nothing ingested before or after is missing from its feeds."""
    with running_server(world, feed_processes=2) as (server, stub):
        user = "u00004"

        def page() -> list[str]:
            return [item.item_id for item in stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=10), timeout=30).items]

        def sell_out(item_id: str) -> None:
            stub.Ingest(feed_pb2.IngestRequest(events=[event(stock_update=feed_pb2.StockUpdate(item_id=item_id, stock=0))]), timeout=10)

        sold_out = [page()[0]]
        sell_out(sold_out[0])
        kill_a_feed_process_until_replaced(server)
        served = []
        while len(served) < 2:  # the first calls may find the killed child
            with contextlib.suppress(grpc.RpcError):
                served.append(page())
        assert not any(sold_out[0] in served_page for served_page in served)
        sold_out.append(served[-1][0])
        sell_out(sold_out[1])
        with futures.ThreadPoolExecutor(8) as pool:  # calls at once: both children build some
            pages = list(pool.map(lambda _: page(), range(24)))
        assert not any(set(sold_out) & set(served_page) for served_page in pages)


@pytest.mark.parametrize("token_secret", [None, b"new-secret-0123456789abcdef"], ids=["random key", "rotated key"])
def test_page_tokens_issued_by_one_feed_process_are_accepted_by_every_other_and_by_a_replacement(world, token_secret):
    """Each child gets the server's config, so its page-token key: the random one of a server
    without FEEDRANK_TOKEN_SECRET (drawn before the children start), or the secret and the
    previous ones of a rotation. A child that replaces a dead one gets the same."""
    old_secret = b"old-secret-0123456789abcdef"
    with running_server(world, feed_processes=2, token_secret=token_secret, previous_token_secrets=(old_secret,)) as (server, stub):
        user = "u00004"
        issued = [stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=5), timeout=30).next_page_token for _ in range(4)]
        signed_before_the_rotation = PageTokenCodec(old_secret).encode(user, EMPTY)
        kill_a_feed_process_until_replaced(server)

        def next_page(token: str) -> grpc.StatusCode:
            while True:  # the first calls may find the killed child
                try:
                    stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=5, page_token=token), timeout=30)
                    return grpc.StatusCode.OK
                except grpc.RpcError as error:
                    if error.details() != PROCESS_LOST.message:
                        return error.code()

        with futures.ThreadPoolExecutor(8) as pool:  # calls at once: both children, the new one too, take some
            codes = list(pool.map(next_page, (issued + [signed_before_the_rotation]) * 4))
        assert codes == [grpc.StatusCode.OK] * len(codes)


def test_a_busy_child_takes_the_next_call_unless_events_wait_for_it(world):
    """With no child idle, a call is written to a busy child as the next it builds (its
    caches warm), but never ahead of the events that child has not had yet: a call that
    arrives after a stock change must not be built from the copy without it."""
    with running_server(world, feed_processes=1) as (server, stub):
        processes, service = server.feed_processes, server.service
        user = "u00004"
        request = feed_pb2.GetFeedRequest(user_id=user, limit=10)
        first = [item.item_id for item in stub.GetFeed(request, timeout=30).items]
        [child] = processes._children

        async def two_calls_at_once(sell_out_between: bool) -> tuple[list[str], int]:
            first_call = asyncio.ensure_future(processes.get_feed_response(service, request, time.time()))
            await asyncio.sleep(0)  # written to the idle child, which builds it for a millisecond or more
            if sell_out_between:  # as an Ingest does: applied, and queued for the busy child
                service.store.apply([Event("sold-out-while-busy", EventKind.STOCK_UPDATE, time.time(), item_id=first[0], stock=0)])
            second_call = asyncio.ensure_future(processes.get_feed_response(service, request, time.time()))
            await asyncio.sleep(0)
            held = len(child.calls)
            await first_call
            return [item.item_id for item in (await second_call).items], held

        def run(sell_out_between: bool) -> tuple[list[str], int]:
            return asyncio.run_coroutine_threadsafe(two_calls_at_once(sell_out_between), processes.loop).result(30)

        page, held = run(sell_out_between=False)
        assert held == 2, "the second call should have gone to the busy child"
        assert page == first
        page, held = run(sell_out_between=True)
        assert held == 1, "the second call went ahead of the events its child had not had"
        assert first[0] not in page and page


def test_a_call_whose_deadline_passed_before_its_child_got_to_it_is_refused_unbuilt(world):
    """A call written to a busy child waits for the feed it builds: if its deadline passes
    meanwhile nobody waits for it, and the child drops it. Before the fix the child knew no
    deadline and built every call it was given."""
    with running_server(world, feed_processes=1) as (server, stub):
        processes, service = server.feed_processes, server.service
        request = feed_pb2.GetFeedRequest(user_id="u00004", limit=10)
        stub.GetFeed(request, timeout=30)

        async def call(deadline: float | None) -> feed_pb2.GetFeedResponse:
            return await processes.get_feed_response(service, request, time.time(), deadline)

        def run(deadline: float | None) -> feed_pb2.GetFeedResponse:
            return asyncio.run_coroutine_threadsafe(call(deadline), processes.loop).result(30)

        with pytest.raises(Refused) as refused:
            run(deadline=time.time() - 0.001)
        assert refused.value.refusal.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert run(deadline=time.time() + 30).items and run(deadline=None).items


def test_feed_processes_exclude_workers():
    with pytest.raises(ConfigError, match="--feed-processes and --workers: choose one"):
        resolve_config(parse("--models", "m", "--store", "redis://127.0.0.1:1/0", "--feed-processes", "2", "--workers", "2"), {})
    config = resolve_config(parse("--models", "m", "--store", "redis://127.0.0.1:1/0", "--feed-processes", "3"), {})
    assert config.feed_processes == 3


def test_a_server_builds_its_feeds_in_one_more_process_than_cores_unless_told_otherwise():
    redis = ("--models", "m", "--store", "redis://127.0.0.1:1/0")
    cores = len(os.sched_getaffinity(0))
    assert resolve_config(parse(*redis), {}).feed_processes == cores + 1
    assert resolve_config(parse(*redis, "--feed-processes", "0"), {}).feed_processes == 0
    assert resolve_config(parse(*redis, "--workers", "3"), {}).feed_processes == 0
    assert resolve_config(parse("--models", "m", "--feed-processes", "2"), {}).feed_processes == 2


def test_a_memory_store_is_copied_into_feed_processes_by_default_only_while_its_files_are_small(tmp_path):
    cores = len(os.sched_getaffinity(0))
    data, state = tmp_path / "data", tmp_path / "state"
    (state / "snapshots").mkdir(parents=True)
    data.mkdir()
    (data / "likes.csv").write_bytes(b"user_id,item_id,ts\n" * 1000)
    memory = ("--models", "m", "--data", str(data))
    assert resolve_config(parse(*memory), {}).feed_processes == cores, "its feeds never wait on a store"
    with open(state / "snapshots" / "big", "wb") as big:  # sparse: its size, not its blocks, counts
        big.truncate(MEMORY_COPY_MAX_BYTES)
    assert resolve_config(parse(*memory), {}).feed_processes == cores, "the data dir alone is small"
    assert resolve_config(parse(*memory, "--state-dir", str(state)), {}).feed_processes == 0
    assert resolve_config(parse(*memory, "--state-dir", str(state), "--feed-processes", "2"), {}).feed_processes == 2


def test_the_transport_benchmark_reports_both_transports_in_every_round():
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_feed_ipc", "--calls", "20", "--rounds", "2"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(row[0], " ".join(row[1:-2])) for row in rows] == [
        (str(r), name) for r in (1, 2) for name in ("ProcessPoolExecutor", "pipe per child")
    ]
    assert all(float(row[-2]) > 0 and float(row[-1]) >= 0 for row in rows)


def test_a_feed_process_that_cannot_start_fails_the_start_with_its_reason(tmp_path, redis_url):
    from serving.config import ServerConfig
    from serving.feed_processes import FeedProcesses
    from serving.server import EventLoopThread

    events = EventLoopThread()
    config = ServerConfig(models_dir=str(tmp_path / "no-models"), store_url=redis_url, token_secret=b"k" * 32, reload_seconds=0)
    feed_processes = FeedProcesses(config, 2, events.loop)
    try:
        with pytest.raises(RuntimeError, match=r"a feed process \(pid \d+\) could not start: no published model"):
            feed_processes.start(timeout=60)
        assert feed_processes.pids == []
    finally:
        feed_processes.shutdown()
        events.close()


def test_with_no_feed_process_able_to_start_the_server_builds_the_feeds_itself(world, tmp_path, caplog):
    """A replacement child loads the model from disk: with CURRENT broken since the server
    loaded its own (or a pinned version deleted, an arms file broken), it cannot start, and
    every GetFeed failed until the file was fixed. The server holds the same service: it
    builds them itself meanwhile, and health stays SERVING."""
    models = tmp_path / "models"
    shutil.copytree(world.models_dir, models)
    world_copy = type(world)(world.dataset, world.data_dir, models)
    caplog.set_level("INFO", logger="feedrank.serving")
    with running_server(world_copy, feed_processes=1, reload_seconds=0) as (server, stub):
        request = feed_pb2.GetFeedRequest(user_id="u00001", limit=5)
        before = [item.item_id for item in stub.GetFeed(request, timeout=30).items]
        (models / "CURRENT").write_text("no-such-version\n")  # what a new child would load
        [killed] = server.feed_processes.pids
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while server.feed_processes.pids:
            assert time.monotonic() < deadline, "the dead child was not noticed"
            time.sleep(0.05)
        for _ in range(5):  # no child, and none can start: built by the server, the same feed
            assert [item.item_id for item in stub.GetFeed(request, timeout=30).items] == before
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        assert "no feed process is alive: the server process builds the GetFeeds" in caplog.text
        # Each try costs a Python start and an error line: tried 5 s apart, then 10 s, ...
        # (every 5 s for as long as the cause lasted, an outside review), until one starts.
        deadline = time.monotonic() + 60
        while len(retries := [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]) < 2:
            assert time.monotonic() < deadline, retries
            time.sleep(0.1)
        assert [retry.rsplit("; ", 1)[1] for retry in retries[:2]] == ["trying again in 5 s", "trying again in 10 s"]
        set_current(str(models), world.models_dir.joinpath("CURRENT").read_text().strip())
        while not server.feed_processes.pids:
            assert time.monotonic() < deadline, "no feed process started once CURRENT was fixed"
            time.sleep(0.1)


def test_a_feed_process_that_cannot_load_its_models_fails_before_the_store_is_copied_for_it(world, tmp_path):
    """A replacement child that could not load its models (an A/B arm's pinned version
    deleted since the server started) was sent a copy of the memory store first, taken
    under the store's lock: each retry, every 5 s, held up Ingest (1.1-1.4 s at 20k users,
    an outside review). It now fails before the store is copied, so also while Ingest holds the lock."""
    from serving.config import ServerConfig
    from serving.feed_processes import FeedProcesses, FeedProcessError
    from serving.server import EventLoopThread
    from stores.memory import MemoryStore

    arms = tmp_path / "arms.toml"
    arms.write_text('salt = "s"\n[[arm]]\nname = "retired"\nshare = 1.0\nmodel = "20260101T000000Z-gone00"\n')
    store = MemoryStore.from_dataset(world.dataset)
    events = EventLoopThread()
    config = ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), token_secret=b"k" * 32,
                          reload_seconds=0, arms_file=str(arms))
    feed_processes = FeedProcesses(config, 1, events.loop)
    try:
        with futures.ThreadPoolExecutor(1) as pool, store._lock:  # as an Ingest holds it
            starting = pool.submit(feed_processes.start, store, None, 60)
            with pytest.raises(FeedProcessError, match=r"could not start: .*arms.toml: line 5: arm 'retired': no model version '20260101T000000Z-gone00'"):
                starting.result(timeout=60)
    finally:
        feed_processes.shutdown()
        events.close()


def test_a_child_whose_feeds_fail_gets_no_calls_while_another_serves_but_a_probe_a_second(monkeypatch):
    """A child whose own store connection fails answers fast, so it is idle soonest; taking
    the idle child first, it drew most calls (574 of 761 on a Redis Cluster whose seed node
    it had started from was gone, while the other child served). The children here are the
    far ends of real pipes, answering as a feed process does."""
    monkeypatch.setattr(feed_processes, "FAILING_PROBE_SECONDS", 0.2)
    loop = asyncio.new_event_loop()
    processes = feed_processes.FeedProcesses(ServerConfig(models_dir="unused"), 2, loop)
    service = SimpleNamespace(metrics=SimpleNamespace(observe_feed=lambda gathered, removed: None))
    ok = feed_pb2.GetFeedResponse(model_version="v1").SerializeToString()
    failed = Refusal(grpc.StatusCode.UNAVAILABLE, "store unavailable")
    bug = Refusal(grpc.StatusCode.INTERNAL, "internal error")
    healthy_answer = [(ok, None, {}, {})]
    ends = {}
    for name in ("broken", "healthy"):
        ours, theirs = multiprocessing.Pipe()
        ends[name] = (feed_processes._Child(SimpleNamespace(pid=0), ours), theirs)

    async def calls(count: int) -> list[str]:
        """``count`` GetFeeds at once; the name of the child each went to, in the order
        sent (each child's end answers its calls as a feed process would)."""
        answers = [asyncio.ensure_future(processes.get_feed_response(service, feed_pb2.GetFeedRequest(user_id="u1"), time.time()))
                   for _ in range(count)]
        await asyncio.sleep(0)
        taken = []
        for name, (_, end) in ends.items():
            while end.poll():
                end.recv_bytes()
                taken.append(name)
                end.send_bytes(pickle.dumps((None, failed, {}, {}) if name == "broken" else healthy_answer[0]))
        for answer in answers:
            with contextlib.suppress(Refused):
                await answer
        return sorted(taken)

    async def scenario() -> list[list[str]]:
        for child, _ in ends.values():
            processes._adopt(child)
        rounds = [await calls(1)]  # the broken child is idle first, and fails
        rounds += [await calls(2) for _ in range(10)]  # both calls to the healthy one (the second as its next)
        await asyncio.sleep(0.25)
        rounds.append(await calls(2))  # the healthy one busy: the broken one gets a probe
        rounds.append(await calls(2))  # failed again: none for another period
        healthy_answer[0] = (None, bug, {}, {})
        rounds.append(await calls(1))  # a bug one request met: no reason to leave the child out
        healthy_answer[0] = (ok, None, {}, {})
        rounds.append(await calls(2))
        return rounds

    try:
        rounds = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert rounds[0] == ["broken"]
    assert rounds[1:11] == [["healthy", "healthy"]] * 10, rounds
    assert rounds[11:13] == [["broken", "healthy"], ["healthy", "healthy"]], rounds
    assert rounds[13:] == [["healthy"], ["healthy", "healthy"]], rounds



class _PausingFollowers(tuple):
    """Followers whose iteration on ``pausing_thread`` waits (up to a second) for
    ``resume``: it holds an unfollow between reading the followers and writing them back."""

    def __iter__(self):
        if threading.current_thread() is self.pausing_thread:
            self.paused.set()
            self.resume.wait(1.0)
        return super().__iter__()


def test_a_child_that_starts_to_follow_while_another_is_unfollowed_is_not_dropped():
    """A child that replaces a dead one starts to follow the store (under its lock, on the
    thread that starts the child) while the loop, or another starting thread, drops a child
    that died. Both wrote back the followers they had read: with the drop written last, the
    new child was left out, and its feeds missed every event ingested from then on."""
    processes = feed_processes.FeedProcesses(ServerConfig(models_dir="unused"), 2, asyncio.new_event_loop())
    kept, dead, new = (feed_processes._Child(SimpleNamespace(pid=pid), None) for pid in range(3))
    followers = _PausingFollowers((kept, dead))
    followers.paused, followers.resume = threading.Event(), threading.Event()
    processes._followers = followers
    unfollowing = threading.Thread(target=processes._unfollow, args=(dead,))
    followers.pausing_thread = unfollowing
    unfollowing.start()
    assert followers.paused.wait(10)

    def follow() -> None:
        processes._follow([new])
        followers.resume.set()

    following = threading.Thread(target=follow)
    following.start()
    unfollowing.join(10)
    following.join(10)
    assert processes._followers == (kept, new)


def test_a_call_that_waits_goes_to_the_child_left_when_the_busy_one_dies(monkeypatch):
    """A call waits while the only healthy child is busy and the other failed its last feed.
    When the busy child dies, the one left may take it (its store is as good as any now):
    before the fix nothing handed it over until another call came or a new child was
    ready, which with models that no longer load is never."""
    loop = asyncio.new_event_loop()
    processes = feed_processes.FeedProcesses(ServerConfig(models_dir="unused"), 2, loop)
    monkeypatch.setattr(processes, "_replace", lambda lost: None)  # no new child: the one left must do
    service = SimpleNamespace(metrics=SimpleNamespace(observe_feed=lambda gathered, removed: None))
    ok = (feed_pb2.GetFeedResponse(model_version="v1").SerializeToString(), None, {}, {})
    failed = (None, Refusal(grpc.StatusCode.UNAVAILABLE, "store unavailable"), {}, {})
    ends = {}
    for name in ("failing", "busy"):
        ours, theirs = multiprocessing.Pipe()
        ends[name] = (feed_processes._Child(SimpleNamespace(pid=0), ours), theirs)
    failing, busy = ends["failing"][1], ends["busy"][1]

    def get_feed() -> asyncio.Future:
        return asyncio.ensure_future(processes.get_feed_response(service, feed_pb2.GetFeedRequest(user_id="u1"), time.time()))

    async def scenario() -> feed_pb2.GetFeedResponse:
        for child, _ in ends.values():
            processes._adopt(child)
        first = get_feed()
        await asyncio.sleep(0)
        failing.recv_bytes()
        failing.send_bytes(pickle.dumps(failed))
        with contextlib.suppress(Refused):
            await first
        calls = [get_feed() for _ in range(3)]
        await asyncio.sleep(0)
        assert busy.poll() and not failing.poll(), "the failing child should get no call while the other serves"
        busy.close()  # the busy child dies with its two calls
        for call in calls[:2]:
            with pytest.raises(Refused):
                await call
        await asyncio.sleep(0.1)
        assert failing.poll(), "the waiting call was not handed to the child left"
        failing.recv_bytes()
        failing.send_bytes(pickle.dumps(ok))
        return await calls[2]

    try:
        assert loop.run_until_complete(asyncio.wait_for(scenario(), 10)).model_version == "v1"
    finally:
        loop.close()


class _ExitingChild:
    """A child's process and pipe as shutdown sees them: it exits ``seconds`` after its pipe closes."""

    def __init__(self, pid: int, seconds: float) -> None:
        self.pid, self.seconds, self.closed_at = pid, seconds, None

    def close(self) -> None:
        self.closed_at = self.closed_at or time.monotonic()

    def is_alive(self) -> bool:
        return self.closed_at is None or time.monotonic() < self.closed_at + self.seconds

    def join(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else 60)
        while self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)

    def kill(self) -> None:
        raise AssertionError("killed a child that was exiting")


def test_shutdown_lets_every_feed_process_exit_at_once_not_one_after_the_other():
    """Each feed process exits when its pipe closes, about 0.1 s of interpreter teardown:
    shutdown closed one pipe, waited for that child, then the next, so a server with N feed
    processes spent N times that in its stop."""
    processes = feed_processes.FeedProcesses(ServerConfig(models_dir="unused"), 4, asyncio.new_event_loop())
    children = [_ExitingChild(pid, seconds=0.2) for pid in range(4)]
    processes._children = [feed_processes._Child(child, child) for child in children]
    started = time.monotonic()
    processes.shutdown()
    assert time.monotonic() - started < 0.4  # one child's exit, not four
    assert not any(child.is_alive() for child in children) and processes._children == []
