"""embeddings.index: exactness of returned scores, recall of the approximate kinds, large k,
persistence."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np
import pytest

from benchmarks.bench_ann import lognormal_factors
import embeddings.index as index_module
from embeddings.index import HNSW_KINDS, IVF_KINDS, KINDS, MipsIndex, build_index, recall_at


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Iterator[None]:
    # On a loaded 2-core machine, OpenMP k-means (IVF training) ran 20x slower with two
    # threads than with one (41 s against 1.3 s for one fixture); one thread also makes
    # builds reproducible.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t.tolist()) & set(f.tolist())) / len(t) for t, f in zip(truth, found)]))


@pytest.fixture(scope="module")
def narrow_norms() -> tuple[np.ndarray, np.ndarray]:
    # 20k clustered vectors, norms lognormal(0, 0.2): the regime where the MIPS->L2
    # reduction beats HNSW on raw inner product. (With wider spreads, as in real ALS
    # factors, hnsw-ip collapses; see benchmarks/README.md.)
    return lognormal_factors(20_000, 200, 32, seed=0, norm_sigma=0.2)


@pytest.fixture(scope="module")
def narrow_truth(narrow_norms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    items, queries = narrow_norms
    return build_index(items, "flat").search(queries, 50)[1]


@pytest.fixture(scope="module")
def narrow_hnsw(narrow_norms: tuple[np.ndarray, np.ndarray]) -> dict[str, MipsIndex]:
    items, _ = narrow_norms
    return {kind: build_index(items, kind, hnsw_m=16, ef_construction=100) for kind in ("hnsw-mips", "hnsw-ip")}


def test_flat_is_exact_and_pads() -> None:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((30, 8)).astype(np.float32)
    query = rng.standard_normal((2, 8)).astype(np.float32)
    scores, rows = build_index(items, "flat").search(query, 40)
    exact = query @ items.T
    assert scores.dtype == np.float32 and rows.dtype == np.int64 and rows.shape == (2, 40)
    np.testing.assert_array_equal(rows[:, 30:], -1)
    assert np.all(np.isneginf(scores[:, 30:]))
    np.testing.assert_array_equal(rows[:, :30], np.argsort(-exact, axis=1))
    np.testing.assert_allclose(scores[:, :30], -np.sort(-exact, axis=1), rtol=1e-5)


def test_hnsw_mips_recall_and_exact_scores(narrow_norms, narrow_truth, narrow_hnsw) -> None:
    items, queries = narrow_norms
    index = narrow_hnsw["hnsw-mips"]
    index.params["ef_search"] = 256
    scores, rows = index.search(queries, 50)
    assert recall(narrow_truth, rows) >= 0.9
    # Scores are true inner products with the original factors, best first.
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", items[rows], queries), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_ef_search_per_call_overrides_the_index_breadth(narrow_norms, narrow_truth, narrow_hnsw) -> None:
    _, queries = narrow_norms
    index = narrow_hnsw["hnsw-mips"]
    before = index.params["ef_search"]
    index.params["ef_search"] = 50
    try:
        narrow = recall(narrow_truth, index.search(queries, 50)[1])
        wide = recall(narrow_truth, index.search(queries, 50, ef_search=400)[1])
        assert wide > narrow, (narrow, wide)
        assert index.params["ef_search"] == 50  # the override is per call, never stored
        np.testing.assert_array_equal(index.search(queries, 50, ef_search=50)[1], index.search(queries, 50)[1])
    finally:
        index.params["ef_search"] = before


def test_hnsw_ip_is_worse_than_mips_on_narrow_norms(narrow_norms, narrow_truth, narrow_hnsw) -> None:
    _, queries = narrow_norms
    found = {}
    for kind, index in narrow_hnsw.items():
        index.params["ef_search"] = 128
        found[kind] = recall(narrow_truth, index.search(queries, 50)[1])
    assert found["hnsw-mips"] > found["hnsw-ip"] + 0.02, found


def test_zero_items_stay_out_of_hnsw_but_not_flat() -> None:
    rng = np.random.default_rng(1)
    items = rng.standard_normal((500, 8)).astype(np.float32)
    items[::2] = 0.0  # never-liked items: ALS gives them zero factors
    hnsw = build_index(items, "hnsw-mips", hnsw_m=8)
    assert hnsw.ntotal == 500 and hnsw.index.ntotal == 250
    _, rows = hnsw.search(items[1:2], 500)
    assert set(rows[0][rows[0] >= 0].tolist()) <= set(range(1, 500, 2))
    assert build_index(items, "flat").index.ntotal == 500


@pytest.fixture(scope="module")
def narrow_ivf(narrow_norms: tuple[np.ndarray, np.ndarray]) -> dict[str, MipsIndex]:
    items, _ = narrow_norms
    return {kind: build_index(items, kind, nlist=128, pq_m=16, nprobe=16, k_factor=8) for kind in IVF_KINDS}


@pytest.mark.parametrize("kind", IVF_KINDS)
def test_ivfpq_recall_and_exact_scores(narrow_norms, narrow_truth, narrow_ivf, kind: str) -> None:
    items, queries = narrow_norms
    scores, rows = narrow_ivf[kind].search(queries, 50)
    assert recall(narrow_truth, rows) >= 0.9
    # The refine step ranks by L2 in the augmented space for ivfpq-mips: what comes
    # back must still be true inner products with the original factors, best first.
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", items[rows], queries), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_ivfpq_ip_beats_the_l2_reduction_on_wide_norms() -> None:
    # Why "auto" builds ivfpq-ip and not ivfpq-mips: with widely spread norms the
    # reduction's extra coordinate (close to the largest norm for most items) dominates
    # every L2 distance, and 4-bit codes cannot resolve the inner products under it.
    items, queries = lognormal_factors(10_000, 100, 32, seed=4, norm_sigma=1.0)
    truth = build_index(items, "flat").search(queries, 50)[1]
    found = {kind: recall(truth, build_index(items, kind, nlist=64, pq_m=16, nprobe=16).search(queries, 50)[1])
             for kind in IVF_KINDS}
    assert found["ivfpq-ip"] >= 0.75 and found["ivfpq-ip"] > found["ivfpq-mips"] + 0.2, found


@pytest.mark.parametrize("k", [300, 1000, 2000])
@pytest.mark.parametrize("kind", IVF_KINDS + HNSW_KINDS)
def test_large_k_keeps_recall(narrow_norms, narrow_hnsw, narrow_ivf, kind: str, k: int) -> None:
    # Pages deep in a feed ask for thousands of items: nprobe (IVF) and efSearch (HNSW)
    # must grow with k, or the tail of the result is padding or noise. For IVF (16 of 128
    # lists at k=100, 8 candidates rescored per result), k=300 probes 28 lists and k=1000
    # probes 51, rescoring 4 per result; k=2000 would probe 72, over half, and searches
    # exactly instead.
    items, queries = narrow_norms
    index = {**narrow_hnsw, **narrow_ivf}[kind]
    if kind in HNSW_KINDS:
        index.params["ef_search"] = 64
    truth = build_index(items, "flat").search(queries[:20], k)[1]
    scores, rows = index.search(queries[:20], k)
    assert np.all(rows >= 0) and len(set(rows[0].tolist())) == k
    floor = {"hnsw-ip": 0.3, "hnsw-mips": 0.85}.get(kind, 0.9)
    assert recall(truth, rows) >= floor, kind
    if kind in IVF_KINDS:
        assert index.searches_exactly(k) == (k == 2000)
    if kind in IVF_KINDS and k == 2000:
        np.testing.assert_array_equal(rows, truth)
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("kind", IVF_KINDS)
def test_ivfpq_k_above_ntotal_and_zero_items(kind: str) -> None:
    rng = np.random.default_rng(3)
    items = (rng.standard_normal((1000, 16)) * rng.lognormal(0, 0.5, (1000, 1))).astype(np.float32)
    items[::4] = 0.0  # never-liked items: ALS gives them zero factors
    index = build_index(items, kind, pq_m=8, nprobe=4)
    assert index.ntotal == 1000 and index.index.ntotal == 750
    # Approximate path (4 lists of 19 at k=10): zero items stay out.
    _, rows = index.search(items[1:3], 10)
    assert np.all(rows >= 0) and not np.any(rows % 4 == 0)
    # k above the catalogue: exact search over every item, zero ones included, padded.
    scores, rows = index.search(items[1:3], 1200)
    flat_scores, flat_rows = build_index(items, "flat").search(items[1:3], 1200)
    assert rows.shape == (2, 1200)
    for r, f in zip(rows, flat_rows):
        assert set(r.tolist()) == set(f.tolist())
    np.testing.assert_array_equal(rows[:, 1000:], -1)
    np.testing.assert_allclose(scores, flat_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", IVF_KINDS)
@pytest.mark.parametrize("n", [1, 7])
def test_ivfpq_tiny_catalogue_is_exact(kind: str, n: int) -> None:
    # Regression: fewer items than 4-bit PQ's 16 centroids failed to train, and one item
    # trained identical centroids that made fast-scan return nothing.
    items = np.random.default_rng(5).standard_normal((n, 4)).astype(np.float32)
    scores, rows = build_index(items, kind).search(items, 10)
    np.testing.assert_array_equal(rows[:, :n], np.argsort(-(items @ items.T), axis=1))
    np.testing.assert_array_equal(rows[:, n:], -1)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(2)
    items = (rng.standard_normal((1000, 16)) * rng.lognormal(0, 0.5, (1000, 1))).astype(np.float32)
    items[5] = 0.0
    index = build_index(items, kind, hnsw_m=8, ef_search=64, pq_m=8, nprobe=4)
    path = str(tmp_path / "index.faiss")
    index.save(path)
    loaded = MipsIndex.load(path)
    assert loaded.kind == kind and loaded.params == index.params
    np.testing.assert_array_equal(loaded.vectors, items)
    for a, b in zip(loaded.search(items[:10], 20), index.search(items[:10], 20)):
        np.testing.assert_array_equal(a, b)


def test_auto_and_errors(tmp_path) -> None:
    items = np.ones((10, 4), np.float32)
    assert build_index(items).kind == "flat"
    with pytest.raises(ValueError):
        build_index(items, "ivf")
    with pytest.raises(ValueError):
        build_index(items, "ivfpq-mips", pq_m=0)
    with pytest.raises(FileNotFoundError):
        MipsIndex.load(str(tmp_path / "missing.faiss"))


def test_auto_rungs_go_from_the_cheap_refine_to_the_given_one() -> None:
    cheap = index_module.AUTO_CHEAP_K_FACTOR
    assert index_module._auto_rungs(48, 32) == [(24, cheap), (32, cheap), (48, cheap), (24, 32), (32, 32), (48, 32)]
    assert index_module._auto_rungs(192, 32)[:6] == [(p, cheap) for p in (24, 32, 48, 64, 96)] + [(24, 32)]
    assert index_module._auto_rungs(192, 32)[-1] == (192, 32)
    assert index_module._auto_rungs(48, cheap) == [(24, cheap), (32, cheap), (48, cheap)]


def test_auto_above_the_threshold_takes_the_cheapest_search_that_reaches_the_recall(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(index_module, "AUTO_ANN_THRESHOLD", 3_000)
    items, queries = lognormal_factors(5_000, 100, 16, seed=3, norm_sigma=0.5)
    index = build_index(items, nlist=64, nprobe=48, check_queries=queries)
    assert index.kind == "ivfpq-ip"
    truth = build_index(items, "flat").search(queries, index_module.AUTO_CHECK_K)[1]
    chosen = index.params["nprobe"], index.params["k_factor"]
    measured = recall(truth, index.search(queries, index_module.AUTO_CHECK_K)[1])
    assert index.params["auto_recall"] == pytest.approx(measured, abs=1e-4)
    assert measured >= index_module.AUTO_MIN_RECALL
    rungs = index_module._auto_rungs(48, index_module.IVF_K_FACTOR)
    assert rungs.index(chosen) > 0, "the data should need more than the cheapest rung, or the test shows nothing"
    for nprobe, k_factor in rungs[: rungs.index(chosen)]:
        index.params.update(nprobe=nprobe, k_factor=k_factor)
        assert recall(truth, index.search(queries, index_module.AUTO_CHECK_K)[1]) < index_module.AUTO_MIN_RECALL
    index.params.update(nprobe=chosen[0], k_factor=chosen[1])
    path = str(tmp_path / "index.faiss")
    index.save(path)
    assert MipsIndex.load(path).params == index.params


def test_auto_above_the_threshold_warns_when_no_nprobe_reaches_the_recall(monkeypatch, caplog) -> None:
    monkeypatch.setattr(index_module, "AUTO_ANN_THRESHOLD", 3_000)
    monkeypatch.setattr(index_module, "AUTO_MIN_RECALL", 1.01)  # no index reaches it
    items, queries = lognormal_factors(5_000, 100, 16, seed=3, norm_sigma=0.5)
    with caplog.at_level("WARNING", logger="feedrank.embeddings.index"):
        index = build_index(items, nlist=64, nprobe=48, check_queries=queries)
    assert index.kind == "ivfpq-ip" and index.params["nprobe"] == 48
    assert 0.0 < index.params["auto_recall"] <= 1.0
    assert "ivfpq-ip reached recall@100" in caplog.text and "at nprobe 48, the most tried" in caplog.text


def test_recall_at_counts_the_exact_top_k_found() -> None:
    items, queries = lognormal_factors(2_000, 20, 8, seed=4)
    exact = build_index(items, "flat")
    assert recall_at(exact, queries, 50) == 1.0
    assert recall_at(exact, queries[:0], 50) == 1.0
    empty = build_index(items, "hnsw-ip")
    empty.index.reset()  # finds nothing
    assert recall_at(empty, queries, 50) == 0.0
