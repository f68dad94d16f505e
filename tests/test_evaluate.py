"""Offline evaluation: the replayed feed against the baselines on generated data."""

from __future__ import annotations

import json

import pytest

from ranking.features import FEATURE_NAMES
from training.arguments import parse_ks
from training.dataset import DatasetError
from training.evaluate import read_test_file
from training.experiment import evaluate_split
from training.generate import generate
from training.splits import SplitSpec
from training.train import TrainParams

PARAMS = TrainParams(factors=32, iterations=10, show_progress=False)


@pytest.fixture(scope="module")
def report():
    dataset = generate(users=1500, sellers=150, items=4000, seed=21)
    return evaluate_split(dataset, SplitSpec("time", 0.2), None, (10, 20), PARAMS, show_progress=False)


def test_the_served_feed_beats_popularity_by_a_wide_margin(report):
    model, popularity = report.methods["model"], report.methods["popularity"]
    assert model["ndcg@10"] >= 3 * popularity["ndcg@10"]
    assert model["recall@20"] >= popularity["recall@20"] + 0.05


def test_the_learned_ranker_beats_every_single_source_baseline_and_the_hand_set_blend(report):
    model = report.methods["model"]
    for name in ("popularity", "followed_sellers", "friends_likes", "als", "item_knn", "ease"):
        assert model["ndcg@10"] >= 1.2 * report.methods[name]["ndcg@10"], name
        assert model["recall@20"] >= 1.1 * report.methods[name]["recall@20"], name
    assert model["ndcg@10"] >= 1.1 * report.methods["blend"]["ndcg@10"]


def test_every_baseline_is_reported_with_every_metric(report):
    assert list(report.methods) == [
        "model", "popularity", "followed_sellers", "friends_likes", "als", "item_knn", "ease", "blend"
    ]
    for metrics in report.methods.values():
        assert {"precision@10", "recall@10", "ndcg@10", "precision@20", "recall@20", "ndcg@20"} <= set(metrics)
    payload = json.loads(json.dumps(report.as_json()))
    assert set(payload["baselines"]) == {"popularity", "followed_sellers", "friends_likes", "als", "item_knn", "ease", "blend"}
    assert payload["ranker"]["features"] == list(FEATURE_NAMES)
    assert 0 < payload["coverage"] <= 1
    assert "2" in report.table().splitlines()[-1]


def test_split_specs_and_cutoffs_parse_or_explain():
    assert SplitSpec.parse("random:0.2:7") == SplitSpec("random", 0.2, 7)
    assert SplitSpec.parse("time:0.1") == SplitSpec("time", 0.1)
    assert parse_ks("20,10") == (10, 20)
    for bad in ("random", "time:x", "later:0.2"):
        with pytest.raises(ValueError, match="--split"):
            SplitSpec.parse(bad)
    with pytest.raises(ValueError, match="--k"):
        parse_ks("ten")


def test_a_bad_test_file_row_names_line_and_column(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("user_id,item_id\nu1,i1\nu2,\n")
    with pytest.raises(DatasetError) as error:
        read_test_file(str(path))
    assert (error.value.file, error.value.line, error.value.column) == ("test.csv", 3, "item_id")


def test_the_plot_is_a_png_bar_chart(report, tmp_path):
    pytest.importorskip("matplotlib")
    from training.evaluate import plot_report

    path = tmp_path / "metrics.png"
    plot_report(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
