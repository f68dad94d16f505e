"""Ctrl-C in a training command is one line and status 130, also when it lands inside a
numba kernel's call (where it comes out as a SystemError caused by the KeyboardInterrupt).

Each command runs in a child process: an interrupt inside numba's dispatcher can leave a
kernel half loaded, which is no state to share with the rest of the test session, and now
and then numba itself dies of it with a segmentation fault.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO
from training.dataset import write_dataset
from training.generate import generate

# A Ctrl-C (KeyboardInterrupt) raised the first time a timer finds numba's dispatcher
# running Python code (its unpickling of a kernel's constants) on a call, as a real one can
# be. The kernels are loaded first (a whole evaluate, its output dropped): while numba
# loads one from its cache, it catches the interrupt and compiles instead.
CTRL_C_INSIDE_NUMBA = """
import contextlib, io, signal, sys
from training.__main__ import main, run_command

data = sys.argv[sys.argv.index("--data") + 1]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    run_command(["evaluate", "--data", data, "--no-cap-grid", "--no-progress"])

def interrupt_inside_numba(signum, frame):
    if frame is not None and frame.f_code.co_name == "_numba_unpickle":
        signal.setitimer(signal.ITIMER_REAL, 0)
        print("raised inside numba", flush=True)
        raise KeyboardInterrupt

signal.signal(signal.SIGALRM, interrupt_inside_numba)
signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("interrupts") / "data"
    write_dataset(generate(users=300, sellers=30, items=600, likes_per_user=10, seed=4), str(path))
    return str(path)


def interrupted_inside_numba(*argv: str) -> subprocess.CompletedProcess:
    """The command's run, interrupted inside numba. numba itself sometimes dies of the
    interrupt there (SIGSEGV: nothing a command can catch, see the module docstring): such a
    run is tried again, a few times."""
    for _ in range(5):
        result = subprocess.run([sys.executable, "-c", CTRL_C_INSIDE_NUMBA, *argv], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        if result.returncode != -signal.SIGSEGV:
            return result
    pytest.fail("numba crashed on every interrupt")


def test_ctrl_c_inside_a_numba_kernel_is_one_line_and_status_130(data):
    result = interrupted_inside_numba("evaluate", "--data", data, "--no-cap-grid", "--no-progress")
    assert "raised inside numba" in result.stdout, "the timer never found numba's dispatcher running Python code"
    assert result.returncode == 130 and result.stderr == "interrupted\n", result.stderr


def test_tune_stopped_inside_a_numba_kernel_says_nothing_was_chosen(data, tmp_path):
    out = tmp_path / "params.json"
    result = interrupted_inside_numba("tune", "--data", data, "--out", str(out), "--trials", "3", "--no-progress")
    assert "raised inside numba" in result.stdout and result.returncode == 130
    err = result.stderr
    assert err.startswith("tune interrupted after ") and f"nothing chosen; {out} was not written" in err, err
    assert err.endswith("\ninterrupted\n") and "Traceback" not in err and "SystemError" not in err, err
    assert not out.exists()


def test_tune_stopped_while_loading_says_nothing_was_chosen(data, tmp_path, monkeypatch, capsys):
    """A Ctrl-C during the load (minutes on a large dataset) is a stopped tune too."""
    import training.dataset
    from training.__main__ import run_command

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.dataset, "load_dataset", interrupted)
    out = tmp_path / "params.json"
    with pytest.raises(KeyboardInterrupt):
        run_command(["tune", "--data", data, "--out", str(out), "--trials", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert err.startswith("tune interrupted after ") and f"nothing chosen; {out} was not written" in err, err
