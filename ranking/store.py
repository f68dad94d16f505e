"""The read side of the online store, as the ranking pipeline sees it: answers are arrays.

Each method is one batched read: one round trip on a networked store, whatever the
number of ids it is given. A feed costs exactly four calls (the fourth reads the cards
of the page's items only), so its latency does not grow with the number of friends or
followed sellers.

Items and sellers travel as int32 codes of the store's own vocabularies
(``ranking.vocab``); users, friends and followed sellers as string ids, because there
are few of them per request and the reasons on a page name them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ranking.types import ItemCard
from ranking.vocab import Vocabulary

# Trending is a like count where each like decays with half-life TRENDING_HALF_LIFE.
# Stores keep sum(exp((ts - TRENDING_EPOCH) / tau)) per item, which only ever grows by
# increments, so Redis can keep it with ZINCRBY and no periodic recomputation; the
# ordering is the same as that of the decayed count at any "now".
TRENDING_EPOCH = 1_735_689_600.0  # 2025-01-01T00:00:00Z
TRENDING_HALF_LIFE = 3 * 86_400.0
_TRENDING_TAU = TRENDING_HALF_LIFE / math.log(2)
# exp() overflows a double past 709; clamp so a far-future timestamp cannot poison the set.
# The lower clamp keeps very old likes, and likes of unknown time (stored as 0), above
# zero: a dataset without timestamps still has trending items, ordered by like count.
_MAX_EXPONENT = 700.0
_MIN_EXPONENT = -700.0


def trending_weight(ts: float) -> float:
    """The amount one like at time ``ts`` adds to its item's trending score."""
    return math.exp(min(max((ts - TRENDING_EPOCH) / _TRENDING_TAU, _MIN_EXPONENT), _MAX_EXPONENT))


# An unlike takes its like's weight off the sum again, which leaves the rounding errors of
# the additions and subtractions behind: when every like is undone, a score a few 1e-16 of
# the largest weight it held, above 0 a third of the time, and an item nobody likes was
# still trending. What an unlike leaves at or below this share of the weight it took off
# is that error (or likes 60 days older than the one undone, each weighing less than a
# millionth of it), and the score is 0.
TRENDING_RESIDUE = 2.0**-20


def trending_weights(ts: np.ndarray) -> np.ndarray:
    """``trending_weight`` of each time (float64), vectorised."""
    return np.exp(np.clip((np.asarray(ts, dtype=np.float64) - TRENDING_EPOCH) / _TRENDING_TAU, _MIN_EXPONENT, _MAX_EXPONENT))


def untrended(score: float, weight: float) -> float:
    """The trending score ``score`` once a like of ``weight`` (its ``trending_weight``) is
    undone: 0 when what is left is at most TRENDING_RESIDUE of ``weight``."""
    left = score - weight
    return 0.0 if left <= weight * TRENDING_RESIDUE else left


def recent_like_count(trending: np.ndarray, now: float) -> np.ndarray:
    """Each item's like count at ``now`` with every like decayed by TRENDING_HALF_LIFE,
    from the stored trending sums (float64; 0 for an item without likes)."""
    trending = np.asarray(trending, dtype=np.float64)
    elapsed = (now - TRENDING_EPOCH) / _TRENDING_TAU
    if abs(elapsed) < _MAX_EXPONENT:
        # exp(log(sum) - elapsed) as one multiply, whenever exp(-elapsed) is a finite normal double.
        return np.minimum(trending * math.exp(-elapsed), math.exp(_MAX_EXPONENT))
    with np.errstate(divide="ignore"):
        exponent = np.log(trending) - elapsed
    return np.exp(np.minimum(exponent, _MAX_EXPONENT))


# Seen-item fatigue. Stores count a user's views of an item since they last engaged with
# it; views more than VIEW_WINDOW_SECONDS apart start a new count, so an item the user
# stopped seeing is forgiven. Each user keeps the newest SEEN_BOUND items they viewed.
VIEW_WINDOW_SECONDS = 3 * 86_400.0
SEEN_BOUND = 500
# Each user keeps the newest SHARED_BOUND items friends shared with them.
SHARED_BOUND = 100


def _codes(values: Sequence[int] = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def _times(values: Sequence[float] = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class Timelines:
    """Several newest-first lists of (item, time), flattened.

    Row j is item ``items[j]`` at ``times[j]`` in list ``owners[j]`` (an index into the
    keys that were asked for). Rows of one list are contiguous and newest first; lists
    follow the order of the asked keys.
    """

    items: np.ndarray = field(default_factory=_codes)  # int32 item codes
    times: np.ndarray = field(default_factory=_times)  # float64
    owners: np.ndarray = field(default_factory=_codes)  # int32

    def __len__(self) -> int:
        return len(self.items)

    def rows_of_owner(self) -> np.ndarray:
        """For each row, how many rows its list has (float64: what was read of that key)."""
        return np.bincount(self.owners)[self.owners].astype(np.float64)

    @classmethod
    def concat(cls, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> Timelines:
        """Join per-key (items, times) pairs, the i-th pair owned by key i."""
        if not parts:
            return cls()
        lengths = np.fromiter((len(items) for items, _ in parts), np.int64, len(parts))
        return cls(
            np.concatenate([items for items, _ in parts]).astype(np.int32, copy=False),
            np.concatenate([times for _, times in parts]).astype(np.float64, copy=False),
            np.repeat(np.arange(len(parts), dtype=np.int32), lengths),
        )


@dataclass(frozen=True)
class SharedItems:
    """Items friends shared with one user, newest first: ``items[j]`` by ``sharers[j]`` at ``times[j]``."""

    items: np.ndarray = field(default_factory=_codes)  # int32 item codes
    times: np.ndarray = field(default_factory=_times)  # float64
    sharers: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class UserState:
    """A user's social state, read once per request.

    ``recent_likes`` are item codes, newest first, bounded by the store; membership of
    all likes (not only recent ones) is checked at hydration, so the bound never leaks
    an already-liked item into the feed. ``follows`` and ``friends`` are sorted ids;
    ``shared`` the items friends shared with the user (bounded by SHARED_BOUND).
    """

    user_id: str
    recent_likes: np.ndarray = field(default_factory=_codes)  # int32 item codes
    recent_like_times: np.ndarray = field(default_factory=_times)  # float64
    follows: tuple[str, ...] = ()
    friends: tuple[str, ...] = ()
    hidden_items: np.ndarray = field(default_factory=_codes)  # int32 item codes
    hidden_sellers: np.ndarray = field(default_factory=_codes)  # int32 seller codes
    shared: SharedItems = field(default_factory=SharedItems)

    @property
    def is_empty(self) -> bool:
        return not (len(self.recent_likes) or self.follows or self.friends or len(self.shared))


@dataclass(frozen=True)
class Activity:
    """Recent social activity around one user.

    ``listings`` (items in stock) are owned by the asked sellers, ``friend_likes`` by the asked friends,
    each list bounded by the asked ``per_key_limit``; ``trending`` are item codes, best
    first.
    """

    listings: Timelines = field(default_factory=Timelines)
    friend_likes: Timelines = field(default_factory=Timelines)
    trending: np.ndarray = field(default_factory=_codes)


def as_indices(rows: np.ndarray) -> np.ndarray:
    """An index array for a selection of rows (a boolean mask or indices): ``take`` with it
    costs half of indexing each column with a mask."""
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool else rows


@dataclass(frozen=True)
class ItemColumns:
    """The current state of the asked items, one entry per asked code, same order.

    ``exists`` is false for items the store does not hold; their other columns are
    meaningless. ``seller`` is a seller code, -1 for an item without a seller;
    ``category`` a code of the store's ``categories`` vocabulary, -1 for none.
    """

    exists: np.ndarray  # bool
    seller: np.ndarray  # int32 seller codes
    created_at: np.ndarray  # float64
    stock: np.ndarray  # int64
    like_count: np.ndarray  # int64
    liked: np.ndarray  # bool: the asking user liked it (at any time, not only recently)
    trending: np.ndarray  # float64: sum of trending_weight over the item's likes (see recent_like_count)
    eligible: np.ndarray  # bool: the seller lets the feed show it (feed_eligible)
    seller_away_until: np.ndarray  # float64: end of the seller's vacation (inf: until further notice; 0: none)
    price: np.ndarray  # float64, NaN when unknown
    ship_days: np.ndarray  # float64 days until dispatch, NaN when unknown
    category: np.ndarray  # int32 category codes
    views: np.ndarray  # int64: the asking user's views of it since they last engaged with it (see VIEW_WINDOW_SECONDS)
    viewed_at: np.ndarray  # float64: the asking user's last view of it (0: never)

    def __len__(self) -> int:
        return len(self.exists)

    def take(self, rows: np.ndarray | slice) -> ItemColumns:
        """The selected rows (index array, mask or slice), in that order."""
        if isinstance(rows, slice):
            return ItemColumns(*(getattr(self, name)[rows] for name in ITEM_COLUMNS))
        at = as_indices(rows)
        return ItemColumns(*(getattr(self, name).take(at) for name in ITEM_COLUMNS))

    @classmethod
    def empty(cls, n: int = 0) -> ItemColumns:
        return cls(*(np.full(n, fill, dtype) for fill, dtype in ITEM_COLUMNS.values()))


ITEM_COLUMNS: dict[str, tuple[object, type]] = {
    "exists": (False, bool),
    "seller": (-1, np.int32),
    "created_at": (0.0, np.float64),
    "stock": (0, np.int64),
    "like_count": (0, np.int64),
    "liked": (False, bool),
    "trending": (0.0, np.float64),
    "eligible": (True, bool),
    "seller_away_until": (0.0, np.float64),
    "price": (np.nan, np.float64),
    "ship_days": (np.nan, np.float64),
    "category": (-1, np.int32),
    "views": (0, np.int64),
    "viewed_at": (0.0, np.float64),
}
"""Each ItemColumns field, in order, with the value and dtype of an item the store does not hold."""


class FeedStateReader(Protocol):
    """Read-only view of the live state that one feed needs.

    ``items``, ``sellers`` and ``categories`` are the vocabularies the store's codes come from.
    """

    items: Vocabulary
    sellers: Vocabulary
    categories: Vocabulary

    def read_user(self, user_id: str) -> UserState:
        """The user's recent likes, follows, friends, hidden items and sellers, and what friends shared with them.

        An unknown user gets an empty state, never an error.
        """
        ...

    def read_activity(
        self,
        seller_ids: Sequence[str],
        friend_ids: Sequence[str],
        per_key_limit: int,
        trending_limit: int,
    ) -> Activity:
        """Newest in-stock listings of each seller, newest likes of each friend and the top trending items.

        Unknown sellers and friends have empty lists. Ties in time list the smaller id
        first; ties in trending the larger id first.
        """
        ...

    def hydrate(self, user_id: str, item_codes: np.ndarray) -> ItemColumns:
        """Each asked item's ItemColumns row: its state, and the user's like and views of it."""
        ...

    def read_cards(self, item_codes: np.ndarray) -> list[ItemCard]:
        """What a client draws each asked item's card from, same order; called for the
        items of a served page only. An unknown item gets an empty card."""
        ...
