"""A command whose reader went away (``python -m serving versions … | head -1``) stops
quietly, with the status a process killed by SIGPIPE gives, as ``cat | head`` does; a
broken pipe that is not stdout's is still an error."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

CLOSED_STDOUT_STATUS = 141  # 128 + SIGPIPE


def run_with_stdout_closed(*argv: str) -> subprocess.CompletedProcess:
    """The command with a stdout whose reading end is closed before it starts: its first
    write to stdout fails, as a write after ``head`` exited does."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", *argv], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              cwd=REPO, timeout=300)
    finally:
        os.close(write_end)


def test_a_training_command_stops_quietly_when_its_reader_is_gone(tmp_path):
    result = run_with_stdout_closed("training", "generate", "--out", str(tmp_path / "data"), "--users", "20",
                                    "--sellers", "3", "--items", "30", "--seed", "1", "--no-progress")
    assert (result.returncode, result.stderr) == (CLOSED_STDOUT_STATUS, "")


def test_a_serving_tool_stops_quietly_when_its_reader_is_gone(tmp_path):
    (tmp_path / "models").mkdir()
    result = run_with_stdout_closed("serving", "versions", "--models", str(tmp_path / "models"))
    assert (result.returncode, result.stderr) == (CLOSED_STDOUT_STATUS, "")


def test_only_a_stdout_whose_reader_is_gone_counts_as_closed():
    """What tells a closed stdout from a broken pipe elsewhere (a socket to Redis, a feed
    process), which stays an error."""
    probe = "import sys; from training.interrupts import stdout_reader_gone; print(stdout_reader_gone(), file=sys.stderr)"
    closed = run_with_stdout_closed_code(probe)
    still_read = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO, timeout=60)
    assert (closed.stderr.strip(), still_read.stderr.strip()) == ("True", "False")


def run_with_stdout_closed_code(code: str) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-c", code], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              cwd=REPO, timeout=60)
    finally:
        os.close(write_end)
