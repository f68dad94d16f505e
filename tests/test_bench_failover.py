"""bench_failover's report: its answers per second around the kill."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_failover
from tests.redis_servers import require_redis


def test_each_second_after_the_kill_holds_only_its_own_answers():
    killed_at = 5000.25  # time.monotonic() of the kill
    outcomes = [(killed_at + offset, kind, outcome) for offset, kind, outcome in [
        (-1.5, "Ingest", "ok"),  # two seconds before: not reported
        (-0.9, "Ingest", "ok"), (-0.4, "GetFeed", "ok"), (-0.1, "Ingest", "ok"),  # the second before the kill
        (0.0, "GetFeed", "UNAVAILABLE"), (0.3, "Ingest", "UNAVAILABLE"), (0.99, "GetFeed", "UNAVAILABLE"),
        (1.0, "GetFeed", "ok"), (1.6, "Ingest", "ok"),
    ]]  # fmt: skip

    assert bench_failover.per_second(outcomes, killed_at) == {
        "-1": {"Ingest ok": 2, "GetFeed ok": 1},
        "0": {"GetFeed UNAVAILABLE": 2, "Ingest UNAVAILABLE": 1},
        "1": {"GetFeed ok": 1, "Ingest ok": 1},
    }


@pytest.mark.redis
def test_stdout_is_the_reports_json_alone(capsys):
    require_redis()
    report = bench_failover.main(["--users", "300", "--items", "600", "--readers", "1", "--writers", "1",
                                  "--seconds-before", "1", "--seconds-after", "4", "--node-timeout-ms", "500"])  # fmt: skip
    # `| jq`: the model's path, which training prints, led the JSON
    assert json.loads(capsys.readouterr().out) == report
    assert report["outcomes"]["GetFeed ok"] > 0 and report["acked_events"] > 0


@pytest.mark.redis
def test_a_failover_still_under_way_when_the_load_stops_is_waited_for_before_the_count():
    # --seconds-after 1 ends the load before the cluster noticed the kill (--node-timeout-ms 2000): counting the
    # acknowledged follows then met the dead primary's slots, a ConnectionError traceback and no report at all.
    require_redis()
    report = bench_failover.main(["--users", "300", "--items", "600", "--readers", "1", "--writers", "1",
                                  "--seconds-before", "1", "--seconds-after", "1", "--node-timeout-ms", "2000"])  # fmt: skip
    assert report["acked_events"] > 0 and report["acked_events_missing"] == 0
