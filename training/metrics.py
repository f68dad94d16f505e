"""Offline ranking metrics: a flat module of functions over plain dicts.

Protocol (DESIGN.md, "What good means"): binary relevance; averaged over the users who
have test items, where a user with test items but no recommendations scores 0;
precision@K = hits / K; recall@K = hits / |test|; NDCG@K discounts rank r (1-based) by
log2(r + 1) and normalises by the ideal DCG over min(|test|, K) positions. Recommended
lists are expected to exclude the user's training items already (the caller masks them).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

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
    max_k = max(ks)
    discounts = 1.0 / np.log2(np.arange(2, max_k + 2))
    ideal_cum = np.cumsum(discounts)
    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("precision", "recall", "ndcg")}
    n_users = 0
    for user, test_items in relevant.items():
        test = set(test_items)
        if not test:
            continue
        n_users += 1
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
            sums[f"precision@{k}"] += n_hits / k
            sums[f"recall@{k}"] += n_hits / len(test)
            dcg = float(h @ discounts[: len(h)])
            sums[f"ndcg@{k}"] += dcg / ideal_cum[min(len(test), k) - 1]
    result = {key: (value / n_users if n_users else 0.0) for key, value in sums.items()}
    ordered = {f"{name}@{k}": result[f"{name}@{k}"] for k in ks for name in ("precision", "recall", "ndcg")}
    return ordered


def catalogue_coverage(recommended: Mapping[User, Sequence[Item]], n_items: int, k: int) -> float:
    """Distinct items appearing in any user's top-k, divided by ``n_items`` (0 if empty)."""
    if n_items <= 0:
        return 0.0
    distinct = {item for items in recommended.values() for item in list(items)[:k]}
    return len(distinct) / n_items


def mean_distinct_sellers(
    recommended: Mapping[User, Sequence[Item]], seller_of: Mapping[Item, str], k: int
) -> float:
    """Mean over users with a non-empty list of the number of distinct sellers in their top-k.

    Items missing from ``seller_of`` or with seller "" are not counted as a seller.
    """
    counts = [
        len({seller_of.get(item, "") for item in list(items)[:k]} - {""})
        for items in recommended.values()
        if len(items)
    ]
    return float(np.mean(counts)) if counts else 0.0
