"""Candidate features: the one function that both the trainer and the server call.

Training fits the ranker on exactly these columns, computed from the same candidates the
serving pipeline gathers (``FeedPipeline.pool``), so offline and online cannot drift
apart. Every feature is read from the query (the user's state read once per request)
and the hydrated candidates; nothing else.
"""

from __future__ import annotations

import math

import numpy as np

from embeddings.knn import Neighbourhood
from ranking.batch import CandidateBatch
from ranking.components import FeedQuery
from ranking.store import recent_like_count
from ranking.vocab import sorted_positions

FEATURE_NAMES: tuple[str, ...] = (
    "embedding_score",  # <user vector, item factor>; the user vector is folded in for users the model has not seen
    "item_similarity",  # sign * log1p(|sum of item-kNN similarities to the user's recent likes|)
    "friend_likes",  # log1p(number of friends who liked the item)
    "friend_like_recency",  # decay of the newest friend like, half-life FRIEND_LIKE_HALF_LIFE_DAYS
    "followed_seller",  # 1 if the user follows the item's seller
    "seller_affinity",  # share of the user's recent likes that went to this seller
    "recency",  # decay of the item's age, half-life RECENCY_HALF_LIFE_DAYS
    "popularity",  # log1p(item like count)
    "social_recency",  # decay since a followed seller listed it / a friend liked it (hours)
    # Signals for time: what a time split rewards (each weighs what validation gives it).
    "recent_popularity",  # log1p(like count with each like decayed, half-life ranking.store.TRENDING_HALF_LIFE)
    "recent_item_similarity",  # log1p(item-kNN similarity to recent likes, each decayed, half-life USER_ACTIVITY_HALF_LIFE_DAYS)
    "last_items_similarity",  # log1p(item-kNN similarity to the user's LAST_ITEMS newest likes)
    "seller_recency",  # decay since the user last liked an item of this seller, half-life USER_ACTIVITY_HALF_LIFE_DAYS
    # Commerce: what a shopper sees on the card.
    "ship_speed",  # 1 / (1 + days until dispatch); 0 when the seller gave none
    # Engagement beyond likes.
    "friend_shares",  # log1p(number of friends who shared the item with the user)
    "category_affinity",  # share of the user's recent likes that went to the item's category
)
TIME_FEATURES: tuple[str, ...] = ("recent_popularity", "recent_item_similarity", "last_items_similarity", "seller_recency")
"""The features that only time gives a value; ``python -m training tune`` decides which are used."""
_RECENT_ITEM_SIMILARITY = FEATURE_NAMES.index("recent_item_similarity")
_LAST_ITEMS_SIMILARITY = FEATURE_NAMES.index("last_items_similarity")
RECENCY_HALF_LIFE_DAYS = 7.0
_RECENCY_TAU = RECENCY_HALF_LIFE_DAYS * 86_400.0 / math.log(2)
FRIEND_LIKE_HALF_LIFE_DAYS = 3.0
_FRIEND_LIKE_TAU = FRIEND_LIKE_HALF_LIFE_DAYS * 86_400.0 / math.log(2)
# A followed seller's new listing or a friend's new like is news for hours, not days:
# this is what puts it at the top of the very next feed.
SOCIAL_HALF_LIFE_HOURS = 6.0
_SOCIAL_TAU = SOCIAL_HALF_LIFE_HOURS * 3_600.0 / math.log(2)
# What a user did in the last weeks says more about the next like than what they did months ago.
USER_ACTIVITY_HALF_LIFE_DAYS = 14.0
_USER_ACTIVITY_TAU = USER_ACTIVITY_HALF_LIFE_DAYS * 86_400.0 / math.log(2)
LAST_ITEMS = 5
SIMILARITY_SIGNALS = 3
"""Columns of ``similarity_signals``: to all recent likes, to them decayed by age, to the last LAST_ITEMS."""


def _decay(age: np.ndarray, tau: float) -> np.ndarray:
    # An absent time is -inf, so its age is inf and its weight 0; a future time counts as now.
    negative_age = np.minimum(-age, 0.0)
    negative_age /= tau
    return np.exp(negative_age, out=negative_age)


def _member(codes: np.ndarray, members: np.ndarray) -> np.ndarray:
    """codes in members, for a handful of non-negative members (cheaper than np.isin)."""
    out = np.zeros(len(codes), dtype=bool)
    if len(members):
        table = np.zeros(int(members.max()) + 1, dtype=bool)
        table[members] = True
        inside = (codes >= 0) & (codes < len(table))
        out[inside] = table[codes[inside]]
    return out


def similarity_signals(
    neighbourhood: Neighbourhood, recent_times: np.ndarray, now: float, rows: np.ndarray, needed: np.ndarray | None = None
) -> np.ndarray:
    """Item-kNN similarity of each candidate row to the user's recent likes, shape (len(rows), SIMILARITY_SIGNALS).

    ``neighbourhood`` is that of the recent likes (``ItemScores.neighbourhood`` of the
    scores the item-kNN source also reads), newest first; ``recent_times`` their like
    times. With ``needed`` (one bool per feature, FEATURE_NAMES order) a time column the
    ranker does not use stays 0.
    """
    out = np.zeros((len(rows), SIMILARITY_SIGNALS))
    columns, weightings = [0], [np.ones(len(recent_times))]
    if needed is None or needed[_RECENT_ITEM_SIMILARITY]:
        columns.append(1)
        weightings.append(_decay(now - recent_times, _USER_ACTIVITY_TAU))
    if needed is None or needed[_LAST_ITEMS_SIMILARITY]:
        columns.append(2)
        weightings.append((np.arange(len(recent_times)) < LAST_ITEMS).astype(np.float64))
    out[:, columns] = neighbourhood.sums_at(np.vstack(weightings), rows)
    return out


def compute_features(
    query: FeedQuery, batch: CandidateBatch, item_similarity: np.ndarray, needed: np.ndarray | None = None
) -> np.ndarray:
    """A float32 matrix of shape (len(batch), len(FEATURE_NAMES)), rows in batch order.

    The batch must be hydrated. ``item_similarity`` are the ``similarity_signals`` of
    the rows (zeros without an item-kNN model). With ``needed`` (one bool per feature)
    the time features the ranker weighs 0 are left at 0 rather than computed: serving
    pays only for what the ranker uses; the trainer asks for all of them. A missing
    embedding score counts as 0, as does a missing time (no friend like, no social
    event). Reads ``query.user``, ``query.now``, ``query.followed_sellers`` and the
    seller-like counts; columns follow FEATURE_NAMES.
    """
    n = len(batch)
    features = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
    if n == 0:
        return features
    now, items = query.now, batch.items
    sellers = items.seller
    hit, at = sorted_positions(query.seller_likes, sellers)
    affinity = np.zeros(n)
    affinity[hit] = query.seller_like_counts[at[hit]]
    seller_liked_at = np.full(n, -np.inf)
    seller_liked_at[hit] = query.seller_last_like[at[hit]]
    category_hit, category_at = sorted_positions(query.category_likes, items.category)
    category_affinity = np.zeros(n)
    category_affinity[category_hit] = query.category_like_counts[category_at[category_hit]]
    # Signed: EASE's weights are negative where the user's likes argue against an item.
    similarity = np.sign(item_similarity) * np.log1p(np.abs(item_similarity))
    features[:, 0] = batch.embedding_score
    features[np.isnan(batch.embedding_score), 0] = 0.0  # no score: the model does not know the item
    features[:, 1] = similarity[:, 0]
    features[:, 2] = np.log1p(batch.friend_likes)
    features[:, 3] = _decay(now - batch.friend_like_time, _FRIEND_LIKE_TAU)
    features[:, 4] = _member(sellers, query.followed_sellers)
    recent_likes = max(len(query.user.recent_likes), 1)
    features[:, 5] = affinity / recent_likes
    features[:, 6] = _decay(now - items.created_at, _RECENCY_TAU)
    features[:, 7] = np.log1p(items.like_count)
    features[:, 8] = _decay(now - batch.social_time, _SOCIAL_TAU)
    features[:, 10] = similarity[:, 1]
    features[:, 11] = similarity[:, 2]
    features[:, 9] = np.log1p(recent_like_count(items.trending, now)) if needed is None or needed[9] else 0.0
    features[:, 12] = _decay(now - seller_liked_at, _USER_ACTIVITY_TAU) if needed is None or needed[12] else 0.0
    ship_speed = 1.0 / (1.0 + items.ship_days)
    np.copyto(ship_speed, 0.0, where=np.isnan(ship_speed))  # not nan_to_num: 5x the cost on a few hundred rows
    features[:, 13] = ship_speed
    features[:, 14] = np.log1p(batch.friend_shares)
    features[:, 15] = category_affinity / recent_likes
    return features

