"""Linear ranker over the candidate features; its weights live in the model artifact."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ranking.features import FEATURE_NAMES

# The hand-set blend of the end-to-end issue: the fallback when no learned ranker is
# fitted, and the bar a learned ranker must beat. Features added later weigh 0 in it.
DEFAULT_BLEND: dict[str, float] = {
    "embedding_score": 1.0,
    "item_similarity": 0.0,
    "friend_likes": 0.6,
    "friend_like_recency": 0.0,
    "followed_seller": 0.5,
    "seller_affinity": 0.0,
    "recency": 0.4,
    "popularity": 0.1,
    "social_recency": 3.0,
    "recent_popularity": 0.0,
    "recent_item_similarity": 0.0,
    "last_items_similarity": 0.0,
    "seller_recency": 0.0,
    "ship_speed": 0.0,
    # A friend's share is a personal recommendation: at least as strong as a friend's like.
    "friend_shares": 0.6,
    "category_affinity": 0.0,
    "followed_seller_share": 0.0,
    "friend_like_share": 0.0,
    "selective_friend_likes": 0.0,
    "followed_listing_share": 0.0,
}
assert set(DEFAULT_BLEND) == set(FEATURE_NAMES), "DEFAULT_BLEND must name every feature"


@dataclass(frozen=True)
class LinearRanker:
    """score = bias + features @ weights, with weights in FEATURE_NAMES order."""

    weights: np.ndarray  # float32, one per feature
    bias: float = 0.0

    @classmethod
    def from_mapping(cls, weights: Mapping[str, float], bias: float = 0.0) -> LinearRanker:
        """Build from {feature name: weight}; unknown names are an error, missing ones weigh 0."""
        unknown = set(weights) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown ranker features: {sorted(unknown)}")
        vector = np.array([weights.get(name, 0.0) for name in FEATURE_NAMES], dtype=np.float32)
        return cls(vector, float(bias))

    def to_mapping(self) -> dict[str, float]:
        return {name: float(w) for name, w in zip(FEATURE_NAMES, self.weights)}

    def score(self, features: np.ndarray) -> np.ndarray:
        """One float32 score per feature row, same order."""
        return (features @ self.weights + self.bias).astype(np.float32, copy=False)


DEFAULT_RANKER = LinearRanker.from_mapping(DEFAULT_BLEND)
