"""The embedded in-memory store: the default, loaded from a dataset directory."""

from __future__ import annotations

import bisect
import heapq
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from ranking.store import Activity, Hydration, trending_weight
from ranking.types import ItemState, UserContext
from serving.events import Event, EventKind, EventValidationError
from serving.stores.base import ApplyResult
from training.dataset import Dataset

DEFAULT_RECENT_LIKES = 50
DEFAULT_TRENDING_REFRESH_SECONDS = 1.0


class Timeline:
    """Ids with a time each, kept newest first so a bounded read is a slice."""

    __slots__ = ("_time", "_order")

    def __init__(self) -> None:
        self._time: dict[str, float] = {}
        self._order: list[tuple[float, str]] = []  # (-time, id): ascending = newest first

    def __contains__(self, key: object) -> bool:
        return key in self._time

    def add(self, key: str, at: float) -> None:
        if key in self._time:
            self.remove(key)
        self._time[key] = at
        bisect.insort(self._order, (-at, key))

    def remove(self, key: str) -> float | None:
        at = self._time.pop(key, None)
        if at is not None:
            del self._order[bisect.bisect_left(self._order, (-at, key))]
        return at

    @classmethod
    def of(cls, times: dict[str, float]) -> Timeline:
        """A timeline holding ``times`` (id -> time), sorted once: the bulk-load path."""
        timeline = cls()
        timeline._time = times
        timeline._order = sorted((-at, key) for key, at in times.items())
        return timeline

    def newest(self, limit: int) -> list[tuple[str, float]]:
        return [(key, -negative) for negative, key in self._order[: max(limit, 0)]]


_NO_TIMELINE = Timeline()


class MemoryStore:
    """All live state in dicts, guarded by one lock.

    Trending is recomputed at most every ``trending_refresh_seconds`` after a like
    changes it; it only nominates candidates, which are hydrated fresh, so a short delay
    never shows a stale stock level.
    """

    def __init__(
        self,
        recent_likes: int = DEFAULT_RECENT_LIKES,
        trending_refresh_seconds: float = DEFAULT_TRENDING_REFRESH_SECONDS,
    ) -> None:
        self.recent_likes_bound = recent_likes
        self.trending_refresh_seconds = trending_refresh_seconds
        self._lock = threading.RLock()
        self._items: dict[str, ItemState] = {}
        self._likes: dict[str, Timeline] = defaultdict(Timeline)
        self._listings: dict[str, Timeline] = defaultdict(Timeline)
        self._follows: dict[str, set[str]] = defaultdict(set)
        self._friends: dict[str, set[str]] = defaultdict(set)
        self._hidden_items: dict[str, set[str]] = defaultdict(set)
        self._hidden_sellers: dict[str, set[str]] = defaultdict(set)
        self._trending_score: dict[str, float] = defaultdict(float)
        self._trending_cache: list[str] = []
        self._trending_cache_len = 0
        self._trending_dirty_since: float | None = 0.0
        self._applied_event_ids: set[str] = set()

    @classmethod
    def from_dataset(cls, dataset: Dataset, progress: bool = False, **kwargs: float) -> MemoryStore:
        """A store holding ``dataset``, built in bulk (the same state as applying its events).

        A repeated like keeps its first time, as ``apply`` does. ``progress`` draws a bar.
        """
        store = cls(**kwargs)
        items, likes = dataset.items, dataset.likes
        bar = tqdm(total=len(likes) + len(items), desc="load memory store", unit="row", disable=not progress, mininterval=1.0)
        liked_by_user: dict[str, dict[str, float]] = defaultdict(dict)
        like_count: Counter[str] = Counter()
        trending = store._trending_score
        for start in range(0, len(likes), 100_000):
            stop = min(start + 100_000, len(likes))
            times = np.nan_to_num(likes.ts[start:stop], nan=0.0).tolist()
            for user_id, item_id, ts in zip(likes.src[start:stop], likes.dst[start:stop], times):
                user_likes = liked_by_user[user_id]
                if item_id not in user_likes:
                    user_likes[item_id] = ts
                    like_count[item_id] += 1
                    trending[item_id] += trending_weight(ts)
            bar.update(stop - start)
        for user_id, times_by_item in liked_by_user.items():
            store._likes[user_id] = Timeline.of(times_by_item)
        listed: dict[str, dict[str, float]] = defaultdict(dict)
        for item_id, seller_id, created_at, stock in zip(
            items.item_id, items.seller_id, np.nan_to_num(items.created_at, nan=0.0).tolist(), items.stock.tolist()
        ):
            old = store._items.get(item_id)
            if old is not None and old.seller_id:
                listed[old.seller_id].pop(item_id, None)
            store._items[item_id] = ItemState(item_id, seller_id, created_at, stock, like_count.get(item_id, 0))
            if seller_id:
                listed[seller_id][item_id] = created_at
        for seller_id, times_by_item in listed.items():
            store._listings[seller_id] = Timeline.of(times_by_item)
        bar.update(len(items))
        bar.close()
        for user_id, seller_id in zip(dataset.follows.src, dataset.follows.dst):
            store._follows[user_id].add(seller_id)
        for user_id, friend_id in zip(dataset.friends.src, dataset.friends.dst):
            store._friends[user_id].add(friend_id)
            store._friends[friend_id].add(user_id)
        return store

    # -- reads -------------------------------------------------------------------------

    def read_user(self, user_id: str) -> UserContext:
        with self._lock:
            return UserContext(
                user_id=user_id,
                recent_likes=tuple(self._likes.get(user_id, _NO_TIMELINE).newest(self.recent_likes_bound)),
                follows=frozenset(self._follows.get(user_id, ())),
                friends=frozenset(self._friends.get(user_id, ())),
                hidden_items=frozenset(self._hidden_items.get(user_id, ())),
                hidden_sellers=frozenset(self._hidden_sellers.get(user_id, ())),
            )

    def read_activity(
        self, seller_ids: Sequence[str], friend_ids: Sequence[str], per_key_limit: int, trending_limit: int
    ) -> Activity:
        with self._lock:
            return Activity(
                listings_by_seller={s: self._listings.get(s, _NO_TIMELINE).newest(per_key_limit) for s in seller_ids},
                likes_by_friend={
                    f: self._likes.get(f, _NO_TIMELINE).newest(min(per_key_limit, self.recent_likes_bound))
                    for f in friend_ids
                },
                trending=self._trending(trending_limit),
            )

    def hydrate(self, user_id: str, item_ids: Sequence[str]) -> Hydration:
        with self._lock:
            liked = self._likes.get(user_id, _NO_TIMELINE)
            return Hydration(
                items={i: self._items[i] for i in item_ids if i in self._items},
                liked=frozenset(i for i in item_ids if i in liked),
            )

    def _trending(self, limit: int) -> list[str]:
        now = time.monotonic()
        stale = self._trending_dirty_since is not None and now - self._trending_dirty_since >= self.trending_refresh_seconds
        if stale or limit > self._trending_cache_len:
            depth = max(limit, 1000)
            top = heapq.nlargest(depth, self._trending_score.items(), key=lambda pair: (pair[1], pair[0]))
            self._trending_cache = [item_id for item_id, score in top if score > 0]
            self._trending_cache_len = depth
            self._trending_dirty_since = None
        return self._trending_cache[:limit]

    # -- writes ------------------------------------------------------------------------

    def apply(self, events: Sequence[Event]) -> ApplyResult:
        """Apply a validated batch atomically; see FeedStore.apply.

        Raises EventValidationError, before changing anything, for a like or stock update
        of an item that neither exists nor is upserted earlier in the batch.
        """
        with self._lock:
            fresh = self._unapplied(events)
            self._check_references(events, fresh)
            for index in fresh:
                self._apply_one(events[index])
                self._applied_event_ids.add(events[index].event_id)
            return ApplyResult(applied=len(fresh), duplicates=len(events) - len(fresh))

    def _unapplied(self, events: Sequence[Event]) -> list[int]:
        seen: set[str] = set()
        fresh = []
        for index, event in enumerate(events):
            if event.event_id in self._applied_event_ids or event.event_id in seen:
                continue
            seen.add(event.event_id)
            fresh.append(index)
        return fresh

    def _check_references(self, events: Sequence[Event], fresh: list[int]) -> None:
        upserted: set[str] = set()
        for index in fresh:
            event = events[index]
            if event.kind is EventKind.ITEM_UPSERT:
                upserted.add(event.item_id)
            elif event.kind in (EventKind.LIKE, EventKind.STOCK_UPDATE):
                if event.item_id not in self._items and event.item_id not in upserted:
                    raise EventValidationError(index, "item_id", f"unknown item {event.item_id!r}")

    def _apply_one(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.LIKE:
            self._like(event.user_id, event.item_id, event.ts)
        elif kind is EventKind.UNLIKE:
            self._unlike(event.user_id, event.item_id)
        elif kind is EventKind.FOLLOW:
            self._follows[event.user_id].add(event.seller_id)
        elif kind is EventKind.UNFOLLOW:
            self._follows[event.user_id].discard(event.seller_id)
        elif kind is EventKind.FRIEND:
            self._friends[event.user_id].add(event.friend_id)
            self._friends[event.friend_id].add(event.user_id)
        elif kind is EventKind.UNFRIEND:
            self._friends[event.user_id].discard(event.friend_id)
            self._friends[event.friend_id].discard(event.user_id)
        elif kind is EventKind.ITEM_UPSERT:
            old = self._items.get(event.item_id)
            self._put_item(
                ItemState(event.item_id, event.seller_id, event.created_at, event.stock, old.like_count if old else 0)
            )
        elif kind is EventKind.STOCK_UPDATE:
            self._items[event.item_id] = replace(self._items[event.item_id], stock=event.stock)
        elif kind is EventKind.NOT_INTERESTED_ITEM:
            self._hidden_items[event.user_id].add(event.item_id)
        elif kind is EventKind.NOT_INTERESTED_SELLER:
            self._hidden_sellers[event.user_id].add(event.seller_id)

    def _put_item(self, item: ItemState) -> None:
        old = self._items.get(item.item_id)
        if old is not None and old.seller_id != item.seller_id:
            self._listings[old.seller_id].remove(item.item_id)
        self._items[item.item_id] = item
        if item.seller_id:
            self._listings[item.seller_id].add(item.item_id, item.created_at)

    def _like(self, user_id: str, item_id: str, ts: float) -> None:
        likes = self._likes[user_id]
        if item_id in likes:
            return
        likes.add(item_id, ts)
        item = self._items.get(item_id)
        if item is not None:
            self._items[item_id] = replace(item, like_count=item.like_count + 1)
        self._trending_score[item_id] += trending_weight(ts)
        self._mark_trending_dirty()

    def _unlike(self, user_id: str, item_id: str) -> None:
        ts = self._likes[user_id].remove(item_id) if user_id in self._likes else None
        if ts is None:
            return
        item = self._items.get(item_id)
        if item is not None:
            self._items[item_id] = replace(item, like_count=max(item.like_count - 1, 0))
        self._trending_score[item_id] -= trending_weight(ts)
        self._mark_trending_dirty()

    def _mark_trending_dirty(self) -> None:
        if self._trending_dirty_since is None:
            self._trending_dirty_since = time.monotonic()

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
