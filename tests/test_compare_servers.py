"""benchmarks.compare_servers, run briefly: two servers from this checkout, driven in turns."""

from __future__ import annotations

import os
import re

import pytest

from benchmarks import compare_servers
from tests.feed_world import build_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_it_reports_each_server_and_the_ratio_to_the_first(tmp_path, capsys):
    world = build_world(tmp_path, users=200, sellers=20, items=600)
    status = compare_servers.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "2",
                                   "--burst", "0.3", "--concurrency", "2", ROOT, f"{ROOT}:--neighbours 40"])  # fmt: skip

    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0 and len(lines) == 4, lines
    for line in lines[:2]:
        figures = re.fullmatch(r".+: GetFeed (\d+)/s, empty (\d+)/s, GetFeed / empty per round: median ([\d.]+)", line)
        assert figures and all(float(f) > 0 for f in figures.groups()), line
    ratio = re.fullmatch(r".+ / .+: GetFeed per-round ratio median ([\d.]+), p10 ([\d.]+), p90 ([\d.]+)", lines[2])
    assert ratio, lines[2]
    median, p10, p90 = (float(v) for v in ratio.groups())
    assert 0 < p10 <= median <= p90
    assert lines[3] == "failed calls: 0"


def test_it_names_a_directory_that_is_not_a_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_servers.main(["--data", str(tmp_path), "--models", str(tmp_path), ROOT, str(tmp_path)])
    assert f"{tmp_path}: not a feedrank checkout" in capsys.readouterr().err
