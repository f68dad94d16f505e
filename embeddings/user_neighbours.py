"""Each trained user's first-page embedding neighbours, searched once at training time.

A trained user's vector and the item index change only when a new model is published,
so the neighbour search a first page runs returns the same rows for that user on every
request. The trainer runs it for every trained user (in batches, which faiss searches on
all cores, except over the exact index) and the artifact keeps the answers; serving reads
one row instead of searching the index, which was the dearest single step of a feed
(benchmarks/README.md). The search is the one serving would run, so feeds are the same
with or without the table. Folded-in users, deeper pages and other search settings still
search live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

PRECOMPUTE_MAX_USERS = 200_000
"""Default for the trainer: above this many users the table is not built. At the default
k = 150 it takes 8 bytes per neighbour (1.2 KB a user; 240 MB at this bound, memory-mapped
so a server's workers share it), and the search 0.1-0.3 ms a user on one core."""
ROWS_FILE = "user_neighbours.npy"
SCORES_FILE = "user_neighbour_scores.npy"
_BATCH = 4_096


@dataclass(frozen=True)
class UserNeighbours:
    """``rows[u]`` / ``scores[u]``: what ``EmbeddingModel.neighbour_rows(user_factors[u], k)``
    returns for user row ``u`` with the index's ``ef_search``, padded with -1 / -inf."""

    k: int
    ef_search: int
    rows: np.ndarray  # int32 [n_users, k]
    scores: np.ndarray  # float32 [n_users, k]

    def answers(self, k: int, ef_search: int) -> bool:
        """Whether the table holds the result of a search for ``k`` items at ``ef_search`` (0: the index's own)."""
        return k == self.k and ef_search in (0, self.ef_search)

    def of(self, user_row: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows[user_row]
        found = rows >= 0
        return rows[found], self.scores[user_row][found]

    def save(self, directory: str) -> None:
        np.save(os.path.join(directory, ROWS_FILE), self.rows)
        np.save(os.path.join(directory, SCORES_FILE), self.scores)

    @classmethod
    def load(cls, directory: str, k: int, ef_search: int, n_users: int, n_items: int) -> UserNeighbours:
        """Memory-mapped: a server's worker processes share one copy in the page cache.
        ValueError names the file when it is not the table a model of this shape needs."""
        tables = []
        for name, dtype in ((ROWS_FILE, np.int32), (SCORES_FILE, np.float32)):
            path = os.path.join(directory, name)
            try:
                table = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, EOFError) as error:  # a truncated (EOFError: emptied) or foreign file
                raise ValueError(f"{path}: not a readable .npy table ({type(error).__name__}: {error})") from None
            if table.shape != (n_users, k) or table.dtype != dtype:
                raise ValueError(
                    f"{path}: holds {table.dtype} {table.shape}, expected {np.dtype(dtype)} {(n_users, k)} (the model's users x k)"
                )
            # Plain arrays over the mapping: a memmap's every slice pays for its subclass.
            tables.append(np.asarray(table))
        rows, scores = tables
        if rows.size and (rows.min() < -1 or rows.max() >= n_items):
            raise ValueError(f"{os.path.join(directory, ROWS_FILE)}: item rows outside -1..{n_items - 1}")
        return cls(k, ef_search, rows, scores)


def precompute_user_neighbours(model, k: int, show_progress: bool = False) -> UserNeighbours | None:
    """Every trained user's ``model.neighbour_rows(vector, k)``, bit for bit, or None when serving would
    not search the index for k (a catalogue small enough for the exact product, which is
    cheap) or k < 1. ``model`` is an embeddings.model.EmbeddingModel."""
    n_users = len(model.user_ids)
    if k < 1 or not model.searches_index(k):
        return None
    rows = np.full((n_users, k), -1, np.int32)
    scores = np.full((n_users, k), -np.inf, np.float32)
    # faiss's exact search scores a batch of queries with other kernels than one query, which
    # round differently in the last bits (and can swap near-ties): so one user per call, as
    # serving asks, wherever the search for k is exact (flat, or IVF probing half its lists
    # or more, as with few items). Graph and inverted-list searches treat each query of a batch alone.
    batch = 1 if model.index.searches_exactly(k) else _BATCH
    with tqdm(total=n_users, desc="user neighbours", unit="user", disable=not show_progress) as progress:
        for start in range(0, n_users, batch):
            stop = min(start + batch, n_users)
            batch_scores, batch_rows = model.index.search(model.user_factors[start:stop], k)
            rows[start:stop] = batch_rows
            scores[start:stop] = batch_scores
            progress.update(stop - start)
    # The search breadth serving uses when it asks for none (ef_search 0); kinds without one: 0.
    return UserNeighbours(k, int(model.index.params.get("ef_search", 0)), rows, scores)
