"""bench_drain as it is run: one stop under traffic, its row of counts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.feed_world import build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("drain-world"), users=120, sellers=12, items=300)


def test_one_stop_is_one_row_whose_server_exited_cleanly_well_within_the_grace(world):
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_drain", "--data", str(world.data_dir), "--models",
                           str(world.models_dir), "--runs", "1", "--callers", "2", "--warmup", "1", "--", "--feed-processes", "0"],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)  # fmt: skip

    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split()[:3] == ["run", "exit", "s"]
    run, exit_seconds, returncode, ok, refused, no_server, cancelled, other = row.split()
    assert run == "1" and returncode == "0" and float(exit_seconds) < 2.5
    assert int(ok) + int(refused) + int(no_server) > 0 and other == "0"


@pytest.mark.parametrize("where, says", [
    ({"--data": "missing"}, "--data {missing}: no such directory"),
    ({"--models": "missing"}, "--models {missing}: no published model"),
])  # fmt: skip
def test_a_wrong_directory_is_one_line_naming_its_flag_before_any_server_starts(world, tmp_path, capsys, where, says):
    from benchmarks import bench_drain

    missing = str(tmp_path / "missing")
    flags = {"--data": str(world.data_dir), "--models": str(world.models_dir), **{flag: missing for flag in where}}
    with pytest.raises(SystemExit) as exit:
        bench_drain.main([word for pair in flags.items() for word in pair])
    assert exit.value.code == 2 and says.format(missing=missing) in capsys.readouterr().err
