"""The candidates of one feed as one batch of columns.

Sources each return their candidates; the executor merges them into one batch (one row per item),
applies filters as boolean masks, hydrates the item columns with one store read and
hands the batch to the scorer. Only the items of the returned page ever become Python
objects. Columns are numpy arrays of one length, one row per candidate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numba
import numpy as np

from ranking.store import ItemColumns, as_indices

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


@dataclass(frozen=True)
class SourceCandidates:
    """What one source returns: item codes, the source's bit, and the signals it knows
    (a CandidateBatch column name -> one value per code); the other signals are absent."""

    codes: np.ndarray
    source: np.uint8
    signals: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.codes)

    @classmethod
    def none(cls) -> SourceCandidates:
        return cls(np.zeros(0, np.int32), np.uint8(0))


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
    def merged(cls, parts: Sequence[SourceCandidates]) -> CandidateBatch:
        """One row per item, ordered by code: the sources' bits OR-ed, every signal its strongest (newest) value."""
        if not parts:
            parts = [SourceCandidates.none()]
        codes = np.concatenate([part.codes for part in parts]).astype(np.int32, copy=False)
        source_bits = np.repeat(np.array([part.source for part in parts], np.uint8), [len(part) for part in parts])
        signals = [
            np.concatenate([
                np.asarray(part.signals[name], dtype) if name in part.signals else np.full(len(part), absent, dtype)
                for part in parts
            ])
            for name, dtype, absent in _SIGNALS
        ]
        return cls(*_merge_rows(codes, source_bits, *signals))

    def take(self, rows: np.ndarray) -> CandidateBatch:
        """The rows selected by an index array or a boolean mask, in that order."""
        at = as_indices(rows)
        items = self.items.take(at) if self.items is not None else None
        return CandidateBatch(*(getattr(self, name).take(at) for name in _SIGNAL_COLUMNS), items=items)

_SIGNAL_COLUMNS = tuple(f.name for f in dataclasses.fields(CandidateBatch) if f.name != "items")
# The signals a source may know, in CandidateBatch order: (name, dtype, value when absent).
_SIGNALS = (
    ("embedding_score", np.float64, np.nan),
    ("friend_likes", np.int32, 0),
    ("friend_like_time", np.float64, -np.inf),
    ("social_time", np.float64, -np.inf),
    ("friend_shares", np.int32, 0),
)


@numba.njit(cache=True, nogil=True)
def _merge_rows(codes, source_bits, embedding_score, friend_likes, friend_like_time, social_time, friend_shares):
    """The rows of every source, one per distinct code (ascending): bits OR-ed, the
    embedding score the largest known (NaN when none), counts and times their maximum.

    Compiled: as numpy this was a sort, then an ``ufunc.at`` per source and signal.
    """
    order = np.argsort(codes)
    n = len(codes)
    out_codes = np.empty(n, np.int32)
    out_bits = np.zeros(n, np.uint8)
    out_embedding = np.empty(n, np.float64)
    out_likes = np.empty(n, np.int32)
    out_like_time = np.empty(n, np.float64)
    out_social_time = np.empty(n, np.float64)
    out_shares = np.empty(n, np.int32)
    rows = 0
    for row in order:
        if rows == 0 or out_codes[rows - 1] != codes[row]:
            out_codes[rows] = codes[row]
            out_bits[rows] = source_bits[row]
            out_embedding[rows] = embedding_score[row]
            out_likes[rows] = friend_likes[row]
            out_like_time[rows] = friend_like_time[row]
            out_social_time[rows] = social_time[row]
            out_shares[rows] = friend_shares[row]
            rows += 1
            continue
        at = rows - 1
        out_bits[at] |= source_bits[row]
        score = embedding_score[row]
        if not math.isnan(score) and (math.isnan(out_embedding[at]) or score > out_embedding[at]):
            out_embedding[at] = score
        out_likes[at] = max(out_likes[at], friend_likes[row])
        out_like_time[at] = max(out_like_time[at], friend_like_time[row])
        out_social_time[at] = max(out_social_time[at], social_time[row])
        out_shares[at] = max(out_shares[at], friend_shares[row])
    return (
        out_codes[:rows], out_bits[:rows], out_embedding[:rows], out_likes[:rows],
        out_like_time[:rows], out_social_time[:rows], out_shares[:rows],
    )
