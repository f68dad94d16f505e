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
    # The "store" is this process, where the load generator runs: the plumbing is what is checked.
    status = compare_servers.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--rounds", "2",
                                   "--burst", "0.3", "--concurrency", "2", "--store-pid", str(os.getpid()),
                                   ROOT, f"{ROOT}:--neighbours 40"])  # fmt: skip

    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0 and len(lines) == 6, lines
    for line in lines[:2]:
        figures = re.fullmatch(r".+: GetFeed (\d+)/s, empty (\d+)/s, GetFeed / empty per round: median ([\d.]+); "
                               r"server CPU per call: GetFeed ([\d.]+) ms, empty ([\d.]+) ms; store CPU per GetFeed ([\d.]+) ms", line)  # fmt: skip
        assert figures and all(float(f) > 0 for f in figures.groups()), line
        feed_cpu, empty_cpu = (float(f) for f in figures.groups()[3:5])
        assert feed_cpu > empty_cpu, line  # a feed is more work than a health check
    for line, what in zip(lines[2:5], ("GetFeed ", "server CPU per GetFeed ", "server and store CPU per GetFeed ")):
        ratio = re.fullmatch(rf".+ / .+: {what}per-round ratio median ([\d.]+), p10 ([\d.]+), p90 ([\d.]+)", line)
        assert ratio, line
        median, p10, p90 = (float(v) for v in ratio.groups())
        assert 0 < p10 <= median <= p90
    assert lines[5] == "failed calls: 0"


def test_it_names_a_directory_that_is_not_a_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_servers.main(["--data", str(tmp_path), "--models", str(tmp_path), ROOT, str(tmp_path)])
    assert f"{tmp_path}: not a feedrank checkout" in capsys.readouterr().err
