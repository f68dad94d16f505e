"""Fit the feed's linear ranker on candidates and features produced by the serving pipeline.

Protocol: carve a validation split out of the training data (the latest likes when every
like has a time, else random ones); train the embeddings on the rest (the "fit part");
load the fit part into a memory store and, for each validation user, run the serving
pipeline's sources, filters and feature function (``FeedPipeline.pool``). A candidate is
a positive when the user liked it in the validation part. Then fit

  logistic   L2-regularised logistic regression on every (candidate, label), or
  pairwise   L2-regularised logistic regression on (positive - negative) feature
             differences within each user (a linear RankNet),

with scipy's L-BFGS on standardised features; the scaling is folded back into the
weights, so the result is a plain ``LinearRanker`` over raw features, stored in the
artifact as {"features", "weights", "bias"}.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from tqdm import tqdm

from embeddings.model import EmbeddingModel
from ranking.features import FEATURE_NAMES
from ranking.feed import FeedSettings, build_feed_pipeline
from ranking.ranker import DEFAULT_RANKER, LinearRanker
from ranking.vocab import encode, positions_in
from training.dataset import Dataset, Edges
from training.params import interactions_of, with_knn_resolved
from training.splits import validation_split

OBJECTIVES = ("logistic", "pairwise")


class NoRankingSignal(ValueError):
    """No usable ranker: the validation pools hold no user with both a positive and a
    negative candidate, or the fit's weights are not finite."""


@dataclass(frozen=True)
class RankerFitParams:
    """How the ranker is fitted; every field goes into the manifest."""

    objective: str = "pairwise"
    """logistic (pointwise log loss) or pairwise (log loss on positive - negative differences)."""
    l2: float = 1.0
    """L2 penalty on the standardised weights (sum over examples of the loss + l2/2 |w|^2, per user mean)."""
    validation_fraction: float = 0.1
    """Share of the training likes held out as labels for the ranker."""
    validation_kind: str | None = None
    """Shape of that split (time, user, random): the evaluation's when there is one; None
    picks time when every like has a time, else per user (training.splits.validation_split)."""
    max_users: int = 1000
    """Validation users whose candidate pools are collected (a seeded sample beyond this)."""
    pool_limit: int = 20
    """The ``limit`` the pools are gathered for (pools deepen with it, as when serving)."""
    pairs_per_user: int = 200
    """Pairwise: (positive, negative) pairs sampled per user."""
    seed: int = 0
    """Seed of the validation split, the user sample and the pair sample."""
    drop_features: tuple[str, ...] = ()
    """Features held at weight 0 (ablations): their columns are zeroed before the fit."""
    restore_dropped: bool = True
    """Give a dropped feature back when the baseline of its signal ranks the validation pools
    better (``fit_above_baselines``); False keeps it dropped, as an ablation must."""


@dataclass
class Examples:
    """Feature rows from the serving pipeline's pools, with labels and the user of each row."""

    features: np.ndarray  # float32 (n, len(FEATURE_NAMES))
    labels: np.ndarray  # float32 0/1
    groups: np.ndarray  # int32 user index per row
    users: int = 0
    positives_in_pool: int = 0
    positives_total: int = 0  # validation likes of the sampled users, found in a pool or not
    relevant_per_user: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # by group index
    candidates_per_user: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolSample:
    """The validation users whose pools are collected, and each one's validation items."""

    users: list[str]
    relevant: dict[str, set[str]]

    @classmethod
    def of(cls, labels: Edges, params: RankerFitParams) -> PoolSample:
        """Every user of ``labels``, or a sample of ``params.max_users`` of them seeded by ``params.seed``."""
        codes, distinct = encode(labels.src)
        users = sorted(distinct)
        if len(users) > params.max_users:
            rng = np.random.default_rng(params.seed)
            users = sorted(rng.choice(users, params.max_users, replace=False).tolist())
        # Sets for the sampled users only: a set per labelled user (hundreds of thousands
        # at 1M users) cost 30 s, mostly in the garbage collector.
        chosen = np.zeros(len(distinct), bool)
        chosen[positions_in(users, distinct)] = True
        relevant: dict[str, set[str]] = defaultdict(set)
        for row in np.flatnonzero(chosen[codes]).tolist():
            relevant[labels.src[row]].add(labels.dst[row])
        return cls(users, dict(relevant))

    def liked_columns(self, interactions: Any) -> np.ndarray:
        """The item columns of ``interactions`` (an embeddings.als.Interactions) that these
        users interacted with: the only item-kNN rows their pools read."""
        rows = positions_in(self.users, interactions.user_ids)
        columns = np.unique(interactions.matrix[rows[rows >= 0]].indices)
        return columns[columns < interactions.n_items]


def collect_examples(
    fit_part: Dataset,
    labels: Edges,
    model: EmbeddingModel | None,
    now: float,
    settings: FeedSettings = FeedSettings(),
    params: RankerFitParams = RankerFitParams(),
    show_progress: bool = True,
    sample: PoolSample | None = None,
) -> Examples:
    """Candidate pools of the serving pipeline over a memory store of ``fit_part``.

    One pool per user of ``sample`` (default: ``PoolSample.of(labels, params)``); a row is a
    positive when (user, item) is in ``labels``.
    """
    from stores.memory import MemoryStore

    sample = sample or PoolSample.of(labels, params)
    users, relevant = sample.users, sample.relevant
    store = MemoryStore.from_dataset(fit_part, progress=show_progress, readers=users)
    pipeline = build_feed_pipeline(store, model, DEFAULT_RANKER, settings)
    blocks, ys, gs = [], [], []
    n_candidates = positives = total = 0
    for g, user_id in enumerate(tqdm(users, desc="ranker pools", unit="user", disable=not show_progress, leave=False)):
        pool = pipeline.pool(user_id, params.pool_limit, now)
        wanted = relevant[user_id]
        total += len(wanted)
        if not len(pool.batch):
            continue
        y = np.isin(pool.batch.codes, store.items.codes(list(wanted))).astype(np.float32)
        n_candidates += len(y)
        positives += int(y.sum())
        blocks.append(pool.features)
        ys.append(y)
        gs.append(np.full(len(y), g, dtype=np.int32))
    width = len(FEATURE_NAMES)
    return Examples(
        features=np.concatenate(blocks) if blocks else np.zeros((0, width), np.float32),
        labels=np.concatenate(ys) if ys else np.zeros(0, np.float32),
        groups=np.concatenate(gs) if gs else np.zeros(0, np.int32),
        users=len(users),
        positives_in_pool=positives,
        positives_total=total,
        relevant_per_user=np.array([len(relevant[u]) for u in users], dtype=np.int32),
        candidates_per_user=n_candidates / max(len(users), 1),
    )


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-9] = 1.0  # a constant column gets weight 0 through the penalty
    return (x - mean) / std, mean, std


def _lbfgs(loss_grad, dim: int) -> np.ndarray:
    result = minimize(loss_grad, np.zeros(dim), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return result.x


def fit_logistic(x: np.ndarray, y: np.ndarray, groups: np.ndarray, l2: float) -> LinearRanker:
    """Pointwise L2 logistic regression; every user weighs the same in the loss."""
    z, mean, std = _standardise(x.astype(np.float64))
    n, d = z.shape
    counts = np.bincount(groups)
    sample = 1.0 / counts[groups]
    sample *= n / sample.sum()
    signs = 2.0 * y.astype(np.float64) - 1.0

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        margin = signs * (z @ w + b)
        loss = -(sample * log_expit(margin)).sum() / n + 0.5 * l2 * (w @ w) / n
        coef = -(sample * signs * expit(-margin)) / n
        grad = np.concatenate([z.T @ coef + l2 * w / n, [coef.sum()]])
        return float(loss), grad

    theta = _lbfgs(loss_grad, d + 1)
    w_std, b_std = theta[:d], theta[d]
    weights = w_std / std
    return LinearRanker(weights.astype(np.float32), float(b_std - weights @ mean))


def pair_differences(x: np.ndarray, y: np.ndarray, groups: np.ndarray, per_user: int, seed: int) -> np.ndarray:
    """(positive - negative) feature rows, up to ``per_user`` sampled pairs per user."""
    rng = np.random.default_rng(seed)
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    diffs = []
    for rows in np.split(order, bounds):
        pos = rows[y[rows] > 0]
        neg = rows[y[rows] <= 0]
        if not len(pos) or not len(neg):
            continue
        n_pairs = min(per_user, len(pos) * len(neg))
        diffs.append(x[rng.choice(pos, n_pairs)] - x[rng.choice(neg, n_pairs)])
    return np.concatenate(diffs) if diffs else np.zeros((0, x.shape[1]), x.dtype)


def fit_pairwise(x: np.ndarray, y: np.ndarray, groups: np.ndarray, l2: float, per_user: int, seed: int) -> LinearRanker:
    """Linear RankNet: L2 logistic loss on sampled within-user (positive - negative) pairs."""
    diffs = pair_differences(x.astype(np.float64), y, groups, per_user, seed)
    if not len(diffs):
        raise NoRankingSignal("no user has both a positive and a negative candidate; cannot fit a pairwise ranker")
    scale = diffs.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = diffs / scale  # differences are centred by construction: scale only, no bias
    n, d = z.shape

    def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        margin = z @ w
        loss = -log_expit(margin).sum() / n + 0.5 * l2 * (w @ w) / n
        grad = z.T @ (-expit(-margin)) / n + l2 * w / n
        return float(loss), grad

    w = _lbfgs(loss_grad, d) / scale
    return LinearRanker(w.astype(np.float32), 0.0)


# The signal of each single-signal baseline of ``training.evaluate``, as feature columns
# (ties on the first broken by the second): what the ranker is given when a baseline wins.
BASELINE_SIGNALS: dict[str, tuple[str, ...]] = {
    "popularity": ("popularity",),
    "recent_popularity": ("recent_popularity",),
    "followed_sellers": ("followed_seller", "recency"),
    "friends_likes": ("friend_likes", "friend_like_recency"),
    "als": ("embedding_score",),
    "item_knn": ("item_similarity",),
}
BASELINE_CHECK_K = 10
_SAME = 1e-9  # NDCG differences below this are rounding, not a better ranking


def pool_ndcg(scores: np.ndarray, examples: Examples, k: int = BASELINE_CHECK_K) -> float:
    """Mean NDCG@k over the validation users when each user's pool is ranked by ``scores``.

    The ideal counts every validation like of the user, in the pool or not, so a signal
    is charged for what the pools miss exactly as the served feed is. Rows tied on their
    score share the gains of the places they tie for (the mean over their orders): in row
    order, a signal that ties everything would get the credit of the order the sources
    gathered the pool in.
    """
    if not len(scores):
        return 0.0
    order = np.lexsort((-scores, examples.groups))
    groups, labels, sorted_scores = examples.groups[order], examples.labels[order], scores[order]
    new_group = np.concatenate(([True], groups[1:] != groups[:-1]))
    starts = np.flatnonzero(new_group)
    rank = np.arange(len(groups)) - np.repeat(starts, np.diff(np.append(starts, len(groups))))
    new_tie = new_group | np.concatenate(([True], sorted_scores[1:] != sorted_scores[:-1]))
    tie_starts = np.flatnonzero(new_tie)
    tie_sizes = np.diff(np.append(tie_starts, len(groups)))
    first_place = np.repeat(rank[tie_starts], tie_sizes)
    size = np.repeat(tie_sizes, tie_sizes)
    # discounted[n]: the summed discounts of places 0 .. n-1, none past k.
    discounted = np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))))
    shared = (discounted[np.minimum(first_place + size, k)] - discounted[np.minimum(first_place, k)]) / size
    gains = np.bincount(groups, weights=labels * shared, minlength=examples.users)
    ideal = discounted[np.clip(examples.relevant_per_user, 1, k)]  # a user without likes scores 0, not 0 / 0
    return float(np.mean(gains / ideal))


def baseline_scores(examples: Examples) -> dict[str, float]:
    """``pool_ndcg`` of each BASELINE_SIGNALS baseline on the validation pools, but for those
    whose signal is the same in every row (no follows, no friends in the data): ranking by
    it would be ranking by their tie-breaker, under a name that says otherwise."""
    out = {}
    for name, columns in BASELINE_SIGNALS.items():
        primary = examples.features[:, FEATURE_NAMES.index(columns[0])].astype(np.float64)
        if _constant(primary):
            continue
        score = primary.copy()
        if len(columns) > 1:
            secondary = examples.features[:, FEATURE_NAMES.index(columns[1])].astype(np.float64)
            # Lexicographic: the secondary only orders rows tied on the primary.
            score = np.unique(primary, return_inverse=True)[1].ravel() * (secondary.max(initial=0.0) + 1.0) + secondary
        out[name] = pool_ndcg(score, examples)
    return out


def _constant(column: np.ndarray) -> bool:
    return len(column) == 0 or bool(column.min() == column.max())


def fit_ranker_on(examples: Examples, params: RankerFitParams = RankerFitParams()) -> LinearRanker:
    """Fit the chosen objective on collected examples."""
    if params.objective not in OBJECTIVES:
        raise ValueError(f"unknown ranker objective {params.objective!r}; choose from {OBJECTIVES}")
    if not len(examples.labels) or examples.labels.min() == examples.labels.max():
        raise NoRankingSignal("the ranker's validation pools need both positives and negatives")
    unknown = set(params.drop_features) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown features to drop: {sorted(unknown)}")
    x = examples.features
    if params.drop_features:
        x = x.copy()
        x[:, [FEATURE_NAMES.index(f) for f in params.drop_features]] = 0.0
    if params.objective == "logistic":
        return fit_logistic(x, examples.labels, examples.groups, params.l2)
    return fit_pairwise(x, examples.labels, examples.groups, params.l2, params.pairs_per_user, params.seed)


def fit_ranker(
    train: Dataset,
    train_params,
    settings: FeedSettings = FeedSettings(),
    params: RankerFitParams = RankerFitParams(),
    interactions=None,
) -> tuple[LinearRanker, dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """The whole protocol of this module on ``train``; returns the ranker, a report dict and
    the fit part's ALS factors (user factors, all-column factors).

    ``train_params`` are the TrainParams of the served model: the fit part's model is
    trained with the same hyperparameters, so feature scales match the served model's.
    The fit part's interaction matrix has the layout of ``interactions`` (the full
    training data's, built here when not given), so the returned factors can warm-start
    the served model: one full ALS run plus a few sweeps instead of two full runs. The fit
    part's model searches its neighbours exactly (no index to build for a few thousand
    pools) and has its own item-kNN, so no validation like leaks into any feature.
    """
    from embeddings import als
    from embeddings.knn import train_item_knn

    tp = train_params
    lap = StepClock(tp.show_progress)

    layout = interactions or interactions_of(train, tp)
    tp = with_knn_resolved(tp, layout)  # on the whole matrix, as train() resolves it
    fit_part, held, now = validation_split(train, params.validation_fraction, params.seed, params.validation_kind)
    if not len(fit_part.likes):  # no model to build pools with (and a store without users to read them)
        raise NoRankingSignal(f"the ranker's validation split holds out all {len(train.likes):,} training likes, "
                              "leaving none to fit on (a smaller --ranker-validation)")
    fit_matrix = interactions_of(fit_part, tp, layout)
    lap("split")
    users, columns = als.train_als(
        fit_matrix, factors=tp.factors, regularization=tp.regularization, alpha=tp.alpha, iterations=tp.iterations,
        seed=tp.seed, show_progress=tp.show_progress, all_columns=True, bags=tp.als_bags,
    )
    lap("als")
    items = np.ascontiguousarray(columns[: fit_matrix.n_items])
    sample = PoolSample.of(held, params)
    knn = None
    if tp.knn != "none":
        # The pools read only their users' liked items' rows (EASE computes all of them).
        rows = None if tp.knn == "ease" else sample.liked_columns(fit_matrix)
        knn = train_item_knn(
            fit_matrix.item_matrix, fit_matrix.item_ids, tp.knn, tp.knn_k, show_progress=False, l2=tp.ease_l2, rows=rows
        )
    lap("item-knn")
    # Users without a fit-part interaction are folded in from their likes, as when serving.
    active = np.diff(fit_matrix.matrix.indptr) > 0
    model = fit_part_model(fit_matrix.user_ids, fit_matrix.item_ids, users, items, active, knn, tp)
    ranker, info = fit_on_pools(fit_part, held, now, model, tp, settings, params, lap, sample)
    return ranker, info, (users, columns)


class StepClock:
    """Times the steps of the ranker's fit (``clock(name)`` ends one); prints each when ``verbose``."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.timings: dict[str, float] = {}
        self._started = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._started, 2)
        self._started = now
        if self.verbose:
            print(f"  ranker {name:<10} {self.timings[name]:8.2f} s", flush=True)


def fit_part_model(user_ids: Sequence[str], item_ids: Sequence[str], users: np.ndarray, items: np.ndarray,
                   active: np.ndarray, knn: Any, tp: Any) -> EmbeddingModel:
    """The fit part's model for the pools: the ``active`` users' factors (the others fold in
    from their likes, as when serving), an exact index (a few thousand pools need none built)."""
    from embeddings.index import build_index

    return EmbeddingModel(
        [u for u, keep in zip(user_ids, active.tolist()) if keep], item_ids, users[active], items,
        build_index(items, "flat"), regularization=tp.regularization, alpha=tp.alpha * tp.like_weight, item_knn=knn,
    )


def fit_on_pools(fit_part: Dataset, held: Edges, now: float, model: EmbeddingModel, tp: Any, settings: FeedSettings,
                 params: RankerFitParams, lap: StepClock, sample: PoolSample | None = None) -> tuple[LinearRanker, dict[str, Any]]:
    """Collect the validation pools (of ``sample``'s users) with the fit part's ``model``, fit above the baselines;
    the ranker and its report."""
    examples = collect_examples(fit_part, held, model, now, settings, params, show_progress=tp.show_progress, sample=sample)
    lap("pools")
    ranker, check = fit_above_baselines(examples, params)
    lap("fit")
    info = {
        "objective": params.objective,
        "l2": params.l2,
        "validation_fraction": params.validation_fraction,
        "validation_kind": params.validation_kind or "auto",
        "validation_users": examples.users,
        "rows": int(len(examples.labels)),
        "candidates_per_user": round(examples.candidates_per_user, 1),
        "pool_recall": round(examples.positives_in_pool / max(examples.positives_total, 1), 4),
        **check,
        "timings": lap.timings,
    }
    return ranker, info


def fit_above_baselines(examples: Examples, params: RankerFitParams) -> tuple[LinearRanker, dict[str, Any]]:
    """Fit, then rank the validation pools by the ranker and by each baseline's signal.

    When a baseline ranks them better, the trainer warns, and if that baseline's signal
    was among ``params.drop_features`` it is given back to the ranker, which is refitted
    (unless ``params.restore_dropped`` is False).
    """
    ranker = fit_ranker_on(examples, params)
    first = ours = pool_ndcg(ranker.score(examples.features).astype(np.float64), examples)
    baselines = baseline_scores(examples)
    beaten_by = sorted(name for name, value in baselines.items() if value > first + _SAME)
    restored = sorted({f for name in beaten_by for f in BASELINE_SIGNALS[name]} & set(params.drop_features)
                      if params.restore_dropped else ())
    if restored:
        params = replace(params, drop_features=tuple(f for f in params.drop_features if f not in restored))
        ranker = fit_ranker_on(examples, params)
        ours = pool_ndcg(ranker.score(examples.features).astype(np.float64), examples)
    for name in beaten_by:
        given = f"; its signal {list(BASELINE_SIGNALS[name])} is a ranker feature"
        if restored:
            verdict = "still below it" if baselines[name] > ours + _SAME else "now above it"
            given += f" (restored: {restored}, refitted to {ours:.4f}: {verdict})"
        print(
            f"warning: on the ranker's validation pools the {name} baseline ranks better than the learned ranker "
            f"(NDCG@{BASELINE_CHECK_K} {baselines[name]:.4f} > {first:.4f}){given}",
            file=sys.stderr, flush=True,
        )
    check = {
        f"validation_ndcg@{BASELINE_CHECK_K}": round(ours, 4),
        f"baselines_ndcg@{BASELINE_CHECK_K}": {name: round(value, 4) for name, value in baselines.items()},
        "beaten_by": [name for name in beaten_by if baselines[name] > ours + _SAME],
        # evaluate's and tune's name and shape for the baselines not compared, each with why
        "baselines_left_out": {
            name: f"its signal ({columns[0]}) is the same in every row of the validation pools"
            for name, columns in BASELINE_SIGNALS.items() if name not in baselines
        },
        "drop_features": list(params.drop_features),
    }
    return ranker, check


def ranker_spec(ranker: LinearRanker, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest "ranker" entry: feature names, weights by name, bias (and how it was fitted)."""
    spec: dict[str, Any] = {"features": list(FEATURE_NAMES), "weights": ranker.to_mapping(), "bias": float(ranker.bias)}
    if info:
        spec["fit"] = info
    if not all(math.isfinite(w) for w in spec["weights"].values()):
        raise NoRankingSignal("the fitted ranker has non-finite weights")
    return spec
