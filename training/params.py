"""The hyperparameters of one training run, and the interaction matrix they weigh."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from embeddings import als
from embeddings.knn import DEFAULT_EASE_L2, DEFAULT_KNN, DEFAULT_KNN_K, EASE_MIN_SUPPORT, resolve_knn_kind
from embeddings.user_neighbours import PRECOMPUTE_MAX_USERS
from training.dataset import Dataset


@dataclass(frozen=True)
class TrainParams:
    """Hyperparameters of one training run; all of them go into the manifest."""

    factors: int = als.DEFAULT_FACTORS
    """Latent dimensions of user and item factors."""
    regularization: float = als.DEFAULT_REGULARIZATION
    """ALS L2 penalty (also used by fold-in at serving time)."""
    alpha: float = als.DEFAULT_ALPHA
    """ALS confidence multiplier: c = alpha * weight."""
    iterations: int = als.DEFAULT_ITERATIONS
    """ALS sweeps."""
    als_bags: int = 1
    """ALS models from different seeds, averaged (their factors side by side): the vectors
    and the index grow as many times wider, and ALS takes as many times longer."""
    like_weight: float = als.DEFAULT_LIKE_WEIGHT
    """Interaction weight of a like."""
    follow_weight: float = als.DEFAULT_FOLLOW_WEIGHT
    """Interaction weight of a follow (in the seller's extra column); 0 ignores follows."""
    share_weight: float = als.DEFAULT_ENGAGEMENT_WEIGHTS["share"]
    """Interaction weight of a share (engagements.csv), relative to a like."""
    purchase_weight: float = als.DEFAULT_ENGAGEMENT_WEIGHTS["purchase"]
    """Interaction weight of a purchase."""
    add_to_cart_weight: float = als.DEFAULT_ENGAGEMENT_WEIGHTS["add_to_cart"]
    """Interaction weight of an add-to-cart."""
    click_weight: float = als.DEFAULT_ENGAGEMENT_WEIGHTS["click"]
    """Interaction weight of a click."""
    view_weight: float = als.DEFAULT_ENGAGEMENT_WEIGHTS["view"]
    """Interaction weight of a view (impression); 0 ignores views."""
    weight_transform: str = als.DEFAULT_WEIGHT_TRANSFORM
    """How a like's own weight (likes.csv ``weight``) enters the matrix: log, raw, binary."""
    recency_half_life_days: float = 0.0
    """A like's ALS confidence halves with every this many days before the newest like; 0 = off."""
    knn: str = DEFAULT_KNN
    """Item-kNN similarity (cosine, bm25, tfidf, ease) for the item_knn source and feature; none
    skips it; auto is EASE up to embeddings.knn.EASE_AUTO_MAX_ITEMS items, cosine above."""
    knn_k: int = DEFAULT_KNN_K
    """Neighbours kept per item by the item-kNN model."""
    ease_l2: float = DEFAULT_EASE_L2
    """EASE's L2 penalty, when ``knn`` is "ease"."""
    index: str = "auto"
    """Index kind: auto, flat, hnsw-mips (hnsw-ip is for benchmarks only)."""
    hnsw_m: int = 32
    """HNSW graph degree."""
    ef_construction: int = 200
    """HNSW build-time beam width."""
    ef_search: int = 64
    """HNSW search-time beam width (raised to k per query when k is larger). 64 keeps the
    validation NDCG@10 of 128 and recall@25 >= 0.95 at 50k items at about half the search
    time (benchmarks/README.md, "Pool sizes"); servers can override it (``--ef-search``)."""
    precompute_neighbours_up_to: int = PRECOMPUTE_MAX_USERS
    """Up to this many users, the published model keeps each trained user's first-page
    neighbour search, run at training time (embeddings.user_neighbours); 0: never."""
    seed: int = 0
    """Seed of the ALS initialisation."""
    warm_iterations: int = 3
    """ALS sweeps over all the data after the ranker's fit-part model, which they start from."""
    show_progress: bool = True
    """Draw tqdm progress bars."""


ENGAGEMENT_WEIGHT_FIELDS = {kind: f"{kind}_weight" for kind in als.DEFAULT_ENGAGEMENT_WEIGHTS}
"""The TrainParams field weighing each engagement kind."""


def trained_with(params: TrainParams) -> str:
    """One line of what a printed evaluation's model was trained with; the JSON report and
    a model's manifest hold every parameter."""
    bags = f" x {params.als_bags} bags" if params.als_bags > 1 else ""
    ease = f", EASE λ {params.ease_l2:g}" if params.knn in ("ease", "auto") else ""
    return (f"trained with: ALS {params.factors} factors, regularization {params.regularization:g}, "
            f"alpha {params.alpha:g}, {params.iterations} sweeps{bags}, like weights {params.weight_transform}, "
            f"item-kNN {params.knn}{ease}, seed {params.seed} (--json records every parameter)")


def engagement_weights(params: TrainParams) -> dict[str, float]:
    return {kind: getattr(params, name) for kind, name in ENGAGEMENT_WEIGHT_FIELDS.items()}


def interactions_of(ds: Dataset, params: TrainParams, layout: als.Interactions | None = None) -> als.Interactions:
    """``ds``'s ALS interaction matrix as ``params`` weigh it (in ``layout``'s rows and columns when given)."""
    return als.build_interactions(
        ds, params.like_weight, params.follow_weight, params.weight_transform, layout=layout,
        recency_half_life_days=params.recency_half_life_days, engagement_weights=engagement_weights(params),
    )


def with_knn_resolved(params: TrainParams, interactions: Any) -> TrainParams:
    """``params`` with an "auto" item-kNN kind replaced by the one it means for the catalogue
    of ``interactions`` (als.Interactions or a Spark engine's), resolved once on the whole
    training matrix so that the ranker's fit-part model and the served model share one kind
    and the manifest names it."""
    if params.knn != "auto":
        return params
    return replace(params, knn=resolve_knn_kind("auto", ease_item_count_of(interactions)))


def ease_item_count_of(interactions: Any) -> int:
    """embeddings.knn.ease_item_count of ``interactions``' item columns, counted where the
    matrix lives (als.Interactions or a Spark engine's), without collecting it."""
    return int(np.count_nonzero(interactions.users_per_item() >= EASE_MIN_SUPPORT))
