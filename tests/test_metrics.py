"""training.metrics against a tiny example computed by hand."""

from __future__ import annotations

import math

import pytest

import numpy as np

from training.evaluate import EvaluationReport
from training.metrics import catalogue_coverage, mean_distinct_sellers, paired_difference, per_user_metrics, ranking_metrics

L2, L3, L4 = 1.0, 1 / math.log2(3), 1 / math.log2(4)  # discounts of ranks 1, 2, 3 (log2(rank + 1))

RECOMMENDED = {
    "a": ["i1", "i2", "i3", "i4"],  # test {i1, i3}: hits at ranks 1 and 3
    "b": ["i5", "i6", "i1", "i2"],  # test {i2, i7, i8}: hit at rank 4 only
    "x": ["i9"],  # no test items: ignored
}
RELEVANT = {"a": {"i1", "i3"}, "b": {"i2", "i7", "i8"}, "c": {"i1"}}  # c: no recommendations -> 0


def test_ranking_metrics_hand_example() -> None:
    m = ranking_metrics(RECOMMENDED, RELEVANT, ks=(2, 4))
    assert list(m) == ["precision@2", "recall@2", "ndcg@2", "precision@4", "recall@4", "ndcg@4"]
    # @2: a has 1 hit (i1), b 0, c 0.
    assert m["precision@2"] == pytest.approx((1 / 2 + 0 + 0) / 3)  # 1/6
    assert m["recall@2"] == pytest.approx((1 / 2 + 0 + 0) / 3)  # 1/6
    # ndcg@2: a: DCG = 1, IDCG over min(2, 2) = 1 + 1/log2(3); b, c: 0.
    assert m["ndcg@2"] == pytest.approx((1 / (L2 + L3)) / 3)  # 0.6131 / 3 = 0.2044
    # @4: a 2 hits, b 1 hit (rank 4), c 0.
    assert m["precision@4"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)  # 0.25
    assert m["recall@4"] == pytest.approx((2 / 2 + 1 / 3 + 0) / 3)  # 0.4444
    # ndcg@4: a: (1 + 1/log2(4)) / (1 + 1/log2(3)) = 1.5 / 1.6309 = 0.9197
    #         b: (1/log2(5)) / (1 + 1/log2(3) + 1/log2(4)) = 0.4307 / 2.1309 = 0.2021
    ndcg_a = (L2 + L4) / (L2 + L3)
    ndcg_b = (1 / math.log2(5)) / (L2 + L3 + L4)
    assert m["ndcg@4"] == pytest.approx((ndcg_a + ndcg_b + 0) / 3)  # 0.3739
    assert m["ndcg@4"] == pytest.approx(0.37395, abs=1e-4)


def test_perfect_list_scores_one_and_duplicates_do_not_count_twice() -> None:
    m = ranking_metrics({"u": ["i1", "i2"]}, {"u": {"i1", "i2"}}, ks=(2,))
    assert m == pytest.approx({"precision@2": 1.0, "recall@2": 1.0, "ndcg@2": 1.0})
    m = ranking_metrics({"u": ["i1", "i1"]}, {"u": {"i1", "i2"}}, ks=(2,))
    assert m["precision@2"] == pytest.approx(0.5)


def test_no_test_users_gives_zeros() -> None:
    assert ranking_metrics({"u": ["i1"]}, {}, ks=(10,)) == {"precision@10": 0.0, "recall@10": 0.0, "ndcg@10": 0.0}


def test_coverage_and_sellers() -> None:
    # top-2 lists: a -> i1 i2, b -> i5 i6, x -> i9: 5 distinct of 10 items.
    assert catalogue_coverage(RECOMMENDED, 10, 2) == pytest.approx(0.5)
    seller_of = {"i1": "s1", "i2": "s1", "i5": "s2", "i6": "s3", "i9": ""}
    # a: {s1} = 1, b: {s2, s3} = 2, x: {} = 0 -> mean 1.0
    assert mean_distinct_sellers(RECOMMENDED, seller_of, 2) == pytest.approx(1.0)


def test_an_empty_page_counts_as_no_seller_as_an_empty_list_counts_as_no_hit() -> None:
    # Regression: sellers@K averaged over the non-empty pages only, so a method that showed
    # one user two sellers and nothing to the other scored 2, as one showing both scored.
    seller_of = {"i1": "s1", "i2": "s2"}
    assert mean_distinct_sellers({"a": ["i1", "i2"], "b": []}, seller_of, 2) == pytest.approx(1.0)
    assert mean_distinct_sellers({"a": [], "b": []}, seller_of, 2) == 0.0
    assert mean_distinct_sellers({}, seller_of, 2) == 0.0


def test_per_user_values_pair_users_in_the_order_of_the_test() -> None:
    values = per_user_metrics(RECOMMENDED, RELEVANT, ks=(4,))
    assert values["ndcg@4"] == pytest.approx([(L2 + L4) / (L2 + L3), (1 / math.log2(5)) / (L2 + L3 + L4), 0.0])  # a, b, c


def test_a_paired_difference_has_the_t_interval_of_its_users_differences() -> None:
    # Differences 0.1 and 0.3: mean 0.2, standard error 0.1, and t(0.975, 1 degree of freedom) = 12.706.
    d = paired_difference(np.array([0.5, 0.6]), np.array([0.4, 0.3]))
    assert (d.difference, d.users) == (pytest.approx(0.2), 2)
    assert (d.low, d.high) == (pytest.approx(0.2 - 1.2706, abs=1e-4), pytest.approx(0.2 + 1.2706, abs=1e-4))
    assert 0.05 < d.p_value < 0.5
    same = paired_difference(np.array([0.5, 0.6]), np.array([0.5, 0.6]))
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="same users"):
        paired_difference(np.array([0.5]), np.array([0.5, 0.6]))


def test_one_users_difference_is_no_evidence_either_way() -> None:
    # One test user: no spread to measure, so no interval and no significance (it was
    # [+1, +1] with p 0, printed "p < 0.001" under a one-user evaluation).
    d = paired_difference(np.array([1.0]), np.array([0.0]))
    assert (d.difference, d.low, d.high, d.p_value, d.users) == (1.0, -math.inf, math.inf, 1.0, 1)
    report = EvaluationReport(ks=(10,), paired={"popularity": {"ndcg@10": d}})
    assert report.as_json()["paired"]["popularity"]["ndcg@10"]["ci95"] == [None, None]  # JSON has no infinity
    assert "+1.0000 [-inf, +inf] p = 1.000" in report.paired_table()[-1]
