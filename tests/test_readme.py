"""Every command line the READMEs give is one the command parses as written.

Users copy these lines literally. Each `python -m ...` line of README.md's shell blocks
and of benchmarks/README.md's indented blocks goes through the command's own argparse
(its ``main``, stopped just after ``parse_args``), so a renamed or removed flag, a flag
given to the wrong command, or a choice that no longer exists fails here, naming the
README line. Nothing runs: no data, model or server is needed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Command:
    source: str  # README path and line, for the failure message
    module: str  # what `python -m` runs
    argv: tuple[str, ...]


# Placeholders of the benchmarks' commands that a flag's type refuses, and what stands in.
PLACEHOLDERS = {
    r"(?<!\S)\[[A-Z_]+\]": "",  # [CHANGE]: the knob each row of a table changed
    r"\$\([^)]*\)": "50051",  # --target 127.0.0.1:$(cat F)
    r"\bPID\d*\b": "4242",  # --store-pid PID
}


def _command(source: str, line: str) -> Command | None:
    line = re.sub(r"\s+#.*$", "", line.strip())  # a trailing comment
    for pattern, value in PLACEHOLDERS.items():
        line = re.sub(pattern, value, line)
    line = re.sub(r"(?<!\S)\[([^\]\s]+(?: [^\]\s]+)?)\]", r"\1", line)  # [--flag value]: an optional part, given
    line = re.sub(r"(?<!\S)(--[a-z-]+ \w+)\|\S+", r"\1", line)  # --fsync batch|off: the first choice
    if not line.startswith("python -m "):
        return None
    words = shlex.split(line)[2:]
    module = words[0]
    return Command(source, f"{module}.__main__" if module in ("training", "serving") else module, tuple(words[1:]))


def _lines(text: str) -> list[tuple[int, str]]:
    """(number, line) with backslash continuations joined, numbered by their first line."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
        pending = (number, line[:-1].rstrip()) if line.endswith("\\") else None
        if pending is None:
            out.append((number, line))
    return out


def readme_commands() -> list[Command]:
    """README.md: lines of ```sh blocks."""
    found, in_sh = [], False
    for number, line in _lines((ROOT / "README.md").read_text()):
        if line.startswith("```"):
            in_sh = line.strip() == "```sh"
            continue
        if in_sh and (command := _command(f"README.md:{number}", line)):
            found.append(command)
    return found


def benchmark_readme_commands() -> list[Command]:
    """benchmarks/README.md: the indented blocks' command lines (its reproduce commands)."""
    found = []
    for number, line in _lines((ROOT / "benchmarks" / "README.md").read_text()):
        if line.startswith("    python -m ") and (command := _command(f"benchmarks/README.md:{number}", line)):
            found.append(command)
    return found


def made_directories() -> list[str]:
    """The /tmp directories the READMEs' blocks make (`mkdir -p`) for the commands after them."""
    text = (ROOT / "README.md").read_text() + (ROOT / "benchmarks" / "README.md").read_text()
    return re.findall(r"^\s*mkdir -p (/tmp/\S+)\s*$", text, re.MULTILINE)


class _Parsed(BaseException):  # BaseException: no command's `except Exception` takes it for its own
    pass


def parse(command: Command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``command`` through its module's ``main``, up to the end of its first ``parse_args``.

    Paths under /tmp move under ``tmp_path``, where the directories the READMEs make are
    made: a flag that checks its path (tune's --out wants its directory) sees what a user
    who ran the block's lines in order would have.
    """
    for directory in made_directories():
        (tmp_path / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    argv = [arg.replace("/tmp/", f"{tmp_path}/tmp/") for arg in command.argv]
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        real(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)  # serving's main would set up the root logger
    monkeypatch.setattr(sys, "argv", [command.module, *argv])
    main = importlib.import_module(command.module).main
    with pytest.raises(_Parsed):
        main(argv) if inspect.signature(main).parameters else main()


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c.source)
def test_readme_command_parses(command: Command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parse(command, monkeypatch, tmp_path)


@pytest.mark.parametrize("command", benchmark_readme_commands(), ids=lambda c: c.source)
def test_benchmark_readme_command_parses(command: Command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parse(command, monkeypatch, tmp_path)


def test_the_readmes_give_commands_to_check() -> None:
    # The extraction itself: a change of the READMEs' layout must not leave nothing checked.
    assert len(readme_commands()) >= 20
    assert len(benchmark_readme_commands()) >= 40
    assert {c.module for c in readme_commands()} >= {"training.__main__", "serving.__main__", "benchmarks.bench_lastfm"}


def readme_prose_flags() -> dict[str, str]:
    """The flags README.md's prose names in backticks (`--flag`, `--flag N`, an inline
    `python -m ...`), each with its first line; other programs' spans (`rsync --inplace`) aside."""
    found: dict[str, str] = {}
    for number, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        for span in re.findall(r"`([^`]+)`", line):
            if span.startswith(("--", "python -m ")):
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span):
                    found.setdefault(flag, f"README.md:{number}")
    return found


def command_flags(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """Every option string of the parsers that the commands README.md runs build for `--help`."""
    serving = importlib.import_module("serving.__main__")
    benchmarks = set(re.findall(r"python -m (benchmarks\.\w+)", (ROOT / "README.md").read_text()))
    runs = [("training.__main__", ["--help"])]
    runs += [("training.__main__", [command, "--help"]) for command in ("generate", "train", "evaluate", "tune", "lastfm")]
    runs += [("serving.__main__", [command, "--help"]) for command in serving.COMMANDS]
    runs += [(module, ["--help"]) for module in sorted(benchmarks)]
    parsers: list[argparse.ArgumentParser] = []
    real_init = argparse.ArgumentParser.__init__

    def init_and_keep(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_init(self, *args, **kwargs)
        parsers.append(self)

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", init_and_keep)
    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)
    for module, argv in runs:
        monkeypatch.setattr(sys, "argv", [module, *argv])
        main = importlib.import_module(module).main
        with pytest.raises(SystemExit):
            main(argv) if inspect.signature(main).parameters else main()
    capsys.readouterr()
    return {option for parser in parsers for option in parser._option_string_actions}


def test_every_flag_the_readme_names_is_a_commands_flag(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The shell blocks are parsed command by command above; the prose names many more flags
    # (defaults, knobs, what a message means), and a renamed flag leaves them stale.
    flags = command_flags(monkeypatch, capsys)
    unknown = {flag: where for flag, where in readme_prose_flags().items() if flag not in flags}
    assert not unknown, f"README.md names flags no command has: {unknown}"
