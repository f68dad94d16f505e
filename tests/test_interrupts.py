"""Ctrl-C in a training command is one line and status 130, also when it lands inside a
numba kernel's call (where it comes out as a SystemError caused by the KeyboardInterrupt)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from training.__main__ import main
from training.dataset import write_dataset
from training.generate import generate


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("interrupts") / "data"
    write_dataset(generate(users=300, sellers=30, items=600, likes_per_user=10, seed=4), str(path))
    return str(path)


@contextmanager
def ctrl_c_inside_numba() -> Iterator[list[str]]:
    """A Ctrl-C (KeyboardInterrupt) raised the first time a timer finds numba's dispatcher
    running Python code (its unpickling of a kernel's constants), as a real one can be."""
    raised: list[str] = []

    def interrupt_inside_numba(signum, frame) -> None:
        if frame is not None and frame.f_code.co_name == "_numba_unpickle":
            signal.setitimer(signal.ITIMER_REAL, 0)
            raised.append(frame.f_code.co_filename)
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt_inside_numba)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        yield raised
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_ctrl_c_inside_a_numba_kernel_is_one_line_and_status_130(data, capfd):
    with ctrl_c_inside_numba() as raised, pytest.raises(SystemExit) as stopped:
        main(["evaluate", "--data", data, "--no-cap-grid", "--no-progress"])
    assert raised, "the timer never found numba's dispatcher running Python code"
    assert stopped.value.code == 130
    assert capfd.readouterr().err == "interrupted\n"


def test_tune_stopped_inside_a_numba_kernel_says_nothing_was_chosen(data, tmp_path, capfd):
    out = tmp_path / "params.json"
    with ctrl_c_inside_numba() as raised, pytest.raises(SystemExit) as stopped:
        main(["tune", "--data", data, "--out", str(out), "--trials", "3", "--no-progress"])
    assert raised and stopped.value.code == 130
    err = capfd.readouterr().err
    assert err.startswith("tune interrupted after ") and f"nothing chosen; {out} was not written" in err, err
    assert err.endswith("\ninterrupted\n") and "Traceback" not in err and "SystemError" not in err, err
    assert not out.exists()
