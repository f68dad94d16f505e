"""The implicit-feedback matrix and the ALS training wrapper.

Columns of the interaction matrix are every item followed by one column per seller: a
follow is an extra, lighter signal that pulls a user towards the seller's column, and
through it towards users who follow or like the same shop. Only the item columns are
served; seller factors are a training device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ranking.vocab import encode_concatenation, per_distinct, positions_in
from training.dataset import Dataset

log = logging.getLogger(f"feedrank.{__name__}")

# Defaults from a brief sweep on the synthetic generator (20k users, 20k items, 1k
# sellers, 378k likes, 88k follows; random 80/20 split of likes, ALS alone, NDCG@20):
# follow weight 0 / 0.5 / 1.0 -> 0.044 / 0.050 / 0.055; alpha 5 / 20 / 40 -> 0.051 /
# 0.050 / 0.048. Factors and regularization were then chosen together on validation
# splits (benchmarks/README.md, "ALS regularization"): more factors pay only with a penalty
# in proportion to alpha, and 32 factors at regularization 80 beat 16 at 0.05 on Last.fm
# and tied on the generator, at the same cost per sweep.
DEFAULT_FACTORS = 32
"""Latent dimensions (benchmarks/README.md, "ALS regularization")."""
DEFAULT_REGULARIZATION = 80.0
"""L2 penalty on user and item factors (implicit's plain, unscaled lambda): 4 x alpha. The
loss over alpha weighs the unobserved cells by 1 / alpha and the penalty by lambda / alpha,
so the two move together."""
DEFAULT_ALPHA = 20.0
"""Confidence of a positive: c_ui = alpha * weight (implicit 0.7 semantics)."""
DEFAULT_ITERATIONS = 30
"""Full ALS sweeps: tune chose 25-30 on the generator, Last.fm binary and Last.fm temporal."""
BAG_SEED_STEP = 7919
"""Seed distance between the models of a bagged fit (``train_als(bags=...)``)."""
DEFAULT_LIKE_WEIGHT = 1.0
"""Weight of a like in the interaction matrix."""
DEFAULT_FOLLOW_WEIGHT = 1.0
"""Weight of a follow, placed in the followed seller's extra column."""
DEFAULT_WEIGHT_TRANSFORM = "log"
"""How a like's own weight (likes.csv ``weight``, e.g. a listening count) enters the
matrix: "log" = log2(1 + w), so an unweighted like (w = 1) stays 1 and a heavy listener
does not drown every other signal; "raw" = w; "binary" = 1."""
WEIGHT_TRANSFORMS = ("log", "raw", "binary")
DEFAULT_ENGAGEMENT_WEIGHTS: dict[str, float] = {
    "share": 1.0,  # vouching for an item to a friend says as much as a like
    "purchase": 1.0,
    "add_to_cart": 0.5,
    "click": 0.25,
    "view": 0.0,  # an impression says what was shown, not what was wanted
}
"""Weight of each engagement kind (training.dataset.Engagements) in the interaction matrix,
relative to a like; a (user, item) pair's weights add up over its likes and engagements."""
MIN_RECENCY_WEIGHT = 1e-3


def transform_weights(weights: np.ndarray, transform: str = DEFAULT_WEIGHT_TRANSFORM) -> np.ndarray:
    """Per-like weights as they enter the interaction matrix (float32); see DEFAULT_WEIGHT_TRANSFORM."""
    w = np.asarray(weights, dtype=np.float64)
    if transform == "log":
        return np.log2(1.0 + w).astype(np.float32)
    if transform == "raw":
        return w.astype(np.float32)
    if transform == "binary":
        return np.ones(len(w), dtype=np.float32)
    raise ValueError(f"unknown weight transform {transform!r}; choose from {WEIGHT_TRANSFORMS}")


class ALSFailed(ValueError):
    """ALS's float32 solve overflowed (NaN factors) under these weights, alpha and regularization."""

    def __init__(self, summary: str, advice: str) -> None:
        super().__init__(f"{summary}: {advice}")
        self.summary = summary  # what failed, without the advice on flags (tune's trials choose them)


@dataclass(frozen=True)
class Interactions:
    """A weighted user x column CSR matrix with its id maps.

    ``matrix`` has ``len(user_ids)`` rows and ``len(item_ids) + len(seller_ids)``
    columns: item columns first, then one column per seller. Row/column i is the i-th
    id of the corresponding list.
    """

    matrix: sp.csr_matrix  # float32
    user_ids: list[str]
    item_ids: list[str]
    seller_ids: list[str]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def item_matrix(self) -> sp.csr_matrix:
        """The user x item part only (likes), without seller columns."""
        return self.matrix[:, : self.n_items].tocsr()

    def users_per_item(self) -> np.ndarray:
        """How many users have a nonzero cell in each item column (int64, by item column)."""
        return np.bincount(self.matrix.indices[self.matrix.data != 0], minlength=self.matrix.shape[1])[: self.n_items]


def _without_empty(codes: np.ndarray, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Drop "" (no seller) from a first-seen encoding: its code becomes -1, later codes shift down."""
    if "" not in ids:
        return codes, ids
    empty = ids.index("")
    codes = np.where(codes == empty, -1, codes - (codes > empty)).astype(np.int32)
    return codes, ids[:empty] + ids[empty + 1 :]


def recency_weights(times: np.ndarray, half_life_days: float) -> np.ndarray:
    """2 ** -(age / half-life) per time, age measured from the newest time (float32, in (0, 1]).

    Floored at MIN_RECENCY_WEIGHT so that a like years old stays a positive in float32.
    """
    times = np.asarray(times, dtype=np.float64)
    age_days = (times.max() - times) / 86_400.0
    return np.maximum(np.exp2(-age_days / half_life_days), MIN_RECENCY_WEIGHT).astype(np.float32)


@dataclass(frozen=True)
class LayoutCodes:
    """Where each edge of a dataset lands in an interaction matrix: the row of each like's,
    follow's and engagement's user (``user_codes``, in that order), the item column of each
    like and engagement and the seller of each follow (-1: not in the layout)."""

    item_ids: list[str]
    seller_ids: list[str]
    user_ids: list[str]
    like_items: np.ndarray
    follow_sellers: np.ndarray
    user_codes: np.ndarray
    engaged_items: np.ndarray


def layout_codes(ds: Dataset, layout: Interactions | None = None) -> LayoutCodes:
    """The codes of ``ds``'s edges in ``layout``'s rows and columns, or in a layout of its
    own (first-seen order: the catalogue, then likes; users of likes, follows, engagements)."""
    likes, follows, engaged = ds.likes, ds.follows, ds.engagements
    if layout is None:
        item_codes, item_ids = encode_concatenation([ds.items.item_id, likes.dst])
        like_items = item_codes[len(ds.items) :]
        seller_codes, seller_ids = _without_empty(*encode_concatenation([ds.items.seller_id, follows.dst]))
        follow_sellers = seller_codes[len(ds.items) :]
        user_codes, user_ids = encode_concatenation([likes.src, follows.src, engaged.user_id])
    else:
        item_ids, seller_ids, user_ids = layout.item_ids, layout.seller_ids, layout.user_ids
        like_items = positions_in(likes.dst, item_ids)
        follow_sellers = positions_in(follows.dst, seller_ids)
        user_codes = np.concatenate([positions_in(ids, user_ids) for ids in (likes.src, follows.src, engaged.user_id)])
    engaged_items = positions_in(engaged.item_id, item_ids) if len(engaged) else np.zeros(0, np.int32)
    return LayoutCodes(item_ids, seller_ids, user_ids, like_items, follow_sellers, user_codes, engaged_items)


def build_interactions(
    ds: Dataset,
    like_weight: float = DEFAULT_LIKE_WEIGHT,
    follow_weight: float = DEFAULT_FOLLOW_WEIGHT,
    weight_transform: str = DEFAULT_WEIGHT_TRANSFORM,
    layout: Interactions | None = None,
    recency_half_life_days: float = 0.0,
    engagement_weights: Mapping[str, float] | None = None,
) -> Interactions:
    """Build the weighted interaction matrix from a dataset.

    Items are ``ds.items`` in order, followed by any liked item missing from it (a dataset
    without items.csv). Sellers are the sellers of items followed by any followed seller
    that has no items, in first-seen order. Users are every user with a like or a follow,
    in first-seen order (likes first). A like weighs ``like_weight`` times its own weight
    under ``weight_transform`` (1 for unweighted likes). Duplicate edges sum. ``follow_weight=0`` drops
    follows but keeps the seller columns, so the column layout does not depend on it.

    With ``layout`` (the interactions of a larger dataset, e.g. the full one when ``ds``
    is its fit part), rows and columns are exactly ``layout``'s, so factors trained on
    one can warm-start training on the other; edges whose ids ``layout`` lacks are dropped.

    With ``recency_half_life_days`` > 0 and every like timed, a like's confidence also halves
    with every half-life between it and the newest like of ``ds``: what users liked
    lately weighs more, and an old like still counts as a positive.

    Each engagement (``ds.engagements``) adds ``engagement_weights[kind]``
    (DEFAULT_ENGAGEMENT_WEIGHTS when None) to its (user, item) cell; users who only engaged
    get rows after the others.
    """
    likes, follows, engaged = ds.likes, ds.follows, ds.engagements
    n_likes, n_follows = len(likes), len(follows)
    weights_of = DEFAULT_ENGAGEMENT_WEIGHTS if engagement_weights is None else engagement_weights
    engagement_values = per_distinct(engaged.kind, lambda kind: weights_of.get(kind, 0.0), np.float32)
    codes = layout_codes(ds, layout)
    item_ids, seller_ids, user_ids = codes.item_ids, codes.seller_ids, codes.user_ids
    like_items, follow_sellers, user_codes, engaged_items = codes.like_items, codes.follow_sellers, codes.user_codes, codes.engaged_items

    n_items = len(item_ids)
    rows = user_codes
    cols = np.concatenate(
        [like_items, np.where(follow_sellers >= 0, n_items + follow_sellers, -1), engaged_items]
    ).astype(np.int32)
    vals = np.empty(len(rows), dtype=np.float32)
    vals[:n_likes] = like_weight * transform_weights(likes.weights(), weight_transform)
    if recency_half_life_days > 0 and n_likes and np.isfinite(likes.ts).all():
        vals[:n_likes] *= recency_weights(likes.ts, recency_half_life_days)
    vals[n_likes : n_likes + n_follows] = follow_weight
    vals[n_likes + n_follows :] = engagement_values

    keep = (vals != 0) & (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix(
        (vals[keep], (rows[keep], cols[keep])),
        shape=(len(user_ids), n_items + len(seller_ids)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    return Interactions(matrix, user_ids, item_ids, seller_ids)


def train_als(
    interactions: Interactions,
    factors: int = DEFAULT_FACTORS,
    regularization: float = DEFAULT_REGULARIZATION,
    alpha: float = DEFAULT_ALPHA,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    show_progress: bool = True,
    num_threads: int = 0,
    initial: tuple[np.ndarray, np.ndarray] | None = None,
    all_columns: bool = False,
    bags: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit implicit's CPU ALS on ``interactions.matrix``; with ``bags`` > 1, that many
    models from different seeds, as one (``_bagged``).

    Returns ``(user_factors, item_factors)`` as C-contiguous float32 arrays of shapes
    ``(len(user_ids), factors)`` and ``(len(item_ids), factors)``: seller columns are
    trained but not returned, unless ``all_columns`` (then every column's factors, for a
    later warm start). ``initial`` = (user factors, all-column factors) of a model with the
    same layout starts the sweeps from there instead of from random factors.
    Deterministic for a given seed, whatever ``num_threads``: implicit solves each row on
    its own, whichever thread takes it (bit for bit on Last.fm and the 20k-user benchmark
    data, one thread against all; tests/test_train.py checks a whole training run).
    """
    if bags > 1:
        def fit(bag_seed: int, start: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
            return train_als(interactions, factors, regularization, alpha, iterations, bag_seed, show_progress, num_threads,
                             start, all_columns)

        return _bagged(fit, bags, factors, seed, initial)
    # Imported here so that importing embeddings/ for serving does not load implicit.
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.recommender_base import ModelFitError

    # implicit parallelises over users itself; a multithreaded BLAS underneath it only
    # oversubscribes the cores (implicit checks, and warns, in the constructor).
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
            num_threads=num_threads,
            dtype=np.float32,
        )
        if initial is not None:
            users, columns = initial
            if users.shape != (interactions.matrix.shape[0], factors) or columns.shape != (interactions.matrix.shape[1], factors):
                raise ValueError("warm-start factors do not match the interactions' layout")
            # implicit keeps factors that are already set (implicit/cpu/als.py fit).
            model.user_factors = np.array(users, dtype=np.float32)
            model.item_factors = np.array(columns, dtype=np.float32)
        try:
            model.fit(interactions.matrix, show_progress=show_progress)
        except ModelFitError as error:  # float32 overflow in the normal equations: implicit says only "NaN"
            largest = float(interactions.matrix.data.max(initial=0.0))
            raise ALSFailed(
                f"ALS failed ({error})",
                f"confidences up to {alpha * largest:.3g} (alpha {alpha:g} x the largest cell "
                f"weight, {largest:.3g}) and regularization {regularization:g} overflow its float32 solve; lower "
                "--alpha or --regularization, or use --weight-transform log for large like weights"
            ) from None
    user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    item_factors = model.item_factors if all_columns else model.item_factors[: interactions.n_items]
    return user_factors, np.ascontiguousarray(item_factors, dtype=np.float32)


def _bagged(
    fit: Callable[[int, tuple[np.ndarray, np.ndarray] | None], tuple[np.ndarray, np.ndarray]],
    bags: int, factors: int, seed: int, initial: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``bags`` ALS models, ``fit(seed, warm start)`` from seeds ``seed``, ``seed +
    BAG_SEED_STEP``, ..., their factors side by side and divided by sqrt(bags): a user's
    inner product with an item is then the mean of the models' scores, so the one index and
    the one user vector serve the average. Each model lands in a different local optimum;
    their mean is steadier than any one (benchmarks/README.md, "ALS bagging"). ``initial``
    is such a side-by-side layout, split back into one warm start per model."""
    if initial is not None and (initial[0].shape[1] != bags * factors or initial[1].shape[1] != bags * factors):
        raise ValueError(f"warm-start factors are not {bags} bags of {factors}")
    scale = np.float32(np.sqrt(bags))
    parts = []
    for bag in range(bags):
        width = slice(bag * factors, (bag + 1) * factors)
        start = None if initial is None else (initial[0][:, width] * scale, initial[1][:, width] * scale)
        parts.append(fit(seed + bag * BAG_SEED_STEP, start))
    users, items = zip(*parts)
    return np.ascontiguousarray(np.hstack(users) / scale), np.ascontiguousarray(np.hstack(items) / scale)
