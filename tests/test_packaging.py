"""A wheel built as a user builds it (``pip wheel .``) carries every file the server reads
besides code: the explorer's templates and static files, and the protos."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_explorer_assets_and_the_protos_without_setuptools_warnings(tmp_path):
    source = tmp_path / "source"
    # A copy of the tracked files only, so the build sees what a clean clone holds.
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    # setuptools warns of a data folder that is no declared package: a later setuptools may leave it out.
    assert "would be ignored" not in build.stderr, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("feedrank-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("serving/web/templates", "serving/web/static", "protos/feed/v1"):
        expected = {str(path.relative_to(ROOT)) for path in (ROOT / folder).iterdir() if path.is_file() and path.suffix != ".pyc"}
        assert expected and expected <= names, sorted(expected - names)
    assert not any("__pycache__" in name for name in names)
