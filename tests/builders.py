"""Small hand-built datasets with known right answers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.dataset import Dataset, Edges, Items

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0


def edges(rows: Sequence[tuple[str, str, float]]) -> Edges:
    return Edges([r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows], dtype=np.float64))


def make_dataset(
    items: Sequence[tuple[str, str, float, int]],
    likes: Sequence[tuple[str, str, float]] = (),
    follows: Sequence[tuple[str, str, float]] = (),
    friends: Sequence[tuple[str, str, float]] = (),
) -> Dataset:
    """items: (item_id, seller_id, created_at, stock); edges: (src, dst, ts)."""
    return Dataset(
        items=Items(
            item_id=[i[0] for i in items],
            seller_id=[i[1] for i in items],
            created_at=np.array([i[2] for i in items], dtype=np.float64),
            stock=np.array([i[3] for i in items], dtype=np.int64),
            price=np.full(len(items), np.nan),
            category=["" for _ in items],
        ),
        likes=edges(likes),
        follows=edges(follows),
        friends=edges([(min(a, b), max(a, b), ts) for a, b, ts in friends]),
    )


def social_dataset() -> Dataset:
    """Alice follows seller s1 and is friends with bob and carol.

    s1 lists i1 (in stock), i2 (out of stock), i3, i4, i5 (in stock); s2 lists i6..i8;
    alice herself sells a1. bob and carol both like i6; bob likes i7 and alice's a1;
    alice already likes i8. dave is a stranger who likes i7 and i8.
    """
    items = [
        ("i1", "s1", NOW - 1 * DAY, 5),
        ("i2", "s1", NOW - 1 * DAY, 0),
        ("i3", "s1", NOW - 2 * DAY, 5),
        ("i4", "s1", NOW - 3 * DAY, 5),
        ("i5", "s1", NOW - 4 * DAY, 5),
        ("i6", "s2", NOW - 5 * DAY, 5),
        ("i7", "s2", NOW - 6 * DAY, 5),
        ("i8", "s2", NOW - 7 * DAY, 5),
        ("a1", "alice", NOW - 2 * DAY, 5),
    ]
    likes = [
        ("bob", "i6", NOW - 3600),
        ("carol", "i6", NOW - 7200),
        ("bob", "i7", NOW - 9000),
        ("bob", "a1", NOW - 9500),
        ("alice", "i8", NOW - 10 * DAY),
        ("dave", "i7", NOW - DAY),
        ("dave", "i8", NOW - DAY),
    ]
    follows = [("alice", "s1", NOW - 30 * DAY)]
    friends = [("alice", "bob", NOW - 40 * DAY), ("carol", "alice", NOW - 40 * DAY)]
    return make_dataset(items, likes, follows, friends)
