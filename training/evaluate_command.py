"""`python -m training evaluate`: the served feed and the baselines on a held-out split.

  python -m training evaluate --data DIR [--split time:0.2|user:0.2[:SEED]|random:0.2[:SEED] | --test PAIRS.csv] [--k 10,20] [--json OUT] [--plot PNG]
      [--cap-grid | --no-cap-grid]
"""

from __future__ import annotations

import argparse
import os

from training.arguments import (
    add_eval_users_argument,
    add_feed_arguments,
    add_training_arguments,
    check_time_split,
    check_validation_kind,
    params_from_args,
    parse_ks,
    ranker_params_from_args,
    settings_from_args,
    split_text,
)
from training.evaluate import evaluate_cap_grid, plot_report, read_test_file
from training.experiment import evaluate_split
from training.params import trained_with
from training.flag_types import input_path, output_file
from training.splits import SplitSpec


CAP_GRID_DEFAULT = True


def add_arguments(parser) -> None:
    """Flags of ``python -m training evaluate``."""
    parser.add_argument("--data", required=True, help="dataset directory")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument("--split", type=split_text(), help="time:FRACTION, user:FRACTION[:SEED] (a fraction of each user's likes) or "
                                          "random:FRACTION[:SEED] (default: time:0.2 when every like has a time and "
                                          "they are not mostly tied at the latest, else user:0.2:0)")
    held_out.add_argument("--test", type=input_path, help="CSV of user_id,item_id test pairs; DATA is then all training data")
    parser.add_argument("--k", type=parse_ks, default="10,20", help="cut-offs (default: %(default)s)")
    parser.add_argument("--json", type=output_file, help="write the metrics as JSON here")
    parser.add_argument("--plot", type=plot_file,
                        help="write a bar chart of the metrics here, in the format of its extension (PNG without "
                             "one; needs matplotlib)")
    add_eval_users_argument(parser)
    parser.add_argument("--no-blend", action="store_true", help="skip the hand-set blend row (one replay less)")
    parser.add_argument("--cap-grid", action=argparse.BooleanOptionalAction, default=CAP_GRID_DEFAULT,
                        help="add the \"diversity caps\" block: the feed replayed with the seller cap at the "
                             "configured value, 1 and off and the category cap off, 1 and 2 (6 settings by "
                             "default, at most 7; 5 more replays of the feed: about as long again as the rest of "
                             f"the command on 5,000 generated users) (default: {'on' if CAP_GRID_DEFAULT else 'off'})")
    add_feed_arguments(parser)
    add_training_arguments(parser)



def plot_file(text: str) -> str:
    """``--plot``: a file to write whose extension names an image format matplotlib writes."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise argparse.ArgumentTypeError("plotting needs matplotlib: pip install 'feedrank[plot]'") from None
    formats = Figure().canvas.get_supported_filetypes()
    formats.pop("pgf", None)  # needs a LaTeX install: it failed after the whole evaluation
    extension = os.path.splitext(text)[1].lstrip(".").lower()
    if extension and extension not in formats:
        raise argparse.ArgumentTypeError(f"unknown image format {extension!r} (from the extension); "
                                         f"choose from {', '.join(sorted(formats))}")
    return output_file(text)


def run(args) -> None:
    """Entry point of ``python -m training evaluate``."""
    import json

    from training.dataset import DatasetError, load_dataset, require_likes
    from training.train import feed_section, params_section

    ks = args.k
    split = SplitSpec.parse(args.split) if args.split else None
    params = params_from_args(args)
    settings = settings_from_args(args)
    # Before the dataset, which can take minutes to load: a missing or malformed test file
    # is known in a moment.
    try:
        test = read_test_file(args.test) if args.test else None
    except DatasetError as error:  # named by its flag and full path, not only its base name
        raise SystemExit(f"error: --test {os.path.abspath(args.test)}: {error}") from None
    dataset = load_dataset(args.data)
    require_likes(dataset, args.data)
    check_time_split(dataset, split, "--split")
    ranker_params = ranker_params_from_args(args)
    check_validation_kind(dataset, ranker_params.validation_kind, ranker_params.validation_fraction, "--ranker-validation-split")
    report = evaluate_split(
        dataset, split, test, ks, params, settings, show_progress=params.show_progress,
        ranker_params=ranker_params, compare_blend=not args.no_blend, max_users=args.eval_users,
    )
    if args.cap_grid:
        evaluate_cap_grid(report, show_progress=params.show_progress)
    print(report.table())
    print(trained_with(params))
    if args.json:
        # What the numbers were measured under, named as a model's manifest names it.
        with open(args.json, "w") as handle:
            json.dump({**report.as_json(), "params": params_section(params), "feed": feed_section(settings)}, handle, indent=2)
    if args.plot:
        plot_report(report, args.plot)
