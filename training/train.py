"""Train embeddings and their index from a dataset directory, then publish a model version.

  python -m training train --data DIR --out MODELS_DIR [--factors N] [--index auto]

Steps: load and validate the dataset, build the weighted interaction matrix (likes plus
follows as extra seller columns), fit implicit ALS, build the MIPS index, evaluate (and chart it),
publish ``MODELS_DIR/<version>/`` and switch ``MODELS_DIR/CURRENT`` to it. With
``--engine spark`` the matrix, ALS and item-kNN run on Spark (training.spark_engine) and
the same artifact is published.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np

from embeddings import als
from embeddings.index import build_index
from embeddings.knn import EASE_AUTO_MAX_ITEMS, EASE_MIN_SUPPORT, train_item_knn
from embeddings.model import EmbeddingModel
from embeddings.user_neighbours import precompute_user_neighbours
from ranking.features import FEATURE_NAMES
from ranking.feed import FeedSettings
from ranking.ranker import DEFAULT_BLEND
from training.artifact import EVALUATION_CHART, publish
from training.dataset import Dataset, load_dataset, require_likes
from training.evaluate import plot_metrics
from training.params import TrainParams, interactions_of, with_knn_resolved
from training.ranker_fit import NoRankingSignal, RankerFitParams, fit_ranker, ranker_spec

# (dataset, trained model) -> metrics for the manifest, e.g. {"model": {"ndcg@10": ...}}
EvaluateFn = Callable[[Dataset, EmbeddingModel], dict[str, Any]]


@contextmanager
def _step(name: str, timings: dict[str, float], verbose: bool) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)
    if verbose:
        print(f"{name:<14} {timings[name]:8.2f} s", flush=True)


def train(
    ds: Dataset,
    params: TrainParams = TrainParams(),
    interactions: als.Interactions | None = None,
    initial: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[EmbeddingModel, dict[str, Any]]:
    """Fit ALS on ``ds`` and index its item factors.

    Returns the model and an info dict: sizes of the problem ("users", "items",
    "sellers", "interactions") and "timings" in seconds per step. Users are those with a
    like or follow; items are all of ``ds.items`` (cold ones get zero factors).
    ``interactions`` is ``ds``'s matrix when already built; ``initial`` (user factors,
    all-column factors in that layout) starts ALS there and runs ``params.warm_iterations``.
    """
    timings: dict[str, float] = {}
    verbose = params.show_progress
    if interactions is None:
        with _step("interactions", timings, verbose):
            interactions = interactions_of(ds, params)
    params = with_knn_resolved(params, interactions)
    with _step("als", timings, verbose):
        user_factors, item_factors = als.train_als(
            interactions,
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations if initial is None else params.warm_iterations,
            seed=params.seed,
            show_progress=params.show_progress,
            initial=initial,
            bags=params.als_bags,
        )
    knn = None
    # "index" times both item-side neighbour structures: the MIPS index and the item-kNN.
    with _step("index", timings, verbose):
        if params.knn != "none":
            knn = train_item_knn(
                interactions.item_matrix, interactions.item_ids, params.knn, params.knn_k, show_progress=False,
                l2=params.ease_l2,
            )
        index = build_index(
            item_factors,
            params.index,
            hnsw_m=params.hnsw_m,
            ef_construction=params.ef_construction,
            ef_search=params.ef_search,
            show_progress=params.show_progress,
            check_queries=user_factors,
        )
    model = EmbeddingModel(
        interactions.user_ids,
        interactions.item_ids,
        user_factors,
        item_factors,
        index,
        regularization=params.regularization,
        alpha=params.alpha * params.like_weight,
        item_knn=knn,
    )
    info = {
        "users": len(interactions.user_ids),
        "items": len(interactions.item_ids),
        "sellers": len(interactions.seller_ids),
        "interactions": int(interactions.matrix.nnz),
        "index_kind": index.kind,
        "timings": timings,
    }
    return model, info


def default_ranker_spec() -> dict[str, Any]:
    """The manifest "ranker" entry for the hand-set blend (until a learned ranker exists)."""
    return {"features": list(FEATURE_NAMES), "weights": dict(DEFAULT_BLEND), "bias": 0.0}


def fitted_ranker_spec(
    ds: Dataset,
    params: TrainParams,
    ranker_params,
    interactions: Any = None,
    settings: FeedSettings = FeedSettings(),
    engine: Any = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """The manifest "ranker" entry fitted on a validation split of ``ds`` (training.ranker_fit),
    and the fit part's factors to warm-start the served model from (None for the blend).

    Objective "blend" publishes the hand-set blend. When the data cannot support a fit
    (no validation user with a positive in their candidate pool, e.g. a toy dataset; or
    a fit with non-finite weights) the blend is used too, a warning on stderr says why,
    and so does the entry ("fit": {"objective": "blend", "reason": ...}). With ``engine`` (a
    training.spark_engine.SparkEngine; ``interactions`` then its SparkInteractions) the
    fit part's model is trained on Spark, and there are no factors to warm-start from.
    """
    if ranker_params.objective == "blend":
        return {**default_ranker_spec(), "fit": {"objective": "blend"}}, None
    try:
        if engine is not None:
            ranker, info, warm = engine.fit_ranker(ds, params, settings, ranker_params, interactions)
        else:
            ranker, info, warm = fit_ranker(ds, params, settings, ranker_params, interactions)
    except NoRankingSignal as error:
        print(f"warning: ranker: cannot fit ({error}); using the hand-set blend", file=sys.stderr, flush=True)
        return {**default_ranker_spec(), "fit": {"objective": "blend", "reason": str(error)}}, None
    return ranker_spec(ranker, info), warm


def params_section(params: TrainParams) -> dict[str, Any]:
    """The manifest's "params": the training parameters, as evaluate's --json records them too."""
    return {k: v for k, v in asdict(params).items() if k != "show_progress"}


def feed_section(settings: FeedSettings) -> dict[str, Any]:
    """The manifest's "feed": the pools and caps the model is served (and was evaluated) on."""
    return {**asdict(settings), "sources": list(settings.sources)}


def evaluation_chart_files(metrics: dict[str, Any]) -> dict[str, bytes]:
    """{EVALUATION_CHART: svg} for the version directory, or {} (with one line saying why)
    when the chart cannot be drawn: a missing chart must not stop a model from publishing."""
    try:
        return {EVALUATION_CHART: plot_metrics(metrics)}
    except ValueError as error:
        print(f"evaluation chart: skipped ({error})", flush=True)
        return {}


def warn_if_nothing_servable(ds: Dataset, now: float) -> None:
    """A catalogue of which a feed may show no item at ``now`` (sold out, kept out of the
    feed by their sellers, sellers away) trains a model whose feeds are empty until that changes."""
    items = ds.items
    if not len(items.item_id):
        return
    away = {seller for seller, until in zip(ds.sellers.seller_id, ds.sellers.vacation_until.tolist()) if until > now}
    reasons = {
        "out of stock": items.stock <= 0,
        "kept out of the feed (feed_eligible 0)": ~items.feed_eligible,
        "their seller away": np.fromiter((seller in away for seller in items.seller_id), bool, len(items.seller_id)),
    }
    if np.logical_or.reduce(list(reasons.values())).all():
        why = ", ".join(f"{int(mask.sum()):,} {reason}" for reason, mask in reasons.items() if mask.any())
        print(f"warning: no item of {len(items.item_id):,} can be served now ({why}): feeds stay empty until items are "
              "restocked, listed, made feed-eligible or their sellers are back", file=sys.stderr, flush=True)


def train_and_publish(
    data_dir: str,
    models_dir: str,
    params: TrainParams = TrainParams(),
    evaluate_fn: EvaluateFn | None = None,
    ranker_params=None,
    settings: FeedSettings = FeedSettings(),
    engine: Any = None,
    check_data: Callable[[Dataset], None] | None = None,
    make_current: bool = True,
) -> str:
    """Load, train, fit the ranker, evaluate (if ``evaluate_fn``), publish (and point CURRENT
    at it, unless not ``make_current``); returns the version directory.

    ``check_data`` runs on the loaded data before any training: what the evaluation at
    the end would refuse (e.g. a time split of untimed likes) is refused first.

    ``ranker_params`` is a training.ranker_fit.RankerFitParams (default: its defaults).
    ``engine``: None trains with implicit in this process; a training.spark_engine.SparkEngine
    (whose session the caller owns) builds the matrix, ALS and item-kNN on Spark. Either
    way the same artifact is published; the manifest's "engine" entry says which made it.
    """

    ranker_params = ranker_params or RankerFitParams()
    timings: dict[str, float] = {}
    verbose = params.show_progress
    started = time.perf_counter()
    with _step("load", timings, verbose):
        ds = load_dataset(data_dir)
        require_likes(ds, data_dir)
        warn_if_nothing_servable(ds, time.time())
        if check_data is not None:
            check_data(ds)
        fingerprint = ds.fingerprint()
    with _step("interactions", timings, verbose):
        interactions = interactions_of(ds, params) if engine is None else engine.interactions(ds, params)
    requested_knn = params.knn
    params = with_knn_resolved(params, interactions)
    if verbose and requested_knn != params.knn:
        print(f"item-kNN       {requested_knn} -> {params.knn} (EASE up to {EASE_AUTO_MAX_ITEMS:,} items with {EASE_MIN_SUPPORT}+ users)", flush=True)
    # The ranker's fit-part model is trained first; the served model starts from it (implicit).
    with _step("ranker", timings, verbose):
        ranker, warm = fitted_ranker_spec(ds, params, ranker_params, interactions, settings, engine=engine)
    if engine is None:
        model, info = train(ds, params, interactions, initial=warm)
        engine_info: dict[str, Any] = {"name": "implicit"}
    else:
        model, info = engine.train(ds, params, interactions)
        interactions.frame.unpersist()
        engine_info = engine.describe()
    timings.update(info.pop("timings"))
    if 0 < len(model.user_ids) <= params.precompute_neighbours_up_to:
        with _step("neighbours", timings, verbose):
            model.user_neighbours = precompute_user_neighbours(model, settings.neighbours, verbose)
    metrics: dict[str, Any] = {}
    if evaluate_fn is not None:
        if verbose:  # else its own ranker, als and index timings read as a second, unexplained training
            print("evaluate       the steps again on the held-out split's training part:", flush=True)
        with _step("evaluate", timings, verbose):
            metrics = evaluate_fn(ds, model)
    files: dict[str, bytes] = {}
    if metrics:
        with _step("chart", timings, verbose):
            files = evaluation_chart_files(metrics)
    manifest = {
        "params": params_section(params),
        "data": {"path": data_dir, "fingerprint": fingerprint, **info},
        "data_fingerprint": fingerprint,
        "metrics": metrics,
        "charts": {"evaluation": EVALUATION_CHART} if EVALUATION_CHART in files else {},
        "ranker": ranker,
        "feed": feed_section(settings),
        "engine": engine_info,
        "timings": timings,
    }
    with _step("publish", timings, verbose):
        version_dir = publish(models_dir, model, manifest, files=files, make_current=make_current)
    if verbose:
        print(f"{'total':<14} {time.perf_counter() - started:8.2f} s")
    print(version_dir)
    return version_dir


