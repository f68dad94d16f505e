"""The dataset directory: items.csv, likes.csv, follows.csv, friends.csv.

Columns (header row required, order free, extra columns rejected):
  items.csv    item_id, seller_id, created_at, stock[, price][, category]
  likes.csv    user_id, item_id, ts
  follows.csv  user_id, seller_id, ts
  friends.csv  user_id, friend_id, ts        (undirected)
``ts`` / ``created_at`` are Unix seconds or ISO-8601, and ``ts`` may be empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Items:
    item_id: list[str]
    seller_id: list[str]  # "" when the item has no seller
    created_at: np.ndarray  # float64 Unix seconds; NaN when unknown
    stock: np.ndarray  # int64; 0 = out of stock
    price: np.ndarray  # float64; NaN when unknown
    category: list[str]

    def __len__(self) -> int:
        return len(self.item_id)


@dataclass(frozen=True)
class Edges:
    """Directed edges src -> dst with a time each (NaN when unknown)."""

    src: list[str]
    dst: list[str]
    ts: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.src)


@dataclass(frozen=True)
class Dataset:
    """A validated dataset. Edges are deduplicated; friendships are stored once per pair."""

    items: Items
    likes: Edges  # user -> item
    follows: Edges  # user -> seller
    friends: Edges  # user <-> friend, src < dst

    def fingerprint(self) -> str: ...


class DatasetError(ValueError):
    """A bad value in a dataset file, located by file, line and column."""

    def __init__(self, file: str, line: int, column: str, message: str) -> None:
        super().__init__(f"{file}:{line}: column {column!r}: {message}")
        self.file = file
        self.line = line
        self.column = column


def load_dataset(path: str) -> Dataset: ...


def write_dataset(dataset: Dataset, path: str) -> None: ...
