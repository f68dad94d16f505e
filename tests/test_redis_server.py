"""Server processes on Redis: read-your-writes across processes, outage and recovery,
SIGKILL during ingest, and the load -> ingest -> export -> train round trip via the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path

import grpc
import redis
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.load import LoadStats, _commands, load_into_redis, load_probes, load_summary
from stores.redis import RedisStore
from stores.redis_keys import Keys
from stores.memory import MemoryStore
from tests import store_views as views
from tests.builders import NOW, edges, make_dataset, social_dataset
from tests.conftest import REPO
from tests.processes import interrupted_once_begun
from tests.redis_servers import RedisServer, free_port
from tests.test_auth_tls import make_server_pki
from tests.test_redis_store import readme_acl_user
from training.dataset import load_dataset, write_dataset
from training.generate import generate
from training.train import TrainParams, train_and_publish

pytestmark = pytest.mark.redis

SECRET = "redis-server-tests-secret"
_ids = itertools.count()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_dataset(social_dataset(), str(root / "data"))
    train_and_publish(str(root / "data"), str(root / "models"), TrainParams(factors=8, iterations=4, show_progress=False))
    return root / "models"


class ServerProcess:
    """`python -m serving --store URL` in a subprocess, on a free port."""

    def __init__(self, store_url: str, models: Path, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port_file = workdir / f"port-{next(_ids)}"
        self.log = open(workdir / f"server-{next(_ids)}.log", "w")
        argv = [sys.executable, "-m", "serving", "--store", store_url, "--models", str(models),
                "--port", "0", "--port-file", str(self.port_file), "--reload-seconds", "0", *extra_args]  # fmt: skip
        env = dict(os.environ, FEEDRANK_TOKEN_SECRET=SECRET)
        self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {(workdir / self.log.name).read_text()[-3000:]}")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{self.port_file.read_text().strip()}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = feed_pb2_grpc.FeedServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def status(self) -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status

    def wait_status(self, status: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.status() != status:
            assert time.monotonic() < deadline, f"health never became {status}"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if hasattr(self, "channel"):
            self.channel.close()
        self.log.close()


@pytest.fixture
def servers(tmp_path):
    started: list[ServerProcess] = []

    def start(url: str, models: Path, *extra_args: str) -> ServerProcess:
        server = ServerProcess(url, models, tmp_path / "servers", extra_args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


def feed_ids(stub, user: str, limit: int = 50, token: str = "") -> tuple[list[str], str]:
    response = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=limit, page_token=token), timeout=5)
    return [i.item_id for i in response.items], response.next_page_token


def load(url: str) -> None:
    store = RedisStore.from_url(url, socket_timeout=5.0)
    load_into_redis(store.client, social_dataset())
    store.close()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_a_write_through_one_server_is_read_by_the_other_in_the_next_request(request, kind, models, servers):
    url = request.getfixturevalue("redis_url" if kind == "redis" else "redis_cluster_url")
    load(url)
    a, b = servers(url, models), servers(url, models)
    for n in range(5):
        item = f"fresh-{n}"
        a.stub.Ingest(feed_pb2.IngestRequest(events=[
            feed_pb2.Event(event_id=f"rw-{n}-1", item_upsert=feed_pb2.ItemUpsert(item_id=item, seller_id=f"shop-{n}", stock=1)),
            feed_pb2.Event(event_id=f"rw-{n}-2", like=feed_pb2.UserItem(user_id="bob", item_id=item)),
        ]), timeout=5)  # fmt: skip
        # A friend's like of a new shop's item: the seller cap cannot push it off the page.
        assert item in feed_ids(b.stub, "alice")[0]  # the very next GetFeed, on the other process
        b.stub.Ingest(feed_pb2.IngestRequest(events=[
            feed_pb2.Event(event_id=f"rw-{n}-3", stock_update=feed_pb2.StockUpdate(item_id=item, stock=0)),
        ]), timeout=5)  # fmt: skip
        assert item not in feed_ids(a.stub, "alice")[0]
    # Page tokens made by one process are honoured by the other (same FEEDRANK_TOKEN_SECRET).
    first, token = feed_ids(a.stub, "alice", limit=2)
    second, _ = feed_ids(b.stub, "alice", limit=2, token=token)
    assert token and not set(first) & set(second)
    # Their feed processes copied every item, some cards and every timeline at start (a cluster keeps no
    # copy), and the reads above still saw every write.
    for server in (a, b):
        copied = re.search(r"copied \d+ items' columns, [1-9]\d* cards and [1-9]\d* timelines from Redis", Path(server.log.name).read_text())
        assert bool(copied) == (kind == "redis")


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=True)
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_redis_that_asks_a_password_the_url_does_not_give_says_so_for_the_server_and_load(own_redis, models, tmp_path):
    """redis-py's words were about HELLO, a command the operator never ran, and load called such a Redis unreachable."""
    with own_redis.client() as admin:
        admin.config_set("requirepass", "s3cret")
    says = "Redis requires a password and this URL gives none: redis://[USER]:PASSWORD@HOST:PORT/DB (or ?password=...)\n"
    write_dataset(social_dataset(), str(tmp_path / "data"))
    load = [sys.executable, "-m", "serving", "load", "--data", str(tmp_path / "data"), "--redis", own_redis.url]
    loaded = subprocess.run(load, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 1 and loaded.stderr == f"error: --redis {own_redis.url}: {says}"
    serve = [sys.executable, "-m", "serving", "--store", own_redis.url, "--models", str(models), "--port", "0"]
    refused = subprocess.run(serve, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and refused.stderr.endswith(f"error: --store {own_redis.url}: {says}"), refused.stderr
    with_password = own_redis.url.replace("redis://", "redis://:s3cret@")
    subprocess.run([*load[:-1], with_password], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)


def test_redis_outage_is_unavailable_within_the_deadline_and_the_server_recovers(own_redis, models, servers):
    load(own_redis.url)
    server = servers(own_redis.url, models)
    assert server.status() == health_pb2.HealthCheckResponse.SERVING
    assert feed_ids(server.stub, "alice")[0]
    for outage in ("frozen", "dead"):
        if outage == "frozen":
            own_redis.pause()
        else:
            own_redis.kill()
        for call in (
            lambda: server.stub.GetFeed(feed_pb2.GetFeedRequest(user_id="alice", limit=10), timeout=2),
            lambda: server.stub.Ingest(feed_pb2.IngestRequest(events=[
                feed_pb2.Event(event_id=f"o-{next(_ids)}", follow=feed_pb2.UserSeller(user_id="x", seller_id="y"))]), timeout=2),
        ):  # fmt: skip
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() is grpc.StatusCode.UNAVAILABLE, error.value.details()
            assert time.monotonic() - started < 2.0
        server.wait_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        if outage == "frozen":
            own_redis.resume()
        else:
            own_redis.start()  # same port and directory: the AOF brings the data back
        server.wait_status(health_pb2.HealthCheckResponse.SERVING)
        assert feed_ids(server.stub, "alice")[0]


def test_a_redis_out_of_memory_refuses_ingest_as_resource_exhausted_and_keeps_serving_feeds(tmp_path, models, servers):
    """A Redis at maxmemory (noeviction) answered each Ingest INTERNAL "internal error",
    with a traceback in the server's log per batch (found by filling one in a review)."""
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    try:
        load(redis_server.url)
        server = servers(redis_server.url, models, "--feed-processes", "0")
        with redis_server.client() as admin:
            admin.config_set("maxmemory", 1)  # every write refused, every read served
            ingest = feed_pb2.IngestRequest(events=[feed_pb2.Event(event_id="full-1", follow=feed_pb2.UserSeller(user_id="x", seller_id="y"))])
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as error:
                    server.stub.Ingest(ingest, timeout=5)
                assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert error.value.details().startswith("store out of memory")
            assert feed_ids(server.stub, "alice")[0]
            assert server.status() == health_pb2.HealthCheckResponse.SERVING
            write_dataset(social_dataset(), str(tmp_path / "data"))
            argv = [sys.executable, "-m", "serving", "load", "--data", str(tmp_path / "data"), "--redis", redis_server.url]
            loaded = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
            assert loaded.returncode == 1 and loaded.stderr.startswith(f"error: --redis {redis_server.url}: Redis is out of memory"), loaded.stderr
            admin.config_set("maxmemory", 0)
        assert server.stub.Ingest(ingest, timeout=5).applied == 1
        log = Path(server.log.name).read_text()
        assert re.search(r"ERROR .*Ingest: store out of memory: writes are refused until Redis has room.*maxmemory", log), log
        assert "Traceback" not in log
    finally:
        redis_server.stop()


def test_a_redis_that_may_evict_feed_state_is_warned_about_by_the_server_and_by_load(tmp_path, models, servers):
    """Nothing read maxmemory-policy: on allkeys-lru a full Redis evicts stock and likes
    silently, and a sold-out item came back (a review)."""
    redis_server = RedisServer(tmp_path / "redis", extra=["--maxmemory-policy", "allkeys-lru"])
    redis_server.start()
    try:
        write_dataset(social_dataset(), str(tmp_path / "data"))
        argv = [sys.executable, "-m", "serving", "load", "--data", str(tmp_path / "data"), "--redis", redis_server.url]
        loaded = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
        warning = f"--redis {redis_server.url}: Redis 127.0.0.1:{redis_server.port} has maxmemory-policy allkeys-lru: "
        assert loaded.stderr.startswith(f"warning: {warning}") and "set maxmemory-policy noeviction" in loaded.stderr
        server = servers(redis_server.url, models, "--feed-processes", "0")
        assert feed_ids(server.stub, "alice")[0]  # it warns, and serves
        log = Path(server.log.name).read_text()
        assert re.search(r"WARNING .*--store \S+: Redis 127\.0\.0\.1:\d+ has maxmemory-policy allkeys-lru: .*noeviction", log), log
    finally:
        redis_server.stop()


@contextlib.contextmanager
def acl_user(redis_server: RedisServer, redis_url: str, *rules: str) -> Iterator[str]:
    """A Redis ACL user "reader" (password "pw") with only ``rules``, for the block: ``redis_url`` as that user."""
    with redis_server.client() as admin:
        admin.execute_command("ACL", "SETUSER", "reader", "reset", "on", ">pw", *rules)
    try:
        yield redis_url.replace("redis://", "redis://reader:pw@")
    finally:
        with redis_server.client() as admin:
            admin.acl_deluser("reader")


def test_a_redis_user_that_may_read_but_not_write_stops_the_start_in_one_line_naming_what_it_may_not(redis_url, redis_server, models):
    """An ACL user allowed reads and scripts but not writes started a server SERVING whose
    first Ingest answered INTERNAL "internal error" (a review)."""
    with acl_user(redis_server, redis_url, "~*", "&*", "+@read", "+@scripting", "+@connection", "+info", "-@write") as url:
        argv = [sys.executable, "-m", "serving", "--store", url, "--models", str(models), "--port", "0", "--feed-processes", "0"]
        refused = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1, refused.stderr
    shown = url.replace(":pw@", ":***@")
    line = refused.stderr.splitlines()[-1]
    assert line.startswith(f"error: --store {shown}: Redis 127.0.0.1:{redis_server.port}: the ACL user may not run HSET on fr:{{i:*}}, "), line
    assert "XADD on fr:{log}:events" in line and line.endswith(", which feeds and Ingest run") and "Traceback" not in refused.stderr


def test_an_ingest_redis_refuses_by_its_acl_is_failed_precondition_naming_the_permission(tmp_path, models, servers):
    """A write the ACL user may not make (its permission revoked under a running server)
    answered INTERNAL "internal error", with a traceback per batch: the client did nothing
    wrong, and a retry fails alike until an operator grants it."""
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    try:
        load(redis_server.url)
        with redis_server.client() as admin:
            admin.execute_command("ACL", "SETUSER", "writer", "on", ">pw", "~*", "&*", "+@all")
            server = servers(redis_server.url.replace("redis://", "redis://writer:pw@"), models, "--feed-processes", "0")
            admin.execute_command("ACL", "SETUSER", "writer", "-xadd")
            ingest = feed_pb2.IngestRequest(events=[feed_pb2.Event(event_id="acl-1", follow=feed_pb2.UserSeller(user_id="x", seller_id="y"))])
            with pytest.raises(grpc.RpcError) as error:
                server.stub.Ingest(ingest, timeout=5)
            assert error.value.code() is grpc.StatusCode.FAILED_PRECONDITION, error.value.details()
            assert error.value.details() == ("the store refuses this server a permission it needs (an operator must grant it; until "
                                             "then a retry fails alike): the ACL user may not run XADD on fr:{log}:events")  # fmt: skip
            assert feed_ids(server.stub, "alice")[0]  # feeds need no XADD
            admin.execute_command("ACL", "SETUSER", "writer", "+xadd")
        assert server.stub.Ingest(ingest, timeout=5).applied == 1
        log = Path(server.log.name).read_text()
        assert re.search(r"ERROR .*Ingest: store refuses this server a permission: .*"
                         rf"Redis 127\.0\.0\.1:{redis_server.port}: the ACL user may not run XADD on fr:\{{log\}}:events", log), log
        assert "Traceback" not in log
    finally:
        redis_server.stop()


def test_load_by_a_user_that_may_not_write_says_so_not_that_redis_is_unreachable(tmp_path, redis_url, redis_server):
    """This user may not run EVAL either, so its permissions cannot be asked before the load: it is warned."""
    write_dataset(social_dataset(), str(tmp_path / "data"))
    with acl_user(redis_server, redis_url, "~*", "+@read", "+@connection", "+info", "+multi", "+exec") as url:
        argv = [sys.executable, "-m", "serving", "load", "--data", str(tmp_path / "data"), "--redis", url]
        loaded = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert loaded.returncode == 1, loaded.stderr
    shown = url.replace(":pw@", ":***@")
    warning, error = loaded.stderr.splitlines()
    assert warning.startswith(f"warning: --redis {shown}: could not ask Redis whether this user may write all a load writes ("), warning
    assert "'eval' command" in warning and warning.endswith("; grant +eval): a permission refused part-way leaves a partial load")
    assert error.startswith(f"error: --redis {shown}: Redis refuses this user a permission: "), error
    assert "no permissions to run the 'hset' command" in error


def test_load_by_a_user_that_may_not_run_one_of_its_commands_writes_nothing_and_names_it(tmp_path, redis_url, redis_server):
    """The README's user without SADD, which a load runs late (follows, friends): the batches
    before it were written, then the load stopped with Redis's words, a partial load (a review)."""
    write_dataset(social_dataset(), str(tmp_path / "data"))
    with redis_server.client() as admin:
        user = readme_acl_user(admin, "pw")
        admin.execute_command("ACL", "SETUSER", user, "+multi", "+exec", "-sadd")
        try:
            url = redis_url.replace("redis://", f"redis://{user}:pw@")
            argv = [sys.executable, "-m", "serving", "load", "--data", str(tmp_path / "data"), "--redis", url, "--batch", "1"]
            refused = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
            assert refused.returncode == 1, refused.stderr
            assert admin.dbsize() == 0, "a partial load"
            assert refused.stderr == (f"error: --redis {url.replace(':pw@', ':***@')}: Redis refuses this user a permission: "
                                      f"Redis 127.0.0.1:{redis_server.port}: the ACL user may not run SADD on fr:{{u:*}}:follows, "
                                      "fr:{u:*}:friends, fr:{u:*}:hidden_items, fr:{u:*}:hidden_sellers, which a load writes\n")  # fmt: skip
            admin.execute_command("ACL", "SETUSER", user, "+sadd")  # the user README.md documents for a load
            subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
            assert admin.smembers("fr:{u:alice}:follows") == {"s1"}
        finally:
            admin.acl_deluser(user)


def test_a_load_interrupted_by_ctrl_c_says_in_one_line_that_redis_holds_part_of_it(tmp_path, redis_url, redis_server):
    """Ctrl-C part-way printed a traceback through the dataset code, saying neither that
    Redis now held a partial load nor that running it again completes it."""
    write_dataset(generate(users=300, sellers=30, items=1000, seed=1), str(tmp_path / "data"))
    argv = [sys.executable, "-m", "serving", "load", "--data", str(tmp_path / "data"), "--redis", redis_url, "--batch", "1", "--no-progress"]
    with redis_server.client() as admin:
        # One command per round trip: once a key is there, the load has begun, far from its end.
        status, stderr = interrupted_once_begun(argv, lambda: admin.dbsize() > 0)
        assert status == 130, stderr
        assert stderr == (f"error: --redis {redis_url}: load interrupted part-way: Redis holds part of the dataset; "
                          "run the same load again to complete it\n")
        partial = admin.dbsize()
        subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
        assert admin.dbsize() > partial


def test_a_repack_interrupted_by_ctrl_c_says_in_one_line_what_it_left_and_what_to_do(redis_url, redis_server):
    """Ctrl-C part-way printed a traceback through the store's code, not that running it again finishes."""
    with redis_server.client() as admin:
        store = RedisStore.from_url(redis_url, socket_timeout=5.0)
        load_into_redis(store.client, generate(users=100, sellers=20, items=3000, seed=1))
        store.close()
        admin.config_resetstat()
        argv = [sys.executable, "-m", "serving", "repack", "--redis", redis_url, "--batch", "1", "--no-progress"]
        # One item per script call: once a script ran, the repack has begun, far from its end.
        status, stderr = interrupted_once_begun(
            argv, lambda: any(name in admin.info("commandstats") for name in ("cmdstat_evalsha", "cmdstat_eval")))
    assert status == 130, stderr
    assert stderr == (f"error: --redis {redis_url}: repack interrupted part-way: the items done are repacked, the others "
                      "are read field by field until their next write; the sellers' listings not rebuilt yet are as "
                      "they were; run it again to finish\n")


def test_a_loads_last_line_counts_every_table_it_loaded():
    # It said "loaded 57713 rows" of a dataset whose files held 171,090: its rate counts
    # items, likes, follows and friendships only, and the engagements went unmentioned.
    dataset = generate(users=60, sellers=10, items=200, seed=1)
    line = load_summary(dataset, LoadStats(rows=123, commands=45, seconds=0.5), read_seconds=0.1)
    assert line.startswith(f"loaded {len(dataset.items)} items, {len(dataset.likes)} likes, {len(dataset.follows)} follows, "
                           f"{len(dataset.friends)} friendships, {len(dataset.engagements)} engagements, 1 vacation (45 commands) in 0.50 s: "), line
    assert len(dataset.sellers) == 1  # sellers.csv: the one seller generate sends on vacation at this size
    assert "246 rows/s of items, likes, follows and friendships" in line


def test_a_loads_last_line_counts_only_the_sellers_on_vacation():
    # sellers.csv's empty vacation_until is a seller not away: the load writes no vacation
    # for it, and its last line said "2 vacations" for one.
    import numpy as np

    from training.dataset import Sellers

    dataset = dataclasses.replace(make_dataset([("i1", "s1", NOW, 1)]), sellers=Sellers(["s1", "s2"], np.array([np.nan, np.inf])))
    line = load_summary(dataset, LoadStats(rows=1, commands=3, seconds=0.5), read_seconds=0.1)
    assert ", 1 vacation (3 commands)" in line, line


def test_every_command_a_load_runs_is_asked_about_before_it_writes():
    """check_write_access asks about load_probes: a command, or a kind of key, a load writes
    that no probe names would again be found refused part-way through a load."""
    dataset = generate(users=60, sellers=10, items=200, seed=1)
    dataset = dataclasses.replace(dataset, hidden_items=edges([("u00001", "i000001", NOW)]), hidden_sellers=edges([("u00001", "u00002", NOW)]))
    keys = Keys()
    run = {(method.upper(), args[0]) for _, method, args in _commands(dataset, keys, 3, 3, packed_items=True)}
    probes = load_probes(keys, cluster=False)
    unasked = {(command, key) for command, key in run if not any(p[0] == command and fnmatchcase(key, p[1]) for p in probes)}
    assert not unasked
    assert {"ZADD", "ZREMRANGEBYRANK", "HSET", "SADD", "INCR"} <= {command for command, _ in run}


def test_rediss_serves_with_the_ca_given_and_a_certificate_that_does_not_verify_stops_the_start(tmp_path, models, servers):
    """rediss:// without the CA that signed Redis's certificate started a server NOT_SERVING
    for ever, its log calling Redis unavailable (a review)."""
    pki = make_server_pki(tmp_path)
    tls_port = free_port()
    redis_server = RedisServer(tmp_path / "redis", extra=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(pki / "server.pem"), "--tls-key-file", str(pki / "server.key"),
        "--tls-ca-cert-file", str(pki / "server-ca.pem"), "--tls-auth-clients", "no"])  # fmt: skip
    redis_server.start()
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0"
        argv = [sys.executable, "-m", "serving", "--store", url, "--models", str(models), "--port", "0", "--feed-processes", "0"]
        refused = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.splitlines()[-1].startswith(f"error: --store {url}: TLS: certificate verify failed"), refused.stderr
        assert "ssl_ca_certs=PATH" in refused.stderr
        trusted = f"{url}?ssl_ca_certs={pki / 'server-ca.pem'}"
        load(trusted)
        assert feed_ids(servers(trusted, models, "--feed-processes", "0").stub, "alice")[0]
    finally:
        redis_server.stop()


def test_a_server_started_while_redis_is_busy_in_a_script_comes_up_when_it_is_done(tmp_path, models, servers):
    """Redis answering BUSY (a long script) at start was taken for a refusal for good: the
    server exited "error: --store ...: BUSY Redis is busy running a script" (a review)."""
    redis_server = RedisServer(tmp_path / "redis", extra=["--busy-reply-threshold", "50"])
    redis_server.start()
    try:
        load(redis_server.url)

        def run_until_killed() -> None:
            with redis_server.client() as client, contextlib.suppress(redis.ResponseError):
                client.eval("while true do end", 0)

        def answers_busy(admin: redis.Redis) -> bool:
            try:
                admin.ping()
            except redis.ResponseError as error:
                return str(error).startswith("BUSY")
            return False

        busy = threading.Thread(target=run_until_killed)
        busy.start()
        with redis_server.client() as admin:
            deadline = time.monotonic() + 10
            while not answers_busy(admin):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            started: list[ServerProcess] = []
            starting = threading.Thread(target=lambda: started.append(servers(redis_server.url, models, "--feed-processes", "0")))
            starting.start()  # it writes its port file once health is SERVING
            while not any("waiting for health SERVING" in log.read_text() for log in (tmp_path / "servers").glob("server-*.log")):
                assert starting.is_alive() and time.monotonic() < deadline + 60
                time.sleep(0.05)
            admin.script_kill()
        busy.join(10)
        starting.join(60)
        assert started and feed_ids(started[0].stub, "alice")[0]
    finally:
        redis_server.stop()


def test_every_acknowledged_event_survives_sigkill_of_the_server_and_of_redis(own_redis, models, servers):
    load(own_redis.url)
    server = servers(own_redis.url, models)
    acked: list[str] = []
    stop = threading.Event()

    def ingest_forever(worker: int) -> None:
        stub = feed_pb2_grpc.FeedServiceStub(grpc.insecure_channel(server.target))
        for n in itertools.count():
            if stop.is_set():
                return
            ids = [f"k{worker}-{n}-{j}" for j in range(3)]
            try:
                stub.Ingest(feed_pb2.IngestRequest(events=[
                    feed_pb2.Event(event_id=ids[0], follow=feed_pb2.UserSeller(user_id=f"w{worker}", seller_id=f"s{n}")),
                    feed_pb2.Event(event_id=ids[1], item_upsert=feed_pb2.ItemUpsert(item_id=f"k{worker}-{n}", seller_id="s1", stock=1)),
                    feed_pb2.Event(event_id=ids[2], like=feed_pb2.UserItem(user_id=f"w{worker}", item_id=f"k{worker}-{n}")),
                ]), timeout=5)  # fmt: skip
            except grpc.RpcError:
                return  # the server is gone: this batch was never acknowledged
            acked.extend(ids)

    threads = [threading.Thread(target=ingest_forever, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.stop(signal.SIGKILL)  # in the middle of the stream of Ingest calls
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acked) >= 300

    def check() -> None:
        client = own_redis.client()
        keys = Keys()
        logged = {fields["event_id"] for _, fields in client.xrange(keys.events)}
        missing = [e for e in acked if e not in logged or client.get(keys.event_status(e)) != "done"]
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:5]}"
        for event_id in acked[2::3]:  # the likes: applied to the state, not only logged
            worker, n = event_id[1:].split("-")[:2]
            assert client.hexists(keys.liked(f"w{worker}"), f"k{worker}-{n}")
        client.close()

    check()
    own_redis.kill()  # and Redis too: appendfsync always means the AOF has every ack
    own_redis.start()
    check()


def test_load_ingest_export_train_round_trip_through_the_cli(redis_url, models, servers, tmp_path):
    data = tmp_path / "data"
    write_dataset(social_dataset(), str(data))
    run = lambda *argv: subprocess.run([sys.executable, "-m", *argv], cwd=REPO, check=True, capture_output=True, text=True)  # noqa: E731
    loaded = run("serving", "load", "--data", str(data), "--redis", redis_url)
    assert "rows/s" in loaded.stdout
    run("serving", "load", "--data", str(data), "--redis", redis_url, "--no-progress")  # restartable
    server = servers(redis_url, models)
    server.stub.Ingest(feed_pb2.IngestRequest(events=[
        feed_pb2.Event(event_id="x1", ts=1767225700.25, item_upsert=feed_pb2.ItemUpsert(item_id="n1", seller_id="s3", stock=2, price=9.5, category="shoes")),
        feed_pb2.Event(event_id="x2", ts=1767225700.5, like=feed_pb2.UserItem(user_id="erin", item_id="n1")),
        feed_pb2.Event(event_id="x3", ts=1767225701, unlike=feed_pb2.UserItem(user_id="alice", item_id="i8")),
        feed_pb2.Event(event_id="x4", ts=1767225702, friend=feed_pb2.UserFriend(user_id="erin", friend_id="dave")),
        feed_pb2.Event(event_id="x5", ts=1767225703, follow=feed_pb2.UserSeller(user_id="erin", seller_id="s3")),
        feed_pb2.Event(event_id="x6", ts=1767225704, share=feed_pb2.Share(user_id="erin", item_id="n1", friend_id="dave")),
        feed_pb2.Event(event_id="x7", ts=1767225705, purchase=feed_pb2.UserItem(user_id="erin", item_id="n1")),
        feed_pb2.Event(event_id="x8", ts=1767225706, view=feed_pb2.UserItem(user_id="alice", item_id="i1")),
        feed_pb2.Event(event_id="x9", ts=1767225707, not_interested_item=feed_pb2.UserItem(user_id="bob", item_id="i2")),
        feed_pb2.Event(event_id="x10", ts=1767225708, not_interested_seller=feed_pb2.UserSeller(user_id="bob", seller_id="s2")),
        # To all of erin's friends: dave, and not carol, befriended after it.
        feed_pb2.Event(event_id="x11", ts=1767225709, share=feed_pb2.Share(user_id="erin", item_id="i1")),
        feed_pb2.Event(event_id="x12", ts=1767225710, friend=feed_pb2.UserFriend(user_id="erin", friend_id="carol")),
    ]), timeout=5)  # fmt: skip
    out = tmp_path / "export"
    exported = run("serving", "export", "--redis", redis_url, "--out", str(out), "--since", "0")
    assert "12 events" in exported.stdout
    live = load_dataset(str(out))
    original = social_dataset()
    assert set(live.items.item_id) == set(original.items.item_id) | {"n1"}
    expected_likes = {(u, i) for u, i in zip(original.likes.src, original.likes.dst)} - {("alice", "i8")} | {("erin", "n1")}
    assert set(zip(live.likes.src, live.likes.dst)) == expected_likes
    assert dict(zip(zip(live.likes.src, live.likes.dst), live.likes.ts.tolist()))[("erin", "n1")] == 1767225700.5
    assert set(zip(live.follows.src, live.follows.dst)) == set(zip(original.follows.src, original.follows.dst)) | {("erin", "s3")}
    assert ("dave", "erin") in set(zip(live.friends.src, live.friends.dst))
    n1 = live.items.item_id.index("n1")
    assert (live.items.seller_id[n1], int(live.items.stock[n1]), live.items.price[n1], live.items.category[n1]) == ("s3", 2, 9.5, "shoes")
    events = (out / "events.csv").read_text().splitlines()
    assert events[0].split(",")[:3] == ["stream_id", "event_id", "kind"] and len(events) == 13
    # Shares, clicks, carts and purchases come back as engagements (views only in the event
    # log), and each share as its recipients hold it.
    engaged = set(zip(live.engagements.user_id, live.engagements.item_id, live.engagements.kind, live.engagements.friend_id))
    assert engaged == {
        ("erin", "n1", "share", "dave"), ("erin", "n1", "purchase", ""), ("erin", "i1", "share", ""),
        ("dave", "n1", "received_share", "erin"), ("dave", "i1", "received_share", "erin"),
    }  # fmt: skip
    # Users' hides come back too, so a store loaded from the export keeps them hidden.
    assert list(zip(live.hidden_items.src, live.hidden_items.dst)) == [("bob", "i2")]
    assert list(zip(live.hidden_sellers.src, live.hidden_sellers.dst)) == [("bob", "s2")]
    bob = views.read_user(MemoryStore.from_dataset(live), "bob")
    assert (bob.hidden_items, bob.hidden_sellers) == ({"i2"}, {"s2"})
    since = events[2].split(",")[0]
    run("serving", "export", "--redis", redis_url, "--out", str(tmp_path / "later"), "--since", since)
    assert len((tmp_path / "later" / "events.csv").read_text().splitlines()) == 1 + 10
    trained = run("training", "train", "--data", str(out), "--out", str(tmp_path / "retrained"), "--factors", "8", "--iterations", "3", "--no-progress")
    assert (tmp_path / "retrained" / "CURRENT").exists(), trained.stdout
    # A store loaded from the export shows a share to whom it reached, not to carol, a
    # friend made since (an outside review: the share to all reached every final friend).
    with redis.Redis.from_url(redis_url) as admin:
        admin.flushall()
    run("serving", "load", "--data", str(out), "--redis", redis_url, "--no-progress")
    reloaded = RedisStore.from_url(redis_url)
    for store in (MemoryStore.from_dataset(live), reloaded):
        shared = {user: set(views.read_user(store, user).shared) for user in ("dave", "carol")}
        assert {(item, sharer) for item, sharer, _ in shared["dave"]} == {("n1", "erin"), ("i1", "erin")}
        assert not shared["carol"]
    reloaded.close()


def test_workers_share_the_port_and_each_reads_the_others_writes(redis_url, models, servers):
    load(redis_url)
    server = servers(redis_url, models, "--workers", "2")
    children = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    for n in range(6):
        item = f"w-{n}"
        server.stub.Ingest(feed_pb2.IngestRequest(events=[
            feed_pb2.Event(event_id=f"w-{n}-1", item_upsert=feed_pb2.ItemUpsert(item_id=item, seller_id=f"shop-w{n}", stock=1)),
            feed_pb2.Event(event_id=f"w-{n}-2", like=feed_pb2.UserItem(user_id="bob", item_id=item)),
        ]), timeout=5)  # fmt: skip
        # A new connection lands on either worker (the kernel spreads them): both must see it.
        with grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            assert item in feed_ids(feed_pb2_grpc.FeedServiceStub(channel), "alice")[0]
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    assert not subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True).stdout


def test_a_worker_that_fails_to_start_makes_the_server_exit_with_an_error(redis_url, models):
    """Worker 1 of 2 could not bind its metrics port (another process held it): the server
    logged it, stopped worker 0 and exited 0, so a supervisor restarting on failure saw a
    clean exit (the parent had reaped the failed worker while polling, and lost its status)."""
    load(redis_url)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "serving", "--models", str(models), "--store", redis_url, "--workers", "2",
                                 "--port", "0", "--metrics-port", str(taken - 1), "--no-progress"],
                                cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert f"worker 1: cannot serve metrics on 127.0.0.1:{taken}: Address already in use" in result.stderr
    assert result.returncode == 1, result.stderr


def test_workers_refuse_the_memory_store(models, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--models", str(models), "--data", str(tmp_path), "--workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "--workers > 1 needs a shared store" in result.stderr
