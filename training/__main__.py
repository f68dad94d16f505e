"""``python -m training``: generate data, train and evaluate models.

  python -m training generate --out DIR --users N --sellers N --items N --seed S
  python -m training train --data DIR --out MODELS_DIR
  python -m training evaluate --data DIR [--split ...] [--k 10,20] [--json OUT]
  python -m training tune --data DIR --out params.json [--trials 30] [--timeout 900]
  python -m training train --data DIR --out MODELS_DIR --params params.json
  python -m training lastfm --src LASTFM_2K_DIR --out DIR [--binary] [--temporal | --published-split DIR]

Every command takes --no-progress (progress bars are off anyway when stderr is not a
terminal); train, evaluate and tune take --drop-unknown-items.
"""

from __future__ import annotations

import signal
import sys

from training.interrupts import exit_as_closed_pipe, exit_while_importing, is_interrupt, stdout_reader_gone, take_ctrl_c_back

# A Ctrl-C while the imports run (these below, then the command's module) ends the
# command as one after them does; run_command takes Ctrl-C back once they are done.
if __name__ == "__main__":  # run, not imported: the importer's signals are its own
    signal.signal(signal.SIGINT, exit_while_importing)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from training.dataset import DatasetError, load_defaults  # noqa: E402

# command -> (module with add_arguments(parser) and run(args), one-line help)
COMMANDS = {
    "generate": ("training.generate", "write a synthetic social-commerce dataset directory"),
    "train": ("training.train_command", "train embeddings and index, evaluate, publish a model version"),
    "evaluate": ("training.evaluate_command", "evaluate the served feed and baselines on a held-out split"),
    "tune": ("training.tune", "choose hyperparameters, pool sizes and sources on a validation split"),
    "lastfm": ("training.lastfm", "convert the HetRec 2011 Last.fm 2K dataset into a dataset directory"),
}
# Commands that read a dataset directory (--data).
DATA_COMMANDS = ("train", "evaluate", "tune")


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Progress bars only if ``enabled``: otherwise every tqdm bar drawn inside (ours, the
    trainer's, implicit's) is disabled, whatever its caller asked. Restored on exit.

    Command lines pass ``sys.stderr.isatty() and not args.no_progress``: a bar redrawn
    with carriage returns is noise in a log file.
    """
    if enabled:
        yield
        return
    from tqdm import std

    draw = std.tqdm.__init__

    def quiet(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs["disable"] = True
        draw(self, *args, **kwargs)

    std.tqdm.__init__ = quiet  # type: ignore[method-assign]
    try:
        yield
    finally:
        std.tqdm.__init__ = draw  # type: ignore[method-assign]


def print_warning(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def add_drop_unknown_items_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--drop-unknown-items", action="store_true",
                        help="drop the likes and engagements of items missing from items.csv, with a warning "
                             "that counts them (default: such a row is an error)")


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
        if name in DATA_COMMANDS:
            add_drop_unknown_items_argument(sub)
        sub.set_defaults(run=module.run)
        subparsers[name] = sub
    return parser, subparsers


def main(argv: list[str] | None = None) -> None:
    try:
        run_command(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        exit_as_closed_pipe()
    except (KeyboardInterrupt, SystemError) as error:
        if not is_interrupt(error):
            raise
        # Ctrl-C is the user's choice, not a failure to debug: one line, and the shell's
        # status for a SIGINT (128 + 2).
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def run_command(argv: list[str]) -> None:
    parser, subparsers = build_parser()
    take_ctrl_c_back()
    args = parser.parse_args(argv)
    if getattr(args, "params", None):
        args = parse_with_params_file(parser, subparsers[args.command], argv, args.params)
    try:
        on_unknown_item = "drop" if getattr(args, "drop_unknown_items", False) else "error"
        with progress_bars(sys.stderr.isatty() and not getattr(args, "no_progress", False)), \
                load_defaults(on_unknown_item, warn=print_warning):
            args.run(args)
    except (DatasetError, OSError, ValueError) as error:  # OSError: a file missing, a disk full, a write refused
        if isinstance(error, BrokenPipeError) and stdout_reader_gone():
            raise  # not a failure: main() stops quietly, whoever read the output has what they wanted
        sys.exit(f"error: {error}")


def parse_with_params_file(
    parser: argparse.ArgumentParser, command: argparse.ArgumentParser, argv: list[str], path: str
) -> argparse.Namespace:
    """``argv`` parsed again with the values of the ``--params`` file as the command's defaults,
    so that a flag on the command line still wins; a bad file is a usage error of ``command``."""
    from training.arguments import params_file_defaults

    try:
        command.set_defaults(**params_file_defaults(path))
    except ValueError as error:
        command.error(str(error))
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
