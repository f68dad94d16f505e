"""The pipeline executor: the only place with control flow between components."""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field

import numpy as np

from embeddings.model import EmbeddingModel
from ranking.components import CandidateSource, FeedQuery, Filter, Scorer, Selector
from ranking.store import FeedStateReader
from ranking.types import Candidate


@dataclass(frozen=True)
class PipelineConfig:
    """A feed pipeline, declared as data.

    ``id_filters`` need only item ids and run before hydration, so the store is asked
    about fewer items; ``state_filters`` read the hydrated item state. Within each list,
    order the cheapest first.
    """

    sources: Sequence[CandidateSource]
    id_filters: Sequence[Filter]
    state_filters: Sequence[Filter]
    scorer: Scorer
    selector: Selector
    per_key_limit: int = 20
    trending_limit: int = 100


@dataclass
class FeedResult:
    """One page, best first, plus what happened on the way (for metrics and debugging).

    ``has_more`` is true when ranked candidates remain after this page.
    """

    items: list[Candidate]
    has_more: bool
    gathered_by_source: Counter[str] = field(default_factory=Counter)
    removed_by_filter: Counter[str] = field(default_factory=Counter)


@dataclass
class CandidatePool:
    """Every candidate that survived the filters, before scoring and selection.

    ``features`` has one row per candidate (same order), columns ranking.features.FEATURE_NAMES:
    exactly what the scorer ranks when serving. The trainer fits the ranker on it.
    """

    query: FeedQuery
    candidates: list[Candidate]
    features: np.ndarray
    result: FeedResult


class FeedPipeline:
    """Runs a PipelineConfig against a store and an (optional) embedding model.

    Reads the store in exactly three batched calls: user, activity, hydration.
    """

    def __init__(self, config: PipelineConfig, store: FeedStateReader, model: EmbeddingModel | None) -> None:
        self.config = config
        self.store = store
        self.model = model

    def run(
        self,
        user_id: str,
        limit: int,
        now: float,
        exclude: Container[str] = frozenset(),
        served_count: int = 0,
    ) -> FeedResult:
        """One page of the feed, best first."""
        config = self.config
        query, candidates, result = self._candidates(user_id, limit, now, exclude, served_count)
        if candidates:
            scores = config.scorer.score(query, candidates)
            for candidate, score in zip(candidates, scores.tolist()):
                candidate.score = score
        # Ties break on item id so the same state always gives the same feed and pages.
        order = np.lexsort(([c.item_id for c in candidates], [-c.score for c in candidates]))
        ranked = [candidates[i] for i in order]
        result.items = config.selector.select(query, ranked)
        result.has_more = len(ranked) > len(result.items)
        return result

    def pool(
        self,
        user_id: str,
        limit: int,
        now: float,
        exclude: Container[str] = frozenset(),
        served_count: int = 0,
    ) -> CandidatePool:
        """The filtered candidates of ``run`` with their feature matrix, unscored and unselected.

        Same store reads and same components as ``run``; the scorer must expose
        ``features(query, candidates)`` (LinearScorer does).
        """
        features_of = getattr(self.config.scorer, "features", None)
        if features_of is None:
            raise TypeError(f"scorer {self.config.scorer.name!r} does not expose features()")
        query, candidates, result = self._candidates(user_id, limit, now, exclude, served_count)
        return CandidatePool(query, candidates, features_of(query, candidates), result)

    def _candidates(
        self, user_id: str, limit: int, now: float, exclude: Container[str], served_count: int
    ) -> tuple[FeedQuery, list[Candidate], FeedResult]:
        config = self.config
        user = self.store.read_user(user_id)
        # Trending and neighbour pools grow with depth so later pages still have candidates.
        depth = served_count + limit
        activity = self.store.read_activity(
            sorted(user.follows), sorted(user.friends), config.per_key_limit, max(config.trending_limit, 2 * depth)
        )
        recent_ids = [item_id for item_id, _ in user.recent_likes]
        user_vector = item_scores = None
        if self.model is not None:
            user_vector = self.model.user_vector(user_id, recent_ids)
            if self.model.item_knn is not None and recent_ids:
                item_scores = self.model.item_knn.user_scores(recent_ids)
        query = FeedQuery(
            user, limit, now, exclude, activity, user_vector, served_count=served_count, item_scores=item_scores
        )

        result = FeedResult([], False)
        candidates: list[Candidate] = []
        for source in config.sources:
            gathered = source.gather(query)
            result.gathered_by_source[source.name] += len(gathered)
            candidates.extend(gathered)
        candidates = self._filter(query, config.id_filters, candidates, result)

        # The recent likes ride along in the same hydration call: their sellers give the
        # user's seller affinity without another store read.
        asked = [c.item_id for c in candidates]
        gathered_ids = set(asked)
        asked += [item_id for item_id in recent_ids if item_id not in gathered_ids]
        hydration = self.store.hydrate(user_id, asked)
        for candidate in candidates:
            candidate.item = hydration.items.get(candidate.item_id)
        query.liked = hydration.liked
        query.seller_likes = Counter(
            item.seller_id for item in (hydration.items.get(i) for i in recent_ids) if item is not None and item.seller_id
        )
        candidates = self._filter(query, config.state_filters, candidates, result)
        return query, candidates, result

    @staticmethod
    def _filter(query: FeedQuery, filters: Sequence[Filter], candidates: list[Candidate], result: FeedResult) -> list[Candidate]:
        for feed_filter in filters:
            outcome = feed_filter.apply(query, candidates)
            result.removed_by_filter[feed_filter.name] += len(outcome.removed)
            candidates = outcome.kept
        return candidates
