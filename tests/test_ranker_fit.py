"""training.ranker_fit: the fit recovers known weights, and the trainer publishes what serving uses."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.features import FEATURE_NAMES
from ranking.ranker import DEFAULT_BLEND
from training.artifact import load_current
from training.dataset import write_dataset
from training.generate import generate
from training.ranker_fit import (
    Examples,
    RankerFitParams,
    fit_logistic,
    fit_above_baselines,
    fit_pairwise,
    fit_ranker_on,
    pool_ndcg,
)
from training.train import TrainParams, train_and_publish

D = len(FEATURE_NAMES)


def synthetic(seed: int = 0, users: int = 300, per_user: int = 40):
    """Raw features on very different scales; the label follows a known linear score."""
    rng = np.random.default_rng(seed)
    scale = np.logspace(-2, 2, D)
    x = rng.normal(size=(users * per_user, D)) * scale
    true_w = np.zeros(D)
    true_w[0], true_w[3], true_w[5] = 2.0 / scale[0], -1.5 / scale[3], 1.0 / scale[5]
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-(x @ true_w - 2.0)))).astype(np.float32)
    groups = np.repeat(np.arange(users, dtype=np.int32), per_user)
    return x.astype(np.float32), y, groups, true_w


def test_logistic_recovers_weights_on_raw_feature_scales():
    x, y, groups, true_w = synthetic()
    ranker = fit_logistic(x, y, groups, l2=0.1)
    # Standardisation is folded back: weights apply to raw features.
    np.testing.assert_allclose(ranker.weights * np.logspace(-2, 2, D), true_w * np.logspace(-2, 2, D), atol=0.35)
    assert np.sign(ranker.weights[[0, 3, 5]]).tolist() == [1.0, -1.0, 1.0]
    assert ranker.bias == pytest.approx(-2.0, abs=0.4)


def test_pairwise_orders_positives_first_and_keeps_zero_bias():
    x, y, groups, true_w = synthetic(1)
    ranker = fit_pairwise(x, y, groups, l2=0.1, per_user=200, seed=0)
    assert ranker.bias == 0.0
    cosine = ranker.weights @ true_w / np.linalg.norm(ranker.weights) / np.linalg.norm(true_w)
    assert cosine > 0.95


def test_dropped_features_get_zero_weight():
    x, y, groups, _ = synthetic(2)
    examples = Examples(x, y, groups)
    ranker = fit_ranker_on(examples, RankerFitParams(objective="pairwise", drop_features=(FEATURE_NAMES[0],)))
    assert ranker.weights[0] == 0.0
    with pytest.raises(ValueError, match="unknown"):
        fit_ranker_on(examples, RankerFitParams(drop_features=("nope",)))


def test_the_trainer_publishes_the_fitted_ranker_and_serving_loads_it(tmp_path):
    from ranking.feed import FeedSettings
    from serving.feed_service import FeedService
    from serving.page_token import PageTokenCodec
    from stores.memory import MemoryStore

    dataset = generate(users=500, sellers=50, items=1500, seed=4)
    write_dataset(dataset, str(tmp_path / "data"))
    params = TrainParams(factors=16, iterations=6, knn_k=30, show_progress=False)
    version_dir = train_and_publish(str(tmp_path / "data"), str(tmp_path / "models"), params)
    artifact = load_current(str(tmp_path / "models"))
    spec = artifact.manifest["ranker"]
    assert spec["features"] == list(FEATURE_NAMES) and spec["fit"]["objective"] == "pairwise"
    assert spec["weights"] != pytest.approx(DEFAULT_BLEND)
    assert artifact.ranker.to_mapping() == pytest.approx(spec["weights"])
    assert artifact.model.item_knn is not None and artifact.model.item_knn.nnz > 0
    service = FeedService(MemoryStore.from_dataset(dataset), artifact, PageTokenCodec(b"k" * 32), FeedSettings())
    scorer = service._pipeline.config.scorer.inner  # under the fatigue sink
    assert scorer.ranker is artifact.ranker and version_dir.endswith(service.model_version)


def test_a_store_for_sampled_readers_gives_them_the_same_pools_as_the_full_store():
    """The ranker's store keeps only its sampled users' (and their friends') state."""
    from ranking.feed import FeedSettings, build_feed_pipeline
    from ranking.ranker import DEFAULT_RANKER
    from stores.memory import MemoryStore
    from training.train import train

    dataset = generate(users=300, sellers=30, items=900, seed=6)
    model, _ = train(dataset, TrainParams(factors=8, iterations=4, knn_k=20, show_progress=False))
    readers = sorted(set(dataset.likes.src))[::25]
    full = MemoryStore.from_dataset(dataset)
    sampled = MemoryStore.from_dataset(dataset, readers=readers)
    now = float(np.nanmax(dataset.likes.ts)) + 1.0
    pools = [build_feed_pipeline(store, model, DEFAULT_RANKER, FeedSettings()) for store in (full, sampled)]
    for user_id in readers:
        expected, got = (pipeline.pool(user_id, 100, now) for pipeline in pools)
        assert len(expected.batch) > 0
        assert expected.item_ids() == got.item_ids()
        np.testing.assert_array_equal(expected.features, got.features)
    outsider = next(u for u in sorted(set(dataset.likes.src)) if u not in set(readers) and not sampled.read_user(u).friends)
    assert len(full.read_user(outsider).recent_likes) > 0 and len(sampled.read_user(outsider).recent_likes) == 0


def test_a_reader_who_is_no_user_of_the_dataset_keeps_no_one_elses_state():
    # Looked up as code -1, an unknown reader kept the likes of the user with the last code.
    from stores.memory import MemoryStore

    dataset = generate(users=30, sellers=5, items=60, seed=6)
    sampled = MemoryStore.from_dataset(dataset, readers=["ghost"])
    last_user = sampled.users.id(len(sampled.users) - 1)
    assert len(MemoryStore.from_dataset(dataset).read_user(last_user).recent_likes) > 0
    assert len(sampled.read_user(last_user).recent_likes) == 0


def _pools(features: np.ndarray, labels, groups, relevant) -> Examples:
    return Examples(
        features.astype(np.float32), np.asarray(labels, np.float32), np.asarray(groups, np.int32),
        users=len(relevant), relevant_per_user=np.asarray(relevant, np.int32),
    )


def _labelled_pools(seed: int, label) -> Examples:
    """200 users' pools of 30 random feature rows (``seed``), a row relevant where ``label(rows)`` holds."""
    x = np.random.default_rng(seed).normal(size=(200 * 30, D))
    y = np.asarray(label(x), np.float32)
    groups = np.repeat(np.arange(200), 30)
    return _pools(x, y, groups, np.maximum(np.bincount(groups, weights=y), 1).astype(int))


def test_pool_ndcg_counts_likes_missing_from_the_pool_against_it():
    # User 0: the positive is ranked second of two; user 1: first, but a second like is not in the pool.
    examples = _pools(np.zeros((4, D)), [0, 1, 1, 0], [0, 0, 1, 1], [1, 2])
    got = pool_ndcg(np.array([2.0, 1.0, 5.0, 0.0]), examples)
    expected = ((1 / np.log2(3)) + 1 / (1 + 1 / np.log2(3))) / 2
    assert got == pytest.approx(expected)


def test_pool_ndcg_ranks_tied_rows_at_their_expected_place_not_in_row_order():
    # Regression: tied scores kept the pool's row order, which is the order the sources
    # gathered them in (the embedding neighbours best first): a signal that ties everything
    # got the credit of that order. Tied rows now share their places' gains.
    positive_first = _pools(np.zeros((2, D)), [1, 0], [0, 0], [1])
    positive_last = _pools(np.zeros((2, D)), [0, 1], [0, 0], [1])
    expected = (1 + 1 / np.log2(3)) / 2
    assert pool_ndcg(np.zeros(2), positive_first) == pytest.approx(expected)
    assert pool_ndcg(np.zeros(2), positive_last) == pytest.approx(expected)
    # A tie straddling the cut at k: of the three tied rows, places 1 and 2 are inside k = 2.
    straddling = _pools(np.zeros((4, D)), [0, 0, 0, 1], [0, 0, 0, 0], [1])
    got = pool_ndcg(np.array([9.0, 1.0, 1.0, 1.0]), straddling, k=2)
    assert got == pytest.approx((1 / np.log2(3)) / 3)


def test_a_baseline_whose_signal_no_pool_has_is_not_compared(capsys):
    # Regression: on data without follows or friends the followed_sellers and friends_likes
    # baselines (all 0) ranked by their tie-breaker or the pool's row order, and the trainer
    # warned that they beat the ranker. They are left out of the comparison, and the check names them.
    followed, friend_likes = FEATURE_NAMES.index("followed_seller"), FEATURE_NAMES.index("friend_likes")
    examples = _labelled_pools(0, lambda x: x[:, FEATURE_NAMES.index("popularity")] > 1.0)
    examples.features[:, [followed, friend_likes]] = 0.0
    examples.features[:, FEATURE_NAMES.index("recency")] = examples.labels  # the tie-breaker would win
    _, check = fit_above_baselines(examples, RankerFitParams(drop_features=("recency",), restore_dropped=False))
    assert "followed_sellers" not in check["baselines_ndcg@10"] and "friends_likes" not in check["baselines_ndcg@10"]
    # Named as evaluate and tune name the baselines they leave out: name -> why.
    assert check["baselines_left_out"] == {
        "followed_sellers": "its signal (followed_seller) is the same in every row of the validation pools",
        "friends_likes": "its signal (friend_likes) is the same in every row of the validation pools",
    }
    assert "baselines_without_signal" not in check
    err = capsys.readouterr().err
    assert "followed_sellers baseline ranks better" not in err and "friends_likes baseline ranks better" not in err


def test_a_baseline_that_beats_the_ranker_warns_and_gets_its_signal_back(capsys):
    # The label is the popularity column itself; with popularity dropped, every other column is noise.
    popularity = FEATURE_NAMES.index("popularity")
    examples = _labelled_pools(0, lambda x: x[:, popularity] > 1.0)
    ranker, check = fit_above_baselines(examples, RankerFitParams(drop_features=("popularity", "recency")))
    err = capsys.readouterr().err
    assert "warning" in err and "popularity baseline" in err and "restored: ['popularity']" in err
    assert check["drop_features"] == ["recency"] and ranker.weights[popularity] > 0
    # Refitted with the signal back, it ranks about as well as the baseline (the other
    # columns are noise a linear fit cannot weigh exactly 0).
    assert check["validation_ndcg@10"] >= 0.995 * check["baselines_ndcg@10"]["popularity"]
    # Nothing to report when the ranker wins: the label needs two signals, each baseline has one.
    examples = _labelled_pools(0, lambda x: x[:, popularity] + x[:, FEATURE_NAMES.index("embedding_score")] > 1.5)
    _, quiet = fit_above_baselines(examples, RankerFitParams())
    assert not quiet["beaten_by"] and "warning" not in capsys.readouterr().err


def test_an_ablation_keeps_its_dropped_feature_even_when_its_baseline_wins(capsys):
    from benchmarks.bench_lastfm import PROTOCOLS, ablation_variants

    popularity = FEATURE_NAMES.index("popularity")
    examples = _labelled_pools(0, lambda x: x[:, popularity] > 1.0)
    _, settings, ranker_params = PROTOCOLS["binary"]
    _, without_popularity = ablation_variants(settings, ranker_params)["- feature popularity"]
    ranker, check = fit_above_baselines(examples, without_popularity)
    assert check["drop_features"] == ["popularity"] and ranker.weights[popularity] == 0
    err = capsys.readouterr().err
    assert "popularity baseline ranks better" in err and "restored" not in err


def test_a_warning_compares_the_baseline_with_the_ranker_it_beat_and_says_how_the_refit_did(capsys):
    import re

    # The label needs popularity and a little of the embedding score: without popularity the
    # ranker loses to the popularity baseline; given it back, the refit beats that baseline.
    popularity, embedding = FEATURE_NAMES.index("popularity"), FEATURE_NAMES.index("embedding_score")
    examples = _labelled_pools(1, lambda x: x[:, popularity] + 0.5 * x[:, embedding] > 1.2)
    _, check = fit_above_baselines(examples, RankerFitParams(drop_features=("popularity",)))
    assert check["validation_ndcg@10"] > check["baselines_ndcg@10"]["popularity"] and not check["beaten_by"]
    line = next(line for line in capsys.readouterr().err.splitlines() if "popularity baseline" in line)
    baseline, beaten = map(float, re.search(r"NDCG@10 ([0-9.]+) > ([0-9.]+)", line).groups())
    assert baseline > beaten, line
    assert f"refitted to {check['validation_ndcg@10']:.4f}: now above it" in line, line


@pytest.mark.parametrize("split", ["time", "user", "random"])
def test_a_validation_share_that_leaves_the_fit_part_no_like_falls_back_to_the_blend(split, tmp_path, capsys):
    """--ranker-validation 0.99 held out every like of a small dataset: the fit part had no
    user, and building its store stopped train with an IndexError traceback."""
    from training.__main__ import main

    items = "".join(f"i{k},s{k % 3},{1_700_000_000 + k},5\n" for k in range(10))
    likes = "".join(f"u{u},i{(u + 3 * j) % 10},{1_700_000_000 + 3600 * (u * 4 + j)}\n" for u in range(8) for j in range(4))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "items.csv").write_text("item_id,seller_id,created_at,stock\n" + items)
    (tmp_path / "data" / "likes.csv").write_text("user_id,item_id,ts\n" + likes)
    main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "models"), "--factors", "8",
          "--iterations", "3", "--ranker-validation", "0.99", "--ranker-validation-split", split,
          "--eval-split", "none", "--no-progress"])
    assert "warning: ranker: cannot fit (the ranker's validation split" in capsys.readouterr().err
    assert load_current(str(tmp_path / "models")).manifest["ranker"]["fit"]["objective"] == "blend"
