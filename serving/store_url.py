"""``--store`` URLs: memory (loaded from ``--data``), redis://, rediss://, unix://, redis-cluster://."""

from __future__ import annotations

from stores import FeedStore


def open_store(url: str, data_dir: str | None = None) -> FeedStore:
    """'memory' loads ``data_dir``; redis:// and redis-cluster:// connect to Redis."""
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
