"""Processes the tests start, and whether they still run.

``running_tool`` runs a benchmark tool as an engineer runs it, for the tests of how it
stops: ``python -m benchmarks.TOOL`` starts in a session of its own, so a signal sent to it
reaches it alone (as ``kill PID`` or a job runner's stop does, unlike Ctrl-C in a terminal),
with its temporary files under the test's directory. Whatever the tool and the children a
test looked up are still running afterwards is killed, so a tool that fails to stop its
servers fails its test without leaving them behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.loadgen import process_stats, process_tree
from tests.conftest import REPO


def alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie does not: a killed server whose parent exited is
    reparented to PID 1, which here (a container's init) may never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def cmdline(pid: int) -> bytes:
    """The command line of ``pid``, or b"" once it has exited: a process seen running a moment
    ago (a script's short-lived helper) may be gone by the time its command line is read."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


@dataclass
class ToolRun:
    process: subprocess.Popen
    tmp_path: Path | None
    children: set[int] = field(default_factory=set)  # every child looked up, killed afterwards if alive

    def wait(self, ready: Callable[[], object], timeout: float = 120.0) -> None:
        """Until ``ready()`` is true; fails with the tool's output if the tool exits first."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None and time.monotonic() < deadline, self.process.communicate()
            time.sleep(0.05)

    def wrote(self, pattern: str) -> bool:
        """Whether a file matching ``pattern`` under the run's temporary directory has content
        (a spawned server's port file, once it serves)."""
        assert self.tmp_path is not None
        return any(path.read_text().strip() for path in self.tmp_path.glob(pattern))

    def direct_children(self) -> set[int]:
        """The tool's own children now (its servers, workers, redis-server)."""
        stats = process_stats()
        found = {pid for pid in process_tree(self.process.pid, stats) if int(stats[pid][1]) == self.process.pid}
        self.children |= found
        return found

    def finish(self, timeout: float = 60.0) -> tuple[str, str]:
        """The tool's stdout and stderr, once it has exited."""
        return self.process.communicate(timeout=timeout)


@contextlib.contextmanager
def running_tool(module: str, args: Sequence[str], tmp_path: Path | None = None) -> Iterator[ToolRun]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if tmp_path is not None:
        env["TMPDIR"] = str(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    run = ToolRun(process, tmp_path)
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        for pid in run.children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def interrupted_once_begun(argv: Sequence[str], begun: Callable[[], bool], poll_seconds: float = 0.01) -> tuple[int, str]:
    """Run ``argv`` from the repository and send it SIGINT (a Ctrl-C) once ``begun()`` holds,
    failing the test if it ends or a minute passes first: its exit status and stderr."""
    running = subprocess.Popen(list(argv), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not begun():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(poll_seconds)
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=60)
    return running.returncode, stderr
