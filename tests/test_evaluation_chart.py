"""The evaluation chart: drawn from the manifest's metrics, written into each published version."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.test_artifact import manifest, small_model
from tests.test_embeddings import two_communities
from training.artifact import EVALUATION_CHART, load_current, publish
from training.dataset import write_dataset
from training.evaluate import plot_metrics
from training.experiment import held_out_evaluation
from training.generate import generate
from training.ranker_fit import RankerFitParams
from training.train import TrainParams, train_and_publish

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="needs the `plot` extra (matplotlib)"
)

SVG = "{http://www.w3.org/2000/svg}"
METRICS = {
    "model": {"precision@10": 0.2, "recall@10": 0.3, "ndcg@10": 0.25, "coverage@10": 0.4,
              "precision@20": 0.15, "recall@20": 0.4, "ndcg@20": 0.3},
    "baselines": {
        "popularity": {"precision@10": 0.05, "recall@10": 0.1, "ndcg@10": 0.07,
                       "precision@20": 0.04, "recall@20": 0.15, "ndcg@20": 0.09},
        "als": {"precision@10": 0.1, "recall@10": 0.2, "ndcg@10": 0.15,
                "precision@20": 0.08, "recall@20": 0.25, "ndcg@20": 0.2},
    },
    "coverage": 0.4,
    "test_users": 12,
}


def legend_texts(svg: bytes) -> list[str]:
    (legend,) = [g for g in ET.fromstring(svg).iter(f"{SVG}g") if g.get("id", "").startswith("legend")]
    return [text.text for text in legend.iter(f"{SVG}text")]


@needs_matplotlib
def test_the_chart_is_an_svg_whose_legend_names_every_method_model_first() -> None:
    svg = plot_metrics(METRICS)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert legend_texts(svg) == ["model", "popularity", "als"]
    labels = {text.text for text in root.iter(f"{SVG}text")}
    assert {f"{m}@{k}" for m in ("precision", "recall", "ndcg") for k in (10, 20)} <= labels
    assert "coverage@10" not in labels


@needs_matplotlib
def test_the_same_metrics_give_the_same_bytes() -> None:
    assert plot_metrics(METRICS) == plot_metrics(json.loads(json.dumps(METRICS)))
    assert plot_metrics(METRICS, "png")[:8] == b"\x89PNG\r\n\x1a\n"


@needs_matplotlib
def test_metrics_with_nothing_to_plot_are_a_value_error() -> None:
    with pytest.raises(ValueError, match="to plot"):
        plot_metrics({"als": {"ndcg@10": 0.5}})


def test_a_missing_matplotlib_is_a_value_error_with_the_pip_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # importing it now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'feedrank\[plot\]'"):
        plot_metrics(METRICS)


def test_publish_writes_extra_files_into_the_version(tmp_path) -> None:
    version_dir = publish(str(tmp_path), small_model(0), manifest(), files={EVALUATION_CHART: b"<svg/>"})
    with open(os.path.join(version_dir, EVALUATION_CHART), "rb") as f:
        assert f.read() == b"<svg/>"
    assert load_current(str(tmp_path)).path == version_dir


@pytest.mark.parametrize("name", ["../x.svg", "sub/x.svg", ".hidden", "", "manifest.json"])
def test_publish_rejects_bad_extra_file_names_before_writing_anything(tmp_path, name: str) -> None:
    with pytest.raises(ValueError, match="extra file name"):
        publish(str(tmp_path), small_model(0), manifest(), files={name: b"x"})
    assert os.listdir(tmp_path) == []


def test_a_failed_publish_leaves_no_extra_file_behind(tmp_path, monkeypatch) -> None:
    def fail_rename(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", fail_rename)
    with pytest.raises(OSError, match="disk full"):
        publish(str(tmp_path), small_model(0), manifest(), files={EVALUATION_CHART: b"<svg/>"})
    assert os.listdir(tmp_path) == []


@needs_matplotlib
def test_training_with_evaluation_publishes_the_chart_and_names_it(tmp_path) -> None:
    write_dataset(generate(users=120, sellers=12, items=240, seed=3), str(tmp_path / "data"))
    params = TrainParams(factors=8, iterations=3, show_progress=False)
    ranker_params = RankerFitParams(objective="blend")  # no ranker fit: keeps the test under a second
    evaluate_fn = held_out_evaluation("auto", (10,), params, ranker_params)
    version_dir = train_and_publish(str(tmp_path / "data"), str(tmp_path / "models"), params,
                                    evaluate_fn=evaluate_fn, ranker_params=ranker_params)
    published = load_current(str(tmp_path / "models")).manifest
    assert published["charts"] == {"evaluation": EVALUATION_CHART}
    with open(os.path.join(version_dir, EVALUATION_CHART), "rb") as f:
        model, *baselines = legend_texts(f.read())
    assert model == "model" and set(baselines) == set(published["metrics"]["baselines"])  # manifest keys are sorted


def test_training_without_matplotlib_publishes_and_says_the_chart_was_skipped(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    write_dataset(two_communities(), str(tmp_path / "data"))
    params = TrainParams(factors=8, iterations=5, show_progress=False)
    version_dir = train_and_publish(str(tmp_path / "data"), str(tmp_path / "models"), params,
                                    evaluate_fn=lambda ds, model: METRICS)
    skipped = [line for line in capsys.readouterr().out.splitlines() if "evaluation chart" in line]
    assert len(skipped) == 1 and "skipped" in skipped[0] and "pip install" in skipped[0]
    assert load_current(str(tmp_path / "models")).manifest["charts"] == {}
    assert not os.path.exists(os.path.join(version_dir, EVALUATION_CHART))
