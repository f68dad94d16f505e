"""Shared fixtures. ``store_factory`` runs a suite against every store implementation."""

from __future__ import annotations

import errno
import io
import json
import logging
import os

# gRPC's fork support (on by default) restarts gRPC's threads in a child made by fork();
# a child made by subprocess with a preexec_fn, as pyspark makes its Java gateway, then
# closes their descriptors before exec and they abort it. Set before anything loads gRPC;
# the product's processes fork before they make any gRPC object, so they need it neither way.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import logs
from stores.base import FeedStore
from stores.memory import MemoryStore
from tests.redis_servers import (  # noqa: F401 (fixtures)
    redis_cluster,
    redis_cluster_url,
    redis_server,
    redis_url,
)
from training.dataset import Dataset

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

StoreFactory = Callable[..., FeedStore]


def data_root() -> Path:
    """Where shared datasets live: $FEEDRANK_SHARED_DATA, default ../shared/data next to the repo."""
    return Path(os.environ.get("FEEDRANK_SHARED_DATA", REPO.parent / "shared" / "data"))


STORE_KINDS = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis-cluster", marks=pytest.mark.redis),
]


def make_redis_store(url: str, dataset: Dataset, **options: Any) -> FeedStore:
    """A RedisStore on ``url`` (already empty) loaded with ``dataset`` by the load command's
    code; ``options`` are the store's own (``listings``, ...)."""
    from serving.load import load_into_redis
    from stores.redis import RedisStore

    store = RedisStore.from_url(url, options, socket_timeout=5.0)
    load_into_redis(store.client, dataset, recent_likes=store.recent_likes_bound, listings=store.listings_bound)
    return store


@pytest.fixture(params=STORE_KINDS)
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Builds a store of each kind loaded with a dataset; keyword options are the Redis
    store's own (``listings=4``: its bounds), which the memory store, unbounded, ignores.

    The Redis kinds start their servers once per session (tests/redis_servers.py) and
    flush them before each test.
    """
    created: list[FeedStore] = []
    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    elif request.param == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url")

    def factory(dataset: Dataset, **redis_options: Any) -> FeedStore:
        if url is None:
            store: FeedStore = MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0)
        else:
            store = make_redis_store(url, dataset, **redis_options)
        created.append(store)
        return store

    yield factory
    for store in created:
        store.close()


@pytest.fixture()
def log_stream():
    """The root logger's JSON lines, at info, while a test runs."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def failing_listdir(monkeypatch, path: Path, code: int = errno.EIO) -> None:
    """os.listdir(path) fails as a bad disk (EIO) or, for a user who is not root, a directory
    without read permission (EACCES) makes it fail; every other path lists as before."""
    listdir = os.listdir

    def failing(where="."):
        if os.fspath(where) == str(path):
            raise OSError(code, os.strerror(code), str(path))
        return listdir(where)

    monkeypatch.setattr(os, "listdir", failing)
