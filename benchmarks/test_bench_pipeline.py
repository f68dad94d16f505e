"""In-process costs of one feed and one ingest batch (pytest-benchmark; `make bench`)."""

from __future__ import annotations

import itertools
import random

import pytest

from ranking.feed import FeedSettings
from serving.feed_service import FeedService
from serving.page_token import MAX_SERVED, PageTokenCodec
from stores.events import Event, EventKind


def test_feed_pipeline_first_page(benchmark, bench_world):
    dataset, _, _, pipeline, now = bench_world
    users = itertools.cycle(random.Random(0).sample(dataset.user_ids(), 2000))
    result = benchmark(lambda: pipeline.run(next(users), 20, now))
    assert result.items


def test_feed_pipeline_first_page_searching_the_index(benchmark, bench_world):
    """The first page with the trained users' neighbour searches run live, as a model
    without the precomputed table serves them (embeddings/user_neighbours.py)."""
    dataset, _, artifact, pipeline, now = bench_world
    assert artifact.model.user_neighbours is not None, "the benchmark model should carry the table"
    users = itertools.cycle(random.Random(0).sample(dataset.user_ids(), 2000))
    table, artifact.model.user_neighbours = artifact.model.user_neighbours, None
    try:
        result = benchmark(lambda: pipeline.run(next(users), 20, now))
    finally:
        artifact.model.user_neighbours = table
    assert result.items


def test_feed_pipeline_cold_start_user(benchmark, bench_world):
    _, _, _, pipeline, now = bench_world
    result = benchmark(lambda: pipeline.run("nobody-knows-me", 20, now))
    assert result.items


def test_memory_store_ingest_batch_of_100_likes(benchmark, bench_world):
    dataset, store, _, _, now = bench_world
    counter = itertools.count()
    users, items = dataset.user_ids(), dataset.items.item_id

    def batch():
        return [
            Event(f"bench-{next(counter)}", EventKind.LIKE, now, user_id=users[i % len(users)], item_id=items[(i * 7) % len(items)])
            for i in range(100)
        ]

    result = benchmark(lambda: store.apply(batch()))
    assert result.applied + result.duplicates == 100


@pytest.mark.parametrize("page", [1, 10, 50])
def test_feed_service_page_at_depth_limit_100(benchmark, bench_world, page):
    """One GetFeed of page N (limit 100) through FeedService, page token included.

    The codec allows the deepest feed a server can be configured for (MAX_SERVED items),
    so page 50 exists; the server's default cap (DEFAULT_MAX_SERVED) ends a feed at page 10.
    """
    dataset, store, artifact, _, now = bench_world
    service = FeedService(store, artifact, PageTokenCodec(b"bench-secret-0123456789", max_served=MAX_SERVED), FeedSettings())
    user = random.Random(1).choice(dataset.user_ids())
    token = ""
    for _ in range(page - 1):
        token = service.get_feed(user, 100, token, [], now).next_page_token
        assert token, "the feed ended before the page to measure"
    result = benchmark(lambda: service.get_feed(user, 100, token, [], now))
    assert len(result.items) == 100
