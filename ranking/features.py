"""Candidate features: the one function that both the trainer and the server call.

Training fits the ranker on exactly these columns, computed from the same candidates the
serving pipeline gathers (``FeedPipeline.pool``), so offline and online cannot drift
apart. Every feature is read from the query (the user's state read once per request)
and the hydrated candidates; nothing else.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from embeddings.knn import Neighbourhood
from ranking.batch import CandidateBatch, SourceCandidates
from ranking.components import FeedQuery
from ranking.store import ITEM_COLUMNS, ItemColumns, UserState, recent_like_count

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
    # Fan-out: one followed seller among three says more than one among three hundred.
    "followed_seller_share",  # 1 / (sellers the user follows) if the user follows the item's seller, else 0
    "friend_like_share",  # friends who liked the item / friends whose likes were read
    "selective_friend_likes",  # sum over friends who liked it of 1 / (their likes read, at most per_key_limit), / friends read
    "followed_listing_share",  # followed_seller_share / (listings read of the item's seller, at most per_key_limit)
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


def compute_features(query: FeedQuery, batch: CandidateBatch, item_similarity: np.ndarray) -> np.ndarray:
    """A float32 matrix of shape (len(batch), len(FEATURE_NAMES)), rows in batch order.

    The batch must be hydrated. ``item_similarity`` are the ``similarity_signals`` of
    the rows (zeros without an item-kNN model). A missing embedding score counts as 0,
    as does a missing time (no friend like, no social event). Reads ``query.user``,
    ``query.now``, ``query.followed_sellers`` and ``followed_count``, and the seller- and category-like counts;
    columns follow FEATURE_NAMES.
    """
    n = len(batch)
    features = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
    if n == 0:
        return features
    items = batch.items
    _fill_features(
        features,
        query.now,
        max(len(query.user.recent_likes), 1),
        batch.embedding_score,
        np.ascontiguousarray(item_similarity, dtype=np.float64),
        batch.friend_likes,
        batch.friend_like_time,
        batch.social_time,
        batch.friend_shares,
        batch.selective_likes,
        batch.listing_share,
        _contiguous(items, "seller"),
        _contiguous(items, "category"),
        _contiguous(items, "created_at"),
        _contiguous(items, "like_count"),
        recent_like_count(items.trending, query.now),
        _contiguous(items, "ship_days"),
        query.followed_count,
        len(query.user.friends),
        *_query_columns(query),
    )
    return features


def _contiguous(items: ItemColumns, name: str) -> np.ndarray:
    # A store may hand a column as a strided view: each new layout or dtype would cost a
    # compilation, on the feed that first meets it.
    return np.ascontiguousarray(getattr(items, name), ITEM_COLUMNS[name][1])


def _query_columns(query: FeedQuery) -> tuple[np.ndarray, ...]:
    """The user's followed sellers (sorted) and seller- and category-like summaries, in
    one dtype each whatever the store made them: each new dtype would cost a compilation."""
    return (
        np.sort(np.asarray(query.followed_sellers, np.int64)),
        np.asarray(query.seller_likes, np.int64),
        np.asarray(query.seller_like_counts, np.float64),
        np.asarray(query.seller_last_like, np.float64),
        np.asarray(query.category_likes, np.int64),
        np.asarray(query.category_like_counts, np.float64),
    )


def warm_up() -> None:
    """Compile ``_fill_features`` (or load it from numba's cache) for the batch's column
    dtypes, so that a server's first feed does not pay for it."""
    one = CandidateBatch.merged([SourceCandidates(np.zeros(1, np.int32), np.uint8(1))])
    one.items = ItemColumns.empty(1)
    compute_features(FeedQuery(UserState(""), 1, 0.0), one, np.zeros((1, SIMILARITY_SIGNALS)))


@numba.njit(cache=True, nogil=True, inline="always")
def _decay_at(age, tau):
    # An absent time is -inf, so its age is inf and its weight 0; a future time counts as now.
    return math.exp(min(-age, 0.0) / tau)


@numba.njit(cache=True, nogil=True, inline="always")
def _signed_log1p(value):
    # Signed: EASE's weights are negative where the user's likes argue against an item.
    return math.copysign(math.log1p(abs(value)), value)


@numba.njit(cache=True, nogil=True, inline="always")
def _position(sorted_values, value):
    """Where ``value`` is in ``sorted_values`` (ascending), -1 if absent or negative."""
    if value < 0 or len(sorted_values) == 0:
        return -1
    at = np.searchsorted(sorted_values, value)
    return at if at < len(sorted_values) and sorted_values[at] == value else -1


@numba.njit(cache=True, nogil=True)
def _fill_features(
    out, now, recent_likes, embedding_score, similarity, friend_likes, friend_like_time, social_time, friend_shares,
    selective_likes, listing_share, seller, category, created_at, like_count, recent_popularity, ship_days, follows, friends,
    followed_sellers, seller_likes, seller_like_counts, seller_last_like, category_likes, category_like_counts,
):
    """Every feature of every row in one pass; the columns are FEATURE_NAMES, in order.

    Compiled: as numpy, a feature matrix took some forty calls over a few hundred rows,
    each mostly call overhead.
    """
    for row in range(len(out)):
        score = embedding_score[row]
        out[row, 0] = 0.0 if math.isnan(score) else score  # no score: the model does not know the item
        out[row, 1] = _signed_log1p(similarity[row, 0])
        out[row, 2] = math.log1p(friend_likes[row])
        out[row, 3] = _decay_at(now - friend_like_time[row], _FRIEND_LIKE_TAU)
        at = _position(followed_sellers, seller[row])
        out[row, 4] = 1.0 if at >= 0 else 0.0
        out[row, 16] = 1.0 / follows if at >= 0 else 0.0
        out[row, 17] = friend_likes[row] / friends if friends > 0 else 0.0
        out[row, 18] = selective_likes[row] / friends if friends > 0 else 0.0
        out[row, 19] = listing_share[row] / follows if at >= 0 else 0.0
        at = _position(seller_likes, seller[row])
        out[row, 5] = seller_like_counts[at] / recent_likes if at >= 0 else 0.0
        out[row, 12] = _decay_at(now - seller_last_like[at], _USER_ACTIVITY_TAU) if at >= 0 else 0.0
        out[row, 6] = _decay_at(now - created_at[row], _RECENCY_TAU)
        out[row, 7] = math.log1p(like_count[row])
        out[row, 8] = _decay_at(now - social_time[row], _SOCIAL_TAU)
        out[row, 9] = math.log1p(recent_popularity[row])
        out[row, 10] = _signed_log1p(similarity[row, 1])
        out[row, 11] = _signed_log1p(similarity[row, 2])
        days = ship_days[row]
        out[row, 13] = 0.0 if math.isnan(days) else 1.0 / (1.0 + days)  # no dispatch time given: 0
        out[row, 14] = math.log1p(friend_shares[row])
        at = _position(category_likes, category[row])
        out[row, 15] = category_like_counts[at] / recent_likes if at >= 0 else 0.0
