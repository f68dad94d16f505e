"""Selectors: choose the page from the ranked candidates."""

from __future__ import annotations

from collections import Counter

from ranking.components import FeedQuery
from ranking.types import Candidate


class SellerDiversitySelector:
    """Top items in rank order, at most ``max_per_seller`` per seller on one page.

    Items over the cap are not dropped: they stay unserved and can fill later pages.
    Items without a seller are not capped.
    """

    name = "seller_diversity"

    def __init__(self, max_per_seller: int = 2) -> None:
        if max_per_seller < 1:
            raise ValueError("max_per_seller must be >= 1")
        self.max_per_seller = max_per_seller

    def select(self, query: FeedQuery, ranked: list[Candidate]) -> list[Candidate]:
        per_seller: Counter[str] = Counter()
        page: list[Candidate] = []
        for candidate in ranked:
            seller = candidate.seller_id
            if seller and per_seller[seller] >= self.max_per_seller:
                continue
            per_seller[seller] += 1
            page.append(candidate)
            if len(page) == query.limit:
                break
        return page


class FreshSocialFirstSelector:
    """Puts news from the user's graph first, then lets ``then`` pick the page.

    A followed seller's listing or a friend's like newer than ``window_seconds`` is news:
    the user expects it on top of the very next feed, whatever a ranker learned from
    older data. At most ``max_fresh`` such items are promoted per page, newest first (it
    is news: the latest event leads), so a burst of activity cannot take a whole page;
    they still obey the seller cap.
    """

    name = "fresh_social_first"

    def __init__(self, then: SellerDiversitySelector, window_seconds: float = 3_600.0, max_fresh: int = 3) -> None:
        self.then = then
        self.window_seconds = window_seconds
        self.max_fresh = max_fresh

    def select(self, query: FeedQuery, ranked: list[Candidate]) -> list[Candidate]:
        since = query.now - self.window_seconds
        fresh = [c for c in ranked if c.social_time is not None and c.social_time >= since]
        # Stable sort: equally new items keep their rank order.
        fresh = sorted(fresh, key=lambda c: -c.social_time)[: self.max_fresh]
        if not fresh:
            return self.then.select(query, ranked)
        promoted = {id(c) for c in fresh}
        return self.then.select(query, fresh + [c for c in ranked if id(c) not in promoted])
