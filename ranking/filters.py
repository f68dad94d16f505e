"""Filters: each removes one kind of item a feed must not show."""

from __future__ import annotations

from collections.abc import Callable

from ranking.components import FeedQuery, FilterResult
from ranking.types import Candidate


def _split(candidates: list[Candidate], keep: Callable[[Candidate], bool]) -> FilterResult:
    flags = [keep(c) for c in candidates]
    if all(flags):  # the common case: nothing to remove, no second pass
        return FilterResult(candidates, [])
    return FilterResult(
        [c for c, k in zip(candidates, flags) if k], [c for c, k in zip(candidates, flags) if not k]
    )


def merge_into(target: Candidate, other: Candidate) -> None:
    """Fold ``other``'s reasons and signals into ``target`` (same item from another source)."""
    for reason in other.reasons:
        existing = target.reason(reason.kind)
        if existing is None:
            target.reasons.append(reason)
        else:
            for actor in reason.actor_ids:
                if actor not in existing.actor_ids:
                    existing.actor_ids.append(actor)
            existing.count = max(existing.count, len(existing.actor_ids), reason.count)
    if target.embedding_score is None:
        target.embedding_score = other.embedding_score
    if not target.friend_like_times:
        target.friend_like_times = other.friend_like_times
    if other.social_time is not None and (target.social_time is None or other.social_time > target.social_time):
        target.social_time = other.social_time


class DuplicateFilter:
    """Keeps the first candidate per item and merges the reasons of the others into it."""

    name = "duplicate"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        first: dict[str, Candidate] = {}
        removed = []
        for candidate in candidates:
            kept = first.setdefault(candidate.item_id, candidate)
            if kept is not candidate:
                merge_into(kept, candidate)
                removed.append(candidate)
        return FilterResult(list(first.values()), removed)


class ExcludedFilter:
    """Items the caller excluded and items served on earlier pages."""

    name = "excluded"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        return _split(candidates, lambda c: c.item_id not in query.exclude)


class NotInterestedItemFilter:
    name = "not_interested_item"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        hidden = query.user.hidden_items
        return _split(candidates, lambda c: c.item_id not in hidden)


class UnknownItemFilter:
    """Items the store does not know (deleted, or only in a stale model)."""

    name = "unknown_item"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        return _split(candidates, lambda c: c.item is not None)


class OutOfStockFilter:
    name = "out_of_stock"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        return _split(candidates, lambda c: c.item is not None and c.item.in_stock)


class AlreadyLikedFilter:
    name = "already_liked"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        liked = query.liked
        return _split(candidates, lambda c: c.item_id not in liked)


class OwnListingFilter:
    name = "own_listing"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        user_id = query.user.user_id
        return _split(candidates, lambda c: c.seller_id != user_id)


class NotInterestedSellerFilter:
    name = "not_interested_seller"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        hidden = query.user.hidden_sellers
        return _split(candidates, lambda c: c.seller_id not in hidden)
