"""Embedding tables plus a MIPS index: what the serving pipeline asks of a trained model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class EmbeddingModel:
    """User and item factors (float32) with string id maps and an item index.

    Contract used by ranking/ (implemented by the embeddings helper):
      user_vector(user_id, recent_item_ids) -> float32 vector or None
          the trained user factor; for a user unseen at training time, a vector folded in
          from ``recent_item_ids`` (ids unknown to the model are ignored); None when
          neither is possible.
      neighbours(vector, k) -> (item_ids: list[str], scores: float32 array)
          up to k items by inner product, best first, from the index.
      scores(vector, item_ids) -> float32 array
          exact inner product per id, same order; NaN for ids unknown to the model.
    """

    def user_vector(self, user_id: str, recent_item_ids: Sequence[str]) -> np.ndarray | None: ...

    def neighbours(self, vector: np.ndarray, k: int) -> tuple[list[str], np.ndarray]: ...

    def scores(self, vector: np.ndarray, item_ids: Sequence[str]) -> np.ndarray: ...
