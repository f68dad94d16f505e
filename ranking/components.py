"""The four kinds of pipeline component. Each has one method and a ``name`` for stats."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from embeddings.knn import ItemScores
from ranking.store import Activity
from ranking.types import Candidate, UserContext


@dataclass
class FeedQuery:
    """Everything known about one feed request once the store has been read.

    ``exclude`` holds ids never to return: the caller's exclusions and items served on
    earlier pages. ``liked`` is filled at hydration with the candidates the user liked.
    ``item_scores`` are the user's item-kNN scores (from recent likes) when the model has
    an item-kNN part; ``seller_likes`` counts the user's recent likes per seller (filled
    at hydration, which also reads the recent likes' items).
    """

    user: UserContext
    limit: int
    now: float
    exclude: Container[str] = frozenset()
    activity: Activity = field(default_factory=Activity)
    user_vector: np.ndarray | None = None
    liked: frozenset[str] = frozenset()
    served_count: int = 0
    item_scores: ItemScores | None = None
    seller_likes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterResult:
    kept: list[Candidate]
    removed: list[Candidate]


class CandidateSource(Protocol):
    name: str

    def gather(self, query: FeedQuery) -> list[Candidate]:
        """Candidates with their reasons and the source's own signal; order is not significant."""
        ...


class Filter(Protocol):
    name: str

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        """Split candidates into kept and removed, each keeping input order."""
        ...


class Scorer(Protocol):
    name: str

    def score(self, query: FeedQuery, candidates: Sequence[Candidate]) -> np.ndarray:
        """One score per candidate, same length and order as the input."""
        ...


class Selector(Protocol):
    name: str

    def select(self, query: FeedQuery, ranked: list[Candidate]) -> list[Candidate]:
        """Pick the page from candidates sorted best first; at most ``query.limit`` items."""
        ...
