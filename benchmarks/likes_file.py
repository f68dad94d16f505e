"""A dataset's likes.csv as the load tools read it: by column name, as the dataset loader
does (its columns come in any order), with no dependency beyond the standard library (the
locustfile runs in Locust's own environment)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

ROWS_READ = 200_000
"""Rows read from the top of likes.csv: enough users and items to sample from, in a fraction
of a second at any scale."""


def likes_header(data_dir: str) -> list[str]:
    """The column names of ``data_dir``'s likes.csv (stripped; a BOM is no part of the first)."""
    with open(Path(data_dir) / "likes.csv", newline="", encoding="utf-8-sig") as handle:
        return [name.strip() for name in next(csv.reader(handle), [])]


def liked_columns(data_dir: str, columns: Sequence[str]) -> list[tuple[str, ...]]:
    """The ``columns`` of the first ROWS_READ rows of ``data_dir``'s likes.csv, each stripped;
    ValueError when the header lacks one."""
    with open(Path(data_dir) / "likes.csv", newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        at = [header.index(name) for name in columns]
        return [tuple(row[i].strip() for i in at) for row, _ in zip(reader, range(ROWS_READ)) if len(row) > max(at)]
