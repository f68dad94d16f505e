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
