"""Every command line the READMEs give is one the command parses as written.

Users copy these lines literally. Each `python -m ...` line of README.md's shell blocks
and of benchmarks/README.md's indented and fenced blocks goes through the command's own
argparse (its ``main``, stopped just after ``parse_args``), so a renamed or removed flag, a
flag given to the wrong command, or a choice that no longer exists fails here, naming the
README line. The commands the two READMEs name anywhere else (backticked in prose and
tables, after `/usr/bin/time -v`, often with placeholders or `...`) must name a module
that `python -m` runs, a command it has and flags that command has; each `make TARGET`
they name must be a Makefile target. Nothing runs: no data, model or server is needed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
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


OTHERS_MODULES = {"pytest", "venv", "pip"}  # not this project's: their flags are their own


def runnable(module: str) -> bool:
    """Whether `python -m module` runs something: a package's __main__, or a module's
    ``if __name__ == "__main__"``."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return spec.origin is not None and re.search(r"""^if __name__ == ["']__main__["']""", Path(spec.origin).read_text(), re.MULTILINE) is not None


def main_of(module: str):  # type: ignore[no-untyped-def]
    """The ``main`` that `python -m module` runs, or None (no such module, or a script of its own)."""
    if not runnable(module):
        return None
    package = importlib.util.find_spec(module).submodule_search_locations is not None
    return getattr(importlib.import_module(f"{module}.__main__" if package else module), "main", None)


def _fenced_and_prose(text: str) -> tuple[list[tuple[int, str]], str]:
    """The code lines of ``text`` (fenced blocks of any language, and indented lines without a
    backtick), continuations joined, and the rest with those lines blanked (numbering kept)."""
    code: list[str] = []
    prose: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            prose.append("")
            code.append("")
            continue
        is_code = fenced or (line.startswith("    ") and "`" not in line and not line.lstrip().startswith(("- ", "* ", "|")))
        prose.append("" if is_code else line)
        code.append(line if is_code else "")
    return [(number, line) for number, line in _lines("\n".join(code)) if line], "\n".join(prose)


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
    """benchmarks/README.md: the command lines of its indented and fenced blocks (its
    reproduce commands), a timer's or a variable's prefix (`/usr/bin/time -v`) aside."""
    found = []
    code, _ = _fenced_and_prose((ROOT / "benchmarks" / "README.md").read_text())
    for number, line in code:
        line = re.sub(r"^\s*(?:[A-Z_]+=\S+\s+|/usr/bin/time -v\s+)*", "", line)
        command = _command(f"benchmarks/README.md:{number}", line)
        if command and command.module not in OTHERS_MODULES and main_of(command.module):
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
    assert {c.module for c in benchmark_readme_commands()} >= {"benchmarks.bench_snapshot", "benchmarks.bench_spark"}  # fenced blocks
    mentions = readme_mentions()
    assert len(mentions) >= 200 and {m.source.split(":")[0] for m in mentions} == set(READMES)
    assert any(m.module == "benchmarks.loadgen" and "--store-pid" in m.words for m in mentions)  # a span over lines


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


# --- every `python -m MODULE` either README names, in code or in prose -----------------------

READMES = ("README.md", "benchmarks/README.md")
# Where a command named in a line ends: a comment, the next command of a shell line, a subshell.
COMMAND_END = re.compile(r"\s(?:#|&&|\|\||;|\|(?=\s))|\)|;")


@dataclass(frozen=True)
class Mention:
    source: str  # README path and line
    module: str  # as written after `python -m`
    words: tuple[str, ...]  # what follows it on the command, as written (placeholders, `...` and all)


def _mentions_in(source: str, number: int, text: str) -> list[Mention]:
    found = []
    for match in re.finditer(r"\bpython -m\s+([\w.]+)", text):
        rest = text[match.end():]
        if end := COMMAND_END.search(rest):
            rest = rest[:end.start()]
        found.append(Mention(f"{source}:{number}", match.group(1), tuple(rest.split())))
    return found


def readme_mentions() -> list[Mention]:
    """Every `python -m MODULE ...` of README.md and benchmarks/README.md: code lines and
    backticked spans (a span may run over lines), numbered by the line it starts on."""
    found: list[Mention] = []
    for name in READMES:
        code, prose = _fenced_and_prose((ROOT / name).read_text())
        for number, line in code:
            found += _mentions_in(name, number, line)
        for span in re.finditer(r"`([^`]+)`", prose):
            number = prose.count("\n", 0, span.start()) + 1
            found += _mentions_in(name, number, " ".join(span.group(1).split()))
    return found


class _Built(BaseException):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def command_options(module: str, command: str | None, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The option strings `python -m module [command] ...` accepts: its ``main`` is run up to
    its first ``parse_args``, whose parser (and ``command``'s subparser, if it has them) is read."""
    argv = [command] if command else []

    def build_and_stop(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        raise _Built(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", build_and_stop)
        patch.setattr(logging, "basicConfig", lambda **_: None)
        patch.setattr(sys, "argv", [module, *argv])
        main = main_of(module)
        try:
            main(argv) if inspect.signature(main).parameters else main()
        except _Built as built:
            parser = built.parser
        except SystemExit:  # serving's main refuses a command it does not have
            return set()
        else:
            raise AssertionError(f"python -m {module} {command or ''}: no argparse parser")
    options = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if command not in action.choices:
                return set()
            options |= set(action.choices[command]._option_string_actions)
    return options


def test_every_module_the_readmes_run_exists_and_takes_the_flags_given(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The blocks' lines are parsed as written above; this covers every other place a README
    # names a command (prose, tables, a `make` line's comment), where placeholders and `...`
    # stand for values: a module renamed or removed (or one `python -m` cannot run), a command
    # or flag it no longer has, a flag given to the wrong command.
    options: dict[tuple[str, str | None], set[str]] = {}
    wrong: list[str] = []
    for mention in readme_mentions():
        if mention.module in OTHERS_MODULES:
            continue
        if not runnable(mention.module):
            wrong.append(f"{mention.source}: python -m {mention.module}: no such runnable module")
            continue
        first = mention.words[0] if mention.words else ""
        command = first if re.fullmatch(r"[a-z][a-z0-9-]*", first) else None
        flags = [word.split("=")[0] for word in mention.words if re.fullmatch(r"--?[a-zA-Z][\w-]*(=.*)?", word)]
        if not flags and command is None:
            continue
        if main_of(mention.module) is None:  # no parser to read: a script of its own
            wrong += [f"{mention.source}: python -m {mention.module}: no parser to check {flags}"] if flags else []
            continue
        key = (mention.module, command)
        if key not in options:
            options[key] = command_options(mention.module, command, monkeypatch)
        name = " ".join(["python -m", mention.module, *filter(None, [command])])
        if not options[key]:
            wrong.append(f"{mention.source}: {name}: no such command")
        wrong += [f"{mention.source}: {name}: no flag {flag}" for flag in flags if options[key] and flag not in options[key]]
        if mention.module == "benchmarks.compare_servers":  # CHECKOUT:SERVER FLAGS, `python -m serving`'s
            if ("serving", None) not in options:
                options["serving", None] = command_options("serving", None, monkeypatch)
            server_flags = [flag for word in mention.words if ":" in word
                            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", word.split(":", 1)[1])]
            wrong += [f"{mention.source}: python -m {mention.module}: a server given {flag}, which python -m serving has not"
                      for flag in server_flags if flag not in options["serving", None]]
    capsys.readouterr()
    assert not wrong, "\n".join(wrong)


def readme_make_commands() -> list[tuple[str, list[str]]]:
    """Every `make ...` of README.md and benchmarks/README.md (code lines and backticked
    spans), with its words: targets and VARIABLE=value settings."""
    found: list[tuple[str, list[str]]] = []
    for name in READMES:
        code, prose = _fenced_and_prose((ROOT / name).read_text())
        places = [(number, re.sub(r"\s#.*$", "", line)) for number, line in code]
        places += [(prose.count("\n", 0, span.start()) + 1, span.group(1)) for span in re.finditer(r"`([^`]+)`", prose)]
        for number, text in places:
            for command in re.findall(r"(?:^|&&|;)\s*make((?:\s+[\w.=-]+)*)", text.strip()):
                found.append((f"{name}:{number}", command.split()))
    return found


def test_every_make_target_the_readmes_name_is_in_the_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", makefile, re.MULTILINE))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", makefile, re.MULTILINE))
    commands = readme_make_commands()
    assert {"demo", "test"} <= {word for _, words in commands for word in words}  # the extraction found them
    wrong = [f"{where}: make {' '.join(words)}: {word} is not a Makefile {'variable' if '=' in word else 'target'}"
             for where, words in commands for word in words
             if (word.split("=")[0] not in variables if "=" in word else word not in targets)]
    assert not wrong, "\n".join(wrong)
