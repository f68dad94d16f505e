"""Choose the model's hyperparameters, pool sizes and sources on a validation split.

  python -m training tune --data DIR --out params.json [--trials 30] [--timeout 900] [--seed 0]
  python -m training train --data DIR --out MODELS_DIR --params params.json

What is searched: the ALS factors, regularization, alpha and iterations, and how many
ALS models are averaged (``--als-bags``: each costs one more ALS fit); the weight
transform (when the likes carry weights); the weight of each engagement kind in
engagements.csv (shares, purchases, carts, clicks, views: 0..2 likes); the recency weighting of ALS confidence and
which time features the ranker uses (when the likes are timed); the item-kNN similarity
(EASE up to 20,000 items with two or more users: embeddings.knn.EASE_MAX_ITEMS) and its k; the pool sizes (embedding neighbours,
item-kNN candidates, trending, per followed seller and friend) and which candidate
sources run. Each trial trains the whole pipeline (ALS,
item-kNN, the learned ranker) on a fit part and replays the served feed over the
validation part; the score is its NDCG@10.

Which data it sees: first the test part of ``--test-split`` is set aside, the same part
``python -m training evaluate --split`` with that spec tests on, and never read again.
The validation split is carved from the rest with the test's shape (a time split when
the likes are timed, else a fraction of each user's likes), so what is chosen is chosen
for the evaluation that will judge it.

The search is optuna's TPE sampler, seeded. Why optuna rather than a plain random
search: the space mixes log-scaled floats, integers and categoricals with about a dozen
dimensions and a budget of tens of trials, where TPE finds good regions in fewer trials;
its first trial is the current defaults, so the result is never worse than them on
validation.

The best of tens of trials on one split is partly that split's luck. So when a trial beats
the defaults, both are scored again on a second validation split the search never saw
(the window just before the search's for a time split, another seed's draw otherwise),
and the trial is kept only if it beats the defaults there too, by at least 1 %
(MIN_CONFIRMED_GAIN: the spread between validation seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from embeddings import als
from embeddings.knn import EASE_MAX_ITEMS, KNN_KINDS, resolve_knn_kind
from ranking.features import TIME_FEATURES
from ranking.feed import SOURCE_NAMES, FeedSettings
from ranking.vocab import distinct_ids
from training.arguments import check_time_split, check_validation_kind, source_names, split_text
from training.dataset import Dataset
from training.experiment import NothingToEvaluate, evaluate_split
from training.flag_types import bounded, output_file
from training.interrupts import is_interrupt
from training.params import ENGAGEMENT_WEIGHT_FIELDS, TrainParams, ease_item_count_of, interactions_of
from training.ranker_fit import RankerFitParams
from training.splits import SPLIT_KINDS, SplitSpec, default_split, has_times, split_for_evaluation

OBJECTIVE_METRIC = "ndcg@10"
TUNED_TRAIN_FIELDS = (
    "factors", "regularization", "alpha", "iterations", "weight_transform", "recency_half_life_days", "knn", "knn_k",
    "ease_l2", "als_bags",
)
TUNED_FEED_FIELDS = ("neighbours", "knn_neighbours", "trending_limit", "per_key_limit", "sources")
FACTOR_CHOICES = (16, 32, 64, 128)
ALS_BAGS_CHOICES = (1, 3, 5)
# ALS's loss divided by alpha depends on 1 / alpha (the weight of the unobserved cells) and
# regularization / alpha, not on the three apart: searched as those two, the good region is a
# box, where searched as regularization and alpha apart it is a thin diagonal that a few
# tens of trials miss (benchmarks/README.md, "ALS regularization").
REGULARIZATION_PER_ALPHA_RANGE = (1e-4, 30.0)
KNN_K_CHOICES = (25, 50, 100, 200, 400)
RECENCY_HALF_LIFE_CHOICES = (0.0, 7.0, 30.0, 90.0, 365.0)
VALIDATION_FRACTION = 0.2  # of what is tuned on, held out to score each trial
ENGAGEMENT_WEIGHT_MAX = 2.0  # each engagement kind weighs 0..2 likes
# A trial replaces the defaults only if it beats them by this share on the confirmation
# split too: validation seeds alone moved NDCG@10 by up to 1 % (benchmarks/README.md).
MIN_CONFIRMED_GAIN = 0.01


@dataclass(frozen=True)
class Confirmation:
    """The search's best trial and the defaults, scored again on a second validation split
    (``confirmation_split``) that the search never saw; the best is kept only if it wins there
    too, by at least MIN_CONFIRMED_GAIN."""

    split: str
    best: float
    defaults: float

    @property
    def kept_best(self) -> bool:
        return self.best >= self.defaults * (1 + MIN_CONFIRMED_GAIN)


@dataclass
class TuneResult:
    params: TrainParams
    settings: FeedSettings
    ranker_params: RankerFitParams
    value: float
    default_value: float
    baselines: dict[str, float]
    validation: SplitSpec
    test_split: SplitSpec | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    search_best: float = 0.0  # the best trial's score on the search's split, kept or not
    validation_users: int = 0  # the users each trial's score averages over
    confirmation: Confirmation | None = None  # None when the defaults were the search's best
    baselines_left_out: dict[str, str] = field(default_factory=dict)  # with why (evaluate's): none to compare with

    def as_json(self) -> dict[str, Any]:
        feed = {name: getattr(self.settings, name) for name in TUNED_FEED_FIELDS}
        feed["sources"] = list(self.settings.sources)
        best_baseline = max(self.baselines, key=self.baselines.get, default=None)
        return {
            # The seed too: every trial's ALS and ranker ran with it, so `train --params` reproduces the choice.
            "train": {name: getattr(self.params, name) for name in (*TUNED_TRAIN_FIELDS, "seed", *ENGAGEMENT_WEIGHT_FIELDS.values())},
            "feed": feed,
            "ranker": {"drop_features": list(self.ranker_params.drop_features)},
            "validation": {
                "split": str(self.validation),
                "test_split_set_aside": str(self.test_split) if self.test_split else None,
                "metric": OBJECTIVE_METRIC,
                "users": self.validation_users,
                "best": self.value,
                "defaults": self.default_value,
                "baselines": self.baselines,
                **({"baselines_left_out": dict(self.baselines_left_out)} if self.baselines_left_out else {}),
                "best_baseline": best_baseline,
            },
            "confirmation": None if self.confirmation is None else {
                "split": self.confirmation.split,
                "search_best": self.search_best,
                "best": self.confirmation.best,
                "defaults": self.confirmation.defaults,
                "kept": "best trial" if self.confirmation.kept_best else "defaults",
            },
            "trials": self.trials,
        }


def confirmation_split(tuning_part: Dataset, validation: SplitSpec) -> tuple[Dataset, SplitSpec]:
    """A second validation split, shaped like the search's, with other labels: for time, the
    window just before the search's (trained on what came before it: a second origin of a
    rolling backtest); for per-user and random splits, another seed's draw."""
    if validation.kind == "time":
        return split_for_evaluation(tuning_part, validation)[0], validation
    return tuning_part, replace(validation, seed=validation.seed + 1)


@dataclass(frozen=True)
class SearchSpace:
    """What the data allows to search: weights only when likes carry them, time only when
    they are timed, EASE only up to EASE_MAX_ITEMS items with support. The kinds are
    concrete: "auto" is one of them on a given catalogue (``auto_knn``)."""

    weighted: bool
    timed: bool
    knn_kinds: tuple[str, ...] = tuple(k for k in KNN_KINDS if k != "auto")
    engagement_kinds: tuple[str, ...] = ()  # kinds present in engagements.csv: their weights are searched
    auto_knn: str = "cosine"  # the kind "auto" means on this catalogue
    required_sources: tuple[str, ...] = ()  # always on: the product promises them (--require-sources)

    @classmethod
    def of(cls, dataset: Dataset, params: TrainParams = TrainParams()) -> SearchSpace:
        ease_items = ease_item_count_of(interactions_of(dataset, params))
        return cls(
            weighted=dataset.likes.weight is not None,
            timed=has_times(dataset),
            knn_kinds=tuple(k for k in KNN_KINDS if k != "auto" and (k != "ease" or ease_items <= EASE_MAX_ITEMS)),
            engagement_kinds=tuple(k for k in ENGAGEMENT_WEIGHT_FIELDS if k in distinct_ids(dataset.engagements.kind)),
            auto_knn=resolve_knn_kind("auto", ease_items),
        )


def suggest(
    trial, base: TrainParams, settings: FeedSettings, ranker: RankerFitParams, space: SearchSpace
) -> tuple[TrainParams, FeedSettings, RankerFitParams]:
    """One point of the search space (see the module docstring)."""
    sources = tuple(
        name for name in SOURCE_NAMES
        if name in space.required_sources or trial.suggest_categorical(f"source_{name}", [True, False])
    )
    if space.timed:
        dropped = tuple(name for name in TIME_FEATURES if not trial.suggest_categorical(f"feature_{name}", [True, False]))
        ranker = replace(ranker, drop_features=tuple(sorted(set(ranker.drop_features) - set(TIME_FEATURES) | set(dropped))))
    params = replace(
        base,
        factors=trial.suggest_categorical("factors", list(FACTOR_CHOICES)),
        alpha=(alpha := trial.suggest_float("alpha", 0.1, 100.0, log=True)),
        regularization=alpha * trial.suggest_float("regularization_per_alpha", *REGULARIZATION_PER_ALPHA_RANGE, log=True),
        iterations=trial.suggest_int("iterations", 5, 30, step=5),
        als_bags=trial.suggest_categorical("als_bags", list(ALS_BAGS_CHOICES)),
        weight_transform=(
            trial.suggest_categorical("weight_transform", list(als.WEIGHT_TRANSFORMS))
            if space.weighted else base.weight_transform
        ),
        recency_half_life_days=(
            trial.suggest_categorical("recency_half_life_days", list(RECENCY_HALF_LIFE_CHOICES))
            if space.timed else base.recency_half_life_days
        ),
        knn=trial.suggest_categorical("knn", list(space.knn_kinds)),
        knn_k=trial.suggest_categorical("knn_k", list(KNN_K_CHOICES)),
        ease_l2=trial.suggest_float("ease_l2", 10.0, 3000.0, log=True),
        **{
            ENGAGEMENT_WEIGHT_FIELDS[kind]: trial.suggest_float(ENGAGEMENT_WEIGHT_FIELDS[kind], 0.0, ENGAGEMENT_WEIGHT_MAX)
            for kind in space.engagement_kinds
        },
    )
    settings = replace(
        settings,
        neighbours=trial.suggest_int("neighbours", 10, 400, log=True),
        knn_neighbours=trial.suggest_int("knn_neighbours", 10, 400, log=True),
        trending_limit=trial.suggest_int("trending_limit", 0, 100),
        per_key_limit=trial.suggest_int("per_key_limit", 5, 100, log=True),
        sources=sources or ("trending",),
    )
    return params, settings, ranker


def as_trial_values(params: TrainParams, settings: FeedSettings, ranker: RankerFitParams, space: SearchSpace) -> dict[str, Any]:
    """The trial parameters that reproduce ``params``, ``settings`` and ``ranker`` (to enqueue the defaults)."""
    optional = {"weight_transform": space.weighted, "recency_half_life_days": space.timed}
    values: dict[str, Any] = {name: getattr(params, name) for name in TUNED_TRAIN_FIELDS if optional.get(name, True)}
    values["regularization_per_alpha"] = values.pop("regularization") / params.alpha
    if values["knn"] == "auto":
        values["knn"] = space.auto_knn
    values.update({ENGAGEMENT_WEIGHT_FIELDS[kind]: getattr(params, ENGAGEMENT_WEIGHT_FIELDS[kind]) for kind in space.engagement_kinds})
    values.update({name: getattr(settings, name) for name in TUNED_FEED_FIELDS if name != "sources"})
    values.update({f"source_{name}": name in settings.sources for name in SOURCE_NAMES if name not in space.required_sources})
    if space.timed:
        values.update({f"feature_{name}": name not in ranker.drop_features for name in TIME_FEATURES})
    return values


def room_for_a_trial(elapsed: float, trial_seconds: list[float], timeout: float) -> bool:
    """Whether another trial may start ``elapsed`` seconds into a search whose trials took
    ``trial_seconds``: it may take as long as the slowest yet, and a confirmation (two
    replays, on less data than a trial's) may follow it, both within ``timeout``. optuna's
    own timeout only stops starting trials, so the last one and the confirmation ran past it:
    823 s of a 900 s budget on Last.fm, so past 15 minutes on a machine a fifth slower."""
    if not trial_seconds:
        return elapsed < timeout
    confirmation = 2 * sum(trial_seconds) / len(trial_seconds)
    return elapsed + max(trial_seconds) + confirmation <= timeout


def tune(
    dataset: Dataset,
    test_split: SplitSpec | None,
    trials: int = 30,
    timeout: float = 900.0,
    seed: int = 0,
    base: TrainParams = TrainParams(show_progress=False),
    settings: FeedSettings = FeedSettings(),
    ranker_params: RankerFitParams = RankerFitParams(),
    eval_users: int = 2000,
    validation_fraction: float = VALIDATION_FRACTION,
    show_progress: bool = True,
    required_sources: tuple[str, ...] = (),
    validation_kind: str | None = None,
) -> TuneResult:
    """Search for ``trials`` trials or until ``timeout`` seconds, whichever ends first: the
    first trial (the defaults) always runs, and another starts only while it and a
    confirmation after it fit in what is left (``room_for_a_trial``), so the whole search
    ends near ``timeout`` on a slow machine too. ``required_sources`` run in every trial.
    ``validation_kind`` is the shape of the validation split (None: the test split's, else
    what ``default_split`` picks); each trial's ranker is fitted on a split of that shape too."""
    import optuna

    tuning_part = split_for_evaluation(dataset, test_split)[0] if test_split else dataset
    if not len(tuning_part.likes):
        raise NothingToEvaluate(f"--test-split {test_split} sets aside all {len(dataset.likes):,} likes: none is left "
                                "to tune on (a smaller fraction, or --test-split none)")
    kind = validation_kind or (test_split.kind if test_split else default_split(tuning_part).kind)
    validation = SplitSpec(kind, validation_fraction, seed)
    if not len(split_for_evaluation(tuning_part, validation)[1]):
        # Every trial scores this one split: each would fail alike, in optuna's traceback.
        raise NothingToEvaluate(f"the validation split {validation} of the {len(tuning_part.likes):,} likes tuned on "
                                "holds out no like: no trial could be scored (a larger dataset)")
    base = replace(base, show_progress=False, seed=seed)
    space = replace(SearchSpace.of(tuning_part, base), required_sources=tuple(required_sources))
    ranker_params = replace(ranker_params, seed=seed, validation_kind=kind)
    baselines: dict[str, float] = {}
    baselines_left_out: dict[str, str] = {}
    history: list[dict[str, Any]] = []
    validation_users: list[int] = []  # the first trial's: every trial replays the same sampled users
    defaults_failed: list[als.ALSFailed] = []

    def objective(trial) -> float:
        params, trial_settings, trial_ranker = suggest(trial, base, settings, ranker_params, space)
        started = time.perf_counter()
        # Sources that find no validation like (followed sellers alone on data without
        # sellers) fit no ranker: the trial's feed is then scored under the hand-set blend,
        # as train would publish it.
        try:
            report = evaluate_split(
                tuning_part, validation, None, (10,), params, trial_settings, show_progress=False,
                ranker_params=trial_ranker, compare_blend=False, max_users=eval_users,
                # Replayed once, in the defaults' trial: ALS alone and item-kNN alone are the defaults'.
                baselines=not baselines,
            )
        except als.ALSFailed as error:
            # The sampled alpha, regularization or weight transform overflowed ALS on these
            # weights: that point of the space is unusable, not the search. Raised inside the
            # objective it ended the search, under optuna's traceback.
            if trial.number == 0:  # the defaults: nothing to compare the search with
                defaults_failed.append(error)
                trial.study.stop()
                raise optuna.TrialPruned() from None
            history.append({"number": trial.number, "value": None, "skipped": error.summary,
                            "seconds": round(time.perf_counter() - started, 1), "params": dict(trial.params)})
            if show_progress:
                print(f"trial {trial.number:3d}  skipped: {error.summary} under its parameters", flush=True)
            raise optuna.TrialPruned() from None
        value = report.methods["model"][OBJECTIVE_METRIC]
        if not baselines:
            baselines.update({name: m[OBJECTIVE_METRIC] for name, m in report.methods.items() if name != "model"})
            baselines_left_out.update(report.baselines_left_out)
            validation_users.append(report.test_users)
        history.append({"number": trial.number, "value": value, "seconds": round(time.perf_counter() - started, 1),
                        "params": dict(trial.params)})
        if show_progress:
            print(f"trial {trial.number:3d}  {OBJECTIVE_METRIC} {value:.4f}  ({time.perf_counter() - started:.0f} s)",
                  flush=True)
        return value

    started = time.perf_counter()

    def stop_when_out_of_time(study, _trial) -> None:
        if not room_for_a_trial(time.perf_counter() - started, [t["seconds"] for t in history], timeout):
            study.stop()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(as_trial_values(base, settings, ranker_params, space))
    study.optimize(objective, n_trials=max(trials, 1), timeout=timeout, callbacks=[stop_when_out_of_time])
    if defaults_failed:
        raise defaults_failed[0]
    def chosen(trial: Any) -> tuple[TrainParams, FeedSettings, RankerFitParams]:
        return suggest(optuna.trial.FixedTrial(trial.params), base, settings, ranker_params, space)

    best, value, default_value = chosen(study.best_trial), study.best_value, history[0]["value"]
    confirmation = None
    if study.best_trial.number != 0:
        # The best of many trials on one split is partly that split's luck (the winner's
        # curse): it must also beat the defaults on labels the search never saw.
        confirm_part, confirm_split = confirmation_split(tuning_part, validation)

        def confirm(params: TrainParams, trial_settings: FeedSettings, trial_ranker: RankerFitParams) -> float:
            report = evaluate_split(
                confirm_part, confirm_split, None, (10,), params, trial_settings, show_progress=False,
                ranker_params=trial_ranker, compare_blend=False, max_users=eval_users, baselines=False,
            )
            return report.methods["model"][OBJECTIVE_METRIC]

        defaults = chosen(study.trials[0])
        confirmation = Confirmation(str(confirm_split), confirm(*best), confirm(*defaults))
        if not confirmation.kept_best:
            best, value = defaults, default_value
    return TuneResult(
        params=best[0], settings=best[1], ranker_params=best[2], value=value, default_value=default_value,
        baselines=baselines, validation=validation, test_split=test_split, trials=history,
        search_best=study.best_value, confirmation=confirmation, validation_users=validation_users[0],
        baselines_left_out=baselines_left_out,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m training tune``."""
    parser.add_argument("--data", required=True, help="dataset directory")
    parser.add_argument("--out", required=True, type=output_file, help="JSON file to write the chosen parameters to (for train --params)")
    parser.add_argument(
        "--test-split", default="auto", type=split_text("auto", "none"),
        help="the evaluation's test split, set aside before tuning and never read: time:FRACTION, "
             "user:FRACTION[:SEED], random:FRACTION[:SEED], auto (what evaluate uses by default: time:0.2 when every "
             "like has a time and they are not mostly tied at the latest, else user:0.2:0) or none (tune on all of DATA) (default: %(default)s)",
    )
    parser.add_argument(
        "--validation-split", choices=("auto", *SPLIT_KINDS), default="auto",
        help="shape of the validation split every trial is scored on, carved out of what is tuned on: time, user "
             "or random (as --test-split's); auto mirrors --test-split, and with --test-split none is time when every "
             "like has a time, else user. Give the shape of the split the parameters will be judged on, e.g. random "
             "for a published split of all pairs (default: %(default)s)",
    )
    parser.add_argument("--trials", type=bounded(int, 1), default=30, help="trials, the defaults first (default: %(default)s)")
    parser.add_argument("--timeout", type=bounded(float, above=0), default=900.0,
                        help="the search's budget in seconds: a trial starts only while it and the confirmation after it fit in "
                             "what is left; the first trial (the defaults) always runs, however long it takes "
                             "(default: %(default)s)")
    # optuna's TPE sampler seeds a numpy RandomState, which takes no seed past 2**32 - 1.
    parser.add_argument("--seed", type=bounded(int, 0, maximum=2**32 - 1), default=0,
                        help="seed of the search: the sampler, the validation split (the confirmation's draw takes "
                             "SEED+1), ALS and the ranker's fit, 0 to 4294967295. Not of the test split: that is "
                             "--test-split's own :SEED (0 when left out, as in evaluate's --split), so the part set "
                             "aside is the one evaluate tests on whatever --seed (default: %(default)s)")
    parser.add_argument("--eval-users", type=bounded(int, 0), default=2000,
                        help="validation users per trial, a seeded sample; 0 = all (default: %(default)s)")
    parser.add_argument(
        "--require-sources", default="", type=source_names, metavar="LIST",
        help="candidate sources every trial keeps, comma-separated, e.g. followed_sellers,friend_likes when the "
             f"product promises them (choices: {', '.join(SOURCE_NAMES)}; default: none, every source is searched)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no per-trial lines")


def _search(args: argparse.Namespace) -> TuneResult:
    """Load ``--data``, check the splits, and search."""
    from training.dataset import load_dataset, require_likes
    from training.train import warn_if_nothing_servable

    dataset = load_dataset(args.data)
    require_likes(dataset, args.data)
    # Every trial then scores 0, and the defaults are "chosen" among equals.
    warn_if_nothing_servable(dataset, time.time())
    test_split = None if args.test_split == "none" else (
        default_split(dataset) if args.test_split == "auto" else SplitSpec.parse(args.test_split)
    )
    check_time_split(dataset, test_split, "--test-split")
    validation_kind = None if args.validation_split == "auto" else args.validation_split
    check_validation_kind(dataset, validation_kind, VALIDATION_FRACTION, "--validation-split")
    with optuna_quiet_after_interrupt():
        return tune(dataset, test_split, args.trials, args.timeout, args.seed, eval_users=args.eval_users,
                    show_progress=not args.no_progress, required_sources=args.require_sources,
                    validation_kind=validation_kind)


def run(args: argparse.Namespace) -> None:
    """Entry point of ``python -m training tune``."""
    started = time.perf_counter()
    try:
        result = _search(args)
    except (KeyboardInterrupt, SystemError) as error:
        if not is_interrupt(error):
            raise
        # A search cut short chose nothing (its best trial is not confirmed): say that the
        # file at --out, if any, is not this run's result, so nobody trains from it as if it were.
        kept = f"{args.out} is left as it was, from an earlier run" if os.path.exists(args.out) else f"{args.out} was not written"
        print(f"tune interrupted after {time.perf_counter() - started:.0f} s: nothing chosen; {kept}", file=sys.stderr)
        raise
    payload = result.as_json()
    payload["seconds"] = round(time.perf_counter() - started, 1)
    with open(args.out, "w") as handle:
        json.dump(payload, handle, indent=2)
    validation = payload["validation"]
    skipped = sum(trial["value"] is None for trial in result.trials)
    print(f"{len(result.trials)} trials{f' ({skipped} skipped)' if skipped else ''} in {payload['seconds']:.0f} s on {validation['split']} "
          f"({validation['users']} validation user{'' if validation['users'] == 1 else 's'}; test part {validation['test_split_set_aside']} set aside): {OBJECTIVE_METRIC} {result.value:.4f}, "
          f"defaults {result.default_value:.4f}; wrote {args.out}")
    confirmation = payload["confirmation"]
    if confirmation is not None:
        print(f"confirmation on {confirmation['split']} of the part before the search's validation window"
              if result.validation.kind == "time" else f"confirmation on {confirmation['split']}", end="")
        print(f": best trial {confirmation['best']:.4f} (search {confirmation['search_best']:.4f}), defaults "
              f"{confirmation['defaults']:.4f}; kept the {confirmation['kept']}")
    if result.baselines_left_out:
        print("baselines left out: " + "; ".join(f"{name} ({why})" for name, why in result.baselines_left_out.items()))
    best_name = validation["best_baseline"]
    if best_name and result.baselines[best_name] > result.value:
        print(f"warning: on validation the {best_name} baseline ({result.baselines[best_name]:.4f}) beats the "
              f"learned feed ({result.value:.4f})", file=sys.stderr)
    print(json.dumps({section: payload[section] for section in ("train", "feed", "ranker")}, indent=2))


@contextlib.contextmanager
def optuna_quiet_after_interrupt() -> Iterator[None]:
    """Optuna logs a trial stopped by Ctrl-C as failed, with a traceback (also when the
    Ctrl-C came out of a numba kernel as a SystemError): from that record on, its log lines
    are dropped (the command says "interrupted")."""
    import optuna

    interrupted = False

    def keep(record: logging.LogRecord) -> bool:
        nonlocal interrupted
        interrupted = interrupted or bool(record.exc_info and is_interrupt(record.exc_info[1]))
        return not interrupted

    handlers = optuna.logging.get_logger("optuna").handlers
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)
