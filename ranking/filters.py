"""Filters: each removes one kind of item a feed must not show, as a keep-mask over the batch.

Id filters read only item codes and run before hydration, so the store is asked about
fewer items; item filters read the hydrated item columns.
"""

from __future__ import annotations

import numpy as np

from ranking.batch import CandidateBatch
from ranking.components import FeedQuery
from ranking.store import VIEW_WINDOW_SECONDS


def unengaged_views(query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
    """The user's views of each row's item since they last engaged with it, 0 once the
    last view is more than VIEW_WINDOW_SECONDS old (the item has rested)."""
    items = batch.items
    return np.where(query.now - items.viewed_at <= VIEW_WINDOW_SECONDS, items.views, 0)


def _all(batch: CandidateBatch) -> np.ndarray:
    return np.ones(len(batch), dtype=bool)


class ExcludedFilter:
    """Items the caller excluded and items served on earlier pages (by their stable hash)."""

    name = "excluded"

    def __init__(self, hashes_of) -> None:
        self.hashes_of = hashes_of  # item codes -> uint32 stable hashes (the store's vocabulary)

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        keep = _all(batch)
        if len(query.exclude_codes):
            keep &= ~np.isin(batch.codes, query.exclude_codes)
        if len(query.served_hashes):
            keep &= ~np.isin(self.hashes_of(batch.codes), query.served_hashes)
        return keep


class NotInterestedItemFilter:
    name = "not_interested_item"

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        hidden = query.user.hidden_items
        return ~np.isin(batch.codes, hidden) if len(hidden) else _all(batch)


class UnknownItemFilter:
    """Items the store does not know (deleted, or only in a stale model)."""

    name = "unknown_item"

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        return batch.items.exists.copy()


class OutOfStockFilter:
    name = "out_of_stock"

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        return batch.items.exists & (batch.items.stock > 0)


class NotFeedEligibleFilter:
    """Items their seller keeps out of the feed (``feed_eligible`` false)."""

    name = "not_feed_eligible"

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        return batch.items.eligible.copy()


class SellerOnVacationFilter:
    """Items of a seller on vacation now; they come back when the vacation's time is up."""

    name = "seller_on_vacation"

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        return ~(batch.items.seller_away_until > query.now)


class ShopperFilter:
    """What the shopper asked for: categories in or out, a price range, a ship-time bound."""

    name = "shopper_filters"

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        shopper, items = query.shopper, batch.items
        keep = _all(batch)
        if not shopper.active:
            return keep
        if shopper.include_categories:
            keep &= np.isin(items.category, query.include_categories) & (items.category >= 0)
        if len(query.exclude_categories):
            keep &= ~np.isin(items.category, query.exclude_categories[query.exclude_categories >= 0])
        # Comparisons with NaN are false: an unknown price or ship time does not pass.
        if shopper.min_price is not None:
            keep &= items.price >= shopper.min_price
        if shopper.max_price is not None:
            keep &= items.price <= shopper.max_price
        if shopper.max_ship_days is not None:
            keep &= items.ship_days <= shopper.max_ship_days
        return keep


class SeenTooOftenFilter:
    """Items shown to the user ``hide_after`` times without engagement rest, out of the
    feed, until VIEW_WINDOW_SECONDS have passed since the last view."""

    name = "seen_too_often"

    def __init__(self, hide_after: int) -> None:
        if hide_after < 1:
            raise ValueError("hide_after must be >= 1")
        self.hide_after = hide_after

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        return unengaged_views(query, batch) < self.hide_after


class AlreadyLikedFilter:
    name = "already_liked"

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        return ~batch.items.liked


class OwnListingFilter:
    name = "own_listing"

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        if query.own_seller < 0:  # the user sells nothing
            return _all(batch)
        return batch.items.seller != query.own_seller


class NotInterestedSellerFilter:
    name = "not_interested_seller"

    def keep(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        hidden = query.hidden_sellers
        return ~np.isin(batch.items.seller, hidden) if len(hidden) else _all(batch)
