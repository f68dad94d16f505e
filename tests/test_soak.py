"""The short soak: a real server on Redis under mixed GetFeed and Ingest, Redis restarted
halfway (benchmarks/soak.py; the 10-minute run is in benchmarks/README.md)."""

from __future__ import annotations

import pytest

from benchmarks import soak
from tests.redis_servers import require_redis

pytestmark = pytest.mark.redis


def test_a_redis_restart_under_load_loses_no_acknowledged_event_and_recovers(tmp_path):
    require_redis()
    report = soak.main(["--seconds", "16", "--outage-seconds", "2", "--users", "600", "--items", "1500", "--json", str(tmp_path / "soak.json")])
    answers = report["answers"]
    assert set(answers) <= {"GetFeed OK", "Ingest OK", "GetFeed UNAVAILABLE", "Ingest UNAVAILABLE"}, report["first_error_messages"]
    assert answers.get("GetFeed UNAVAILABLE", 0) + answers.get("Ingest UNAVAILABLE", 0) > 0, "the outage was not seen"
    assert answers["GetFeed OK"] > 50 and answers["Ingest OK"] > 20
    assert report["recovery_seconds"] is not None and report["recovery_seconds"] < 10
    assert report["acked_events"] > 0 and report["acked_events_missing"] == 0
    rss = report["rss_mb"]
    assert rss["max"] < rss["first"] + 200, rss
