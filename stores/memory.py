"""The embedded in-memory store: the default, loaded from a dataset directory.

The catalogue is columnar: one numpy array per field (seller code, creation time, stock,
like count, trending score), indexed by item code, so hydrating a feed's candidates is
a handful of fancy-indexing operations. Likes per user and listings (in-stock items) per
seller are timelines: one bulk-loaded CSR (newest first per key) plus copied rows for the keys
that ingest changed since.
"""

from __future__ import annotations

import bisect
import math
import pickle
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ranking.store import (
    ITEM_COLUMNS,
    SEEN_BOUND,
    SHARED_BOUND,
    VIEW_WINDOW_SECONDS,
    Activity,
    ItemColumns,
    SharedItems,
    Timelines,
    UserState,
    trending_weight,
    trending_weights,
    untrended,
)
from ranking.types import ItemCard
from ranking.vocab import UNKNOWN, Vocabulary, concatenated_ranges, encode, sorted_positions
from stores.applied_ids import AppliedIds
from stores.base import ApplyResult, gc_paused, no_replicas
from stores.events import (
    DEFAULT_MAX_FOLLOWS,
    DEFAULT_MAX_FRIENDS,
    ENGAGEMENTS,
    RECEIVED_SHARE,
    Event,
    EventKind,
    check_degrees,
    check_references,
    first_error,
)

if TYPE_CHECKING:  # the loader's input type only; a dataset is read by training.dataset
    from training.dataset import Dataset, Edges

DEFAULT_RECENT_LIKES = 50
DEFAULT_TRENDING_REFRESH_SECONDS = 1.0
DEFAULT_DEDUPE_TTL = 30 * 86_400  # seconds an applied event id is remembered (as stores.redis); 0 = forever
_TRENDING_CACHE_DEPTH = 1_000


def id_ranks(vocabulary: Vocabulary) -> np.ndarray:
    """Rank of each code's id in sorted id order (int64, indexed by code)."""
    ids = np.array(vocabulary.ids(range(len(vocabulary))), dtype=object)
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return ranks


def _friends_of(users: set[str], friends: Edges) -> set[str]:
    return {b for a, b in zip(friends.src, friends.dst) if a in users} | {
        a for a, b in zip(friends.src, friends.dst) if b in users
    }


def _pairs_where(edges: Edges, keep: Callable[[str, str], bool]) -> tuple[list[str], list[str]]:
    """(sources, destinations) of the edges that ``keep``."""
    pairs = [(a, b) for a, b in zip(edges.src, edges.dst) if keep(a, b)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _grouped_sets(keys: list[str], values: list[str]) -> dict[str, set[str]]:
    """{key: set of its values} for parallel lists, grouped by array sorts rather than per-pair adds."""
    if not keys:
        return {}
    codes, distinct = encode(keys)
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(codes[order])) + 1, [len(order)]]).tolist()
    grouped = np.asarray(values, dtype=object)[order].tolist()
    return {key: set(grouped[start:stop]) for key, start, stop in zip(distinct, bounds, bounds[1:])}


_LOOP_KEYS = 10
"""Up to this many keys, a timeline read slices row by row, cheaper there than one gather
(the loop against the gather: 7 against 15 us for 2 keys, 116 against 24 us for 100)."""


class TimelineTable:
    """Per integer key, a newest-first list of (item code, time); ties list the smaller id first.

    The bulk of it is one CSR (``indptr``, ``items``, ``times``) built once; a key that
    changes afterwards gets its own copied row in ``_changed``, which reads prefer.
    """

    def __init__(self, indptr: np.ndarray | None = None, items: np.ndarray | None = None, times: np.ndarray | None = None) -> None:
        self._indptr = np.zeros(1, np.int64) if indptr is None else indptr
        self._items = np.zeros(0, np.int32) if items is None else items
        self._times = np.zeros(0, np.float64) if times is None else times
        self._changed: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def build(cls, keys: np.ndarray, items: np.ndarray, times: np.ndarray, n_keys: int, item_ranks: np.ndarray) -> TimelineTable:
        """From parallel arrays of (key, item, time); ``item_ranks`` orders equal times by id."""
        order = np.lexsort((item_ranks[items], -times, keys))
        indptr = np.zeros(n_keys + 1, np.int64)
        np.cumsum(np.bincount(keys, minlength=n_keys), out=indptr[1:])
        return cls(indptr, items[order].astype(np.int32), times[order].astype(np.float64))

    def row(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        changed = self._changed.get(key)
        if changed is not None:
            return changed
        if 0 <= key < len(self._indptr) - 1:
            start, stop = self._indptr[key], self._indptr[key + 1]
            return self._items[start:stop], self._times[start:stop]
        return self._items[:0], self._times[:0]

    def newest(self, keys: Sequence[int], limit: int) -> Timelines:
        """The newest ``limit`` entries of each key, owned by the key's position in ``keys``."""
        limit = max(limit, 0)
        if len(keys) <= _LOOP_KEYS or not self._changed.keys().isdisjoint(keys):
            return Timelines.concat([(items[:limit], times[:limit]) for items, times in map(self.row, keys)])
        # Many keys, none copied since the build: one gather of their prefixes, no loop over keys.
        codes = np.asarray(keys, np.int64)
        codes = np.where((codes >= 0) & (codes < len(self._indptr) - 1), codes, len(self._indptr) - 1)
        starts = self._indptr[codes]
        lengths = np.minimum(self._indptr[np.minimum(codes + 1, len(self._indptr) - 1)] - starts, limit)
        positions = concatenated_ranges(starts, lengths)
        return Timelines(
            self._items[positions], self._times[positions], np.repeat(np.arange(len(codes), dtype=np.int32), lengths)
        )

    def add(self, key: int, item: int, at: float, ids: Vocabulary) -> None:
        """Put ``item`` at time ``at`` in the key's list, replacing an earlier entry of it."""
        items, times = self.row(key)
        kept = items != item
        if not kept.all():
            items, times = items[kept], times[kept]
        self._insert(key, items, times, item, at, ids)

    def add_if_absent(self, key: int, item: int, at: float, ids: Vocabulary) -> bool:
        """Put ``item`` at time ``at`` in the key's list unless it is there; whether it was put."""
        items, times = self.row(key)
        if (items == item).any():
            return False
        self._insert(key, items, times, item, at, ids)
        return True

    def remove(self, key: int, item: int) -> float | None:
        """Drop ``item`` from the key's list; its time, or None when it was not there."""
        items, times = self.row(key)
        kept = items != item
        if kept.all():
            return None
        self._changed[key] = (items[kept], times[kept])
        return float(times[~kept][0])

    def _insert(self, key: int, items: np.ndarray, times: np.ndarray, item: int, at: float, ids: Vocabulary) -> None:
        """Make (``items``, ``times``), which lack ``item``, the key's row with it put at ``at``."""
        # The row is newest first, and entries of one time are in id order: a binary search
        # among them, as a batch stamped with one time (ts 0) gives a key thousands of ties.
        low, high = int(np.count_nonzero(times > at)), int(np.count_nonzero(times >= at))
        new_id = ids.id(item)
        while low < high:
            middle = (low + high) // 2
            if ids.id(int(items[middle])) < new_id:
                low = middle + 1
            else:
                high = middle
        self._changed[key] = (_inserted(items, low, item), _inserted(times, low, at))


def _inserted(values: np.ndarray, position: int, value: float) -> np.ndarray:
    """``values`` with ``value`` put at ``position``: np.insert's result, without its ~25 us
    of generality (two per like, on the hot path of ingest and of a state directory's replay)."""
    grown = np.empty(len(values) + 1, values.dtype)
    grown[:position] = values[:position]
    grown[position] = value
    grown[position + 1 :] = values[position:]
    return grown


_STORED_COLUMNS = tuple(name for name in ITEM_COLUMNS if name not in ("liked", "seller_away_until", "views", "viewed_at"))
_TEXT_COLUMNS = ("title", "image_url", "currency")  # read only for a page's cards
# Widest fields first and padded to 64 bytes, so every field and record is aligned.
_RECORD = np.dtype(
    sorted(((name, ITEM_COLUMNS[name][1]) for name in _STORED_COLUMNS), key=lambda field: -np.dtype(field[1]).itemsize),
    align=True,
)
_EMPTY_RECORD = np.array(tuple(ITEM_COLUMNS[name][0] for name in _RECORD.names), dtype=_RECORD)


CARD_CACHE_BOUND = 100_000
"""Cards a memory store keeps built (about 20 MB at this bound)."""


class _Catalogue:
    """Item columns indexed by item code, grown by doubling; sellers' vacations by seller code.

    The columns a feed hydrates live in one record per item (``records``; each column,
    e.g. ``catalogue.stock``, is a view of its field): a feed reads a few hundred random
    items, and one record per item is one or two cache lines where ten separate columns
    are ten.
    """

    def __init__(self) -> None:
        self._set_records(np.zeros(0, _RECORD))
        for name in _TEXT_COLUMNS:
            setattr(self, name, np.zeros(0, object))
        self.away_until = np.zeros(0, np.float64)
        # Cards built before, by item code: a page's cards cost a dict lookup each instead of
        # six column gathers and a tuple. set_card, through which every card change after
        # the bulk load goes (item upserts and updates), drops the item's entry; past
        # CARD_CACHE_BOUND entries the cache starts again empty.
        self._cards: dict[int, ItemCard] = {}

    def __getstate__(self) -> dict:
        # The columns are views of ``records``: pickled, each would become a copy of its own.
        return {name: value for name, value in self.__dict__.items() if name not in _STORED_COLUMNS}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._set_records(self.records)

    def _set_records(self, records: np.ndarray) -> None:
        self.records = records
        for name in _STORED_COLUMNS:
            setattr(self, name, records[name])

    def reserve(self, n: int) -> None:
        if n <= len(self.records):
            return
        size = max(n, 2 * len(self.records), 1024)
        self._set_records(_grown(self.records, size, _EMPTY_RECORD))
        for name in _TEXT_COLUMNS:
            setattr(self, name, _grown(getattr(self, name), size, ""))

    def reserve_sellers(self, n: int) -> None:
        if n > len(self.away_until):
            self.away_until = _grown(self.away_until, max(n, 2 * len(self.away_until), 256), 0.0)

    def columns(self, codes: np.ndarray) -> ItemColumns:
        n = len(codes)
        if not len(self.records):
            return ItemColumns.empty(n)
        # Codes past the end belong to ids a model or a request registered, never listed:
        # they read row 0, then get the empty record. One gather of whole records.
        outside = codes >= len(self.records)
        any_outside = bool(outside.any())
        # take, not indexing: numpy indexes structured arrays field by field, 10x slower.
        records = self.records.take(np.where(outside, 0, codes) if any_outside else codes)
        if any_outside:
            records[outside] = _EMPTY_RECORD
        sellers = records["seller"]
        away_until = np.zeros(n)
        with_seller = (sellers >= 0) & (sellers < len(self.away_until))
        away_until[with_seller] = self.away_until[sellers[with_seller]]
        return ItemColumns(
            **{name: records[name] for name in _STORED_COLUMNS},
            liked=np.zeros(n, bool), seller_away_until=away_until, views=np.zeros(n, np.int64), viewed_at=np.zeros(n),
        )

    def set_card(self, code: int, card: dict[str, str], categories: Vocabulary) -> None:
        """Store the named card fields (``Event.card`` strings) of one item."""
        for name, value in card.items():
            if name == "price":
                self.price[code] = float(value)
            elif name == "ship_days":
                self.ship_days[code] = float(value)
            elif name == "feed_eligible":
                self.eligible[code] = value == "1"
            elif name == "category":
                self.category[code] = categories.add(value) if value else -1
            else:
                getattr(self, name)[code] = value
        self._cards.pop(code, None)

    def cards(self, codes: list[int], categories: Vocabulary) -> list[ItemCard]:
        """The card of each item code (an empty card for an item not held), same order."""
        cache = self._cards
        cards = [cache.get(code) for code in codes]
        missing = [at for at, card in enumerate(cards) if card is None]
        if missing:
            if len(cache) + len(missing) > CARD_CACHE_BOUND:
                cache.clear()
            for at, card in zip(missing, self._built_cards(np.array([codes[at] for at in missing], np.int64), categories)):
                cards[at] = cache[codes[at]] = card
        return cards

    def _built_cards(self, codes: np.ndarray, categories: Vocabulary) -> list[ItemCard]:
        known = (codes >= 0) & (codes < len(self.exists))
        known[known] = self.exists[codes[known]]
        if not known.any():
            return [ItemCard() for _ in range(len(codes))]
        # One gather per column, then plain Python values: no numpy scalar per field.
        at = np.where(known, codes, int(codes[known][0]))
        fields = zip(known.tolist(), *(getattr(self, name)[at].tolist() for name in _CARD_COLUMNS))
        return [
            ItemCard(
                title=title,
                image_url=image_url,
                price=None if math.isnan(price) else price,
                currency=currency,
                category=categories.id(category) if category >= 0 else "",
                ship_days=None if math.isnan(ship_days) else int(ship_days),
            )
            if is_known
            else ItemCard()
            for is_known, title, image_url, price, currency, category, ship_days in fields
        ]


class _SharedWith:
    """What friends shared with one user: newest first (ties by item id, then sharer), one
    entry per (item, sharer) at its newest share, at most SHARED_BOUND.

    Kept sorted by ``bisect``, with each (item code, sharer)'s newest time beside it: a share
    to all of 1,000 friends adds to 1,000 of these under the store's lock, and a scan and a
    sort per add made a batch of 200 such shares hold it for 3.4 s."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, str, int]] = []  # (-ts, item id, sharer, item code)
        self.newest: dict[tuple[int, str], float] = {}  # (item code, sharer) -> -ts of its entry

    def add(self, code: int, item_id: str, sharer: str, ts: float) -> None:
        entry = (-ts, item_id, sharer, code)
        entries = self.entries
        if len(entries) >= SHARED_BOUND and entry >= entries[-1]:
            return  # older than all it would have to stay among: cut at once
        key = (code, sharer)
        earlier = self.newest.get(key)
        if earlier is not None:
            if -earlier >= ts:
                return
            del entries[bisect.bisect_left(entries, (earlier, item_id, sharer, code))]
        bisect.insort(entries, entry)
        self.newest[key] = -ts
        if len(entries) > SHARED_BOUND:
            _, _, dropped_sharer, dropped_code = entries.pop()
            del self.newest[(dropped_code, dropped_sharer)]

    def read(self) -> SharedItems:
        return SharedItems(
            np.array([e[3] for e in self.entries], np.int32),
            np.array([-e[0] for e in self.entries], np.float64),
            tuple(e[2] for e in self.entries),
        )


class _Seen:
    """One user's views per item since they last engaged with it (seen-item fatigue).

    A view more than VIEW_WINDOW_SECONDS after the item's last one starts a new count;
    past SEEN_BOUND items the one viewed longest ago (ties: smallest id) is forgotten.
    """

    def __init__(self) -> None:
        self.views: dict[int, tuple[int, float, str]] = {}  # code -> (views, last view, item id)
        # (codes sorted, their views, their last views): rebuilt on the first read after a
        # change, as a user's feeds read their views far more often than they add to them.
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def view(self, code: int, item_id: str, ts: float) -> None:
        count, last, _ = self.views.get(code, (0, -math.inf, item_id))
        if ts - last > VIEW_WINDOW_SECONDS:
            count = 0
        self.views[code] = (count + 1, max(last, ts), item_id)
        if len(self.views) > SEEN_BOUND:
            del self.views[min(self.views, key=lambda c: self.views[c][1:])]
        self._arrays = None

    def engaged(self, code: int) -> None:
        if self.views.pop(code, None) is not None:
            self._arrays = None

    def fill(self, codes: np.ndarray, columns: ItemColumns) -> None:
        """Set ``columns.views`` and ``viewed_at`` of the rows whose code was viewed."""
        if not self.views:
            return
        arrays = self._arrays
        if arrays is None:
            seen = np.fromiter(self.views, np.int64, len(self.views))
            order = np.argsort(seen)
            counts = np.array([v[0] for v in self.views.values()], np.int64)[order]
            lasts = np.array([v[1] for v in self.views.values()], np.float64)[order]
            arrays = self._arrays = (seen[order], counts, lasts)
        seen, counts, lasts = arrays
        hit, at = sorted_positions(seen, codes)
        at = at[hit]
        columns.views[hit] = counts[at]
        columns.viewed_at[hit] = lasts[at]


def replay_engagements(
    dataset: Dataset, friends: dict[str, set[str]], item_code: Callable[[str], int], readers: Collection[str] | None = None
) -> tuple[defaultdict[str, _SharedWith], defaultdict[str, _Seen]]:
    """(shared with each user, each user's fatigue): what applying the dataset's
    engagements, and the likes that clear views, in time order leaves behind.

    ``friends`` are the friends of each user (a share to no one in particular reaches
    them); with ``readers``, only their state is kept. A dataset with received_share
    rows (RECEIVED_SHARE: an export's) says whom each share reached: then those rows
    alone fill what users were shared, and shares reach no one else.
    """
    shared: defaultdict[str, _SharedWith] = defaultdict(_SharedWith)
    seen: defaultdict[str, _Seen] = defaultdict(_Seen)
    engagements = dataset.engagements
    if not len(engagements):
        return shared, seen
    rows = list(zip(np.nan_to_num(engagements.ts, nan=0.0).tolist(), engagements.kind, engagements.user_id,
                    engagements.item_id, engagements.friend_id))  # fmt: skip
    received = [row for row in rows if row[1] == RECEIVED_SHARE]
    if received:
        for ts, _, user, item, sharer in received:
            if readers is None or user in readers:
                shared[user].add(item_code(item), item, sharer, ts)
        # Every share's recipients are known: a share still counts as the sharer's
        # engagement (fatigue), and reaches no one.
        friends = {}
        share = EventKind.SHARE.value
        rows = [(ts, kind, user, item, "" if kind == share else friend)
                for ts, kind, user, item, friend in rows if kind != RECEIVED_SHARE]  # fmt: skip
    viewed = {(user, item) for _, kind, user, item, _ in rows if kind == EventKind.VIEW.value}
    likes = dataset.likes
    rows += [
        (ts, EventKind.LIKE.value, user, item, "")
        for ts, user, item in zip(np.nan_to_num(likes.ts, nan=0.0).tolist(), likes.src, likes.dst)
        if (user, item) in viewed
    ]
    rows.sort(key=lambda row: row[0])
    keep = None if readers is None else set(readers).__contains__
    kinds = {kind.value: kind for kind in EventKind}
    # Fields, not Events: building 1.5M Events (and their kinds) was a third of this loop.
    for ts, kind, user, item, friend in rows:
        engage(shared, seen, friends, kinds[kind], user, item, friend, ts, item_code(item), keep)
    return shared, seen


def engage(
    shared: dict[str, _SharedWith],
    seen: dict[str, _Seen],
    friends: dict[str, set[str]],
    kind: EventKind,
    user_id: str,
    item_id: str,
    friend_id: str,
    ts: float,
    code: int,
    keep: Callable[[str], bool] | None = None,
) -> None:
    """A like, share, view, click, cart or purchase: a share reaches its recipients (the
    named friend, or all of the user's friends); a view counts towards fatigue, and any
    other kind clears it. With ``keep``, only the state of users it accepts changes."""
    if kind is EventKind.SHARE:
        for recipient in [friend_id] if friend_id else sorted(friends.get(user_id, ())):
            if keep is None or keep(recipient):
                shared[recipient].add(code, item_id, user_id, ts)
    if keep is not None and not keep(user_id):
        return
    if kind is EventKind.VIEW:
        seen[user_id].view(code, item_id, ts)
    elif user_id in seen:
        seen[user_id].engaged(code)


_CARD_COLUMNS = ("title", "image_url", "price", "currency", "category", "ship_days")
"""The catalogue columns an ItemCard is read from, in read_cards's order."""


def _grown(old: np.ndarray, size: int, fill: object) -> np.ndarray:
    grown = np.full(size, fill, dtype=old.dtype)
    grown[: len(old)] = old
    return grown


class MemoryStore:
    """All live state in numpy columns, timelines and sets, guarded by one lock.

    Trending is recomputed at most every ``trending_refresh_seconds`` after a like
    changes it; it only nominates candidates, which are hydrated fresh, so a short delay
    never shows a stale stock level.

    Applied event ids are remembered for ``dedupe_ttl`` seconds of wall time (``clock``)
    from when they were applied, as Redis does with its key TTL (0: forever), so the
    memory they take is bounded by the ingest rate times the TTL: a batch retried
    within the TTL changes nothing, one retried later is applied again. Ingest refuses
    an edit that would give a user more than ``max_friends`` friends or ``max_follows``
    followed sellers (0: no cap; a dataset load is not capped).
    """

    def __init__(
        self,
        recent_likes: int = DEFAULT_RECENT_LIKES,
        trending_refresh_seconds: float = DEFAULT_TRENDING_REFRESH_SECONDS,
        dedupe_ttl: float = DEFAULT_DEDUPE_TTL,
        max_friends: int = DEFAULT_MAX_FRIENDS,
        max_follows: int = DEFAULT_MAX_FOLLOWS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.recent_likes_bound = recent_likes
        self.trending_refresh_seconds = trending_refresh_seconds
        self.dedupe_ttl = dedupe_ttl
        self.max_friends = max_friends
        self.max_follows = max_follows
        self._clock = clock
        self.items = Vocabulary()
        self.sellers = Vocabulary()
        self.users = Vocabulary()
        self.categories = Vocabulary()
        self._lock = threading.RLock()
        self._catalogue = _Catalogue()
        self._likes = TimelineTable()  # by user code: every like, newest first
        self._listings = TimelineTable()  # by seller code
        self._follows: dict[str, set[str]] = defaultdict(set)
        self._friends: dict[str, set[str]] = defaultdict(set)
        self._hidden_items: dict[str, set[int]] = defaultdict(set)
        self._hidden_sellers: dict[str, set[int]] = defaultdict(set)
        self._shared: dict[str, _SharedWith] = defaultdict(_SharedWith)  # by recipient
        self._seen: dict[str, _Seen] = defaultdict(_Seen)
        self._trending_cache = np.zeros(0, np.int32)
        self._trending_cache_depth = 0
        self._trending_dirty_since: float | None = 0.0
        self._applied = AppliedIds()
        self._on_applied: Callable[[list[Event]], None] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"], state["_on_applied"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._on_applied = None

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, progress: bool = False, readers: Collection[str] | None = None, **kwargs: float
    ) -> MemoryStore:
        """A store holding ``dataset``, built in bulk (the same state as applying its events).

        A repeated like keeps its first time, as ``apply`` does. ``progress`` draws a bar.
        With ``readers``, the store serves only those users' feeds (a trainer's sample):
        the catalogue and its like counts cover everything, but likes, follows and
        friendships are kept only for the readers and their friends, the users a feed reads.
        """
        store = cls(**kwargs)
        items, likes = dataset.items, dataset.likes
        steps = ("catalogue", "likes", "timelines", "graph", "engagements", "hidden")
        with gc_paused(), tqdm(total=len(steps), desc="load memory store", unit="step", disable=not progress) as bar:
            item_codes = store.items.codes(items.item_id, add=True)
            has_seller = np.fromiter((bool(s) for s in items.seller_id), bool, len(items))
            seller_codes = np.full(len(items), -1, np.int32)
            seller_codes[has_seller] = store.sellers.codes([s for s in items.seller_id if s], add=True)
            catalogue = store._catalogue
            catalogue.reserve(len(store.items))
            catalogue.exists[item_codes] = True
            catalogue.seller[item_codes] = seller_codes
            catalogue.created_at[item_codes] = np.nan_to_num(items.created_at, nan=0.0)
            catalogue.stock[item_codes] = items.stock
            catalogue.price[item_codes] = items.price
            catalogue.ship_days[item_codes] = items.ship_days
            catalogue.eligible[item_codes] = items.feed_eligible
            has_category = np.fromiter((bool(c) for c in items.category), bool, len(items))
            catalogue.category[item_codes[has_category]] = store.categories.codes([c for c in items.category if c], add=True)
            for name in ("title", "image_url", "currency"):
                getattr(catalogue, name)[item_codes] = getattr(items, name)
            sellers = dataset.sellers
            on_vacation = ~np.isnan(sellers.vacation_until)
            away = store.sellers.codes([s for s, v in zip(sellers.seller_id, on_vacation) if v], add=True)
            catalogue.reserve_sellers(len(store.sellers))
            catalogue.away_until[away] = sellers.vacation_until[on_vacation]
            bar.update()

            users = store.users.codes(likes.src, add=True)
            liked = store.items.codes(likes.dst, add=True)
            catalogue.reserve(len(store.items))
            times = np.nan_to_num(np.asarray(likes.ts, dtype=np.float64), nan=0.0)
            pair = users.astype(np.int64) * max(len(store.items), 1) + liked
            _, first = np.unique(pair, return_index=True)
            users, liked, times = users[first], liked[first], times[first]
            n_items = len(store.items)
            known = catalogue.exists[:n_items]
            catalogue.like_count[:n_items] += np.where(known, np.bincount(liked, minlength=n_items), 0)
            catalogue.trending[:n_items] += np.bincount(liked, weights=trending_weights(times), minlength=n_items)
            bar.update()

            follows = dataset.follows.src, dataset.follows.dst
            friends = dataset.friends.src, dataset.friends.dst
            if readers is not None:
                readers = set(readers) | _friends_of(set(readers), dataset.friends)
                kept = np.zeros(len(store.users), bool)
                reader_codes = store.users.codes(sorted(readers))
                kept[reader_codes[reader_codes != UNKNOWN]] = True  # UNKNOWN (-1) would mark the last user
                kept_likes = kept[users]
                users, liked, times = users[kept_likes], liked[kept_likes], times[kept_likes]
                follows = _pairs_where(dataset.follows, lambda user, _seller: user in readers)
                friends = _pairs_where(dataset.friends, lambda a, b: a in readers or b in readers)
            ranks = id_ranks(store.items)
            store._likes = TimelineTable.build(users, liked, times, len(store.users), ranks)
            listed = (seller_codes >= 0) & (items.stock > 0)  # a seller's timeline lists what is in stock
            store._listings = TimelineTable.build(
                seller_codes[listed], item_codes[listed], catalogue.created_at[item_codes[listed]], len(store.sellers), ranks
            )
            bar.update()

            store._follows.update(_grouped_sets(*follows))
            store._friends.update(_grouped_sets(friends[0] + friends[1], friends[1] + friends[0]))
            bar.update()

            store._shared, store._seen = replay_engagements(dataset, store._friends, store.items.code, readers)
            bar.update()

            for hides, hidden, vocabulary in ((dataset.hidden_items, store._hidden_items, store.items),
                                              (dataset.hidden_sellers, store._hidden_sellers, store.sellers)):
                for user_id, code in zip(hides.src, vocabulary.codes(hides.dst, add=True).tolist()):
                    if readers is None or user_id in readers:
                        hidden[user_id].add(code)
            bar.update()
        return store

    # -- reads -------------------------------------------------------------------------

    def read_user(self, user_id: str) -> UserState:
        with self._lock:
            items, times = self._likes.row(self.users.code(user_id))
            bound = self.recent_likes_bound
            return UserState(
                user_id=user_id,
                recent_likes=items[:bound].copy(),
                recent_like_times=times[:bound].copy(),
                follows=tuple(sorted(self._follows.get(user_id, ()))),
                friends=tuple(sorted(self._friends.get(user_id, ()))),
                hidden_items=np.fromiter(self._hidden_items.get(user_id, ()), np.int32),
                hidden_sellers=np.fromiter(self._hidden_sellers.get(user_id, ()), np.int32),
                shared=self._shared[user_id].read() if user_id in self._shared else SharedItems(),
            )

    def read_activity(
        self, seller_ids: Sequence[str], friend_ids: Sequence[str], per_key_limit: int, trending_limit: int
    ) -> Activity:
        with self._lock:
            return Activity(
                listings=self._listings.newest(self.sellers.codes(seller_ids).tolist(), per_key_limit),
                friend_likes=self._likes.newest(
                    self.users.codes(friend_ids).tolist(), min(per_key_limit, self.recent_likes_bound)
                ),
                trending=self._trending(trending_limit),
            )

    def hydrate(self, user_id: str, item_codes: np.ndarray) -> ItemColumns:
        codes = np.asarray(item_codes, dtype=np.int32)
        with self._lock:
            columns = self._catalogue.columns(codes)
            liked_items, _ = self._likes.row(self.users.code(user_id))
            if len(liked_items):
                columns.liked[:] = sorted_positions(np.sort(liked_items), codes)[0]
            if user_id in self._seen:
                self._seen[user_id].fill(codes, columns)
            return columns

    def read_cards(self, item_codes: np.ndarray) -> list[ItemCard]:
        with self._lock:
            return self._catalogue.cards(np.asarray(item_codes, dtype=np.int64).tolist(), self.categories)

    def _trending(self, limit: int) -> np.ndarray:
        if limit <= 0:
            return np.zeros(0, np.int32)
        now = time.monotonic()
        stale = self._trending_dirty_since is not None and now - self._trending_dirty_since >= self.trending_refresh_seconds
        if stale or limit > self._trending_cache_depth:
            depth = max(limit, _TRENDING_CACHE_DEPTH)
            self._trending_cache = self._top_trending(depth)
            self._trending_cache_depth = depth
            self._trending_dirty_since = None
        return self._trending_cache[:limit]

    def _top_trending(self, depth: int) -> np.ndarray:
        """Up to ``depth`` codes with a positive score, best first; ties put the larger id first."""
        scores = self._catalogue.trending[: len(self.items)]
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > depth:
            # Keep every item tied with the depth-th score, so ties are cut by id, not by chance.
            threshold = np.partition(scores[candidates], len(candidates) - depth)[len(candidates) - depth]
            candidates = candidates[scores[candidates] >= threshold]
        ranked = sorted(zip(scores[candidates].tolist(), self.items.ids(candidates.tolist()), candidates.tolist()), reverse=True)
        return np.array([code for _, _, code in ranked[:depth]], dtype=np.int32)

    # -- writes ------------------------------------------------------------------------

    def apply(self, events: Sequence[Event], min_replicas: int = 0) -> ApplyResult:
        """Apply a validated batch atomically; see FeedStore.apply (no replicas: ``min_replicas`` must be 0).

        Raises EventValidationError, before changing anything, for a like or stock update
        of an item that neither exists nor is upserted earlier in the batch.
        """
        no_replicas(min_replicas)
        with self._lock:
            now = self._clock()
            self._applied.forget_expired(now)
            fresh = self._applied.fresh([event.event_id for event in events])
            first_error(
                lambda: check_references(events, fresh, self._exists),
                lambda: check_degrees(events, fresh, self._degree, self._has_edge, self.max_friends, self.max_follows),
            )
            for index in fresh:
                self._apply_one(events[index])
            self._applied.remember([events[index].event_id for index in fresh], now, self.dedupe_ttl)
            if fresh and self._on_applied is not None:
                self._on_applied([events[index] for index in fresh])
            return ApplyResult(applied=len(fresh), duplicates=len(events) - len(fresh))

    # -- copies in other processes (serving/feed_processes.py) ---------------------------

    def applied_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        with self._lock:
            self._applied.forget_expired(self._clock())
            return {event_id for event_id in event_ids if event_id in self._applied}

    def restore_applied_ids(self, applied: AppliedIds) -> None:
        """Remember ``applied`` as the ids applied so far (a compacted snapshot's, stores/durable.py)."""
        with self._lock:
            self._applied = applied

    def publish_applied(self, listener: Callable[[list[Event]], None]) -> None:
        """Call ``listener`` with the events of every later apply that changed something,
        in the order they were applied, under the store's lock (so it must not block)."""
        self._on_applied = listener

    def pickled_state(self, then: Callable[[], None] = lambda: None) -> bytes:
        """The whole state, pickled (``pickle.loads`` gives a store that reads the same);
        ``then`` runs under the same lock, so no apply falls between the two."""
        with self._lock:
            state = pickle.dumps(self, pickle.HIGHEST_PROTOCOL)
            then()
            return state

    def replay_applied(self, events: Sequence[Event]) -> None:
        """Apply events another store of the same state applied, in its order: a copy's
        writes (they were checked, and duplicates dropped, when first applied)."""
        with self._lock:
            for event in events:
                self._apply_one(event)

    def _degree(self, what: str, user_id: str) -> int:
        return len((self._friends if what == "friends" else self._follows).get(user_id, ()))

    def _has_edge(self, what: str, user_id: str, other: str) -> bool:
        return other in (self._friends if what == "friends" else self._follows).get(user_id, ())

    def _exists(self, item_id: str) -> bool:
        code = self.items.code(item_id)
        return code >= 0 and code < len(self._catalogue.exists) and bool(self._catalogue.exists[code])


    def _apply_one(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.LIKE:
            self._like(event.user_id, event.item_id, event.ts)
            self._engage(event)
        elif kind in ENGAGEMENTS:
            self._engage(event)
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
            self._upsert(event)
        elif kind is EventKind.STOCK_UPDATE:
            self._restock(self.items.code(event.item_id), event.stock)
        elif kind is EventKind.NOT_INTERESTED_ITEM:
            self._hidden_items[event.user_id].add(self._item_code(event.item_id))
        elif kind is EventKind.NOT_INTERESTED_SELLER:
            self._hidden_sellers[event.user_id].add(self.sellers.add(event.seller_id))
        elif kind is EventKind.ITEM_UPDATE:
            self._catalogue.set_card(self.items.code(event.item_id), event.card(), self.categories)
        elif kind in (EventKind.SELLER_VACATION, EventKind.SELLER_VACATION_END):
            seller = self.sellers.add(event.seller_id)
            self._catalogue.reserve_sellers(len(self.sellers))
            self._catalogue.away_until[seller] = event.vacation_until if kind is EventKind.SELLER_VACATION else 0.0

    def _engage(self, event: Event) -> None:
        engage(self._shared, self._seen, self._friends, event.kind, event.user_id, event.item_id, event.friend_id, event.ts,
               self.items.code(event.item_id))

    def _item_code(self, item_id: str) -> int:
        code = self.items.add(item_id)
        self._catalogue.reserve(len(self.items))
        return code

    def _upsert(self, event: Event) -> None:
        code = self._item_code(event.item_id)
        catalogue = self._catalogue
        seller = self.sellers.add(event.seller_id) if event.seller_id else -1
        old_seller = int(catalogue.seller[code]) if catalogue.exists[code] else -1
        if old_seller >= 0 and old_seller != seller:
            self._listings.remove(old_seller, code)
        created_at = event.created_at
        if created_at is None:  # not given: an existing item keeps its listing time
            created_at = float(catalogue.created_at[code]) if catalogue.exists[code] else event.ts
        catalogue.exists[code] = True
        catalogue.seller[code] = seller
        catalogue.created_at[code] = created_at
        catalogue.stock[code] = event.stock
        catalogue.set_card(code, event.card(), self.categories)
        if seller >= 0 and event.stock > 0:
            self._listings.add(seller, code, created_at, self.items)
        elif seller >= 0:
            self._listings.remove(seller, code)

    def _restock(self, code: int, stock: int) -> None:
        """Set an item's stock: one that sells out leaves its seller's timeline, one back in
        stock returns to it at its listing time (the timelines list in-stock items only, so
        sold-out ones never take the place of in-stock ones in a feed's read)."""
        catalogue = self._catalogue
        was_in_stock, seller = catalogue.stock[code] > 0, int(catalogue.seller[code])
        catalogue.stock[code] = stock
        if seller < 0 or was_in_stock == (stock > 0):
            return
        if stock > 0:
            self._listings.add(seller, code, float(catalogue.created_at[code]), self.items)
        else:
            self._listings.remove(seller, code)

    def _like(self, user_id: str, item_id: str, ts: float) -> None:
        user, item = self.users.add(user_id), self._item_code(item_id)
        if not self._likes.add_if_absent(user, item, ts, self.items):
            return
        if self._catalogue.exists[item]:
            self._catalogue.like_count[item] += 1
        self._catalogue.trending[item] += trending_weight(ts)
        self._mark_trending_dirty()

    def _unlike(self, user_id: str, item_id: str) -> None:
        user, item = self.users.code(user_id), self.items.code(item_id)
        ts = self._likes.remove(user, item) if user >= 0 and item >= 0 else None
        if ts is None:
            return
        catalogue = self._catalogue
        if catalogue.exists[item]:
            catalogue.like_count[item] = max(catalogue.like_count[item] - 1, 0)
        catalogue.trending[item] = untrended(float(catalogue.trending[item]), trending_weight(ts))
        self._mark_trending_dirty()

    def _mark_trending_dirty(self) -> None:
        if self._trending_dirty_since is None:
            self._trending_dirty_since = time.monotonic()

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
