"""``python -m training``: generate data, train and evaluate models.

  python -m training generate --out DIR --users N --sellers N --items N --seed S
  python -m training train --data DIR --out MODELS_DIR
  python -m training evaluate --data DIR [--split ...] [--k 10,20] [--json OUT]
  python -m training tune --data DIR --out params.json [--trials 30] [--timeout 900]
  python -m training train --data DIR --out MODELS_DIR --params params.json
"""

from __future__ import annotations

import argparse
import importlib
import sys

from training.dataset import DatasetError

# command -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS = {
    "generate": ("training.generate", "write a synthetic social-commerce dataset directory"),
    "train": ("training.train_command", "train embeddings and index, evaluate, publish a model version"),
    "evaluate": ("training.evaluate_command", "evaluate the served feed and baselines on a held-out split"),
    "tune": ("training.tune", "choose hyperparameters, pool sizes and sources on a validation split"),
    "lastfm": ("training.lastfm", "convert the HetRec 2011 Last.fm 2K dataset into a dataset directory"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers: dict[str, argparse.ArgumentParser] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:  # optional commands whose module is absent
            if error.name != module_name:
                raise
            continue
        if not hasattr(module, "add_arguments"):
            continue
        sub = commands.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
        subparsers[name] = sub
    return parser, subparsers


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "params", None):
            # The file's values become defaults: parse again so explicit flags still win.
            from training.arguments import params_file_defaults

            subparsers[args.command].set_defaults(**params_file_defaults(args.params))
            args = parser.parse_args(argv)
        args.run(args)
    except (DatasetError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
