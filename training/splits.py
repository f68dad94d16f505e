"""Hold-out splits of the likes of a dataset.

Only likes are held out: the train dataset keeps items, follows and friends (side
information available at serving time). Engagements (shares, views, clicks, carts,
purchases) of a held-out (user, item) pair leave the train dataset with it in a random or
per-user split. A time split instead drops every engagement, follow, friendship and hide
dated at or after the split time, and keeps those before it whatever the test holds (so
the training part never depends on the test likes); undated ones stay, but for undated
engagements of a held-out pair, which cannot be placed before the like. ``validation_split`` carves a
validation part out of a training part with the same shape as the test split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from ranking.vocab import distinct_ids, encode, positions_in, take_ids
from training.dataset import Dataset, Edges


def _take(edges: Edges, rows: np.ndarray) -> Edges:
    return Edges(src=take_ids(edges.src, rows), dst=take_ids(edges.dst, rows),
                 ts=np.asarray(edges.ts, dtype=np.float64)[rows],
                 weight=None if edges.weight is None else np.asarray(edges.weight)[rows])


def _pair_codes(users: Sequence[str], items: Sequence[str], held: Edges) -> np.ndarray:
    """One int64 per (user, item) pair, the same for the same pair in ``held`` and in any table;
    -1 for pairs whose user or item ``held`` lacks (they cannot be held out)."""
    held_items = encode(held.dst)[1]
    user_codes, item_codes = positions_in(users, encode(held.src)[1]), positions_in(items, held_items)
    return np.where((user_codes >= 0) & (item_codes >= 0), user_codes.astype(np.int64) * len(held_items) + item_codes, -1)


def _dated_before(edges: Edges, before: float) -> Edges:
    """``edges`` without the rows dated at or after ``before``; undated rows stay."""
    future = np.asarray(edges.ts, dtype=np.float64) >= before
    return _take(edges, np.flatnonzero(~future)) if future.any() else edges


def split_by_mask(ds: Dataset, is_test: np.ndarray, before: float | None = None) -> tuple[Dataset, Edges]:
    """(train dataset, held-out likes) for a mask over ``ds.likes``; see the module docstring."""
    train, test = _take(ds.likes, np.flatnonzero(~is_test)), _take(ds.likes, np.flatnonzero(is_test))
    engagements = ds.engagements
    if len(engagements):
        of_held = np.isin(_pair_codes(engagements.user_id, engagements.item_id, test), _pair_codes(test.src, test.dst, test))
        if before is None:
            keep = ~of_held
        else:
            # By time alone: an engagement before the split is history whatever the user
            # liked later (dropping a held-out pair's made training depend on the test
            # likes). An undated one cannot be placed: kept, but not a held-out pair's.
            ts = np.asarray(engagements.ts, dtype=np.float64)
            keep = (ts < before) | (np.isnan(ts) & ~of_held)
        engagements = engagements.take(keep)
    train_part = dataclasses.replace(ds, likes=train, engagements=engagements)
    if before is not None:
        train_part = dataclasses.replace(
            train_part, **{name: _dated_before(getattr(ds, name), before)
                           for name in ("follows", "friends", "hidden_items", "hidden_sellers")},
        )
    return train_part, test


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
    return split_by_mask(ds, is_test)


def per_user_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Edges]:
    """Hold out ``round(fraction * n)`` of each user's n likes, chosen at random per user.

    Every user keeps the rest in training, so every test user has a history (the protocol
    of SocialLGN and most social-recommendation papers: 80/20 per user). A user with too
    few likes for the rounding to hold one out stays wholly in training. Returns
    ``(train, test)`` in the original order of the likes; deterministic for a seed.

    Raises:
        ValueError: if fraction is not in (0, 1).
    """
    _check_fraction(fraction)
    n = len(ds.likes)
    users, _ = encode(ds.likes.src)
    order = np.lexsort((np.random.default_rng(seed).random(n), users))
    counts = np.bincount(users)
    starts = np.cumsum(counts) - counts
    rank_in_user = np.arange(n) - np.repeat(starts, counts)
    held_per_user = np.floor(fraction * counts + 0.5).astype(np.int64)
    is_test = np.zeros(n, dtype=bool)
    is_test[order] = rank_in_user < np.repeat(held_per_user, counts)
    return split_by_mask(ds, is_test)


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
    split_time = _split_time(ts, fraction)
    is_test = ts >= split_time
    return (*split_by_mask(ds, is_test, before=split_time), split_time)


def _split_time(ts: np.ndarray, fraction: float) -> float:
    """The time of the latest ``fraction`` of ``ts`` (all finite); ``inf`` when that rounds to none."""
    n = len(ts)
    n_test = int(round(fraction * n))
    return float("inf") if n_test == 0 else float(np.partition(ts, n - n_test)[n - n_test])


def time_split_problem(dataset: Dataset, fraction: float) -> str | None:
    """Why a time split of ``fraction`` would not hold out the latest ``fraction`` of the
    likes, or None. Likes without a time cannot be placed; likes tied at the split time all
    go to the test part, and when they take more than twice the fraction (every like at one
    time, an export stamped with its own time) the split orders nothing: the training part
    is whatever came before the tie, often nothing at all."""
    ts = np.asarray(dataset.likes.ts, dtype=np.float64)
    untimed = int(np.count_nonzero(~np.isfinite(ts)))
    if untimed:
        return f"a time split needs a ts on every like, and {untimed} of {len(ts)} have none"
    split_time = _split_time(ts, fraction)
    held = int(np.count_nonzero(ts >= split_time))
    if held > 2 * fraction * len(ts):
        return (f"{held} of {len(ts)} likes are at or after its split time {datetime.fromtimestamp(split_time, timezone.utc):%Y-%m-%dT%H:%M:%SZ} (ties), "
                f"so it would hold out {held / len(ts):.0%} of them, not the latest {fraction:.0%}")
    return None


# "Now" for a replay of data without any time, where the stores keep every event at time
# 0. At now = 0 each undated friend's like would be news (within the news window) and the
# selector would promote the first of them over the ranker's order on every page; a day
# later they are past any news window of hours, while the decays (half-lives of hours to
# weeks) still see them as recent. Last.fm binary, hand-set parameters, seeds 0-2:
# NDCG@10 +1.6 to +2.4 % against now = 0 (benchmarks/README.md, "undated replays").
UNDATED_NOW = 86_400.0


def evaluation_time(train: Dataset) -> float:
    """"Now" for a replay: just after the last training event, so recency means what it did
    then (UNDATED_NOW when nothing has a time)."""
    times = [a[np.isfinite(a)] for a in (train.likes.ts, train.items.created_at, train.follows.ts)]
    finite = np.concatenate(times)
    return float(finite.max()) + 1.0 if finite.size else UNDATED_NOW


SPLIT_KINDS = ("time", "user", "random")


@dataclass(frozen=True)
class SplitSpec:
    """How to hold out likes: "time" (the latest fraction), "user" (a fraction of each
    user's likes, at random) or "random" (a fraction of all likes, at random)."""

    kind: str
    fraction: float
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> SplitSpec:
        """Parse time:FRACTION, user:FRACTION[:SEED] or random:FRACTION[:SEED]; raises ValueError naming the problem."""
        parts = text.split(":")
        try:
            if parts[0] in ("random", "user") and len(parts) in (2, 3):
                spec = cls(parts[0], float(parts[1]), int(parts[2]) if len(parts) == 3 else 0)
            elif parts[0] == "time" and len(parts) == 2:
                spec = cls("time", float(parts[1]))
            else:
                spec = None
        except ValueError:
            spec = None
        if spec is None:
            raise ValueError(f"expected time:FRACTION, user:FRACTION[:SEED] or random:FRACTION[:SEED], got {text!r}")
        _check_fraction(spec.fraction)
        if spec.seed < 0:  # numpy's generators refuse it, after the data is loaded (and in train, the model trained)
            raise ValueError(f"the seed must be 0 or more, got {spec.seed} in {text!r}")
        return spec

    def __str__(self) -> str:
        return f"time:{self.fraction:g}" if self.kind == "time" else f"{self.kind}:{self.fraction:g}:{self.seed}"


def catalogue_at(dataset: Dataset, now: float) -> Dataset:
    """``dataset`` as the store held it at ``now``: items created later are not listed yet.

    A time split that left them in would let the replay (and every baseline) serve items
    that did not exist at "now", and let a ranker learn that a creation time in the future
    predicts the test likes. Items with an unknown creation time and items liked in
    ``dataset`` stay.
    """
    items = dataset.items
    keep = ~(np.asarray(items.created_at) > now)
    if keep.all():
        return dataset
    liked = distinct_ids(dataset.likes.dst)
    keep |= np.fromiter((i in liked for i in items.item_id), bool, len(items))
    return dataclasses.replace(dataset, items=items.take(np.flatnonzero(keep)))


def split_for_evaluation(dataset: Dataset, spec: SplitSpec) -> tuple[Dataset, Edges, float | None]:
    """(train, held out, now); ``now`` is the split time for time splits, else None (derived).

    For a time split the training part holds the catalogue as it was at the split time
    (``catalogue_at``).
    """
    if spec.kind == "time":
        train, test, now = time_split(dataset, spec.fraction)
        return catalogue_at(train, now), test, now
    if spec.kind == "user":
        train, test = per_user_split(dataset, spec.fraction, spec.seed)
        return train, test, None
    train, test = random_split(dataset, spec.fraction, spec.seed)
    return train, test, None


def has_times(dataset: Dataset) -> bool:
    return len(dataset.likes) > 0 and bool(np.isfinite(dataset.likes.ts).all())


def default_split(dataset: Dataset, fraction: float = 0.2, seed: int = 0) -> SplitSpec:
    """A time split (what serving faces) when every like has a time and a time split holds out
    the latest ``fraction`` (``time_split_problem``), else a per-user random one."""
    if has_times(dataset) and time_split_problem(dataset, fraction) is None:
        return SplitSpec("time", fraction)
    return SplitSpec("user", fraction, seed)


def default_split_reason(dataset: Dataset, fraction: float = 0.2) -> str:
    """Why ``default_split`` picks what it picks, for a report's reader."""
    problem = time_split_problem(dataset, fraction)
    return "every like has a time" if problem is None else f"not time:{fraction:g}, as {problem}"


def validation_split(
    train: Dataset, fraction: float, seed: int, kind: str | None = None
) -> tuple[Dataset, Edges, float]:
    """(fit part, validation likes, now), carved out of ``train`` (never a test part).

    ``kind`` is the shape of the evaluation the choice will be judged on, so validation
    mirrors it; None picks what ``default_split`` would. A time split of ``train`` that
    would not hold out its latest ``fraction`` (``time_split_problem``: ties at the split
    time swallowing the data) carries no order: it falls back to per user.
    """
    kind = kind or default_split(train, fraction).kind
    if kind == "time":
        if has_times(train) and time_split_problem(train, fraction) is None:
            fit_part, held, now = time_split(train, fraction)
            return catalogue_at(fit_part, now), held, now
        kind = "user"
    fit_part, held, _ = split_for_evaluation(train, SplitSpec(kind, fraction, seed))
    return fit_part, held, evaluation_time(fit_part)
