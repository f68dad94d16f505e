"""Hold-out splits of the likes of a dataset.

Only likes are split: the train dataset keeps items, follows and friends unchanged
(they are side information available at serving time). A validation split is
``random_split`` applied to a train dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def evaluation_time(train: Dataset) -> float:
    """"Now" for a replay: just after the last training event, so recency means what it did then."""
    times = [a[np.isfinite(a)] for a in (train.likes.ts, train.items.created_at, train.follows.ts)]
    finite = np.concatenate(times)
    return float(finite.max()) + 1.0 if finite.size else 0.0



@dataclass(frozen=True)
class SplitSpec:
    """How to hold out test likes: "random" (fraction, seed) or "time" (latest fraction)."""

    kind: str
    fraction: float
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> SplitSpec:
        """Parse random:FRACTION[:SEED] or time:FRACTION; raises ValueError naming the problem."""
        parts = text.split(":")
        try:
            if parts[0] == "random" and len(parts) in (2, 3):
                return cls("random", float(parts[1]), int(parts[2]) if len(parts) == 3 else 0)
            if parts[0] == "time" and len(parts) == 2:
                return cls("time", float(parts[1]))
        except ValueError:
            pass
        raise ValueError(f"--split: expected random:FRACTION[:SEED] or time:FRACTION, got {text!r}")



def catalogue_at(dataset: Dataset, now: float) -> Dataset:
    """``dataset`` as the store held it at ``now``: items created later are not listed yet.

    A time split that left them in would let the replay (and every baseline) serve items
    that did not exist at "now", and let a ranker learn that a creation time in the future
    predicts the test likes. Items with an unknown creation time and items liked in
    ``dataset`` stay.
    """
    import dataclasses

    items = dataset.items
    keep = ~(np.asarray(items.created_at) > now)
    if keep.all():
        return dataset
    liked = set(dataset.likes.dst)
    keep |= np.fromiter((i in liked for i in items.item_id), bool, len(items))
    rows = np.flatnonzero(keep)
    idx = rows.tolist()
    kept = dataclasses.replace(
        items,
        item_id=[items.item_id[i] for i in idx],
        seller_id=[items.seller_id[i] for i in idx],
        created_at=items.created_at[rows],
        stock=items.stock[rows],
        price=items.price[rows],
        category=[items.category[i] for i in idx],
    )
    return dataclasses.replace(dataset, items=kept)



def split_for_evaluation(dataset: Dataset, spec: SplitSpec) -> tuple[Dataset, Edges, float | None]:
    """(train, test, now); ``now`` is the split time for time splits, else None (derived).

    For a time split the training part holds the catalogue as it was at the split time
    (``catalogue_at``).
    """
    if spec.kind == "time":
        train, test, now = time_split(dataset, spec.fraction)
        return catalogue_at(train, now), test, now
    train, test = random_split(dataset, spec.fraction, spec.seed)
    return train, test, None



def default_split(dataset: Dataset) -> SplitSpec:
    """A time split when every like has a time (what serving faces), else a random one."""
    has_times = len(dataset.likes) > 0 and bool(np.isfinite(dataset.likes.ts).all())
    return SplitSpec("time", 0.2) if has_times else SplitSpec("random", 0.2, 0)


def validation_split(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Edges, float]:
    """(fit part, validation likes, now): the latest likes when all are timed, else random ones.

    A time split keeps only the items listed by then (``catalogue_at``), as in evaluation.
    """
    timed = len(train.likes) > 0 and bool(np.isfinite(train.likes.ts).all())
    if timed:
        fit_part, held, now = time_split(train, fraction)
        # Ties at the split time all go to the held-out side; when that swallows most of
        # the data (e.g. every like at the same time) the times carry no order: go random.
        if len(held) <= 2 * fraction * len(train.likes):
            return catalogue_at(fit_part, now), held, now
    fit_part, held = random_split(train, fraction, seed)
    return fit_part, held, evaluation_time(fit_part)
