"""The short soak: a real server on Redis under mixed GetFeed and Ingest, Redis restarted
halfway (benchmarks/soak.py; the 10-minute run is in benchmarks/README.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks import soak
from tests.redis_servers import require_redis
from tests.processes import alive, running_tool


@pytest.mark.redis
def test_a_redis_restart_under_load_loses_no_acknowledged_event_and_recovers(tmp_path, capsys):
    require_redis()
    report = soak.main(["--seconds", "16", "--outage-seconds", "2", "--users", "600", "--items", "1500", "--json", str(tmp_path / "soak.json")])
    # stdout is the summary, JSON alone (`| jq`): the model's path, which training prints, led it
    assert json.loads(capsys.readouterr().out, parse_constant=refuse_constant) == soak.summary(report)
    answers = report["answers"]
    assert set(answers) <= {"GetFeed OK", "Ingest OK", "GetFeed UNAVAILABLE", "Ingest UNAVAILABLE"}, report["first_error_messages"]
    assert answers.get("GetFeed UNAVAILABLE", 0) + answers.get("Ingest UNAVAILABLE", 0) > 0, "the outage was not seen"
    assert answers["GetFeed OK"] > 50 and answers["Ingest OK"] > 20
    assert report["recovery_seconds"] is not None and report["recovery_seconds"] < 10
    assert report["acked_events"] > 0 and report["acked_events_missing"] == 0
    rss = report["rss_mb"]
    assert rss["max"] < rss["first"] + 200, rss
    saved = json.loads((tmp_path / "soak.json").read_text(), parse_constant=refuse_constant)
    assert len(saved["rss_mb"]["samples"]) >= 10


def refuse_constant(constant: str):
    raise ValueError(f"{constant} is not JSON")


def test_acknowledged_likes_missing_after_the_soak_fail_its_exit_status(tmp_path, capsys, monkeypatch):
    # The soak's one hard target is no acknowledged like lost; it printed the count and
    # exited 0 all the same, so a script or CI running it saw a pass.
    require_redis()
    measured = {"seconds": 1, "answers": {}, "first_error_messages": {}, "recovery_seconds": None, "errors_after_recovery": {},
                "rss_mb": soak.rss_summary([]), "acked_events": 40, "acked_events_missing": 3}
    monkeypatch.setattr(soak, "soak", lambda *args: measured)  # what a soak that lost 3 likes measures
    with pytest.raises(SystemExit) as stopped:
        soak.main(["--seconds", "1", "--users", "100", "--items", "300", "--json", str(tmp_path / "soak.json")])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "python -m benchmarks.soak: 3 of 40 acknowledged likes are missing from Redis (target 0)"
    assert json.loads((tmp_path / "soak.json").read_text())["acked_events_missing"] == 3, "the report is written first"


def test_the_memory_of_the_servers_children_counts_too():
    # A child that holds 100 MB, as a feed process holds the Redis read cache.
    child = subprocess.Popen([sys.executable, "-c", "import sys; block = bytearray(100 * 2**20); sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        parent = soak.rss_mb(os.getpid())
        for _ in range(100):  # until the child has touched its block
            if soak.tree_rss_mb(os.getpid()) >= parent + 90:
                break
            time.sleep(0.05)
        assert soak.tree_rss_mb(os.getpid()) >= parent + 90
    finally:
        child.stdin.close()
        child.wait()
    assert soak.tree_rss_mb(999_999_999) != soak.tree_rss_mb(999_999_999), "no such process: NaN"


def test_the_rss_summary_is_json_with_null_where_nothing_was_measured():
    one = soak.rss_summary([(0.0, 120.0)])
    assert one["second_half_slope_mb_per_min"] is None  # under 3 samples in the second half
    json.loads(json.dumps(one, allow_nan=False), parse_constant=refuse_constant)

    samples = [(float(t), 100.0 + t / 60) for t in range(600)]
    report = {"seconds": 600, "rss_mb": soak.rss_summary(samples)}
    assert report["rss_mb"]["second_half_slope_mb_per_min"] == pytest.approx(1.0)
    printed = soak.summary(report)
    assert "samples" not in printed["rss_mb"] and printed["rss_mb"]["sample_count"] == 600
    assert len(report["rss_mb"]["samples"]) == 600, "the report keeps them, for --json"


@pytest.mark.redis
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_soak_stops_its_server_and_redis_and_ends_in_one_line(tmp_path, signum):
    # Ctrl-C left the load threads calling a stopped server forever; SIGTERM left the server and redis-server running.
    require_redis()
    with running_tool("benchmarks.soak", ["--seconds", "300", "--users", "300", "--items", "800"], tmp_path) as soaking:
        soaking.wait(lambda: soaking.wrote("soak-*/server.port"))
        time.sleep(1.0)  # the load threads are calling
        children = soaking.direct_children()
        assert len(children) == 2, "the server and redis-server"
        soaking.process.send_signal(signum)
        out, err = soaking.finish()
    assert soaking.process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "python -m benchmarks.soak: interrupted; no report" and "Traceback" not in err
    assert not [pid for pid in children if alive(pid)], "the server or redis-server outlived the soak"
