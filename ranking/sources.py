"""Candidate sources: where the items of a feed come from."""

from __future__ import annotations

from collections import defaultdict

from embeddings.knn import ItemKNN
from embeddings.model import EmbeddingModel
from ranking.components import FeedQuery
from ranking.types import Candidate, Reason, ReasonKind


class FollowedSellerSource:
    """Newest listings of the sellers the user follows."""

    name = "followed_sellers"

    def gather(self, query: FeedQuery) -> list[Candidate]:
        return [
            Candidate(item_id, reasons=[Reason(ReasonKind.FOLLOWED_SELLER, [seller_id])], social_time=listed_at)
            for seller_id, listings in query.activity.listings_by_seller.items()
            for item_id, listed_at in listings
        ]


class FriendLikesSource:
    """Items the user's friends liked recently, remembering which friends and when."""

    name = "friend_likes"

    def gather(self, query: FeedQuery) -> list[Candidate]:
        likers: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for friend_id, likes in query.activity.likes_by_friend.items():
            for item_id, ts in likes:
                likers[item_id].append((friend_id, ts))
        candidates = []
        for item_id, friend_likes in likers.items():
            friend_likes.sort(key=lambda pair: (-pair[1], pair[0]))
            friends = [friend_id for friend_id, _ in friend_likes]
            candidates.append(
                Candidate(
                    item_id,
                    reasons=[Reason(ReasonKind.FRIENDS_LIKED, friends, len(friends))],
                    friend_like_times=[ts for _, ts in friend_likes],
                    social_time=friend_likes[0][1],
                )
            )
        return candidates


class EmbeddingNeighbourSource:
    """Items nearest to the user's embedding by inner product.

    The pool grows with the number of items already served, so deep pages still find
    unseen neighbours.
    """

    name = "embedding_neighbours"

    def __init__(self, model: EmbeddingModel, k: int = 200) -> None:
        self.model = model
        self.k = k

    def gather(self, query: FeedQuery) -> list[Candidate]:
        if query.user_vector is None:
            return []
        k = max(self.k, 2 * (query.served_count + query.limit))
        item_ids, scores = self.model.neighbours(query.user_vector, k)
        return [
            Candidate(item_id, reasons=[Reason(ReasonKind.SIMILAR_TO_LIKES)], embedding_score=float(score))
            for item_id, score in zip(item_ids, scores)
        ]


class ItemKnnSource:
    """Items most similar to the user's recent likes under the item-kNN model.

    Reads ``query.item_scores`` (summed similarities to the recent likes, computed once
    per request); like the embedding pool, it deepens with the items already served.
    """

    name = "item_knn"

    def __init__(self, knn: ItemKNN, k: int = 200) -> None:
        self.knn = knn
        self.k = k

    def gather(self, query: FeedQuery) -> list[Candidate]:
        if query.item_scores is None:
            return []
        k = max(self.k, 2 * (query.served_count + query.limit))
        item_ids, _ = self.knn.top(query.item_scores, k)
        return [Candidate(item_id, reasons=[Reason(ReasonKind.SIMILAR_TO_LIKES)]) for item_id in item_ids]


class TrendingSource:
    """The most-liked items of the last days: the cold-start fallback and a freshness floor."""

    name = "trending"

    def gather(self, query: FeedQuery) -> list[Candidate]:
        return [Candidate(item_id, reasons=[Reason(ReasonKind.TRENDING)]) for item_id in query.activity.trending]
