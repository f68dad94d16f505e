"""training.train end to end on a small hand-built dataset."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest

from tests.test_embeddings import two_communities
from training.arguments import params_from_args
from training.artifact import load_current
from training.train import TrainParams, train
from training.train_command import add_arguments


def test_train_on_small_dataset() -> None:
    params = TrainParams(factors=8, iterations=8, show_progress=False)
    model, info = train(two_communities(), params)
    assert info["users"] == 60 and info["items"] == 40 and info["sellers"] == 2
    assert info["index_kind"] == "flat" and set(info["timings"]) == {"interactions", "als", "index"}
    assert model.user_factors.shape == (60, 8) and model.item_factors.dtype == np.float32
    ids, _ = model.neighbours(model.user_vector("u02", []), 5)
    assert all(i.startswith("a") for i in ids)


def test_cli_flags_have_defaults_and_help() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "m", "--factors", "16", "--follow-weight", "0",
                              "--index", "hnsw-mips", "--no-progress"])
    params = params_from_args(args)
    assert params == TrainParams(factors=16, follow_weight=0.0, index="hnsw-mips", show_progress=False)
    assert all(action.help for action in parser._actions)


def test_run_publishes_a_loadable_version(tmp_path) -> None:
    from training.dataset import write_dataset
    from training.train import train_and_publish

    dataset = two_communities()
    write_dataset(dataset, str(tmp_path / "data"))
    calls = []
    version_dir = train_and_publish(
        str(tmp_path / "data"), str(tmp_path / "models"), TrainParams(factors=8, iterations=5, show_progress=False),
        evaluate_fn=lambda ds, model: calls.append(len(model.item_ids)) or {"als": {"ndcg@10": 0.5}},
    )
    assert calls == [40]
    art = load_current(str(tmp_path / "models"))
    assert art.path == version_dir and os.path.isdir(version_dir)
    assert art.manifest["data_fingerprint"] == dataset.fingerprint()
    assert art.manifest["metrics"] == {"als": {"ndcg@10": 0.5}}
    assert art.manifest["params"]["factors"] == 8 and "show_progress" not in art.manifest["params"]
    assert set(art.manifest["timings"]) >= {"load", "als", "index", "evaluate"}
    assert art.model.user_vector("u00", []) is not None


@pytest.mark.parametrize("kind", ["hnsw-mips", "ivfpq-ip"])
def test_train_with_hnsw(kind: str) -> None:
    model, info = train(two_communities(), TrainParams(factors=8, iterations=5, index=kind, show_progress=False))
    assert info["index_kind"] == kind and len(model.neighbours(model.user_vector("u01", []), 5)[0]) == 5
