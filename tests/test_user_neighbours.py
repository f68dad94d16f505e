"""embeddings.user_neighbours: the trainer's per-user neighbour search is the one serving runs."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest

from embeddings.index import build_index
from embeddings.model import EXACT_SEARCH_K_SHARE, EmbeddingModel
from embeddings.user_neighbours import ROWS_FILE, SCORES_FILE, UserNeighbours, precompute_user_neighbours
from ranking.feed import FeedSettings, build_feed_pipeline
from stores.memory import MemoryStore
from training.artifact import load_current, publish
from training.dataset import write_dataset
from training.generate import generate
from training.params import TrainParams
from training.train import default_ranker_spec, train_and_publish

K = 20


def random_model(n_users: int = 300, n_items: int = 3 * K * EXACT_SEARCH_K_SHARE // 2, kind: str = "hnsw-mips",
               dim: int = 8, **index_params: int) -> EmbeddingModel:
    rng = np.random.default_rng(0)
    users = rng.standard_normal((n_users, dim)).astype(np.float32)
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    index = build_index(items, kind, hnsw_m=8, ef_search=16, show_progress=False, **index_params)
    return EmbeddingModel([f"u{i}" for i in range(n_users)], [f"i{j}" for j in range(n_items)], users, items, index, 0.1)


# The exact index's batched search rounds differently from one query's at 17k items x 64
# factors (every score, and some near-ties' order): the table must not be built that way.
# At 20k items IVF's default nprobe covers half the lists, so its search is exact too (every
# score differed on a loaded machine when the table batched it); nprobe 8 keeps it approximate.
@pytest.mark.parametrize("kind, n_items, dim, index_params", [
    ("hnsw-mips", 3_000, 8, {}), ("flat", 17_000, 64, {}), ("ivfpq-ip", 20_000, 16, {}),
    ("ivfpq-ip", 20_000, 16, {"nprobe": 8}),
])
def test_each_users_row_is_the_search_serving_would_run_bit_for_bit(kind: str, n_items: int, dim: int,
                                                                    index_params: dict[str, int]) -> None:
    model = random_model(n_items=n_items, kind=kind, dim=dim, **index_params)
    assert model.index.searches_exactly(K) == (kind == "flat" or (kind == "ivfpq-ip" and not index_params))
    table = precompute_user_neighbours(model, K)
    assert table is not None and table.rows.shape == (300, K) and table.ef_search == (16 if kind == "hnsw-mips" else 0)
    for user in range(300):
        live_rows, live_scores = model.neighbour_rows(model.user_factors[user], K)
        rows, scores = table.of(user)
        np.testing.assert_array_equal(rows, live_rows)
        np.testing.assert_array_equal(scores, live_scores)


def test_a_trained_user_is_answered_from_the_table_and_anything_else_searches(monkeypatch) -> None:
    model = random_model()
    model.user_neighbours = precompute_user_neighbours(model, K)
    expected = model.neighbour_rows(model.user_factors[7], K)
    folded_in = model.fold_in(["i1", "i2"])
    searched = []
    search = model.index.search
    monkeypatch.setattr(model.index, "search", lambda *args, **kwargs: searched.append(args[1]) or search(*args, **kwargs))

    rows, scores = model.user_neighbour_rows("u7", model.user_factors[7], K)
    np.testing.assert_array_equal(rows, expected[0])
    np.testing.assert_array_equal(scores, expected[1])
    model.user_neighbour_rows("u7", model.user_factors[7], K, ef_search=16)  # the index's own breadth
    assert searched == []
    model.user_neighbour_rows("u7", model.user_factors[7], K + 1)  # a deeper page
    model.user_neighbour_rows("u7", model.user_factors[7], K, ef_search=32)  # another breadth
    model.user_neighbour_rows("new", folded_in, K)  # a folded-in user
    assert searched == [K + 1, K, K]


def test_no_table_where_serving_would_not_search_the_index() -> None:
    small_catalogue = random_model(n_items=K * EXACT_SEARCH_K_SHARE)  # the exact product answers
    assert precompute_user_neighbours(small_catalogue, K) is None
    assert precompute_user_neighbours(random_model(), 0) is None


def test_the_table_round_trips_through_an_artifact_memory_mapped(tmp_path) -> None:
    model = random_model()
    model.user_neighbours = precompute_user_neighbours(model, K)
    version = publish(str(tmp_path), model, {"ranker": default_ranker_spec()})
    loaded = load_current(str(tmp_path))
    table = loaded.model.user_neighbours
    assert loaded.manifest["model"]["user_neighbours"] == {"k": K, "ef_search": 16}
    assert type(table.rows) is np.ndarray and not table.rows.flags.owndata  # a view of the mapping
    np.testing.assert_array_equal(table.rows, model.user_neighbours.rows)
    np.testing.assert_array_equal(table.scores, model.user_neighbours.scores)

    rows_file = f"{version}/{ROWS_FILE}"
    np.save(rows_file, model.user_neighbours.rows[:, :-1])
    with pytest.raises(ValueError, match=rf"{ROWS_FILE}: holds int32 \(300, {K - 1}\), expected int32 \(300, {K}\)"):
        load_current(str(tmp_path))
    out_of_range = model.user_neighbours.rows.copy()
    out_of_range[3, 4] = len(model.item_ids)
    np.save(rows_file, out_of_range)
    with pytest.raises(ValueError, match=rf"{ROWS_FILE}: item rows outside -1..{len(model.item_ids) - 1}"):
        load_current(str(tmp_path))
    with open(rows_file, "r+b") as f:
        f.truncate(1_000)
    with pytest.raises(ValueError, match=rf"{ROWS_FILE}: not a readable .npy table"):
        load_current(str(tmp_path))
    for size in (0, 5):  # emptied (a copy that ran out of disk): np.load raised a bare "EOFError: No data left in file"
        with open(rows_file, "r+b") as f:
            f.truncate(size)
        with pytest.raises(ValueError, match=rf"{ROWS_FILE}: not a readable .npy table"):
            load_current(str(tmp_path))


def test_feeds_are_the_same_with_and_without_the_table(tmp_path, monkeypatch) -> None:
    dataset = generate(users=400, sellers=40, items=6_000, seed=2)
    write_dataset(dataset, str(tmp_path / "data"))
    settings = FeedSettings(neighbours=40)  # a first page searches the index: 40 x 100 < 6,000 items
    train_and_publish(str(tmp_path / "data"), str(tmp_path / "models"), TrainParams(index="hnsw-mips", show_progress=False),
                      settings=settings)
    artifact = load_current(str(tmp_path / "models"))
    assert isinstance(artifact.model.user_neighbours, UserNeighbours) and artifact.model.user_neighbours.k == 40
    pipeline = build_feed_pipeline(MemoryStore.from_dataset(dataset), artifact.model, artifact.ranker, settings)
    now = time.time()
    users = random.Random(0).sample(dataset.user_ids(), 100)

    index = artifact.model.index
    searches = []
    search = index.search
    monkeypatch.setattr(index, "search", lambda *args, **kwargs: searches.append(1) or search(*args, **kwargs))
    # A page can gather more than once (deeper pools, or the fallback sources for a page the
    # caps left short): each gathering of a trained user's candidates searches once, live.
    gathered = []
    candidates = pipeline._candidates
    monkeypatch.setattr(pipeline, "_candidates", lambda user, *args, **kwargs: gathered.append(user) or candidates(user, *args, **kwargs))

    def feeds() -> tuple[list[list[tuple[str, float]]], int]:
        searches.clear()
        gathered.clear()
        return [[(item.item_id, item.score) for item in pipeline.run(user, 20, now).items] for user in users], len(searches)

    with_table, searched_with_table = feeds()
    artifact.model.user_neighbours = None
    live, searched_live = feeds()
    assert live == with_table
    assert sum(map(len, with_table)) > 1_000
    trained = sum(user in artifact.model.user_row for user in gathered)
    assert searched_live == searched_with_table + trained and trained > 50


@pytest.mark.parametrize("name", ["knn.npz", ROWS_FILE, SCORES_FILE])
def test_an_optional_file_that_cannot_be_read_is_named_in_one_error(tmp_path, name) -> None:
    """knn.npz and the user-neighbour tables were read outside the version's error naming:
    one the server may not read (a directory in its place here: IsADirectoryError, as a
    PermissionError or EIO would be) stopped the start with a bare OSError traceback."""
    import scipy.sparse as sp

    from embeddings.knn import ItemKNN

    model = random_model()
    model.user_neighbours = precompute_user_neighbours(model, K)
    model.item_knn = ItemKNN(model.item_ids, sp.identity(len(model.item_ids), dtype=np.float32, format="csr"))
    version = publish(str(tmp_path), model, {"ranker": default_ranker_spec()})
    os.remove(os.path.join(version, name))
    os.mkdir(os.path.join(version, name))
    with pytest.raises(ValueError, match=rf"^model version {version}: {name} cannot be read \(IsADirectoryError: "):
        load_current(str(tmp_path))
