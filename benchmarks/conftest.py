"""Shared fixtures for the pytest-benchmark suites (`make bench`)."""

from __future__ import annotations

import gc
import time

import pytest

from ranking.feed import build_feed_pipeline
from serving.native_threads import limit_native_threads
from stores.memory import MemoryStore
from training.artifact import load_current
from training.dataset import write_dataset
from training.generate import generate
from training.train import TrainParams, train_and_publish


@pytest.fixture(scope="session")
def bench_world(tmp_path_factory):
    """A 20k-user, 50k-item generated dataset with a trained model and a loaded memory store."""
    limit_native_threads()  # one faiss/BLAS thread per request thread, as the server runs
    root = tmp_path_factory.mktemp("bench")
    dataset = generate(users=20_000, sellers=2_000, items=50_000, seed=1)
    write_dataset(dataset, str(root / "data"))
    train_and_publish(str(root / "data"), str(root / "models"), TrainParams(show_progress=False))
    artifact = load_current(str(root / "models"))
    store = MemoryStore.from_dataset(dataset)
    pipeline = build_feed_pipeline(store, artifact.model, artifact.ranker)
    gc.freeze()  # as the server does after loading (serving/server.py)
    return dataset, store, artifact, pipeline, time.time()
