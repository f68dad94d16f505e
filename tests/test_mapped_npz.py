"""embeddings/mapped_npz.py: the arrays np.load reads, mapped instead of copied where the archive stores them plainly."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from embeddings.knn import ItemKNN
from embeddings.mapped_npz import load_mapped_npz


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "factors": rng.standard_normal((50, 8)).astype(np.float32),
        "codes": np.arange(-3, 97, dtype=np.int64),
        "fortran": np.asfortranarray(rng.standard_normal((6, 5))),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(b"csr"),
        "shape": np.array([7, 7]),
        "ids": np.array(["u1", "u22", "u333"]),
    }


def is_mapped(array: np.ndarray) -> bool:
    while array.base is not None and not isinstance(array, np.memmap):
        array = array.base
    return isinstance(array, np.memmap)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_every_array_reads_as_np_load_reads_it_and_stays_read_only(tmp_path, save):
    path = tmp_path / "a.npz"
    save(path, **arrays())
    loaded = load_mapped_npz(str(path))
    with np.load(path) as expected:
        assert sorted(loaded) == sorted(expected.files)
        for name in expected.files:
            assert loaded[name].dtype == expected[name].dtype and loaded[name].shape == expected[name].shape, name
            np.testing.assert_array_equal(loaded[name], expected[name])
            assert not loaded[name].flags.writeable, name
    if save is np.savez:  # stored plainly: mapped, except the empty array (a map cannot be empty)
        assert all(is_mapped(loaded[name]) for name in loaded if loaded[name].size), [n for n in loaded if not is_mapped(loaded[n])]
        assert loaded["fortran"].flags.f_contiguous
    else:
        assert not any(is_mapped(array) for array in loaded.values())


def test_a_file_that_is_not_an_npz_is_refused_by_name(tmp_path):
    path = tmp_path / "knn.npz"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"knn\.npz: not an \.npz archive"):
        load_mapped_npz(str(path))


def test_a_saved_item_knn_loads_memory_mapped_with_the_same_neighbours(tmp_path):
    rng = np.random.default_rng(1)
    dense = rng.random((40, 40)).astype(np.float32) * (rng.random((40, 40)) < 0.2)
    np.fill_diagonal(dense, 0)
    ids = [f"i{n}" for n in range(40)]
    saved = ItemKNN(ids, sp.csr_matrix(dense))
    path = str(tmp_path / "knn.npz")
    saved.save(path)
    loaded = ItemKNN.load(path, ids)
    assert all(is_mapped(array) for array in (loaded.similarity.data, loaded.similarity.indices, loaded.similarity.indptr))
    assert (loaded.similarity != saved.similarity).nnz == 0
    liked = ["i3", "i7", "i11"]
    np.testing.assert_array_equal(loaded.user_scores(liked).lookup_ids(ids), saved.user_scores(liked).lookup_ids(ids))
    assert loaded.user_scores(liked).lookup_ids(ids).any()
