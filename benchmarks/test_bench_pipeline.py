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



def test_memory_store_ingest_200_shares_to_1000_friends(benchmark):
    """A batch of shares to all friends by a user with 1,000 friends who each hold
    SHARED_BOUND shares already: 200,000 adds under the store's lock, which every GetFeed
    of that store waits for."""
    from stores.memory import MemoryStore
    from training.generate import generate

    dataset = generate(users=2_000, sellers=100, items=2_000, seed=1)
    store = MemoryStore.from_dataset(dataset)
    items, ids, at = list(dataset.items.item_id), itertools.count(), itertools.count()
    store.apply([Event(f"f{n}", EventKind.FRIEND, 0.0, user_id="sharer", friend_id=f"friend{n}") for n in range(1000)])

    def shares(count):
        start = next(at) * count
        return [Event(f"s{next(ids)}", EventKind.SHARE, 1e9 + (start + n) * 1e-3, user_id="sharer", item_id=items[n % len(items)])
                for n in range(count)]

    store.apply(shares(100))
    result = benchmark.pedantic(store.apply, setup=lambda: ((shares(200),), {}), rounds=5)
    assert result.applied == 200

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
