"""Candidate features: the one function that both the trainer and the server call.

Training fits the ranker on exactly these columns, computed from the same candidates the
serving pipeline gathers, so offline and online cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ranking.types import Candidate, UserContext

FEATURE_NAMES: tuple[str, ...] = (
    "embedding_score",
    "friend_likes",
    "followed_seller",
    "recency",
    "popularity",
    "social_recency",
)
RECENCY_HALF_LIFE_DAYS = 7.0
_RECENCY_TAU = RECENCY_HALF_LIFE_DAYS * 86_400.0 / math.log(2)
# A followed seller's new listing or a friend's new like is news for hours, not days.
SOCIAL_HALF_LIFE_HOURS = 6.0
_SOCIAL_TAU = SOCIAL_HALF_LIFE_HOURS * 3_600.0 / math.log(2)


def compute_features(user: UserContext, candidates: Sequence[Candidate], now: float) -> np.ndarray:
    """A float32 matrix of shape (len(candidates), len(FEATURE_NAMES)), rows in candidate order.

    Candidates must be hydrated. A missing embedding score counts as 0.
    """
    n = len(candidates)
    features = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    if n == 0:
        return features
    embedding = np.fromiter(
        (c.embedding_score if c.embedding_score is not None else 0.0 for c in candidates), np.float64, n
    )
    friend_likes = np.fromiter((len(c.friend_like_times) for c in candidates), np.float64, n)
    followed = np.fromiter((c.item.seller_id in user.follows for c in candidates), np.float64, n)
    age = np.fromiter((max(now - c.item.created_at, 0.0) for c in candidates), np.float64, n)
    like_count = np.fromiter((c.item.like_count for c in candidates), np.float64, n)
    social_age = np.fromiter(
        (max(now - c.social_time, 0.0) if c.social_time is not None else np.inf for c in candidates), np.float64, n
    )
    features[:, 0] = embedding
    features[:, 1] = np.log1p(friend_likes)
    features[:, 2] = followed
    features[:, 3] = np.exp(-age / _RECENCY_TAU)
    features[:, 4] = np.log1p(like_count)
    features[:, 5] = np.exp(-social_age / _SOCIAL_TAU)
    return features
