"""Every benchmark with a ``main`` names itself as it is run, ``python -m benchmarks.NAME``,
in its usage line (argparse's default is the file name, ``bench_lastfm.py``, which does
not run)."""

from __future__ import annotations

import ast
import importlib
import sys

import pytest

from tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def modules_with_main() -> list[str]:
    return sorted(
        path.stem for path in BENCHMARKS.glob("*.py")
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in ast.parse(path.read_text()).body)
    )


def test_the_benchmarks_with_a_main_are_found():
    assert {"bench_lastfm", "bench_feed_ipc", "bench_store_copy", "loadgen"} <= set(modules_with_main())


@pytest.mark.parametrize("name", modules_with_main())
def test_the_usage_line_names_the_module_as_it_is_run(name, monkeypatch, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / f"{name}.py"), "--help"])  # as `python -m` sets it
    with pytest.raises(SystemExit) as exit:
        module.main()
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks.{name} ")
