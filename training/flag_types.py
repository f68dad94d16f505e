"""argparse types for numeric, output-path and Spark flags: light enough for any command line to import."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Sequence


def bounded(
    kind: type, minimum: float | None = None, maximum: float | None = None, above: float | None = None, below: float | None = None
) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) within ``minimum`` and
    ``maximum``, more than ``above``, less than ``below``; argparse puts the flag's name
    before the message."""

    def shown(bound: float) -> str:  # an int's bound in full: 4294967295, not 4.29497e+09
        return str(int(bound)) if kind is int else f"{bound:g}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {shown(minimum)}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {shown(maximum)}, got {text}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be > {shown(above)}, got {text}")
        if below is not None and not value < below:
            raise argparse.ArgumentTypeError(f"must be < {shown(below)}, got {text}")
        return value

    return parse


def whole_numbers(minimum: int) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated whole numbers, at least one, each >= ``minimum``;
    a repeated one is kept once."""
    one = bounded(int, minimum)

    def parse(text: str) -> list[int]:
        values = [one(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
        return list(dict.fromkeys(values))

    return parse


def names_among(known: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: comma-separated names, at least one, each one of ``known``;
    ``what`` names one of them in messages ("engine")."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        if not names:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}s ({', '.join(known)}), got {text!r}")
        unknown = [name for name in names if name not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}, got {text!r}")
        return names

    return parse


LONGEST_DEADLINE_SECONDS = 1e9
"""The longest per-call deadline a --timeout takes (31 years): gRPC keeps a deadline as
nanoseconds since 1970 in 64 bits, which end in 2262, and a deadline past that overflowed
into one already gone (DEADLINE_EXCEEDED at once)."""
deadline_seconds = bounded(float, above=0, maximum=LONGEST_DEADLINE_SECONDS)
"""An argparse type for a gRPC call's --timeout."""


def spark_master(text: str) -> str:
    """A master Spark accepts (its own check fails deep in Java, printing a Java stack trace)."""
    if text == "yarn" or re.fullmatch(r"local(\[([1-9]\d*|\*)(,[1-9]\d*)?\])?", text) or text.startswith(("spark://", "k8s://", "local-cluster[")):
        return text
    raise argparse.ArgumentTypeError(f"expected local, local[N], spark://HOST:PORT, yarn or k8s://..., got {text!r}")


def jvm_size(text: str) -> str:
    """A heap size the JVM reads in -Xmx (its own check fails after Spark's launcher started,
    and the trainer could only say that Spark did not start)."""
    if re.fullmatch(r"[1-9]\d*[kmgtKMGT]", text):
        return text
    raise argparse.ArgumentTypeError(f"expected a JVM size such as 512m or 4g, got {text!r}")


def output_directory(text: str) -> str:
    """An argparse type: a directory to write into, checked before any work: an existing
    directory, or a path whose nearest existing parent is a writable directory (it is
    made then)."""
    _require_path(text)
    if os.path.exists(text):
        if not os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
        return _writable(text, text)
    return _writable(_nearest_existing(text), text)


def output_file(text: str) -> str:
    """An argparse type: a file to write, checked before any work: not a directory, in a
    writable directory that exists, and writable itself when it exists (it is overwritten
    in place, once the work is done)."""
    _require_path(text)
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    parent = os.path.dirname(text) or "."
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"no directory {parent} to write {text} into")
    if os.path.exists(text) and not os.access(text, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: the file exists and is not writable")
    return _writable(parent, text)


def input_path(text: str) -> str:
    """An argparse type: a file to read; an empty path is refused, where the command would
    take it for the flag not given (``if args.params``) and go on without the file."""
    _require_path(text)
    return text


def _require_path(text: str) -> None:
    if not text:  # "$OUT" of an unset variable: found out only when writing, after the work (or never: if args.json)
        raise argparse.ArgumentTypeError("expected a path, got an empty one")


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _writable(directory: str, text: str) -> str:
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"cannot make {text}: {directory} is not a directory")
    if not os.access(directory, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {directory} is not writable")
    return text
