"""Shared fixtures. ``store_factory`` runs a suite against every store implementation."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serving.stores.base import FeedStore
from serving.stores.memory import MemoryStore
from training.dataset import Dataset

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

StoreFactory = Callable[[Dataset], FeedStore]


def data_root() -> Path:
    """Where shared datasets live: $FEEDRANK_DATA, default ../shared/data next to the repo."""
    return Path(os.environ.get("FEEDRANK_DATA", REPO.parent / "shared" / "data"))


STORE_KINDS = ["memory"]


@pytest.fixture(params=STORE_KINDS)
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Builds a store of each kind loaded with a dataset."""
    created: list[FeedStore] = []

    def factory(dataset: Dataset) -> FeedStore:
        store = MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0)
        created.append(store)
        return store

    yield factory
    for store in created:
        store.close()
