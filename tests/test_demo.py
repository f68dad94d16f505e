"""The README's first command, `make demo`, runs `python -m serving demo`: data, training, a
server, a printed feed, and the events that must show up in the very next feed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_prints_a_feed_and_shows_each_event_in_the_next_one(tmp_path):
    workdir = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "serving", "demo", "--workdir", str(workdir), "--users", "400", "--sellers", "40", "--items", "1200"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    out = run.stdout
    assert run.returncode == 0, (out[-3000:], run.stderr[-3000:])
    assert out.count("-- page 1 --") == 2 and "-- page 2 --" in out
    ranks = {item: int(rank) for item, rank in re.findall(r"^(demo-[a-z-]+): at rank (\d+) of the very next feed$", out, re.M)}
    # A friend's like and share and a followed seller's new listing are news: the top 3.
    assert sorted(ranks) == ["demo-gift", "demo-new-listing", "demo-shared"] and max(ranks.values()) <= 3, out[-2000:]
    # Each is marked as news (FeedItem.news): they take the page's three places for news.
    after_ingest = out.split("==> Ingest:")[1]
    news = [line for line in after_ingest.splitlines() if re.match(r"\s*\d+\. ", line) and "score" in line and "  news" in line]
    assert sorted(line.split()[1] for line in news) == ["demo-gift", "demo-new-listing", "demo-shared"], after_ingest
    assert "demo-new-listing: gone from the feed while its seller is away" in out
    assert "Server stopped (exit code 0)" in out
    # The server's log went to its file, not between the printed feeds.
    assert "feedrank.access" not in out
    log = (workdir / "server.log").read_text()
    assert "GetFeed OK" in log and "Ingest OK" in log
