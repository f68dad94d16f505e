"""``python -m serving``: run the feed server, or one of its tools.

  python -m serving [serve] --models DIR (--data DIR | --store URL) [--port P]
  python -m serving feed --target HOST:PORT --user USER [--limit N] [--pages N]
  python -m serving demo [--workdir DIR]
  python -m serving load --data DIR --redis URL
  python -m serving repack --redis URL
  python -m serving export --redis URL --out DIR [--since STREAM_ID]
  python -m serving versions (--models DIR | --config FILE) [--arms FILE ...]
  python -m serving retire (--models DIR | --config FILE) [--keep 5] [--arms FILE ...] [--dry-run] [VERSION ...]

Progress bars are drawn only when stderr is a terminal (serve, load, repack and export
also take --no-progress).
"""

from __future__ import annotations

import os
import signal
import sys

from training.interrupts import exit_as_closed_pipe, exit_while_importing, stdout_reader_gone, take_ctrl_c_back

# A Ctrl-C while the imports run (these below, then the command's module) ends the
# command as one after them does; main() takes Ctrl-C back once they are done.
if __name__ == "__main__":  # run, not imported: the importer's signals are its own
    signal.signal(signal.SIGINT, exit_while_importing)

import argparse  # noqa: E402
import difflib  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import tomllib  # noqa: E402
from typing import NoReturn  # noqa: E402

# Before grpc is imported: gRPC core writes its INFO lines (one per failed TLS handshake,
# such as a plaintext client's) raw to stderr, outside --log-format; its errors still show.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from serving import logs  # noqa: E402
from serving.config import (  # noqa: E402
    CONFIG_ENV,
    FLAGS_BY_DEST,
    ConfigError,
    HelpFormatter,
    add_server_arguments,
    resolve_config,
)
from training.__main__ import progress_bars  # noqa: E402
from training.dataset import load_defaults  # noqa: E402

TOOLS = {
    "feed": "serving.client:main",
    "demo": "serving.demo:main",
    "load": "serving.load:main",
    "repack": "serving.repack:main",
    "export": "serving.export:main",
    "versions": "serving.versions:versions_main",
    "retire": "serving.versions:retire_main",
}
"""Each command but serve, as MODULE:FUNCTION, imported only when it runs."""
COMMANDS = ("serve", *TOOLS)
log = logging.getLogger("feedrank.serving")


def _serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve personalised feeds over gRPC (feedrank.feed.v1.FeedService), with health "
        "checking and reflection. Other commands: " + ", ".join(COMMANDS[1:]) + " (see `python -m serving CMD --help`).",
        formatter_class=HelpFormatter,
    )
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
    except ConfigError as error:
        _refuse_start(parser, args, str(error))
    if config.store_url == "memory" and not config.data_dir:
        _refuse_start(parser, args, "--data is required with the memory store (or pass --store redis://...)")
    if config.feed.max_per_seller < 1:
        _refuse_start(parser, args, "--max-per-seller must be >= 1")
    if config.feed.max_per_category < 0:
        _refuse_start(parser, args, "--max-per-category must be >= 0 (0: no category cap)")
    if config.arms_file:
        from serving.arms import check_versions, load_arms

        try:  # fail before any worker forks; the server checks again when it loads the models
            check_versions(load_arms(config.arms_file, config.feed), config.models_dir)
        except (OSError, ValueError) as error:
            from serving.server import start_error  # an OSError as "PATH: reason", as every other start error

            _refuse_start(parser, args, f"--arms: {start_error(error)}")
    from serving.feed_processes import FeedProcessError
    from serving.server import serve, start_error

    take_ctrl_c_back()

    try:
        with progress_bars(sys.stderr.isatty() and config.progress), \
                load_defaults("drop" if config.drop_unknown_items else "error", warn=log.warning):
            serve(config, port_file=args.port_file)
    except (OSError, ValueError, FeedProcessError) as error:  # DatasetError is a ValueError; BindError an OSError
        message = start_error(error)
        if config.log_format == "json":  # a log shipper reading JSON lines gets this one as JSON too
            logging.getLogger("feedrank.serving").critical("error: %s", message)
            sys.exit(1)
        sys.exit(f"error: {message}")


def _refuse_start(parser: argparse.ArgumentParser, args: argparse.Namespace, message: str) -> NoReturn:
    """A setting that stops the start: argparse's usage and error line, or, when the logs are
    JSON, one JSON line as every other error that stops the start (a log shipper parsing
    JSON lines dropped the usage text, and with it the reason). Exit status 2 either way."""
    if _json_logs(args):
        logs.configure("json")
        logging.getLogger("feedrank.serving").critical("error: %s", message)
        sys.exit(2)
    parser.error(message)


def _json_logs(args: argparse.Namespace) -> bool:
    """Whether --log-format (the flag, its variable or the config file's key, even when another
    of the file's keys is what was refused) asks for JSON; a file that does not parse cannot tell."""
    given = getattr(args, "log_format", None) or os.environ.get(FLAGS_BY_DEST["log_format"].env, "").strip()
    if given:
        return given == "json"
    config_path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV)
    if not config_path:
        return False
    try:
        with open(config_path, "rb") as f:
            return tomllib.load(f).get("log_format") == "json"
    except (OSError, tomllib.TOMLDecodeError):
        return False


def unknown_command(word: str) -> str:
    """The error line for ``python -m serving WORD`` when WORD is neither a command nor a flag."""
    close = difflib.get_close_matches(word, COMMANDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (f"python -m serving: error: unknown command {word!r} (commands: {', '.join(COMMANDS)}; "
            f"flags alone run serve){hint}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        print(f"usage: python -m serving [{'|'.join(COMMANDS)}] ...", file=sys.stderr)
        print(unknown_command(argv[0]), file=sys.stderr)
        sys.exit(2)
    command = argv[0] if argv and argv[0] in COMMANDS else "serve"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    with progress_bars(sys.stderr.isatty()):
        if command == "serve":
            _serve(rest)
        else:
            module_name, function = TOOLS[command].split(":")
            run = getattr(importlib.import_module(module_name), function)
            take_ctrl_c_back()
            try:
                run(rest)
            except OSError as error:  # a directory that cannot be listed, a file not ours to read, EIO, a full disk
                if isinstance(error, BrokenPipeError) and stdout_reader_gone():
                    raise  # not a failure: whoever read the output has what they wanted
                from serving.server import start_error  # serve's one line; imported only on the way out

                sys.exit(f"error: {start_error(error)}")

if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        exit_as_closed_pipe()
    except KeyboardInterrupt:  # before a command took Ctrl-C over: one line, the shell's status
        print("interrupted", file=sys.stderr)
        sys.exit(130)
