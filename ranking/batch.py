"""The candidates of one feed as one batch of columns.

Sources each return a batch; the executor joins them, merges rows of the same item,
applies filters as boolean masks, hydrates the item columns with one store read and
hands the batch to the scorer. Only the items of the returned page ever become Python
objects. Columns are numpy arrays of one length, one row per candidate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ranking.store import ItemColumns

# One bit per candidate source, in the candidate's ``sources`` column.
FOLLOWED_SELLER = np.uint8(1)
FRIEND_LIKE = np.uint8(2)
EMBEDDING = np.uint8(4)
ITEM_KNN = np.uint8(8)
TRENDING = np.uint8(16)
FRIEND_SHARE = np.uint8(32)
SIMILAR = EMBEDDING | ITEM_KNN
# Each bit's source (ranking.sources names), in bit order.
SOURCE_BITS = (
    ("followed_sellers", FOLLOWED_SELLER),
    ("friend_likes", FRIEND_LIKE),
    ("embedding_neighbours", EMBEDDING),
    ("item_knn", ITEM_KNN),
    ("trending", TRENDING),
    ("friend_shares", FRIEND_SHARE),
)


def source_names(mask: int) -> tuple[str, ...]:
    """The names of the sources whose bits are set in ``mask``."""
    return tuple(name for name, bit in SOURCE_BITS if mask & int(bit))


def _floats(n: int) -> np.ndarray:
    return np.full(n, np.nan, dtype=np.float64)


def _never(n: int) -> np.ndarray:
    return np.full(n, -np.inf, dtype=np.float64)


@dataclass
class CandidateBatch:
    """Candidates and their signals. An absent embedding score is NaN; an absent time is -inf.

    ``friend_likes`` is the number of friends who liked the item, ``friend_like_time``
    the newest such like, ``friend_shares`` the number of friends who shared it with the
    user, ``social_time`` the newest social event behind the item (a followed seller's
    listing, a friend's like or share). ``items`` is filled by hydration.
    """

    codes: np.ndarray  # int32 item codes
    sources: np.ndarray  # uint8 bitmask of the sources that gathered the item
    embedding_score: np.ndarray  # float64 <user vector, item factor>
    friend_likes: np.ndarray  # int32
    friend_like_time: np.ndarray  # float64
    social_time: np.ndarray  # float64
    friend_shares: np.ndarray  # int32
    items: ItemColumns | None = field(default=None)

    def __len__(self) -> int:
        return len(self.codes)

    @classmethod
    def gathered(
        cls,
        codes: np.ndarray,
        source: np.uint8,
        embedding_score: np.ndarray | None = None,
        friend_likes: np.ndarray | None = None,
        friend_like_time: np.ndarray | None = None,
        social_time: np.ndarray | None = None,
        friend_shares: np.ndarray | None = None,
    ) -> CandidateBatch:
        """What one source returns: codes, its bit, and the signals it knows (others absent)."""
        n = len(codes)
        return cls(
            codes=np.asarray(codes, dtype=np.int32),
            sources=np.full(n, source, dtype=np.uint8),
            embedding_score=_floats(n) if embedding_score is None else np.asarray(embedding_score, np.float64),
            friend_likes=np.zeros(n, np.int32) if friend_likes is None else np.asarray(friend_likes, np.int32),
            friend_like_time=_never(n) if friend_like_time is None else np.asarray(friend_like_time, np.float64),
            social_time=_never(n) if social_time is None else np.asarray(social_time, np.float64),
            friend_shares=np.zeros(n, np.int32) if friend_shares is None else np.asarray(friend_shares, np.int32),
        )

    @classmethod
    def empty(cls) -> CandidateBatch:
        return cls.gathered(np.zeros(0, np.int32), np.uint8(0))

    @classmethod
    def concat(cls, parts: list[CandidateBatch]) -> CandidateBatch:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in _SIGNAL_COLUMNS))

    def take(self, rows: np.ndarray) -> CandidateBatch:
        """The rows selected by an index array or a boolean mask, in that order."""
        items = self.items.take(rows) if self.items is not None else None
        return CandidateBatch(*(getattr(self, name)[rows] for name in _SIGNAL_COLUMNS), items=items)

    def merge_duplicates(self) -> CandidateBatch:
        """One row per item, ordered by code: sources OR-ed, every signal its strongest (newest) value."""
        if not len(self):
            return self
        order = np.argsort(self.codes, kind="stable")
        codes = self.codes[order]
        starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
        if len(starts) == len(codes):
            return self.take(order)

        def reduce(ufunc: np.ufunc, column: np.ndarray) -> np.ndarray:
            return ufunc.reduceat(column[order], starts)

        return CandidateBatch(
            codes=codes[starts],
            sources=reduce(np.bitwise_or, self.sources),
            embedding_score=reduce(np.fmax, self.embedding_score),
            friend_likes=reduce(np.maximum, self.friend_likes),
            friend_like_time=reduce(np.maximum, self.friend_like_time),
            social_time=reduce(np.maximum, self.social_time),
            friend_shares=reduce(np.maximum, self.friend_shares),
        )


_SIGNAL_COLUMNS = tuple(f.name for f in dataclasses.fields(CandidateBatch) if f.name != "items")
