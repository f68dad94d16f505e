"""Offline ranking metrics: a flat module of functions over plain dicts.

Protocol (README.md, `python -m training evaluate`): binary relevance; averaged over the users who
have test items, where a user with test items but no recommendations scores 0;
precision@K = hits / K; recall@K = hits / |test|; NDCG@K discounts rank r (1-based) by
log2(r + 1) and normalises by the ideal DCG over min(|test|, K) positions. Recommended
lists are expected to exclude the user's training items already (the caller masks them).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

User = Hashable
Item = Hashable


def ranking_metrics(
    recommended: Mapping[User, Sequence[Item]],
    relevant: Mapping[User, Iterable[Item]],
    ks: Sequence[int] = (10, 20),
) -> dict[str, float]:
    """Precision, recall and NDCG at each K, averaged over users with test items.

    Returns exactly the keys "precision@K", "recall@K", "ndcg@K" for each K in ``ks``
    (all 0.0 when no user has test items). Users in ``recommended`` without test items
    are ignored; lists longer than max(ks) are cut.
    """
    return mean_metrics(per_user_metrics(recommended, relevant, ks))


def mean_metrics(per_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Each ``per_user_metrics`` array's mean (0.0 without users)."""
    return {key: float(values.mean()) if len(values) else 0.0 for key, values in per_user.items()}


def per_user_metrics(
    recommended: Mapping[User, Sequence[Item]],
    relevant: Mapping[User, Iterable[Item]],
    ks: Sequence[int] = (10, 20),
) -> dict[str, np.ndarray]:
    """``ranking_metrics``' values before they are averaged: one per user with test items,
    in ``relevant``'s order, so two methods' arrays pair user by user."""
    max_k = max(ks)
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
    ideal_cum = np.cumsum(discounts)
    values: dict[str, list[float]] = {f"{name}@{k}": [] for k in ks for name in ("precision", "recall", "ndcg")}
    for user, test_items in relevant.items():
        test = set(test_items)
        if not test:
            continue
        ranked = list(recommended.get(user, ()))[:max_k]
        hits = np.fromiter((item in test for item in ranked), np.float64, len(ranked))
        # A list may repeat an item; only its first occurrence can count as a hit.
        seen: set[Item] = set()
        for i, item in enumerate(ranked):
            if item in seen:
                hits[i] = 0.0
            seen.add(item)
        for k in ks:
            h = hits[:k]
            n_hits = float(h.sum())
            values[f"precision@{k}"].append(n_hits / k)
            values[f"recall@{k}"].append(n_hits / len(test))
            values[f"ndcg@{k}"].append(float(h @ discounts[: len(h)]) / ideal_cum[min(len(test), k) - 1])
    return {key: np.asarray(values[key], dtype=np.float64) for key in values}


@dataclass(frozen=True)
class PairedDifference:
    """One method's metric minus another's over the same users: the mean difference, its
    95 % confidence interval and the two-sided p-value of a paired t-test (users are the
    samples: the usual test of IR evaluation, sound for the thousands of users here)."""

    difference: float
    low: float
    high: float
    p_value: float
    users: int


def paired_difference(ours: np.ndarray, theirs: np.ndarray) -> PairedDifference:
    """``ours`` minus ``theirs``, user by user (``per_user_metrics`` arrays of the same users)."""
    if ours.shape != theirs.shape:
        raise ValueError(f"paired metrics need the same users: {ours.shape} against {theirs.shape}")
    differences = ours - theirs
    n = len(differences)
    mean = float(differences.mean()) if n else 0.0
    if n < 2:  # one user's difference has no spread to measure: it tells nothing from noise
        return PairedDifference(mean, -math.inf, math.inf, 1.0, n)
    if not differences.std():
        return PairedDifference(mean, mean, mean, 1.0 if mean == 0 else 0.0, n)
    half_width = float(stats.t.ppf(0.975, n - 1) * differences.std(ddof=1) / np.sqrt(n))
    p_value = float(stats.ttest_rel(ours, theirs).pvalue)
    return PairedDifference(mean, mean - half_width, mean + half_width, p_value, n)


def catalogue_coverage(recommended: Mapping[User, Sequence[Item]], recommendable_items: int, k: int) -> float:
    """Distinct items appearing in any user's top-k, divided by ``recommendable_items``, the
    items some of these users may be shown (not the whole catalogue: an item out of stock,
    say, is in no list whatever the method); 0 if none."""
    if recommendable_items <= 0:
        return 0.0
    distinct = {item for items in recommended.values() for item in list(items)[:k]}
    return len(distinct) / recommendable_items


def mean_distinct_sellers(
    recommended: Mapping[User, Sequence[Item]], seller_of: Mapping[Item, str], k: int
) -> float:
    """Mean over the users of ``recommended`` of the number of distinct sellers in their top-k.

    Every user counts, as in the other @K metrics: an empty list has 0 sellers (averaged
    over non-empty lists only, a method that shows nothing to most users would score as if
    it had shown everyone as varied a page). Items missing from ``seller_of`` or with
    seller "" are not counted as a seller.
    """
    counts = [len({seller_of.get(item, "") for item in list(items)[:k]} - {""}) for items in recommended.values()]
    return float(np.mean(counts)) if counts else 0.0
