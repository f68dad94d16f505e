"""Ctrl-C, wherever it lands, and a reader of stdout that went away (``… | head``).

Light on purpose: the command lines install ``exit_while_importing`` before anything else
is imported.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import NoReturn


def exit_while_importing(*_: object) -> None:
    """The SIGINT handler of ``python -m training`` and ``python -m serving`` while their
    modules import (a second or two): one line and status 130, without a traceback through
    whichever module was loading."""
    print("interrupted", file=sys.stderr, flush=True)
    # Not sys.exit: an exception a signal handler raises while Python compiles a module's
    # source (every run under PYTHONDONTWRITEBYTECODE, or the first after an install) can be
    # lost, and the command went on to run in full. Nothing is written before the imports end.
    os._exit(130)


def take_ctrl_c_back() -> None:
    """Ctrl-C is a KeyboardInterrupt again once the imports are done, so that a command
    stopped while it writes finishes or removes what it wrote (a server drains)."""
    if signal.getsignal(signal.SIGINT) is exit_while_importing:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def is_interrupt(error: BaseException | None) -> bool:
    """Whether ``error`` is a KeyboardInterrupt or came out of one.

    A Ctrl-C that lands while numba's dispatcher runs Python code (it unpickles a compiled
    kernel's constants on a call) leaves the dispatcher as a SystemError, "returned a
    result with an exception set", whose cause is the KeyboardInterrupt.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (``head`` read its lines and
    exited): its write end then polls as an error. A broken pipe elsewhere (a socket) is not
    this, and stays an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # no stdout, or not a file descriptor
        return False


def exit_as_closed_pipe() -> NoReturn:
    """Stop without a traceback, with the status of a process SIGPIPE killed (128 + 13), as
    ``cat`` gives under ``| head``. Python flushes stdout again on the way out, so stdout
    points at /dev/null first, or that flush fails the same way."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(128 + signal.SIGPIPE)
