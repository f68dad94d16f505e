"""bench_redis_cost, run briefly against a real Redis loaded with a small world."""

from __future__ import annotations

import re
import socket

import pytest

from benchmarks import bench_redis_cost
from serving.load import load_into_redis
from stores.redis import connect
from tests.feed_world import build_world

pytestmark = pytest.mark.redis


def test_it_reports_client_and_redis_costs_per_feed(redis_url, tmp_path, capsys):
    world = build_world(tmp_path, users=200, sellers=20, items=600)
    client = connect(redis_url)
    load_into_redis(client, world.dataset)
    client.close()

    bench_redis_cost.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--redis", redis_url,
                           "--requests", "30", "--warmup", "5"])  # fmt: skip

    line = capsys.readouterr().out.strip()
    figures = re.fullmatch(
        r"per feed over 30 feeds: client wall ([\d.]+) ms, client CPU ([\d.]+) ms, Redis CPU ([\d.]+) ms, Redis scripts ([\d.]+) ms", line
    )
    assert figures, line
    wall, _, _, scripts = (float(f) for f in figures.groups())
    assert 0 < scripts <= wall  # every feed ran its scripts on this Redis, within the feed's own time


def test_an_unreachable_redis_is_one_line_not_a_traceback(tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SystemExit) as exited:
        bench_redis_cost.main(["--data", str(tmp_path), "--models", str(tmp_path), "--redis", f"redis://127.0.0.1:{port}/0"])
    assert "Redis unreachable" in str(exited.value), exited.value


@pytest.mark.parametrize("flag", ["--data", "--models"])
def test_a_wrong_data_or_models_directory_is_one_line_not_a_traceback(redis_url, tmp_path, capsys, flag):
    world = build_world(tmp_path, users=200, sellers=20, items=600)
    flags = {"--data": str(world.data_dir), "--models": str(world.models_dir), "--redis": redis_url, flag: str(tmp_path / "nowhere")}
    with pytest.raises(SystemExit) as exited:
        bench_redis_cost.main([text for pair in flags.items() for text in pair])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"python -m benchmarks.bench_redis_cost: error: {flag} {tmp_path}/nowhere: ")


def test_a_redis_without_the_dataset_is_refused_before_the_figures(redis_url, tmp_path, capsys):
    # An empty Redis gave every user an empty feed, and the figures of those (0.9 ms against 1.6 ms) without a word.
    world = build_world(tmp_path, users=200, sellers=20, items=600)
    with pytest.raises(SystemExit) as exited:
        bench_redis_cost.main(["--data", str(world.data_dir), "--models", str(world.models_dir), "--redis", redis_url,
                               "--requests", "30", "--warmup", "5"])  # fmt: skip
    assert "the first 20 feeds came back empty" in str(exited.value) and "python -m serving load" in str(exited.value)
    assert "per feed over" not in capsys.readouterr().out
