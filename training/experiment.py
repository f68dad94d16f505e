"""Train on one part of a dataset and evaluate the served feed on the rest: the experiment
behind `python -m training evaluate`, the trainer's evaluation table and the benchmarks."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone

from embeddings.model import EmbeddingModel
from ranking.feed import FeedSettings
from ranking.ranker import DEFAULT_RANKER, LinearRanker
from training.dataset import Dataset, Edges
from training.evaluate import EvaluationReport, evaluate, pipeline_recommender
from training.ranker_fit import RankerFitParams
from training.params import interactions_of, with_knn_resolved
from training.splits import (
    SplitSpec,
    default_split,
    default_split_reason,
    evaluation_time,
    split_for_evaluation,
)
from training.train import fitted_ranker_spec, train


class NothingToEvaluate(ValueError):
    """The test part is empty: metrics would be zeros that measured nothing."""


def evaluation_parts(
    dataset: Dataset, split: SplitSpec | None, test: Edges | None, ranker_params: RankerFitParams | None
) -> tuple[Dataset, Edges, float | None, RankerFitParams]:
    """(training part, test likes, replay time or None, ranker params) of an evaluation:
    ``dataset`` is the training part when ``test`` is given, else ``split`` (default: the
    dataset's default split) cuts it, and the ranker's validation takes that split's shape."""
    ranker_params = ranker_params or RankerFitParams()
    if test is not None:
        if not len(test):
            raise NothingToEvaluate("the test file holds no pairs: nothing to evaluate")
        for warning in warnings_on_test_pairs(dataset, test):
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        return dataset, test, None, ranker_params
    split = split or default_split(dataset)
    train_part, test, now = split_for_evaluation(dataset, split)
    if not len(test):
        raise NothingToEvaluate(f"the split {split} of {len(dataset.likes):,} likes left no test likes: nothing to "
                                "evaluate (a larger dataset, or another split)")
    if not len(train_part.likes):  # as a dataset without a like is refused: the model learned nothing
        raise NothingToEvaluate(f"the split {split} of {len(dataset.likes):,} likes left no training likes: nothing to "
                                "train on (a larger dataset, or a smaller test fraction)")
    # Validation mirrors the test: the ranker is chosen on a split of the same shape, unless told another.
    return train_part, test, now, replace(ranker_params, validation_kind=ranker_params.validation_kind or split.kind)


def test_part_description(dataset: Dataset, split: SplitSpec | None, test_given: bool, now: float | None) -> str:
    """What an evaluation tests on, for its report: the split (with its time for a time split),
    and why, when it is the default, so numbers of a per-user split are not read as a time split's."""
    if test_given:
        return "the test pairs given (--test)"
    chosen = split or default_split(dataset)
    text = str(chosen)
    if chosen.kind == "time":
        text += f", the likes from {datetime.fromtimestamp(now, timezone.utc):%Y-%m-%dT%H:%M:%SZ} on"
    return text if split else f"{text} (the default: {default_split_reason(dataset)})"


def warnings_on_test_pairs(train: Dataset, test: Edges) -> list[str]:
    """What the metrics of ``test`` (pairs given apart from the training data ``train``)
    would not show: test pairs that count as misses whatever the feed, test users the
    training data knows nothing of. One line each, with counts."""
    pairs = set(zip(test.src, test.dst))
    users = {user for user, _ in pairs}
    liked = pairs.intersection(zip(train.likes.src, train.likes.dst))
    known_items = set(train.items.item_id)
    unknown_items = sum(item not in known_items for _, item in pairs)
    unknown_users = len(users.difference(train.user_ids()))
    warnings = []
    if liked:
        warnings.append(f"{len(liked)} of {len(pairs)} test pairs are training likes too "
                        "(they count as misses: a feed never shows an item its user already likes)")
    if unknown_items:
        warnings.append(f"{unknown_items} of {len(pairs)} test pairs have an item that is nowhere in the "
                        "training data (they count as misses: no feed can show it)")
    if unknown_users:
        warnings.append(f"{unknown_users} of {len(users)} test users are nowhere in the training data "
                        "(no likes, follows, friends or engagements to go on)")
    return warnings


def evaluate_split(
    dataset: Dataset,
    split: SplitSpec | None,
    test: Edges | None,
    ks: Sequence[int],
    params,
    settings: FeedSettings = FeedSettings(),
    show_progress: bool = True,
    ranker_params=None,
    compare_blend: bool = True,
    max_users: int = 0,
    baselines: bool = True,
) -> EvaluationReport:
    """Train on the training part with ``params`` and evaluate the served feed on the rest.

    The served ranker is fitted on a validation split of the training part
    (``ranker_params``, a RankerFitParams; objective "blend" keeps the hand-set blend, and
    so does data too thin to fit one: training.train.fitted_ranker_spec).
    With ``compare_blend`` the same feed under the hand-set blend is reported as "blend";
    without ``baselines``, only the feed (and the blend) are replayed.
    ``report.ranker`` holds the fitted ranker's manifest entry.
    """
    test_given = test is not None
    train_part, test, now, ranker_params = evaluation_parts(dataset, split, test, ranker_params)
    interactions = interactions_of(train_part, params)
    params = with_knn_resolved(params, interactions)
    # As the trainer publishes: the ranker's fit-part model first, the served model from it.
    spec, warm = fitted_ranker_spec(train_part, params, ranker_params, interactions, settings)
    model, _ = train(train_part, params, interactions, initial=warm)
    extra = {}
    if compare_blend and spec["fit"]["objective"] != "blend":
        replay_now = evaluation_time(train_part) if now is None else now
        extra["blend"] = pipeline_recommender(train_part, model, DEFAULT_RANKER, replay_now, settings)
    report = evaluate(
        train_part, test, model, LinearRanker.from_mapping(spec["weights"], spec["bias"]), ks, settings, now=now,
        extra_methods=extra, show_progress=show_progress, max_users=max_users, baselines=baselines,
    )
    report.ranker = spec
    report.test_part = test_part_description(dataset, split, test_given, now)
    return report


def held_out_evaluation(
    split_text: str,
    ks: Sequence[int],
    params,
    ranker_params=None,
    settings: FeedSettings = FeedSettings(),
    max_users: int = 0,
    evaluate=evaluate_split,
):
    """An evaluate_fn for train_and_publish: prints the table, returns the manifest metrics.

    No "blend" row here, to keep retraining fast: ``python -m training evaluate`` has it.
    ``evaluate`` is evaluate_split or an engine's own (training/spark_engine.py).
    """
    split = None if split_text == "auto" else SplitSpec.parse(split_text)

    def evaluate_fn(dataset: Dataset, _model: EmbeddingModel) -> dict:
        try:
            report = evaluate(
                dataset, split, None, ks, params, settings, show_progress=params.show_progress,
                ranker_params=ranker_params, compare_blend=False, max_users=max_users,
            )
        except NothingToEvaluate as error:  # the model is still worth publishing
            print(f"warning: {error}; the model is published without metrics", file=sys.stderr, flush=True)
            return {}
        print(report.table(), flush=True)
        return report.as_json()

    return evaluate_fn
