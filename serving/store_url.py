"""``--store`` URLs: memory (loaded from ``--data``), redis://, rediss://, unix://, redis-cluster://."""

from __future__ import annotations

from dataclasses import dataclass

from stores import FeedStore

FSYNC_POLICIES = ("batch", "off")


@dataclass(frozen=True)
class Durability:
    """How the embedded memory store keeps acknowledged events across restarts.

    ``state_dir`` None: it does not (every ingested event is lost on restart). ``fsync``
    "batch" syncs the write-ahead log before each ack; "off" leaves it to the OS.
    ``snapshot_seconds``: how often the log is compacted into a snapshot.
    """

    state_dir: str | None = None
    fsync: str = "batch"
    snapshot_seconds: float = 300.0


def open_store(url: str, data_dir: str | None = None, durability: Durability = Durability()) -> FeedStore:
    """'memory' loads ``data_dir``; redis:// and redis-cluster:// connect to Redis."""
    if durability.state_dir is not None and url != "memory":
        raise ValueError("--state-dir is for the memory store; Redis keeps its own state")
    if durability.state_dir is not None:
        raise ValueError("--state-dir: the durable memory store is not built yet")
    if url == "memory":
        if not data_dir:
            raise ValueError("--data is required with the memory store")
        from stores.memory import MemoryStore
        from training.dataset import load_dataset

        return MemoryStore.from_dataset(load_dataset(data_dir), progress=True)
    if url.startswith(("redis://", "rediss://", "redis-cluster://", "unix://")):
        from stores.redis import RedisStore

        return RedisStore.from_url(url)
    raise ValueError(f"unknown store {url!r}: use memory, redis://HOST:PORT/DB or redis-cluster://HOST:PORT")
