"""Scorers: turn the hydrated batch into one number per row."""

from __future__ import annotations

import numpy as np

from ranking.batch import CandidateBatch
from ranking.components import FeedQuery
from ranking.features import FEATURE_NAMES, SIMILARITY_SIGNALS, compute_features, similarity_signals
from ranking.filters import unengaged_views
from ranking.model_items import ModelItems
from ranking.ranker import LinearRanker


class LinearScorer:
    """The artifact's linear ranker over ``compute_features``: one matrix-vector product.

    ``features`` fills the model-side signals first (the embedding score of rows no
    neighbour search scored, and the item-kNN similarity of every row). The trainer
    reads the same matrix through ``FeedPipeline.pool``, so the ranker is fitted on
    exactly what it scores when serving.
    """

    name = "linear"

    def __init__(self, items: ModelItems | None, ranker: LinearRanker) -> None:
        self.items = items
        self.ranker = ranker
        self._used = ranker.weights != 0

    def features(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        """Every feature column, whatever the ranker weighs (what the trainer fits on)."""
        return self._features(query, batch, None)

    def _features(self, query: FeedQuery, batch: CandidateBatch, needed: np.ndarray | None) -> np.ndarray:
        similarity = np.zeros((len(batch), SIMILARITY_SIGNALS))
        if self.items is not None and len(batch):
            rows = self.items.rows(batch.codes)
            missing = np.isnan(batch.embedding_score)
            if query.user_vector is not None and missing.any():
                scores = self.items.model.row_scores(query.user_vector, rows[missing])
                batch.embedding_score[missing] = scores
            if query.item_scores is not None:
                similarity = similarity_signals(
                    query.item_scores.neighbourhood, query.user.recent_like_times, query.now, rows, needed
                )
        return compute_features(query, batch, similarity)

    def score(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        # A feature the ranker weighs 0 cannot change a score: it is not computed.
        return self.ranker.score(self._features(query, batch, self._used))

    def scores_and_features(self, query: FeedQuery, batch: CandidateBatch) -> tuple[np.ndarray, np.ndarray]:
        """``score`` and ``features`` of the batch, the features computed once (the trainer's
        pools). The scores are ``score``'s bit for bit: a column weighed 0 adds an exact 0."""
        features = self.features(query, batch)
        return self.ranker.score(features), features

    def contributions(self, query: FeedQuery, batch: CandidateBatch) -> tuple[tuple[str, ...], np.ndarray]:
        """Each row's score split into named terms (weight × feature, then the bias); rows sum to ``score``."""
        terms = self.features(query, batch) * self.ranker.weights
        bias = np.full((len(batch), 1), self.ranker.bias)
        return (*FEATURE_NAMES, "bias"), np.hstack([terms, bias])


class FatigueScorer:
    """``inner``'s score, lowered by ``sink_per_view`` for every view past ``free_views``
    the user had of the item without engaging with it (``unengaged_views``).

    The rankers are logistic, so a score is a log-odds: a sink of ln 2 halves the odds of
    an item with every view it was ignored. ``features`` is ``inner``'s: the ranker is
    fitted without fatigue, which serving applies on top.
    """

    name = "fatigue"

    def __init__(self, inner: LinearScorer, free_views: int, sink_per_view: float) -> None:
        self.inner = inner
        self.free_views = free_views
        self.sink_per_view = sink_per_view

    def features(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        return self.inner.features(query, batch)

    def score(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        return self._sunk(query, batch, self.inner.score(query, batch))

    def scores_and_features(self, query: FeedQuery, batch: CandidateBatch) -> tuple[np.ndarray, np.ndarray]:
        scores, features = self.inner.scores_and_features(query, batch)
        return self._sunk(query, batch, scores), features

    def _sunk(self, query: FeedQuery, batch: CandidateBatch, scores: np.ndarray) -> np.ndarray:
        if not len(batch) or not self.sink_per_view:
            return scores
        return (scores - self._sink(query, batch)).astype(np.float32, copy=False)

    def contributions(self, query: FeedQuery, batch: CandidateBatch) -> tuple[tuple[str, ...], np.ndarray]:
        """``inner``'s terms plus a "fatigue" term (zero or negative)."""
        names, terms = self.inner.contributions(query, batch)
        sink = self._sink(query, batch) if len(batch) and self.sink_per_view else np.zeros(len(batch))
        return (*names, "fatigue"), np.hstack([terms, -np.asarray(sink, dtype=np.float64).reshape(-1, 1)])

    def _sink(self, query: FeedQuery, batch: CandidateBatch) -> np.ndarray:
        excess = np.maximum(unengaged_views(query, batch) - self.free_views, 0)
        return self.sink_per_view * excess
