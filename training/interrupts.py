"""Ctrl-C, wherever it lands."""

from __future__ import annotations


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
