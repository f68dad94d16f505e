"""embeddings.als and embeddings.model on a two-community dataset with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.als import BAG_SEED_STEP, MIN_RECENCY_WEIGHT, build_interactions, recency_weights, train_als
from embeddings.index import build_index
from embeddings.model import EmbeddingModel
from tests.builders import DAY, NOW, make_dataset
from training.dataset import Dataset, Edges, Items


def two_communities(seed: int = 0) -> Dataset:
    """Users u00-u29 like random 6 of items a0-a19 and follow seller sa; u30-u59 the same with b*/sb."""
    rng = np.random.default_rng(seed)
    item_ids = [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)]
    items = Items(item_ids, ["sa"] * 20 + ["sb"] * 20, np.zeros(40), np.ones(40, np.int64),
                  np.full(40, np.nan), [""] * 40)
    src, dst, fsrc, fdst = [], [], [], []
    for u in range(60):
        group = "a" if u < 30 else "b"
        for i in rng.choice(20, 6, replace=False):
            src.append(f"u{u:02d}")
            dst.append(f"{group}{i}")
        if u % 3 == 0:
            fsrc.append(f"u{u:02d}")
            fdst.append(f"s{group}")
    likes = Edges(src, dst, np.zeros(len(src)))
    follows = Edges(fsrc, fdst, np.zeros(len(fsrc)))
    return Dataset(items, likes, follows, Edges([], [], np.zeros(0)))


def train_model(ds: Dataset, kind: str = "flat") -> EmbeddingModel:
    inter = build_interactions(ds)
    users, items = train_als(inter, factors=8, regularization=0.05, alpha=20.0, iterations=10, show_progress=False)
    return EmbeddingModel(inter.user_ids, inter.item_ids, users, items, build_index(items, kind), 0.05, 20.0)


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return train_model(two_communities())


def test_interactions_layout() -> None:
    ds = two_communities()
    inter = build_interactions(ds, like_weight=1.0, follow_weight=0.5)
    assert inter.matrix.dtype == np.float32
    assert inter.matrix.shape == (60, 40 + 2)
    assert inter.item_ids[:3] == ["a0", "a1", "a2"] and inter.seller_ids == ["sa", "sb"]
    assert inter.matrix.nnz == len(ds.likes) + len(ds.follows)
    row = inter.user_ids.index("u00")  # u00 follows sa: column 40 with weight 0.5
    assert inter.matrix[row, 40] == pytest.approx(0.5)
    assert inter.item_matrix.shape == (60, 40)


def test_trained_user_neighbours_stay_in_community(model: EmbeddingModel) -> None:
    vector = model.user_vector("u01", [])
    assert vector is not None and vector.dtype == np.float32 and vector.shape == (8,)
    ids, scores = model.neighbours(vector, 10)
    assert len(ids) == 10 and scores.dtype == np.float32
    assert all(i.startswith("a") for i in ids)
    assert np.all(np.diff(scores) <= 0)


def test_fold_in_neighbours_overlap_source_items(model: EmbeddingModel) -> None:
    recent = ["b1", "b2", "b3", "unknown-item"]
    vector = model.user_vector("new-user", recent)
    assert vector is not None and vector.dtype == np.float32 and vector.shape == (8,)
    ids, _ = model.neighbours(vector, 10)
    assert all(i.startswith("b") for i in ids[:5])  # the folded user's community first
    assert sum(i.startswith("b") for i in ids) >= 8
    assert len({"b1", "b2", "b3"} & set(ids[:5])) >= 2  # the items it was folded from rank high


def test_fold_in_of_a_trained_users_likes_recovers_its_neighbours(model: EmbeddingModel) -> None:
    ds = two_communities()
    liked = [i for u, i in zip(ds.likes.src, ds.likes.dst) if u == "u46"]  # u46 follows nobody
    folded, _ = model.neighbours(model.fold_in(liked), 10)
    trained, _ = model.neighbours(model.user_vector("u46", []), 10)
    assert len(set(folded) & set(trained)) >= 8


def test_fold_in_matches_implicit_recalculate_user() -> None:
    from implicit.cpu.als import AlternatingLeastSquares
    from scipy.sparse import csr_matrix

    ds = two_communities()
    inter = build_interactions(ds, follow_weight=0.0)
    users, items = train_als(inter, factors=8, regularization=0.05, alpha=20.0, iterations=5, show_progress=False)
    model = EmbeddingModel(inter.user_ids, inter.item_ids, users, items[:40], build_index(items[:40]), 0.05, 20.0)
    reference = AlternatingLeastSquares(factors=8, regularization=0.05, alpha=20.0, use_native=False, use_cg=False)
    reference.item_factors = items[:40]
    row = csr_matrix((np.ones(3, np.float32), ([0, 0, 0], [1, 2, 3])), shape=(1, 40))
    expected = np.asarray(reference.recalculate_user(0, row)).ravel()
    np.testing.assert_allclose(model.fold_in(["a1", "a2", "a3"]), expected, rtol=1e-3, atol=1e-5)


def test_unknown_user_without_known_items_is_none(model: EmbeddingModel) -> None:
    assert model.user_vector("nobody", []) is None
    assert model.user_vector("nobody", ["nope"]) is None


def test_scores_are_exact_with_nan_for_unknown(model: EmbeddingModel) -> None:
    vector = model.user_vector("u01", [])
    out = model.scores(vector, ["a3", "zzz", "b7"])
    assert out.dtype == np.float32 and out.shape == (3,)
    assert np.isnan(out[1])
    assert out[0] == pytest.approx(float(model.item_factors[model.item_row["a3"]] @ vector), rel=1e-5)
    ids, scores = model.neighbours(vector, 3)
    np.testing.assert_allclose(model.scores(vector, ids), scores, rtol=1e-5)
    assert model.scores(vector, []).shape == (0,)


def test_neighbours_k_larger_than_catalogue(model: EmbeddingModel) -> None:
    ids, scores = model.neighbours(model.user_vector("u01", []), 100)
    assert len(ids) == 40 == len(scores) and len(set(ids)) == 40


def test_item_knn_user_scores_sum_the_similarity_rows_of_the_distinct_known_likes():
    import scipy.sparse as sp

    from embeddings.knn import ItemKNN

    similarity = sp.random(300, 300, density=0.05, random_state=1, format="csr", dtype=np.float32)
    knn = ItemKNN([f"i{n}" for n in range(300)], similarity)
    got = knn.user_scores(["i3", "i5", "i5", "unknown", "i17", "i299"])
    expected = np.asarray(similarity[[3, 5, 17, 299]].sum(axis=0)).ravel()
    order = np.argsort(got.rows)  # the rows come in no particular order
    np.testing.assert_array_equal(got.rows[order], np.flatnonzero(expected))
    np.testing.assert_allclose(got.scores[order], expected[np.flatnonzero(expected)], rtol=1e-6)
    np.testing.assert_allclose(got.lookup(np.arange(-1, 301)), np.r_[0.0, expected, 0.0], rtol=1e-6)
    assert len(knn.user_scores(["unknown"]).rows) == 0


@pytest.mark.parametrize("seed", range(20))
def test_weighted_sums_are_the_dense_sums_of_each_liked_rows_largest_weight(seed: int) -> None:
    import scipy.sparse as sp

    from embeddings.knn import ItemKNN

    rng = np.random.default_rng(seed)
    n = 200
    similarity = sp.random(n, n, density=rng.uniform(0.0, 0.1), random_state=seed, format="csr", dtype=np.float32)
    similarity.setdiag(0.0)
    knn = ItemKNN([f"i{r}" for r in range(n)], similarity)
    liked = rng.integers(-1, n, rng.integers(0, 12))  # repeats and unknowns (-1) included
    weightings = rng.random((rng.integers(1, 4), len(liked)))
    rows = rng.integers(-1, n, rng.integers(0, 60))
    dense = similarity.toarray().astype(np.float64)
    expected = np.zeros((len(rows), len(weightings)))
    for j, weights in enumerate(weightings):
        largest = {}
        for row, weight in zip(liked.tolist(), weights.tolist()):
            if row >= 0:
                largest[row] = max(largest.get(row, 0.0), weight)
        summed = sum((weight * dense[row] for row, weight in largest.items()), np.zeros(n))
        expected[:, j] = np.where(rows >= 0, summed[rows], 0.0)
        np.testing.assert_allclose(knn.user_scores_rows(liked, weights).lookup(rows), expected[:, j], rtol=1e-5, atol=1e-6)
    got = knn.neighbourhood(liked).sums_at(weightings, rows)
    assert got.shape == (len(rows), len(weightings))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    neighbourhood = knn.user_scores_rows(liked).neighbourhood
    np.testing.assert_allclose(neighbourhood.sums_at(weightings, rows), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["cosine", "bm25", "tfidf"])
def test_item_knn_of_chosen_rows_equals_implicits_rows_and_leaves_the_rest_empty(kind: str) -> None:
    import scipy.sparse as sp

    from embeddings.knn import train_item_knn

    rng = np.random.default_rng(3)
    users, items, per_user = 800, 400, 12
    popularity = rng.zipf(1.6, items).astype(float)  # skewed, as likes are: hubs and ties
    cells = (np.repeat(np.arange(users), per_user), rng.choice(items, users * per_user, p=popularity / popularity.sum()))
    matrix = sp.csr_matrix((rng.integers(1, 5, users * per_user).astype(np.float32), cells), shape=(users, items))
    matrix.sum_duplicates()
    ids = [f"i{n}" for n in range(items)]
    chosen = rng.choice(items, 60, replace=False)
    full = train_item_knn(matrix, ids, kind, 15, show_progress=False).similarity
    part = train_item_knn(matrix, ids, kind, 15, show_progress=False, rows=chosen).similarity
    for row in chosen:  # the same neighbour weights; equal weights may pick other neighbours
        np.testing.assert_allclose(np.sort(part[row].data), np.sort(full[row].data), rtol=1e-5)
        assert row not in part[row].indices
    assert part[np.setdiff1d(np.arange(items), chosen)].nnz == 0
    liked = matrix[5].indices  # a user's scores read only the rows of their likes
    only_liked = train_item_knn(matrix, ids, kind, 15, show_progress=False, rows=liked)
    np.testing.assert_allclose(only_liked.user_scores_rows(liked).scores.sum(), full[liked].sum(), rtol=1e-5)


def test_a_deep_neighbour_search_is_exact_and_agrees_with_the_index_at_its_top() -> None:
    from embeddings.model import EXACT_SEARCH_K_SHARE

    rng = np.random.default_rng(0)
    n = 3 * EXACT_SEARCH_K_SHARE
    items = rng.normal(size=(n, 8)).astype(np.float32)
    model = EmbeddingModel(["u"], [f"i{j}" for j in range(n)], items[:1], items, build_index(items, "hnsw-mips"), 0.1)
    query = rng.normal(size=8).astype(np.float32)
    exact = np.argsort(-(items @ query), kind="stable")
    rows, scores = model.neighbour_rows(query, n // 2)  # deep: k >= n / EXACT_SEARCH_K_SHARE
    np.testing.assert_array_equal(rows, exact[: n // 2])
    np.testing.assert_allclose(scores, (items @ query)[rows], rtol=1e-5)
    rows, _ = model.neighbour_rows(query, n + 10)
    assert sorted(rows.tolist()) == list(range(n))


def test_a_fit_part_shares_the_full_layout_and_warm_starts_it() -> None:
    ds = two_communities()
    full = build_interactions(ds)
    half = ds.with_likes(Edges(ds.likes.src[::2], ds.likes.dst[::2], ds.likes.ts[::2]))
    part = build_interactions(half, layout=full)
    assert (part.user_ids, part.item_ids, part.seller_ids) == (full.user_ids, full.item_ids, full.seller_ids)
    assert part.matrix.shape == full.matrix.shape and part.matrix.nnz < full.matrix.nnz
    # A light penalty: the loss below is the fit alone, which a heavy one would dominate on a matrix this small.
    users, columns = train_als(part, factors=8, regularization=0.05, iterations=10, show_progress=False, all_columns=True)
    assert columns.shape == (full.matrix.shape[1], 8)
    warm_users, warm_items = train_als(full, factors=8, regularization=0.05, iterations=2, show_progress=False,
                                       initial=(users, columns))
    cold_users, cold_items = train_als(full, factors=8, regularization=0.05, iterations=2, show_progress=False)
    # Two sweeps from the fit part's factors fit the full matrix better than two from random ones.
    def loss(u, i):
        dense = full.matrix[:, : full.n_items].toarray() > 0
        return float(((dense - u @ i.T) ** 2).sum())
    assert loss(warm_users, warm_items) < loss(cold_users, cold_items)
    with pytest.raises(ValueError, match="layout"):
        train_als(full, factors=4, iterations=1, show_progress=False, initial=(users, columns))



def test_bagged_als_scores_are_the_mean_of_its_models_and_warm_start_bag_by_bag() -> None:
    inter = build_interactions(two_communities())
    fit = dict(factors=8, iterations=5, show_progress=False, num_threads=1)
    users, items = train_als(inter, seed=3, bags=3, **fit)
    assert users.shape == (len(inter.user_ids), 24) and items.shape == (inter.n_items, 24)
    models = [train_als(inter, seed=3 + bag * BAG_SEED_STEP, **fit) for bag in range(3)]
    mean_scores = np.mean([u @ i.T for u, i in models], axis=0)
    np.testing.assert_allclose(users @ items.T, mean_scores, rtol=1e-4, atol=1e-5)
    assert not np.allclose(models[0][0] @ models[0][1].T, mean_scores, atol=1e-3), "the bags should differ"

    users, columns = train_als(inter, seed=3, bags=3, all_columns=True, **fit)
    warm_users, _ = train_als(inter, seed=3, bags=3, initial=(users, columns), **{**fit, "iterations": 1})
    one_users, one_columns = train_als(inter, seed=3 + BAG_SEED_STEP, all_columns=True, **fit)
    second, _ = train_als(inter, initial=(one_users, one_columns), **{**fit, "iterations": 1})
    np.testing.assert_allclose(warm_users[:, 8:16] * np.sqrt(3), second, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="3 bags of 8"):
        train_als(inter, bags=3, initial=(one_users, one_columns), **fit)

def test_recency_weighting_halves_a_likes_confidence_every_half_life():
    ds = make_dataset(
        [("a", "s", NOW - 90 * DAY, 1), ("b", "s", NOW - 90 * DAY, 1)],
        likes=[("u1", "a", NOW), ("u1", "b", NOW - 10 * DAY), ("u2", "a", NOW - 20 * DAY)],
    )
    flat = build_interactions(ds, follow_weight=0.0, weight_transform="binary")
    weighted = build_interactions(ds, follow_weight=0.0, weight_transform="binary", recency_half_life_days=10.0)
    row = {u: i for i, u in enumerate(weighted.user_ids)}
    col = {t: j for j, t in enumerate(weighted.item_ids)}
    dense = weighted.matrix.toarray()
    assert dense[row["u1"], col["a"]] == pytest.approx(1.0)
    assert dense[row["u1"], col["b"]] == pytest.approx(0.5)
    assert dense[row["u2"], col["a"]] == pytest.approx(0.25)
    assert (flat.matrix != 0).sum() == (weighted.matrix != 0).sum()  # every like stays a positive
    assert recency_weights(np.array([NOW - 1e4 * DAY, NOW]), 1.0).min() == pytest.approx(MIN_RECENCY_WEIGHT)


def test_engagements_add_their_kinds_weight_to_the_users_item_cell():
    import dataclasses

    from embeddings.als import build_interactions
    from tests.builders import NOW, social_dataset
    from training.dataset import Engagements

    rows = [("alice", "i1", "purchase"), ("alice", "i1", "view"), ("alice", "i8", "share"), ("zoe", "i3", "click")]
    engagements = Engagements([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], np.full(4, NOW), [""] * 4)
    ds = dataclasses.replace(social_dataset(), engagements=engagements)
    weights = {"purchase": 2.0, "view": 0.5, "share": 1.5, "click": 0.0}
    got = build_interactions(ds, follow_weight=0.0, engagement_weights=weights)

    def cell(user: str, item: str) -> float:
        return float(got.matrix[got.user_ids.index(user), got.item_ids.index(item)])

    assert cell("alice", "i1") == 2.5  # purchase + view, no like
    assert cell("alice", "i8") == 1.0 + 1.5  # a like (weight 1) and a share add up
    assert "zoe" in got.user_ids and got.matrix[got.user_ids.index("zoe")].nnz == 0  # a click weighing 0 adds nothing
    plain = build_interactions(ds, follow_weight=0.0, engagement_weights={})
    assert plain.matrix[:, : plain.n_items].sum() == len(ds.likes)


def test_item_knn_top_rows_breaks_ties_at_the_cut_by_lowest_row_whatever_the_order() -> None:
    import scipy.sparse as sp

    from embeddings.knn import ItemKNN

    rng = np.random.default_rng(4)
    n = 60
    similarity = sp.csr_matrix(rng.integers(0, 3, (n, n)).astype(np.float32))  # few distinct sums: many ties
    similarity.setdiag(0.0)
    similarity.eliminate_zeros()
    knn = ItemKNN([f"i{r}" for r in range(n)], similarity)
    liked = rng.choice(n, 4, replace=False)
    dense = np.asarray(similarity[liked].sum(axis=0)).ravel()
    for k in (1, 5, 17):
        expected = sorted((r for r in range(n) if dense[r] > 0), key=lambda r: (-dense[r], r))[:k]
        for order in (liked, liked[::-1]):  # another order of likes: other hash-table order
            rows, values = knn.top_rows(knn.user_scores_rows(order), k)
            assert rows.tolist() == expected
            np.testing.assert_allclose(values, dense[expected])
