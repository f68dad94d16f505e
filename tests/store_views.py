"""Store answers translated from codes back to ids, so contract tests can state them plainly.

Stores answer with arrays of their own (process-local) codes; two stores holding the
same state agree on these views, not on the codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ranking.store import FeedStateReader, Timelines
from ranking.types import ItemCard
from tests.builders import NOW


@dataclass(frozen=True)
class UserView:
    user_id: str
    recent_likes: tuple[tuple[str, float], ...]
    follows: frozenset[str]
    friends: frozenset[str]
    hidden_items: frozenset[str]
    hidden_sellers: frozenset[str]
    shared: tuple[tuple[str, str, float], ...] = ()  # (item, sharer, time), newest first

    @property
    def is_empty(self) -> bool:
        return not (self.recent_likes or self.follows or self.friends or self.shared)


@dataclass(frozen=True)
class ActivityView:
    listings_by_seller: dict[str, list[tuple[str, float]]]
    likes_by_friend: dict[str, list[tuple[str, float]]]
    trending: list[str]


@dataclass(frozen=True)
class ItemView:
    seller_id: str
    created_at: float
    stock: int
    like_count: int
    eligible: bool = True
    seller_away_until: float = 0.0
    card: ItemCard = ItemCard()
    # the hydrated columns the ranker and the caps read (None: not set)
    price: float | None = None
    ship_days: float | None = None
    category: str = ""

    @property
    def in_stock(self) -> bool:
        return self.stock > 0


@dataclass(frozen=True)
class HydrationView:
    items: dict[str, ItemView]
    liked: frozenset[str]
    seen: dict[str, tuple[int, float]] = None  # item -> (views since the last engagement, last view), viewed items only


def read_user(store: FeedStateReader, user_id: str) -> UserView:
    state = store.read_user(user_id)
    return UserView(
        user_id=state.user_id,
        recent_likes=tuple(zip(store.items.ids(state.recent_likes.tolist()), state.recent_like_times.tolist())),
        follows=frozenset(state.follows),
        friends=frozenset(state.friends),
        hidden_items=frozenset(store.items.ids(state.hidden_items.tolist())),
        hidden_sellers=frozenset(store.sellers.ids(state.hidden_sellers.tolist())),
        shared=tuple(zip(store.items.ids(state.shared.items.tolist()), state.shared.sharers, state.shared.times.tolist())),
    )


def _lists(store: FeedStateReader, keys: Sequence[str], timelines: Timelines) -> dict[str, list[tuple[str, float]]]:
    lists: dict[str, list[tuple[str, float]]] = {key: [] for key in keys}
    for item, at, owner in zip(store.items.ids(timelines.items.tolist()), timelines.times.tolist(), timelines.owners.tolist()):
        lists[keys[owner]].append((item, at))
    return lists


def read_activity(
    store: FeedStateReader, seller_ids: Sequence[str], friend_ids: Sequence[str], per_key_limit: int, trending_limit: int
) -> ActivityView:
    activity = store.read_activity(seller_ids, friend_ids, per_key_limit, trending_limit)
    return ActivityView(
        listings_by_seller=_lists(store, seller_ids, activity.listings),
        likes_by_friend=_lists(store, friend_ids, activity.friend_likes),
        trending=store.items.ids(activity.trending.tolist()),
    )


def hydrate(store: FeedStateReader, user_id: str, item_ids: Sequence[str]) -> HydrationView:
    codes = store.items.codes(list(item_ids), add=True)
    columns = store.hydrate(user_id, codes)
    items = {}
    for item_id, exists, seller, created_at, stock, like_count, eligible, away, card, price, ship_days, category in zip(
        item_ids, columns.exists.tolist(), columns.seller.tolist(), columns.created_at.tolist(), columns.stock.tolist(),
        columns.like_count.tolist(), columns.eligible.tolist(), columns.seller_away_until.tolist(), store.read_cards(codes),
        columns.price.tolist(), columns.ship_days.tolist(), columns.category.tolist(),
    ):  # fmt: skip
        if exists:
            seller_id = store.sellers.id(seller) if seller >= 0 else ""
            items[item_id] = ItemView(
                seller_id, created_at, stock, like_count, eligible, away, card,
                None if math.isnan(price) else price, None if math.isnan(ship_days) else ship_days,
                store.categories.id(category) if category >= 0 else "",
            )  # fmt: skip
    seen = {
        item_id: (views, at)
        for item_id, views, at in zip(item_ids, columns.views.tolist(), columns.viewed_at.tolist())
        if views
    }
    return HydrationView(items, frozenset(np.asarray(item_ids, dtype=object)[columns.liked].tolist()), seen)


def served_to(store, user_id: str, limit: int = 2) -> list[str]:
    """Every item of ``user_id``'s feed, page after page (each deeper than the last), until it ends."""
    from ranking.feed import build_feed_pipeline
    from ranking.vocab import stable_hash

    pipeline, served = build_feed_pipeline(store, None), []
    for _ in range(100):
        page = pipeline.run(user_id, limit, NOW, served_hashes=np.sort(np.array([stable_hash(i) for i in served], np.uint32)))
        served += [item.item_id for item in page.items]
        if not (page.has_more and page.items):
            return served
    raise AssertionError(f"{user_id}'s feed did not end: {served}")
