"""Scorers: turn hydrated candidates into one number each."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embeddings.model import EmbeddingModel
from ranking.components import FeedQuery
from ranking.features import compute_features
from ranking.ranker import LinearRanker
from ranking.types import Candidate


class LinearScorer:
    """Fills the embedding score of every candidate, then applies the artifact's ranker.

    ``features`` is the feature matrix the ranker sees; the trainer reads it through
    ``FeedPipeline.pool`` so the ranker is fitted on exactly what it scores when serving.
    """

    name = "linear"

    def __init__(self, model: EmbeddingModel | None, ranker: LinearRanker) -> None:
        self.model = model
        self.ranker = ranker

    def features(self, query: FeedQuery, candidates: Sequence[Candidate]) -> np.ndarray:
        """compute_features after filling missing embedding scores; rows in candidate order."""
        self._fill_embedding_scores(query, candidates)
        return compute_features(query, candidates)

    def score(self, query: FeedQuery, candidates: Sequence[Candidate]) -> np.ndarray:
        return self.ranker.score(self.features(query, candidates))

    def _fill_embedding_scores(self, query: FeedQuery, candidates: Sequence[Candidate]) -> None:
        missing = [c for c in candidates if c.embedding_score is None]
        if not missing or self.model is None or query.user_vector is None:
            return
        scores = self.model.scores(query.user_vector, [c.item_id for c in missing])
        for candidate, score in zip(missing, np.nan_to_num(scores, nan=0.0).tolist()):
            candidate.embedding_score = float(score)
