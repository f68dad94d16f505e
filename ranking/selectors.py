"""Selectors: choose the page's rows from the ranked rows of the batch."""

from __future__ import annotations

import numpy as np

from ranking.batch import CandidateBatch
from ranking.components import FeedQuery, Selection


def occurrence(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same key (0 for the first)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])) if len(keys) else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))
    out = np.empty(len(keys), dtype=np.int64)
    out[order] = np.arange(len(keys)) - group_start
    return out


class DiversitySelector:
    """Top rows in rank order, at most ``max_per_seller`` per seller and, when
    ``max_per_category`` is positive, at most that many per category on one page.

    Rows over a cap are not dropped: they stay unserved and can fill later pages. Items
    without a seller (a category) are not capped by it.
    """

    name = "diversity"

    def __init__(self, max_per_seller: int = 2, max_per_category: int = 0) -> None:
        if max_per_seller < 1:
            raise ValueError("max_per_seller must be >= 1")
        if max_per_category < 0:
            raise ValueError("max_per_category must be >= 0 (0: no category cap)")
        self.max_per_seller = max_per_seller
        self.max_per_category = max_per_category

    def select(self, query: FeedQuery, batch: CandidateBatch, ranked: np.ndarray) -> Selection:
        sellers = batch.items.seller[ranked]
        if not self.max_per_category:
            keep = (sellers < 0) | (occurrence(sellers) < self.max_per_seller)
            rows = ranked[keep][: query.limit]
        else:
            rows = self._greedy(query.limit, ranked, sellers, batch.items.category[ranked])
        return Selection(rows, np.zeros(len(rows), dtype=bool))

    def _greedy(self, limit: int, ranked: np.ndarray, sellers: np.ndarray, categories: np.ndarray) -> np.ndarray:
        # Two caps interact (a row one cap skips must not count against the other), so
        # walk the ranking; a page is at most 100 rows, and rows past it are never read.
        page: list[int] = []
        per_seller: dict[int, int] = {}
        per_category: dict[int, int] = {}
        for row, seller, category in zip(ranked.tolist(), sellers.tolist(), categories.tolist()):
            if seller >= 0 and per_seller.get(seller, 0) >= self.max_per_seller:
                continue
            if category >= 0 and per_category.get(category, 0) >= self.max_per_category:
                continue
            page.append(row)
            per_seller[seller] = per_seller.get(seller, 0) + 1
            per_category[category] = per_category.get(category, 0) + 1
            if len(page) == limit:
                break
        return np.asarray(page, dtype=ranked.dtype)


class FreshSocialFirstSelector:
    """Puts news from the user's graph first, then lets ``then`` pick the page.

    A followed seller's listing, a friend's like or share newer than ``window_seconds`` is news:
    the user expects it on top of the very next feed, whatever a ranker learned from
    older data. At most ``max_fresh`` such items are promoted per page, newest first (it
    is news: the latest event leads), so a burst of activity cannot take a whole page;
    they still obey the seller cap.
    """

    name = "fresh_social_first"

    def __init__(self, then: DiversitySelector, window_seconds: float = 3_600.0, max_fresh: int = 3) -> None:
        self.then = then
        self.window_seconds = window_seconds
        self.max_fresh = max_fresh

    def select(self, query: FeedQuery, batch: CandidateBatch, ranked: np.ndarray) -> Selection:
        promoted = self._promoted(query, batch, ranked)
        if not len(promoted):
            return self.then.select(query, batch, ranked)
        is_promoted = np.zeros(len(batch), dtype=bool)
        is_promoted[promoted] = True
        rest = ranked[~is_promoted[ranked]]
        rows = self.then.select(query, batch, np.concatenate([promoted, rest])).rows
        # News: the promoted rows that made the page (the seller cap may have held one back).
        return Selection(rows, is_promoted[rows])

    def _promoted(self, query: FeedQuery, batch: CandidateBatch, ranked: np.ndarray) -> np.ndarray:
        if self.max_fresh <= 0:
            return ranked[:0]
        is_fresh = batch.social_time >= query.now - self.window_seconds  # -inf (no social event) is never fresh
        if not is_fresh.any():  # most feeds: no news
            return ranked[:0]
        fresh = ranked[is_fresh[ranked]]
        # Stable sort: equally new items keep their rank order.
        return fresh[np.argsort(-batch.social_time[fresh], kind="stable")][: self.max_fresh]
