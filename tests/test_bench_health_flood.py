"""bench_health_flood as it is run: its world is built in a temporary directory it removes."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def test_a_run_leaves_no_files_behind(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_health_flood", "--floods", "1", "--threads", "0"],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)},
                          timeout=300, check=False)  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "threads 0, switch interval 1 ms:" in done.stdout and "GetFeeds refused" in done.stdout
    assert list(tmp_path.iterdir()) == []  # the world's dataset and model (12 MB) were left in bench-health-*
