"""training.artifact: publish / load round trip and the CURRENT switch."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from embeddings.index import build_index
from embeddings.model import EmbeddingModel
from ranking.ranker import DEFAULT_BLEND
from training.artifact import load_current, load_version, publish, set_current
from training.train import default_ranker_spec


def small_model(seed: int, kind: str = "flat") -> EmbeddingModel:
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((5, 4)).astype(np.float32)
    items = rng.standard_normal((7, 4)).astype(np.float32)
    return EmbeddingModel([f"u{i}" for i in range(5)], [f"ité{i}" for i in range(7)], users, items,
                          build_index(items, kind, hnsw_m=4), regularization=0.1, alpha=5.0)


def manifest(**extra) -> dict:
    return {"params": {"factors": 4}, "data_fingerprint": "abc", "metrics": {"model": {"ndcg@10": 0.1}},
            "ranker": default_ranker_spec(), **extra}


@pytest.mark.parametrize("kind", ["flat", "hnsw-mips", "ivfpq-ip"])
def test_round_trip(tmp_path, kind: str) -> None:
    model = small_model(0, kind)
    version_dir = publish(str(tmp_path), model, manifest())
    assert sorted(os.listdir(version_dir)) == ["factors.npz", "ids.npz", "index.faiss", "index.faiss.json",
                                               "manifest.json"]
    art = load_current(str(tmp_path))
    assert art.version == os.path.basename(version_dir) and art.path == version_dir
    assert art.manifest["data_fingerprint"] == "abc" and art.manifest["metrics"]["model"]["ndcg@10"] == 0.1
    assert art.manifest["created_at"].endswith("Z")
    assert art.ranker.to_mapping() == pytest.approx(DEFAULT_BLEND)
    loaded = art.model
    assert loaded.item_ids == model.item_ids and loaded.user_ids == model.user_ids  # non-ASCII ids survive
    assert loaded.index.kind == kind and loaded.alpha == 5.0 and loaded.regularization == 0.1
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    assert loaded.item_factors.dtype == np.float32
    vector = model.user_vector("u1", [])
    assert loaded.neighbours(vector, 3)[0] == model.neighbours(vector, 3)[0]
    np.testing.assert_array_equal(loaded.fold_in(["ité1"]), model.fold_in(["ité1"]))
    # ids are plain unicode arrays: loadable without pickle
    with np.load(os.path.join(version_dir, "ids.npz"), allow_pickle=False) as ids:
        assert ids["item_ids"].dtype.kind == "U"


def test_current_switches_and_versions_sort(tmp_path) -> None:
    first = publish(str(tmp_path), small_model(0), manifest())
    second = publish(str(tmp_path), small_model(1), manifest())
    assert os.path.basename(first) < os.path.basename(second) or first[:-7] == second[:-7]
    assert load_current(str(tmp_path)).path == second
    assert not os.path.exists(tmp_path / "CURRENT.tmp")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp dirs left
    set_current(str(tmp_path), os.path.basename(first))  # rollback
    assert load_current(str(tmp_path)).path == first
    assert load_version(second).model.user_factors.shape == (5, 4)


def test_missing_current_is_a_helpful_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no published model.*python -m training train"):
        load_current(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        set_current(str(tmp_path), "20990101T000000Z-000000")


def test_incomplete_version_and_bad_manifest(tmp_path) -> None:
    version_dir = publish(str(tmp_path), small_model(0), manifest())
    os.remove(os.path.join(version_dir, "factors.npz"))
    with pytest.raises(FileNotFoundError, match="factors.npz"):
        load_version(version_dir)
    with pytest.raises(ValueError, match="ranker"):
        publish(str(tmp_path), small_model(0), {"params": {}})


def test_manifest_is_plain_json(tmp_path) -> None:
    version_dir = publish(str(tmp_path), small_model(0), manifest(extra=np.float32(1.5)))
    with open(os.path.join(version_dir, "manifest.json")) as f:
        data = json.load(f)
    assert data["extra"] == 1.5 and data["model"]["index"]["kind"] == "flat"
    assert data["ranker"]["features"][0] == "embedding_score"
