"""ranking.features: one function, identical in the trainer's path and the server's path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ranking.batch import CandidateBatch
from ranking.features import FEATURE_NAMES, LAST_ITEMS, TIME_FEATURES, USER_ACTIVITY_HALF_LIFE_DAYS, compute_features
from ranking.store import recent_like_count
from ranking.feed import FeedSettings, build_feed_pipeline
from ranking.pipeline import FeedPipeline
from ranking.ranker import DEFAULT_BLEND, DEFAULT_RANKER, LinearRanker
from ranking.scorers import FatigueScorer, LinearScorer
from stores.events import Event, EventKind
from stores.memory import MemoryStore
from tests.builders import DAY, NOW, social_dataset
from training.generate import generate
from training.train import TrainParams, train

col = {name: i for i, name in enumerate(FEATURE_NAMES)}


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """How the similarity features compress a sum that may be negative (EASE)."""
    return np.sign(values) * np.log1p(np.abs(values))


@pytest.fixture(scope="module", params=["ease", "cosine"])
def world(request):
    """A small world whose item-to-item model is EASE (what "auto" picks at this size; its
    weights are signed) or cosine item-kNN (non-negative)."""
    dataset = generate(users=300, sellers=30, items=900, seed=5)
    model, _ = train(dataset, TrainParams(factors=16, iterations=6, knn=request.param, knn_k=30, show_progress=False))
    return dataset, model


def test_the_blend_and_the_ranker_name_every_feature_once():
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert set(DEFAULT_BLEND) == set(FEATURE_NAMES)
    assert LinearRanker.from_mapping(DEFAULT_BLEND).to_mapping() == pytest.approx(DEFAULT_BLEND)


def test_training_path_and_serving_path_compute_identical_features(world):
    dataset, model = world
    ranker = LinearRanker(np.linspace(0.5, 2.0, len(FEATURE_NAMES)).astype(np.float32), 0.1)
    now = float(np.nanmax(dataset.likes.ts)) + 1.0
    pipeline = build_feed_pipeline(MemoryStore.from_dataset(dataset), model, ranker, FeedSettings(max_per_seller=100))
    users = sorted(set(dataset.likes.src))[:25] + ["nobody"]
    for user_id in users:
        pool = pipeline.pool(user_id, 20, now)  # what the ranker fit reads
        served = pipeline.run(user_id, 20, now)  # what the server returns
        assert pool.features.shape == (len(pool.batch), len(FEATURE_NAMES))
        expected = dict(zip(pool.item_ids(), ranker.score(pool.features).tolist()))
        assert served.items, user_id
        for candidate in served.items:
            assert candidate.score == expected[candidate.item_id]
        # And the same function on the same state is deterministic, feature by feature.
        again = pipeline.pool(user_id, 20, now)
        np.testing.assert_array_equal(again.features, pool.features)


def test_item_similarity_and_seller_affinity_come_from_the_users_recent_likes(world):
    dataset, model = world
    pipeline = build_feed_pipeline(MemoryStore.from_dataset(dataset), model, DEFAULT_RANKER)
    user_id = max(set(dataset.likes.src), key=list(dataset.likes.src).count)
    pool = pipeline.pool(user_id, 20, float(np.nanmax(dataset.likes.ts)) + 1.0)
    assert pool.result.gathered_by_source["item_knn"] > 0
    assert (pool.features[:, col["item_similarity"]] > 0).any()
    assert pool.query.seller_like_counts.sum() > 0
    seller_likes = dict(zip(pool.store.sellers.ids(pool.query.seller_likes.tolist()), pool.query.seller_like_counts.tolist()))
    affinity = pool.features[:, col["seller_affinity"]]
    for seller_id, value in zip(pool.seller_ids(), affinity.tolist()):
        expected = seller_likes.get(seller_id, 0) / len(pool.query.user.recent_likes)
        assert value == pytest.approx(expected, rel=1e-6)


def test_category_affinity_is_the_share_of_recent_likes_in_the_items_category(world):
    dataset, model = world
    store = MemoryStore.from_dataset(dataset)
    pipeline = build_feed_pipeline(store, model, DEFAULT_RANKER)
    user_id = max(set(dataset.likes.src), key=list(dataset.likes.src).count)
    pool = pipeline.pool(user_id, 20, float(np.nanmax(dataset.likes.ts)) + 1.0)
    category_of = dict(zip(dataset.items.item_id, dataset.items.category))
    recent = store.items.ids(pool.query.user.recent_likes.tolist())
    per_category: dict[str, int] = {}
    for item_id in recent:
        per_category[category_of[item_id]] = per_category.get(category_of[item_id], 0) + 1
    affinity = pool.features[:, col["category_affinity"]]
    expected = [per_category.get(category_of[item_id], 0) / len(recent) for item_id in pool.item_ids()]
    np.testing.assert_allclose(affinity, expected, rtol=1e-6)
    assert (affinity > 0).any() and (affinity < 1).all()


def test_social_features_follow_friend_likes_and_item_age():
    store = MemoryStore.from_dataset(social_dataset(), trending_refresh_seconds=0.0)
    pool = build_feed_pipeline(store, None).pool("alice", 20, NOW)
    rows = dict(zip(pool.item_ids(), pool.features))
    i6, i7 = rows["i6"], rows["i7"]  # bob+carol liked i6 an hour ago; bob liked i7 2.5 h ago
    assert i6[col["friend_likes"]] == pytest.approx(np.log1p(2))
    assert i7[col["friend_likes"]] == pytest.approx(np.log1p(1))
    assert 1.0 > i6[col["friend_like_recency"]] > i7[col["friend_like_recency"]] > 0.9
    assert rows["i1"][col["followed_seller"]] == 1.0 and i6[col["followed_seller"]] == 0.0
    assert rows["i1"][col["recency"]] == pytest.approx(np.exp(-DAY * np.log(2) / (7 * DAY)), rel=1e-5)
    # No model: no embedding score, no item-kNN similarity.
    assert not pool.features[:, col["embedding_score"]].any()
    assert not pool.features[:, col["item_similarity"]].any()


def test_fan_out_features_divide_by_the_sellers_followed_the_friends_read_and_their_activity():
    store = MemoryStore.from_dataset(social_dataset(), trending_refresh_seconds=0.0)
    pipeline = build_feed_pipeline(store, None)

    names = ("followed_seller_share", "friend_like_share", "selective_friend_likes", "followed_listing_share")

    def shares() -> dict[str, np.ndarray]:
        pool = pipeline.pool("alice", 20, NOW)
        return {item_id: row[[col[name] for name in names]] for item_id, row in zip(pool.item_ids(), pool.features)}

    # Alice follows s1 (four listings in stock: i1, i3..i5; i2 is sold out) and has two friends: bob, who liked three
    # items (i6, i7, a1), and carol, who liked one (i6).
    before = shares()
    np.testing.assert_allclose(before["i1"], [1.0, 0.0, 0.0, 1 / 4], rtol=1e-6)
    np.testing.assert_allclose(before["i6"], [0.0, 1.0, (1 / 3 + 1) / 2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(before["i7"], [0.0, 0.5, (1 / 3) / 2, 0.0], rtol=1e-6)
    store.apply([
        Event("f1", EventKind.FOLLOW, NOW, user_id="alice", seller_id="s2"),  # three listings: i6..i8
        Event("f2", EventKind.FRIEND, NOW, user_id="alice", friend_id="dave"),  # liked i7 and i8
        Event("f3", EventKind.FRIEND, NOW, user_id="alice", friend_id="erin"),  # liked nothing
    ])
    after = shares()
    np.testing.assert_allclose(after["i1"], [0.5, 0.0, 0.0, 1 / 4 / 2], rtol=1e-6)
    np.testing.assert_allclose(after["i6"], [0.5, 0.5, (1 / 3 + 1) / 4, 1 / 3 / 2], rtol=1e-6)
    np.testing.assert_allclose(after["i7"], [0.5, 0.5, (1 / 3 + 1 / 2) / 4, 1 / 3 / 2], rtol=1e-6)


def test_compute_features_of_nothing_is_an_empty_matrix():
    store = MemoryStore.from_dataset(social_dataset())
    query = build_feed_pipeline(store, None).pool("alice", 5, NOW).query
    assert compute_features(query, CandidateBatch.merged([]), np.zeros(0)).shape == (0, len(FEATURE_NAMES))


def test_time_features_read_the_users_latest_likes_and_the_items_recent_likes(world):
    dataset, model = world
    knn = model.item_knn
    pipeline = build_feed_pipeline(MemoryStore.from_dataset(dataset), model, DEFAULT_RANKER)
    user_id = max(set(dataset.likes.src), key=list(dataset.likes.src).count)
    now = float(np.nanmax(dataset.likes.ts)) + 1.0
    pool = pipeline.pool(user_id, 20, now)
    user = pool.query.user
    assert len(user.recent_likes) > LAST_ITEMS
    rows = model.item_knn.rows_of(pool.item_ids())
    recent_rows = knn.rows_of(pool.store.items.ids(user.recent_likes.tolist()))
    # The last few likes only, newest first.
    last = knn.user_scores_rows(recent_rows[:LAST_ITEMS]).lookup(rows)
    np.testing.assert_allclose(pool.features[:, col["last_items_similarity"]], signed_log1p(last), rtol=1e-5, atol=1e-6)
    # Every recent like, each weighed by its age (in (0, 1]); never more than the unweighted
    # sum where the similarities are non-negative (cosine; EASE's are signed).
    decay = 2.0 ** (-(now - user.recent_like_times) / (USER_ACTIVITY_HALF_LIFE_DAYS * DAY))
    recent = knn.user_scores_rows(recent_rows, decay).lookup(rows)
    np.testing.assert_allclose(pool.features[:, col["recent_item_similarity"]], signed_log1p(recent), rtol=1e-4, atol=1e-6)
    assert (recent != 0).any()
    if (knn.similarity.data >= 0).all():
        assert (recent <= knn.user_scores_rows(recent_rows).lookup(rows) + 1e-6).all()
    # Seller recency: the user's newest like of the row's seller, decayed.
    liked_sellers = pool.store.hydrate(user_id, user.recent_likes).seller
    for seller, value in zip(pool.batch.items.seller.tolist(), pool.features[:, col["seller_recency"]].tolist()):
        times = user.recent_like_times[liked_sellers == seller]
        expected = 2.0 ** (-(now - times.max()) / (USER_ACTIVITY_HALF_LIFE_DAYS * DAY)) if len(times) else 0.0
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert (pool.features[:, col["recent_popularity"]] > 0).any()


def test_recent_popularity_is_the_like_count_decayed_by_age():
    store = MemoryStore.from_dataset(social_dataset(), trending_refresh_seconds=0.0)
    pool = build_feed_pipeline(store, None).pool("alice", 20, NOW)
    expected = recent_like_count(pool.batch.items.trending, NOW)
    np.testing.assert_allclose(pool.features[:, col["recent_popularity"]], np.log1p(expected), rtol=1e-5)
    rows = dict(zip(pool.item_ids(), pool.features[:, col["recent_popularity"]]))
    # i6: likes 1 h and 2 h ago; i7: 2.5 h and a day ago (a day is a third of the 3-day half-life).
    assert rows["i6"] == pytest.approx(np.log1p(2), rel=1e-2)
    assert rows["i7"] == pytest.approx(np.log1p(1 + 2 ** (-1 / 3)), rel=1e-2)


def test_features_the_ranker_weighs_zero_are_skipped_when_serving_without_changing_a_score(world):
    dataset, model = world
    weights = np.linspace(0.5, 2.0, len(FEATURE_NAMES)).astype(np.float32)
    weights[[col[name] for name in TIME_FEATURES]] = 0.0
    ranker = LinearRanker(weights, 0.1)
    now = float(np.nanmax(dataset.likes.ts)) + 1.0
    pipeline = build_feed_pipeline(MemoryStore.from_dataset(dataset), model, ranker, FeedSettings(max_per_seller=100))
    user_id = max(set(dataset.likes.src), key=list(dataset.likes.src).count)
    pool = pipeline.pool(user_id, 20, now)
    assert pool.features[:, [col[name] for name in TIME_FEATURES]].any()  # the trainer sees them all
    expected = dict(zip(pool.item_ids(), ranker.score(pool.features).tolist()))
    served = pipeline.run(user_id, 20, now).items
    assert served and all(item.score == pytest.approx(expected[item.item_id], rel=1e-6) for item in served)


class FeaturizingCountScorer(LinearScorer):
    """A LinearScorer that keeps every batch it computes the features of."""

    def __init__(self, items, ranker) -> None:
        super().__init__(items, ranker)
        self.featurized: list[CandidateBatch] = []

    def _features(self, query, batch, needed):
        self.featurized.append(batch)
        return super()._features(query, batch, needed)


def test_a_pool_computes_each_batchs_features_once_and_the_same_features_as_before(world):
    # Regression: pool() scored its batch (LinearScorer.score computes the features) and
    # then computed the features of the same batch again: 2000 feature computations for
    # the 1000 pools of a ranker fit on 2000 generated users.
    dataset, model = world
    now = float(np.nanmax(dataset.likes.ts)) + 1.0
    served = build_feed_pipeline(MemoryStore.from_dataset(dataset), model, DEFAULT_RANKER, FeedSettings())
    fatigue = served.config.scorer
    counting = FeaturizingCountScorer(fatigue.inner.items, DEFAULT_RANKER)
    pipeline = FeedPipeline(dataclasses.replace(served.config, scorer=FatigueScorer(counting, fatigue.free_views, fatigue.sink_per_view)),
                            served.store, served.model_items)
    for user_id in sorted(set(dataset.likes.src))[:40] + ["nobody"]:
        counting.featurized.clear()
        pool = pipeline.pool(user_id, 20, now)
        assert counting.featurized and counting.featurized[-1] is pool.batch, user_id
        featurized = [id(batch) for batch in counting.featurized]
        assert len(set(featurized)) == len(featurized), user_id
        # What pool() returned before: the features computed again after scoring.
        np.testing.assert_array_equal(pool.features, LinearScorer(fatigue.inner.items, DEFAULT_RANKER).features(pool.query, pool.batch))


def test_scores_with_their_features_are_the_scores_bit_for_bit(world):
    """The pool selects its page on scores of every feature column, the server on scores of
    the columns its ranker weighs: the same floats, so the trainer's pools are the server's."""
    dataset, model = world
    now = float(np.nanmax(dataset.likes.ts)) + 1.0
    pipeline = build_feed_pipeline(MemoryStore.from_dataset(dataset), model, DEFAULT_RANKER, FeedSettings())
    scorer = pipeline.config.scorer
    assert not DEFAULT_RANKER.weights[[col[name] for name in TIME_FEATURES]].all()  # some columns are skipped when serving
    for user_id in sorted(set(dataset.likes.src))[:40]:
        pool = pipeline.pool(user_id, 20, now)
        scores, features = scorer.scores_and_features(pool.query, pool.batch)
        np.testing.assert_array_equal(scores.view(np.uint32), scorer.score(pool.query, pool.batch).view(np.uint32))
        np.testing.assert_array_equal(features, pool.features)
