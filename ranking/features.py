"""Candidate features: the one function that both the trainer and the server call.

Training fits the ranker on exactly these columns, computed from the same candidates the
serving pipeline gathers (``FeedPipeline.pool``), so offline and online cannot drift
apart. Every feature is read from the query (the user's state read once per request)
and the hydrated candidates; nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ranking.components import FeedQuery
from ranking.types import Candidate

FEATURE_NAMES: tuple[str, ...] = (
    "embedding_score",  # <user vector, item factor>; the user vector is folded in for users the model has not seen
    "item_similarity",  # log1p(sum of item-kNN similarities to the user's recent likes)
    "friend_likes",  # log1p(number of friends who liked the item)
    "friend_like_recency",  # decay of the newest friend like, half-life FRIEND_LIKE_HALF_LIFE_DAYS
    "followed_seller",  # 1 if the user follows the item's seller
    "seller_affinity",  # share of the user's recent likes that went to this seller
    "recency",  # decay of the item's age, half-life RECENCY_HALF_LIFE_DAYS
    "popularity",  # log1p(item like count)
    "social_recency",  # decay since a followed seller listed it / a friend liked it (hours)
)
RECENCY_HALF_LIFE_DAYS = 7.0
_RECENCY_TAU = RECENCY_HALF_LIFE_DAYS * 86_400.0 / math.log(2)
FRIEND_LIKE_HALF_LIFE_DAYS = 3.0
_FRIEND_LIKE_TAU = FRIEND_LIKE_HALF_LIFE_DAYS * 86_400.0 / math.log(2)
# A followed seller's new listing or a friend's new like is news for hours, not days:
# this is what puts it at the top of the very next feed.
SOCIAL_HALF_LIFE_HOURS = 6.0
_SOCIAL_TAU = SOCIAL_HALF_LIFE_HOURS * 3_600.0 / math.log(2)


def _decay(age: np.ndarray, tau: float) -> np.ndarray:
    return np.exp(-np.maximum(age, 0.0) / tau)


def compute_features(query: FeedQuery, candidates: Sequence[Candidate]) -> np.ndarray:
    """A float32 matrix of shape (len(candidates), len(FEATURE_NAMES)), rows in candidate order.

    Candidates must be hydrated. A missing embedding score counts as 0, as does a missing
    time (no friend like, no social event). Reads ``query.user``, ``query.now``,
    ``query.item_scores`` and ``query.seller_likes``; columns follow FEATURE_NAMES.
    """
    n = len(candidates)
    features = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    if n == 0:
        return features
    now, user = query.now, query.user
    follows, seller_likes = user.follows, query.seller_likes
    inf = math.inf
    # One pass over the candidates (Python objects); everything after is vectorised.
    raw = np.array(
        [
            (
                c.embedding_score if c.embedding_score is not None else 0.0,
                len(c.friend_like_times),
                now - max(c.friend_like_times) if c.friend_like_times else inf,
                c.item.seller_id in follows,
                seller_likes.get(c.item.seller_id, 0) if c.item.seller_id else 0,
                now - c.item.created_at,
                c.item.like_count,
                now - c.social_time if c.social_time is not None else inf,
            )
            for c in candidates
        ],
        dtype=np.float64,
    )
    embedding, friend_likes, friend_like_age, followed, affinity, age, like_count, social_age = raw.T
    similarity = (
        query.item_scores.lookup_ids([c.item_id for c in candidates]).astype(np.float64)
        if query.item_scores is not None
        else np.zeros(n)
    )
    recent = max(len(user.recent_likes), 1)
    features[:, 0] = embedding
    features[:, 1] = np.log1p(np.maximum(similarity, 0.0))
    features[:, 2] = np.log1p(friend_likes)
    features[:, 3] = _decay(friend_like_age, _FRIEND_LIKE_TAU)
    features[:, 4] = followed
    features[:, 5] = affinity / recent
    features[:, 6] = _decay(age, _RECENCY_TAU)
    features[:, 7] = np.log1p(like_count)
    features[:, 8] = _decay(social_age, _SOCIAL_TAU)
    return features
