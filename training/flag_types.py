"""argparse types for numeric flags: light enough for any command line to import."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def bounded(
    kind: type, minimum: float | None = None, maximum: float | None = None, above: float | None = None, below: float | None = None
) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) within ``minimum`` and
    ``maximum``, more than ``above``, less than ``below``; argparse puts the flag's name
    before the message."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, got {text}")
        if below is not None and not value < below:
            raise argparse.ArgumentTypeError(f"must be < {below:g}, got {text}")
        return value

    return parse
