"""Property test: the columnar pipeline's invariants hold on random small states.

Hypothesis builds a catalogue (some sellers are also users, some items out of stock),
likes, follows, friendships, hidden items and sellers, a random embedding model and
item-kNN over a catalogue that only partly matches the store's, then pages through a
user's feed with exclusions. Whatever the state, every served item must be in stock,
served once, not excluded, not hidden, not liked, not the user's own, a row of the
trainer's pool for the same request, and its reasons must name real friends who liked
it or the followed seller who listed it.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embeddings.index import build_index
from embeddings.knn import ItemKNN
from embeddings.model import EmbeddingModel
from ranking.components import FeedQuery
from ranking.feed import FeedSettings, build_feed_pipeline
from ranking.selectors import DiversitySelector
from ranking.store import ItemColumns, UserState
from ranking.types import MAX_REASON_ACTORS, ReasonKind
from ranking.vocab import stable_hash
from stores.events import Event, EventKind
from stores.memory import MemoryStore
from tests.builders import DAY, NOW, make_dataset

USERS = [f"u{n}" for n in range(8)]
SELLERS = ["s0", "s1", "s2", "u0", "u1"]  # u0 and u1 also sell


@st.composite
def states(draw):
    n_items = draw(st.integers(1, 30))
    items = [
        (f"i{n}", draw(st.sampled_from(SELLERS + [""])), NOW - draw(st.integers(0, 30)) * DAY, draw(st.sampled_from([0, 0, 1, 5])))
        for n in range(n_items)
    ]
    item_ids = [item[0] for item in items]
    pair = st.tuples(st.sampled_from(USERS), st.sampled_from(item_ids), st.integers(0, 10 * 24))
    likes = {(u, i): NOW - hours * 3600.0 for u, i, hours in draw(st.lists(pair, max_size=60))}
    follows = draw(st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(SELLERS)), max_size=15, unique=True))
    friends = draw(st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(USERS)), max_size=15, unique=True))
    friends = [(a, b) for a, b in friends if a != b]
    dataset = make_dataset(
        items,
        likes=[(u, i, ts) for (u, i), ts in likes.items()],
        follows=[(u, s, NOW - DAY) for u, s in follows],
        friends=[(a, b, NOW - DAY) for a, b in {(min(a, b), max(a, b)) for a, b in friends}],
    )
    hidden_items = draw(st.lists(st.sampled_from(item_ids), max_size=3))
    hidden_sellers = draw(st.lists(st.sampled_from(SELLERS), max_size=2))
    # The model knows some store items plus some the store never had (deleted items).
    model_items = draw(st.lists(st.sampled_from(item_ids + ["gone1", "gone2"]), min_size=1, max_size=35, unique=True))
    seed = draw(st.integers(0, 2**16))
    user = draw(st.sampled_from(USERS + ["stranger"]))
    exclude = draw(st.lists(st.sampled_from(item_ids + ["unknown"]), max_size=4))
    limit = draw(st.integers(1, 7))
    return dataset, likes, hidden_items, hidden_sellers, model_items, seed, user, exclude, limit


def random_model(user_ids: list[str], item_ids: list[str], seed: int) -> EmbeddingModel:
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(len(user_ids), 4)).astype(np.float32)
    items = rng.normal(size=(len(item_ids), 4)).astype(np.float32)
    similarity = sp.random(len(item_ids), len(item_ids), density=0.3, random_state=seed, format="csr", dtype=np.float32)
    similarity.setdiag(0.0)
    similarity.eliminate_zeros()
    knn = ItemKNN(item_ids, similarity)
    return EmbeddingModel(user_ids, item_ids, users, items, build_index(items, "flat"), regularization=0.1, item_knn=knn)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states())
def test_served_items_are_in_stock_unique_allowed_and_explained(state):
    dataset, likes, hidden_items, hidden_sellers, model_items, seed, user, exclude, limit = state
    store = MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0)
    store.apply(
        [Event(f"h{n}", EventKind.NOT_INTERESTED_ITEM, NOW, user_id=user, item_id=i) for n, i in enumerate(hidden_items)]
        + [Event(f"s{n}", EventKind.NOT_INTERESTED_SELLER, NOW, user_id=user, seller_id=s) for n, s in enumerate(hidden_sellers)]
    )
    model = random_model(USERS[:5], model_items, seed)
    pipeline = build_feed_pipeline(store, model, settings=FeedSettings(max_per_seller=2, fresh_window_seconds=2 * DAY))

    catalogue = {item_id: (seller, stock) for item_id, seller, stock in zip(dataset.items.item_id, dataset.items.seller_id, dataset.items.stock.tolist())}
    friends = {b for a, b in zip(dataset.friends.src, dataset.friends.dst) if a == user} | {
        a for a, b in zip(dataset.friends.src, dataset.friends.dst) if b == user
    }
    follows = {s for u, s in zip(dataset.follows.src, dataset.follows.dst) if u == user}
    liked_by = {}
    for (liker, item_id) in likes:
        liked_by.setdefault(item_id, set()).add(liker)

    served: list[str] = []
    for _ in range(6):
        hashes = np.array(sorted({stable_hash(i) for i in served}), dtype=np.uint32)
        page = pipeline.run(user, limit, NOW, exclude_ids=exclude, served_hashes=hashes)
        assert len(page.items) <= limit
        # The trainer fits the ranker on the pool the page was selected from.
        pool = pipeline.pool(user, limit, NOW, exclude_ids=exclude, served_hashes=hashes)
        assert {item.item_id for item in page.items} <= set(pool.item_ids())
        assert (pool.result.gathered_by_source, pool.result.removed_by_filter) == (page.gathered_by_source, page.removed_by_filter)
        assert page.item_hashes.tolist() == [stable_hash(item.item_id) for item in page.items]
        for item in page.items:
            seller, stock = catalogue[item.item_id]  # a known item: never one only the model has
            assert stock > 0
            assert item.item_id not in served and item.item_id not in exclude and item.item_id not in hidden_items
            assert user not in liked_by.get(item.item_id, ())
            assert seller != user and seller not in hidden_sellers
            assert item.seller_id == seller
            assert item.reasons
            for reason in item.reasons:
                if reason.kind is ReasonKind.FRIENDS_LIKED:
                    assert reason.actor_ids and set(reason.actor_ids) <= friends & liked_by[item.item_id]
                    assert len(reason.actor_ids) == min(reason.count, MAX_REASON_ACTORS)
                elif reason.kind is ReasonKind.FOLLOWED_SELLER:
                    assert reason.actor_ids == [seller] and seller in follows
        # News (fresh activity of the user's graph) leads the page, at most max_fresh of it,
        # and each item of it came from the graph.
        news = [item.news for item in page.items]
        assert news == sorted(news, reverse=True) and sum(news) <= 3
        graph = {ReasonKind.FRIENDS_LIKED, ReasonKind.FOLLOWED_SELLER, ReasonKind.FRIEND_SHARED}
        assert all(graph & {reason.kind for reason in item.reasons} for item in page.items if item.news)
        sellers_on_page = [item.seller_id for item in page.items if item.seller_id]
        assert all(sellers_on_page.count(s) <= 2 for s in sellers_on_page)
        served += [item.item_id for item in page.items]
        if not page.has_more:
            break
    assert len(served) == len(set(served))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-1, 4), st.integers(-1, 4)), min_size=0, max_size=60),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 20),
)
def test_the_diversity_caps_hold_and_fill_the_page_greedily(rows, max_per_seller, max_per_category, limit):
    """Every page obeys both caps, keeps rank order, and skips a row only when a cap forbids it."""
    items = ItemColumns.empty(len(rows))
    items.seller[:] = [s for s, _ in rows]
    items.category[:] = [c for _, c in rows]
    selector = DiversitySelector(max_per_seller, max_per_category)
    page = selector.select(FeedQuery(UserState("u"), limit, 0.0), SimpleNamespace(items=items), np.arange(len(rows))).rows
    assert len(page) <= limit and list(page) == sorted(page)
    chosen = set(page.tolist())
    last = max(chosen) if len(chosen) == limit else len(rows) - 1  # a full page reads no further
    per_seller, per_category = Counter(), Counter()
    for row in range(last + 1):
        seller, category = rows[row]
        blocked = (seller >= 0 and per_seller[seller] >= max_per_seller) or (
            category >= 0 and per_category[category] >= max_per_category
        )
        assert blocked == (row not in chosen), f"row {row}: blocked {blocked}, chosen {row in chosen}"
        if row in chosen:
            per_seller[seller] += 1
            per_category[category] += 1
