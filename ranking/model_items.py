"""An embedding model's item rows expressed in a store's item codes, and back."""

from __future__ import annotations

import numpy as np

from embeddings.model import EmbeddingModel
from ranking.vocab import Vocabulary, lookup


class ModelItems:
    """Maps between the rows of ``model``'s item tables and the codes of ``vocabulary``.

    Every model item is registered in the vocabulary when the map is built, so a code
    handed out later belongs to an item the model has never seen (row -1).
    """

    def __init__(self, model: EmbeddingModel, vocabulary: Vocabulary) -> None:
        self.model = model
        self.code_of_row = vocabulary.codes(model.item_ids, add=True)
        self.row_of_code = np.full(len(vocabulary), -1, dtype=np.int32)
        self.row_of_code[self.code_of_row] = np.arange(len(self.code_of_row), dtype=np.int32)

    def rows(self, codes: np.ndarray) -> np.ndarray:
        """int32 model row per code, -1 for items the model does not know."""
        return lookup(self.row_of_code, codes, -1)

    def codes(self, rows: np.ndarray) -> np.ndarray:
        """int32 store code per model row (rows must be valid)."""
        return self.code_of_row[rows]
