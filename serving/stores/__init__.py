"""Online stores. ``open_store`` turns a --store URL into a FeedStore."""

from __future__ import annotations

from serving.stores.base import ApplyResult, FeedStore, StoreUnavailable


def open_store(url: str, data_dir: str | None = None) -> FeedStore:
    """'memory' loads ``data_dir``; redis:// and redis-cluster:// connect to Redis."""
    if url == "memory":
        if not data_dir:
            raise ValueError("--data is required with the memory store")
        from serving.stores.memory import MemoryStore
        from training.dataset import load_dataset

        return MemoryStore.from_dataset(load_dataset(data_dir), progress=True)
    if url.startswith(("redis://", "rediss://", "redis-cluster://", "unix://")):
        from serving.stores.redis import RedisStore

        return RedisStore.from_url(url)
    raise ValueError(f"unknown store {url!r}: use memory, redis://HOST:PORT/DB or redis-cluster://HOST:PORT")


__all__ = ["ApplyResult", "FeedStore", "StoreUnavailable", "open_store"]
