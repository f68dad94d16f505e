"""Embedding tables plus a MIPS index: what the serving pipeline asks of a trained model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embeddings.index import MipsIndex
from embeddings.knn import ItemKNN
from embeddings.user_neighbours import UserNeighbours

DEFAULT_FOLDIN_ALPHA = 20.0
"""Confidence of a like when folding in a user; matches embeddings.als.DEFAULT_ALPHA."""
EXACT_SEARCH_K_SHARE = 100
"""Neighbour searches for k >= n_items / this are exact (a matrix-vector product and a
partial sort) instead of an index walk. Measured on 50k items x 64 factors, one thread:
HNSW costs 0.35 ms at k=200, 1.5 ms at k=1000 and 47 ms at k=10000; the exact search
0.9-2 ms at any k. Deep pages ask for k = 2 x the items served so far."""


class EmbeddingModel:
    """User and item factors (float32) with string id maps and an item index.

    Contract used by ranking/:
      user_vector(user_id, recent_item_ids) -> float32 vector or None
          the trained user factor; for a user unseen at training time, a vector folded in
          from ``recent_item_ids`` (ids unknown to the model are ignored); None when
          neither is possible.
      neighbours(vector, k) -> (item_ids: list[str], scores: float32 array)
          up to k items by inner product, best first, from the index.
      scores(vector, item_ids) -> float32 array
          exact inner product per id, same order; NaN for ids unknown to the model.

    ``index`` rows must be the rows of ``item_factors``. ``regularization`` and ``alpha``
    are the ALS hyperparameters the factors were trained with; fold-in solves the same
    least-squares problem ALS solves for a user (implicit's ``recalculate_user``).
    ``item_knn``, when given, is the item-kNN model over the same items (same id order);
    the item-kNN candidate source and the ``item_similarity`` feature read it.
    ``user_neighbours``, when given, holds each trained user's neighbour search, run at
    training time (embeddings.user_neighbours); ``user_neighbour_rows`` reads it.
    """

    def __init__(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        index: MipsIndex,
        regularization: float,
        alpha: float = DEFAULT_FOLDIN_ALPHA,
        item_knn: ItemKNN | None = None,
        user_neighbours: UserNeighbours | None = None,
    ) -> None:
        self.user_ids = list(user_ids)
        self.item_ids = list(item_ids)
        self.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        if self.user_factors.shape[0] != len(self.user_ids):
            raise ValueError(f"{len(self.user_ids)} user ids but {self.user_factors.shape[0]} user factor rows")
        if self.item_factors.shape[0] != len(self.item_ids):
            raise ValueError(f"{len(self.item_ids)} item ids but {self.item_factors.shape[0]} item factor rows")
        if self.user_factors.shape[1] != self.item_factors.shape[1]:
            raise ValueError("user and item factors have different dimensions")
        if index.ntotal != len(self.item_ids):
            raise ValueError(f"index holds {index.ntotal} items, model has {len(self.item_ids)}")
        self.index = index
        if item_knn is not None and item_knn.item_ids != self.item_ids:
            raise ValueError("the item-kNN model's items are not the embedding model's items")
        self.item_knn = item_knn
        self.user_neighbours = user_neighbours
        self.regularization = float(regularization)
        self.alpha = float(alpha)
        self.user_row = {u: i for i, u in enumerate(self.user_ids)}
        self.item_row = {t: i for i, t in enumerate(self.item_ids)}
        if len(self.user_row) != len(self.user_ids) or len(self.item_row) != len(self.item_ids):
            raise ValueError("duplicate ids in the model")
        # Y^T Y + lambda I is the same for every folded-in user: compute it once (f x f).
        y = self.item_factors.astype(np.float64)
        self._yty_reg = y.T @ y + self.regularization * np.eye(self.dim)

    @property
    def dim(self) -> int:
        return int(self.item_factors.shape[1])

    def user_vector(self, user_id: str, recent_item_ids: Sequence[str]) -> np.ndarray | None:
        """The user's trained factor, else one folded in from known recent items, else None."""
        row = self.user_row.get(user_id)
        if row is not None:
            return self.user_factors[row]
        return self.fold_in(recent_item_ids)

    def user_vector_from_rows(self, user_id: str, recent_item_rows: np.ndarray) -> np.ndarray | None:
        """``user_vector`` with the recent items given as item rows (-1 for unknown items)."""
        row = self.user_row.get(user_id)
        if row is not None:
            return self.user_factors[row]
        return self.fold_in_rows(recent_item_rows)

    def fold_in(self, item_ids: Sequence[str]) -> np.ndarray | None:
        """The ALS user solution for a user whose positives are ``item_ids``; None if none is known."""
        return self.fold_in_rows(np.fromiter((self.item_row.get(t, -1) for t in item_ids), np.int64, len(item_ids)))

    def fold_in_rows(self, item_rows: np.ndarray) -> np.ndarray | None:
        """``fold_in`` with the positives given as item rows; rows < 0 are ignored.

        Solves (Y^T Y + lambda I + sum_i (c - 1) y_i y_i^T) u = sum_i c y_i with c = alpha
        for each distinct known item i: the same normal equations ALS solves per user.
        """
        rows = np.unique(np.asarray(item_rows))
        rows = rows[rows >= 0]
        if not len(rows):
            return None
        y = self.item_factors[rows].astype(np.float64)
        c = self.alpha
        a = self._yty_reg + (c - 1.0) * (y.T @ y)
        b = c * y.sum(axis=0)
        return np.linalg.solve(a, b).astype(np.float32)

    def neighbours(self, vector: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        """Up to k (item id, inner product) pairs from the index, best first."""
        rows, scores = self.neighbour_rows(vector, k)
        item_ids = self.item_ids
        return [item_ids[r] for r in rows.tolist()], scores

    def neighbour_rows(self, vector: np.ndarray, k: int, ef_search: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Up to k (int32 item rows, float32 inner products), best first (ties by row).

        From the index, except when k is a sizeable share of the catalogue (deep pages):
        then one exact matrix-vector product is cheaper than a graph walk as wide as k.
        ``ef_search`` overrides an HNSW index's own search breadth (0: keep it).
        """
        vector = np.asarray(vector, dtype=np.float32)
        n = len(self.item_ids)
        if self.searches_index(k):
            scores, rows = self.index.search(vector.reshape(1, -1), k, ef_search)
            keep = rows[0] >= 0
            return rows[0][keep].astype(np.int32), scores[0][keep]
        scores = self.item_factors @ vector
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.lexsort((top, -scores[top]))]
        return top.astype(np.int32), scores[top]

    def user_neighbour_rows(
        self, user_id: str, vector: np.ndarray, k: int, ef_search: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``neighbour_rows(vector, k, ef_search)`` where ``vector`` is ``user_vector_from_rows``'s
        for ``user_id``: read from ``user_neighbours`` when it holds that very search (a
        trained user, the same k and search breadth), else searched now."""
        table = self.user_neighbours
        row = self.user_row.get(user_id) if table is not None else None
        if row is not None and table.answers(k, ef_search):
            return table.of(row)
        return self.neighbour_rows(vector, k, ef_search)

    def searches_index(self, k: int) -> bool:
        """Whether ``neighbour_rows`` asks the index for ``k`` items (else the exact product answers)."""
        return k * EXACT_SEARCH_K_SHARE < len(self.item_ids) or self.index.kind == "flat"

    def row_scores(self, vector: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact inner product per item row (float32), same order; NaN for rows < 0."""
        rows = np.asarray(rows)
        known = rows >= 0
        out = np.full(len(rows), np.nan, dtype=np.float32)
        if known.any():
            out[known] = self.item_factors[rows[known]] @ np.asarray(vector, dtype=np.float32)
        return out

    def scores(self, vector: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
        """Exact inner product per id, same order and length; NaN for unknown ids."""
        return self.row_scores(vector, np.fromiter((self.item_row.get(t, -1) for t in item_ids), np.int64, len(item_ids)))
