"""Candidate sources: where the items of a feed come from. Each returns its SourceCandidates."""

from __future__ import annotations

import numpy as np

from embeddings.knn import ItemKNN
from ranking import batch as bits
from ranking.batch import SourceCandidates
from ranking.components import FeedQuery
from ranking.model_items import ModelItems
from ranking.vocab import count_and_newest


class FollowedSellerSource:
    """Newest listings (in stock) of the sellers the user follows.

    A listing's share counts its seller's listings read, up to ``per_key_limit`` (what a
    first page reads): deeper pages read more, and score the same listing the same.
    """

    name = "followed_sellers"

    def __init__(self, per_key_limit: int) -> None:
        self.per_key_limit = per_key_limit

    def gather(self, query: FeedQuery) -> SourceCandidates:
        listings = query.activity.listings
        share = 1.0 / np.minimum(listings.rows_of_owner(), self.per_key_limit)
        return SourceCandidates(listings.items, bits.FOLLOWED_SELLER, {"social_time": listings.times, "listing_share": share})


class FriendLikesSource:
    """Items the user's friends liked recently: how many friends, and the newest like.

    A like's selectivity counts its friend's likes read, up to ``per_key_limit``, as
    FollowedSellerSource counts listings.
    """

    name = "friend_likes"

    def __init__(self, per_key_limit: int) -> None:
        self.per_key_limit = per_key_limit

    def gather(self, query: FeedQuery) -> SourceCandidates:
        likes = query.activity.friend_likes
        if not len(likes):
            return SourceCandidates.none()
        items, friends, newest = count_and_newest(likes.items, likes.times)
        # A like from a friend who likes little says more than one from a friend who likes everything.
        read = np.minimum(likes.rows_of_owner(), self.per_key_limit)
        selective = np.bincount(np.searchsorted(items, likes.items), 1.0 / read, len(items))
        return SourceCandidates(
            items, bits.FRIEND_LIKE,
            {"friend_likes": friends, "friend_like_time": newest, "social_time": newest, "selective_likes": selective},
        )


class FriendSharesSource:
    """Items friends shared with the user: how many friends, and the newest share."""

    name = "friend_shares"

    def gather(self, query: FeedQuery) -> SourceCandidates:
        shared = query.user.shared
        if not len(shared):
            return SourceCandidates.none()
        items, sharers, newest = count_and_newest(shared.items, shared.times)
        return SourceCandidates(items, bits.FRIEND_SHARE, {"friend_shares": sharers, "social_time": newest})


def _pool_size(k: int, query: FeedQuery) -> int:
    # A deep page needs a deeper pool: the items served on earlier pages are filtered out.
    return max(k, 2 * query.depth)


class EmbeddingNeighbourSource:
    """Items nearest to the user's embedding by inner product, with that score."""

    name = "embedding_neighbours"

    def __init__(self, items: ModelItems, k: int = 200, ef_search: int = 0) -> None:
        self.items = items
        self.k = k
        self.ef_search = ef_search

    def gather(self, query: FeedQuery) -> SourceCandidates:
        if query.user_vector is None:
            return SourceCandidates.none()
        rows, scores = self.items.model.user_neighbour_rows(
            query.user.user_id, query.user_vector, _pool_size(self.k, query), self.ef_search
        )
        return SourceCandidates(self.items.codes(rows), bits.EMBEDDING, {"embedding_score": scores})


class ItemKnnSource:
    """Items most similar to the user's recent likes under the item-kNN model.

    Reads ``query.item_scores`` (summed similarities to the recent likes, computed once
    per request).
    """

    name = "item_knn"

    def __init__(self, items: ModelItems, knn: ItemKNN, k: int = 200) -> None:
        self.items = items
        self.knn = knn
        self.k = k

    def gather(self, query: FeedQuery) -> SourceCandidates:
        if query.item_scores is None:
            return SourceCandidates.none()
        rows, _ = self.knn.top_rows(query.item_scores, _pool_size(self.k, query))
        return SourceCandidates(self.items.codes(rows), bits.ITEM_KNN)


class TrendingSource:
    """The most-liked items of the last days: the cold-start fallback and a freshness floor."""

    name = "trending"

    def gather(self, query: FeedQuery) -> SourceCandidates:
        return SourceCandidates(query.activity.trending, bits.TRENDING)
