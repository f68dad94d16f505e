"""`python -m training train`: load, train, fit the ranker, evaluate, publish.

  python -m training train --data DIR --out MODELS_DIR [--factors N] [--index auto]
  python -m training train --data DIR --out MODELS_DIR --engine spark --spark-master yarn
"""

from __future__ import annotations

import argparse
import sys

from training.arguments import (
    add_engine_arguments,
    add_eval_users_argument,
    add_feed_arguments,
    add_training_arguments,
    check_time_split,
    check_validation_kind,
    params_from_args,
    parse_ks,
    ranker_params_from_args,
    settings_from_args,
    spark_settings_from_args,
    split_text,
)
from training.experiment import held_out_evaluation
from training.flag_types import output_directory
from training.splits import SplitSpec
from training.train import train_and_publish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python -m training train``."""
    parser.add_argument("--data", required=True, help="dataset directory (items.csv, likes.csv, ...)")
    parser.add_argument("--out", required=True, type=output_directory, help="models directory; the version goes to OUT/<version>/")
    parser.add_argument("--eval-split", default="auto", type=split_text("auto", "none"),
                        help="held-out split for the evaluation table: time:FRACTION, user:FRACTION[:SEED], "
                             "random:FRACTION[:SEED], auto (time:0.2 when every like has a time and they are not mostly tied at the "
                             "latest, else user:0.2) "
                             "or none (default: auto)")
    parser.add_argument("--k", type=parse_ks, default="10,20", help="cut-offs of the evaluation table (default: %(default)s)")
    parser.add_argument("--no-current", dest="make_current", action="store_false",
                        help="publish the version without pointing OUT/CURRENT at it: servers keep serving their "
                             "model, and the version (printed last) can be tried in an A/B arm (serve --arms); "
                             "default: CURRENT moves to it")
    add_eval_users_argument(parser)
    add_feed_arguments(parser)
    add_training_arguments(parser)
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> None:
    """Entry point of ``python -m training train``."""
    params = params_from_args(args)
    ranker_params = ranker_params_from_args(args)
    settings = settings_from_args(args)
    spark = spark_settings_from_args(args)
    ks = args.k
    split = None if args.eval_split in ("auto", "none") else SplitSpec.parse(args.eval_split)

    def check_data(dataset) -> None:  # the evaluation comes last: what it would refuse is refused first
        check_time_split(dataset, split, "--eval-split")
        check_validation_kind(dataset, ranker_params.validation_kind, ranker_params.validation_fraction, "--ranker-validation-split")
    if args.engine == "spark":
        from training.spark_engine import spark_engine

        # Spark's stage bars follow the trainer's bars: off when stderr is not a terminal.
        bars = sys.stderr.isatty() and not args.no_progress
        with spark_engine(spark, verbose=params.show_progress, progress_bars=bars) as engine:
            evaluate_fn = (
                None
                if args.eval_split == "none"
                else engine.held_out_evaluation(args.eval_split, ks, params, ranker_params, settings, max_users=args.eval_users)
            )
            train_and_publish(args.data, args.out, params, evaluate_fn=evaluate_fn, ranker_params=ranker_params,
                              settings=settings, engine=engine, check_data=check_data, make_current=args.make_current)
        return
    evaluate_fn = (
        None
        if args.eval_split == "none"
        else held_out_evaluation(args.eval_split, ks, params, ranker_params, settings, max_users=args.eval_users)
    )
    train_and_publish(args.data, args.out, params, evaluate_fn=evaluate_fn, ranker_params=ranker_params, settings=settings,
                      check_data=check_data, make_current=args.make_current)
