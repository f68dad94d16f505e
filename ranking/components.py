"""The four kinds of pipeline component. Each has one method and a ``name`` for stats.

What flows between them is one ``CandidateBatch`` (columns, one row per candidate):
sources return ``SourceCandidates`` (codes and the signals they know), which the
executor merges into the batch; filters return keep-masks over the batch, the scorer
one score per row, the selector the rows of the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from embeddings.knn import ItemScores
from ranking.batch import CandidateBatch, SourceCandidates
from ranking.store import Activity, UserState
from ranking.types import ShopperFilters


def _codes() -> np.ndarray:
    return np.zeros(0, dtype=np.int32)


@dataclass
class FeedQuery:
    """Everything known about one feed request once the store has been read.

    ``activity.listings`` are owned by ``user.follows`` and ``activity.friend_likes`` by
    ``user.friends`` (same order). ``exclude_codes`` are item codes never to return (the
    caller's exclusions; set once the candidates are gathered), ``served_hashes`` the
    sorted stable hashes of the items served on earlier pages. ``followed_sellers``,
    ``hidden_sellers`` and ``own_seller`` are seller codes (-1: the user sells nothing);
    the first and last are set at hydration, when the candidates' sellers have codes;
    ``followed_count`` is the number of sellers the user follows, every one (a seller no
    store read has named yet has no code, and is not among ``followed_sellers``). ``item_scores`` are the user's item-kNN
    scores (from recent likes) when the model has an item-kNN part. ``seller_likes`` and
    ``seller_like_counts`` count the user's recent likes per seller code (sorted codes),
    ``seller_last_like`` the time of the newest of them, filled at hydration, which also reads the recent likes' items;
    ``category_likes`` and ``category_like_counts`` count them per category code the same way.
    ``shopper`` is what the request narrowed the feed to. ``pool_depth`` is the depth the
    growing pools (neighbours, item-kNN, trending) are sized for: 0 for the items served
    so far plus ``limit``, more when a shopper's filters left too few of them.
    """

    user: UserState
    limit: int
    now: float
    activity: Activity = field(default_factory=Activity)
    user_vector: np.ndarray | None = None
    item_scores: ItemScores | None = None
    exclude_codes: np.ndarray = field(default_factory=_codes)
    served_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))
    followed_sellers: np.ndarray = field(default_factory=_codes)
    followed_count: int = 0
    hidden_sellers: np.ndarray = field(default_factory=_codes)
    own_seller: int = -1
    seller_likes: np.ndarray = field(default_factory=_codes)
    seller_like_counts: np.ndarray = field(default_factory=_codes)
    seller_last_like: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    category_likes: np.ndarray = field(default_factory=_codes)
    category_like_counts: np.ndarray = field(default_factory=_codes)
    shopper: ShopperFilters = ShopperFilters()
    # The shopper's categories as category codes (-1: a category the store has never seen), set at hydration.
    include_categories: np.ndarray = field(default_factory=_codes)
    exclude_categories: np.ndarray = field(default_factory=_codes)
    pool_depth: int = 0

    @property
    def served_count(self) -> int:
        return len(self.served_hashes)

    @property
    def depth(self) -> int:
        """What the growing pools are sized for (``pool_depth``)."""
        return max(self.pool_depth, self.served_count + self.limit)


class CandidateSource(Protocol):
    name: str

    def gather(self, query: FeedQuery) -> SourceCandidates:
        """Candidates with the source's bit and its own signals; order is not significant."""
        ...


class Filter(Protocol):
    name: str

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        """A boolean mask over the batch: True for the rows to keep."""
        ...


class Scorer(Protocol):
    name: str

    def score(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        """One float32 score per row, same length and order as the batch."""
        ...


class Selection(NamedTuple):
    rows: np.ndarray  # the page's rows, in page order
    news: np.ndarray  # per row: it leads the page as news, out of its rank's order


class Selector(Protocol):
    name: str

    def select(self, query: FeedQuery, batch: CandidateBatch, ranked: np.ndarray) -> Selection:
        """The page from ``ranked`` (rows best first); at most ``query.limit`` rows."""
        ...
