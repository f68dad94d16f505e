"""Hold-out splits of the likes of a dataset.

Only likes are split: the train dataset keeps items, follows and friends unchanged
(they are side information available at serving time). A validation split is
``random_split`` applied to a train dataset.
"""

from __future__ import annotations

import numpy as np

from training.dataset import Dataset, Edges


def _take(edges: Edges, rows: np.ndarray) -> Edges:
    idx = rows.tolist()
    return Edges(src=[edges.src[i] for i in idx], dst=[edges.dst[i] for i in idx],
                 ts=np.asarray(edges.ts, dtype=np.float64)[rows],
                 weight=None if edges.weight is None else np.asarray(edges.weight)[rows])


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")


def random_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Edges]:
    """Hold out ``round(fraction * len(ds.likes))`` likes chosen uniformly at random.

    Returns ``(train, test)``: train is ``ds`` with the remaining likes, test the held-out
    likes. Both keep the original order of the likes; together they partition them.
    Deterministic for a given seed.

    Raises:
        ValueError: if fraction is not in (0, 1).
    """
    _check_fraction(fraction)
    n = len(ds.likes)
    n_test = int(round(fraction * n))
    is_test = np.zeros(n, dtype=bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return (ds.with_likes(_take(ds.likes, np.flatnonzero(~is_test))),
            _take(ds.likes, np.flatnonzero(is_test)))


def time_split(ds: Dataset, fraction: float) -> tuple[Dataset, Edges, float]:
    """Hold out the latest ``fraction`` of likes by ts.

    Returns ``(train, test, split_time)`` with every train like strictly before
    ``split_time`` and every test like at or after it, so there is no leakage from the
    future. Likes tied at ``split_time`` all go to test, so test may be slightly larger
    than ``round(fraction * n)``; ``split_time`` is ``inf`` (and test empty) when that
    rounds to zero. Both keep the original order of the likes.

    Raises:
        ValueError: if fraction is not in (0, 1) or any like has no ts (NaN).
    """
    _check_fraction(fraction)
    ts = np.asarray(ds.likes.ts, dtype=np.float64)
    missing = np.isnan(ts)
    if missing.any():
        raise ValueError(
            f"time_split needs a ts on every like; {int(missing.sum())} of {len(ts)} "
            f"have none (use random_split)"
        )
    n = len(ts)
    n_test = int(round(fraction * n))
    if n_test == 0:
        split_time = float("inf")
    else:
        split_time = float(np.partition(ts, n - n_test)[n - n_test])
    is_test = ts >= split_time
    return (ds.with_likes(_take(ds.likes, np.flatnonzero(~is_test))),
            _take(ds.likes, np.flatnonzero(is_test)), split_time)
