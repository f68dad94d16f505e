"""The candidates of one feed as one batch of columns.

Sources each return their candidates; the executor merges them into one batch (one row per item),
applies filters as boolean masks, hydrates the item columns with one store read and
hands the batch to the scorer. Only the items of the returned page ever become Python
objects. Columns are numpy arrays of one length, one row per candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ranking.store import ItemColumns, as_indices
from ranking.vocab import distinct_inverse

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
    the newest such like, ``selective_likes`` the sum over those friends of 1 / (the
    likes of theirs that were read, at most the first page's per-key limit),
    ``friend_shares`` the number of friends who shared it with the user, ``social_time``
    the newest social event behind the item (a followed seller's listing, a friend's like
    or share), ``listing_share`` 1 / (the listings of its seller that were read, at most
    that limit) for a followed seller's item. ``items`` is filled by hydration.
    """

    codes: np.ndarray  # int32 item codes
    sources: np.ndarray  # uint8 bitmask of the sources that gathered the item
    embedding_score: np.ndarray  # float64 <user vector, item factor>
    friend_likes: np.ndarray  # int32
    friend_like_time: np.ndarray  # float64
    social_time: np.ndarray  # float64
    friend_shares: np.ndarray  # int32
    selective_likes: np.ndarray  # float64
    listing_share: np.ndarray  # float64
    items: ItemColumns | None = field(default=None)

    def __len__(self) -> int:
        return len(self.codes)

    @classmethod
    def merged(cls, parts: Sequence[SourceCandidates]) -> CandidateBatch:
        """One row per item, ordered by code: the sources' bits OR-ed, every signal its strongest (newest) value."""
        codes = np.concatenate([part.codes for part in parts]) if parts else np.zeros(0, np.int32)
        distinct, inverse = distinct_inverse(codes)
        n = len(distinct)
        batch = cls(
            codes=distinct.astype(np.int32, copy=False),
            sources=np.zeros(n, np.uint8),
            embedding_score=np.full(n, np.nan),
            friend_likes=np.zeros(n, np.int32),
            friend_like_time=np.full(n, -np.inf),
            social_time=np.full(n, -np.inf),
            friend_shares=np.zeros(n, np.int32),
            selective_likes=np.zeros(n),
            listing_share=np.zeros(n),
        )
        end = 0
        for part in parts:
            rows = inverse[end : end + len(part)]
            end += len(part)
            batch.sources[rows] |= part.source
            for name, values in part.signals.items():
                column = getattr(batch, name)
                _STRONGEST[name].at(column, rows, np.asarray(values, column.dtype))
        return batch

    def take(self, rows: np.ndarray) -> CandidateBatch:
        """The rows selected by an index array or a boolean mask, in that order."""
        at = as_indices(rows)
        items = self.items.take(at) if self.items is not None else None
        return CandidateBatch(*(getattr(self, name).take(at) for name in _SIGNAL_COLUMNS), items=items)

_SIGNAL_COLUMNS = tuple(f.name for f in dataclasses.fields(CandidateBatch) if f.name != "items")
# How two sources' values of one signal for the same item merge: an absent embedding
# score is NaN, which fmax ignores; an absent count or time is the column's minimum.
_STRONGEST = {
    "embedding_score": np.fmax,
    "friend_likes": np.maximum,
    "friend_like_time": np.maximum,
    "social_time": np.maximum,
    "friend_shares": np.maximum,
    "selective_likes": np.maximum,
    "listing_share": np.maximum,
}
