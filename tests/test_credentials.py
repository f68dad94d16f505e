"""Credentials replaced on disk while the server runs (serving/credentials.py): the tokens
file, over real gRPC and HTTP, polled every POLL_SECONDS. Files are replaced whole (by a
rename), as deployment tools do: a poll could otherwise read one half-written."""

from __future__ import annotations

import http.client
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from protos.feed.v1 import feed_pb2_grpc
from serving import auth
from serving.config import TOKENS_ENV
from tests.feed_world import build_world
from tests.redis_servers import free_port
from tests.test_auth_tls import BOTH, READ, WRITE, code_of, get_feed, ingest, serving

POLL_SECONDS = 0.05
WAIT_SECONDS = 5.0  # far above the poll interval, for a loaded machine


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("credentials-world"), users=120, sellers=12, items=300)


def eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert time.monotonic() < deadline, "the server did not take the new file within the wait"
        time.sleep(POLL_SECONDS / 2)


def replace_by_rename(path: Path, text: str) -> None:
    """As an editor or a deployment tool writes a file: whole, under another name, then renamed."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)


def swap_kubernetes_volume(directory: Path, name: str, text: str, version: str) -> None:
    """As the kubelet updates a Secret or ConfigMap volume: ``name`` links to ``..data/name``,
    and ``..data`` to a directory of the version; a new version's directory is written, then
    ``..data`` is swapped to it by renaming a new link over it."""
    (directory / version).mkdir()
    (directory / version / name).write_text(text)
    (directory / "..data_tmp").symlink_to(version)
    os.replace(directory / "..data_tmp", directory / "..data")
    if not (directory / name).is_symlink():
        (directory / name).symlink_to(Path("..data") / name)


def feed_code(stub: feed_pb2_grpc.FeedServiceStub, token: str) -> grpc.StatusCode:
    try:
        get_feed(stub, token)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def http_feed_status(port: int, token: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/v1/users/u00001/feed?page_size=2", headers={"Authorization": f"Bearer {token}"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_changed_tokens_file_is_in_force_on_both_ports_within_the_poll(world, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="feedrank.serving")
    path = tmp_path / "tokens"
    path.write_text(f"{READ} read reader\n")
    inline = tuple(auth.parse_tokens(f"{WRITE} write writer", TOKENS_ENV, separators="\n;"))
    with serving(world, tokens=inline, tokens_file=str(path), credentials_reload_seconds=POLL_SECONDS,
                 http_port=free_port()) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub, http_port = feed_pb2_grpc.FeedServiceStub(channel), server.config.http_port
        assert len(get_feed(stub, READ).items) == 5 and http_feed_status(http_port, READ) == 200
        assert code_of(get_feed, stub, BOTH) == grpc.StatusCode.UNAUTHENTICATED

        replace_by_rename(path, f"{BOTH} read,write both\n")  # READ revoked, BOTH added
        eventually(lambda: http_feed_status(http_port, READ) == 401)
        assert code_of(get_feed, stub, READ) == grpc.StatusCode.UNAUTHENTICATED
        assert len(get_feed(stub, BOTH).items) == 5 and http_feed_status(http_port, BOTH) == 200
        assert ingest(stub, WRITE).applied == 1  # FEEDRANK_TOKENS' tokens stay
        assert any(r.getMessage().endswith("re-read: 2 tokens; added: both; removed: reader") for r in caplog.records)

        replace_by_rename(path, f"{READ} read reader\n{READ} write again\n")  # broken
        failures = {"credential": "tokens"}
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 1)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "feedrank.serving"]
        assert errors == [(f"tokens reload failed: {path}:2: the same token is already listed at {path}:1; "
                           "keeping those in force until the files change again")]
        assert len(get_feed(stub, BOTH).items) == 5 and code_of(get_feed, stub, READ) == grpc.StatusCode.UNAUTHENTICATED
        time.sleep(4 * POLL_SECONDS)  # an unchanged broken file is not read, nor logged, again
        assert server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 1

        replace_by_rename(path, f"{WRITE} read clash\n")  # the same token as FEEDRANK_TOKENS has: refused too
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 2)
        assert len(get_feed(stub, BOTH).items) == 5

        replace_by_rename(path, "")  # no token at all would turn auth off: refused
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 3)
        assert code_of(get_feed, stub) == grpc.StatusCode.UNAUTHENTICATED

        path.unlink()
        eventually(lambda: server.metrics.registry.get_sample_value("feedrank_credentials_reload_failures_total", failures) == 4)
        replace_by_rename(path, f"{READ} read reader\n")
        eventually(lambda: http_feed_status(http_port, READ) == 200)
        assert len(get_feed(stub, READ).items) == 5 and code_of(get_feed, stub, BOTH) == grpc.StatusCode.UNAUTHENTICATED


def test_a_tokens_file_in_a_kubernetes_volume_is_re_read_when_its_data_link_is_swapped(world, tmp_path):
    swap_kubernetes_volume(tmp_path, "tokens", f"{READ} read reader\n", "..2026_12_06_01")
    with serving(world, tokens_file=str(tmp_path / "tokens"), credentials_reload_seconds=POLL_SECONDS) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        assert len(get_feed(stub, READ).items) == 5
        swap_kubernetes_volume(tmp_path, "tokens", f"{BOTH} read,write both\n", "..2026_12_06_02")
        eventually(lambda: feed_code(stub, READ) == grpc.StatusCode.UNAUTHENTICATED)
        assert len(get_feed(stub, BOTH).items) == 5


def test_a_bad_tokens_file_at_start_is_refused_naming_its_line(world, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{READ} read reader\n{READ[:8]} read short\n")
    with pytest.raises(auth.TokenError, match=rf"^{path}:2: a token must be at least 16"), serving(world, tokens_file=str(path)):
        pass
