"""The command lines, run as a user would: subprocesses, real files, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.conftest import REPO


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300, check=check)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data, models = root / "data", root / "models"
    run("-m", "training", "generate", "--out", str(data), "--users", "300", "--sellers", "30", "--items", "900", "--seed", "5")
    result = run("-m", "training", "train", "--data", str(data), "--out", str(models), "--factors", "16", "--iterations", "5")
    assert (models / "CURRENT").exists(), result.stdout + result.stderr
    assert "popularity" in result.stdout and "ndcg@10" in result.stdout  # the evaluation table
    return data, models


def test_generate_is_byte_identical_for_a_seed(tmp_path):
    for name in ("a", "b"):
        run("-m", "training", "generate", "--out", str(tmp_path / name), "--users", "200", "--sellers", "20", "--items", "500", "--seed", "11")
    for file in ("items.csv", "likes.csv", "follows.csv", "friends.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_train_prints_the_evaluation_table_and_publishes(trained):
    _, models = trained
    version = (models / "CURRENT").read_text().strip()
    assert (models / version / "manifest.json").exists()


def test_a_bad_dataset_row_fails_with_file_line_and_column(tmp_path, trained):
    data, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    for file in ("items.csv", "follows.csv", "friends.csv"):
        (bad / file).write_bytes((data / file).read_bytes())
    lines = (data / "likes.csv").read_text().splitlines()
    user, item, _ = lines[2].split(",")
    lines[2] = f"{user},{item},yesterday"
    (bad / "likes.csv").write_text("\n".join(lines) + "\n")
    result = run("-m", "training", "train", "--data", str(bad), "--out", str(tmp_path / "m"), check=False)
    assert result.returncode != 0
    assert "likes.csv:3: column 'ts'" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_serves_then_exits_cleanly_on_sigterm(trained, tmp_path):
    data, models = trained
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "serving", "--data", str(data), "--models", str(models), "--port", "0", "--port-file", str(port_file)],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.poll() is not None else "timeout"
            time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            items = feed_pb2_grpc.FeedServiceStub(channel).GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=10).items
        assert len(items) == 5
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_help_explains_every_command():
    for argv in (["-m", "training", "--help"], ["-m", "training", "generate", "--help"], ["-m", "training", "train", "--help"], ["-m", "serving", "--help"], ["-m", "serving", "feed", "--help"]):
        result = run(*argv)
        assert "usage:" in result.stdout
