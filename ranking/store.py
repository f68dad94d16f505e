"""The read side of the online store, as the ranking pipeline sees it.

Each method is one batched read: one round trip on a networked store, whatever the
number of ids it is given. A feed costs exactly three calls, so its latency does not
grow with the number of friends or followed sellers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ranking.types import ItemState, UserContext

# Trending is a like count where each like decays with half-life TRENDING_HALF_LIFE.
# Stores keep sum(exp((ts - TRENDING_EPOCH) / tau)) per item, which only ever grows by
# increments, so Redis can keep it with ZINCRBY and no periodic recomputation; the
# ordering is the same as that of the decayed count at any "now".
TRENDING_EPOCH = 1_735_689_600.0  # 2025-01-01T00:00:00Z
TRENDING_HALF_LIFE = 3 * 86_400.0
_TRENDING_TAU = TRENDING_HALF_LIFE / math.log(2)
# exp() overflows a double past 709; clamp so a far-future timestamp cannot poison the set.
# The lower clamp keeps very old likes, and likes of unknown time (stored as 0), above
# zero: a dataset without timestamps still has trending items, ordered by like count.
_MAX_EXPONENT = 700.0
_MIN_EXPONENT = -700.0


def trending_weight(ts: float) -> float:
    """The amount one like at time ``ts`` adds to its item's trending score."""
    return math.exp(min(max((ts - TRENDING_EPOCH) / _TRENDING_TAU, _MIN_EXPONENT), _MAX_EXPONENT))


@dataclass(frozen=True)
class Activity:
    """Recent social activity around one user.

    Lists are newest first, each bounded by the ``per_key_limit`` asked for.
    """

    listings_by_seller: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    likes_by_friend: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    trending: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Hydration:
    """Current state of the asked items.

    ``items`` has an entry for every asked id that exists (unknown ids are absent);
    ``liked`` is the subset of asked ids the user has liked.
    """

    items: dict[str, ItemState]
    liked: frozenset[str]


class FeedStateReader(Protocol):
    """Read-only view of the live state that one feed needs."""

    def read_user(self, user_id: str) -> UserContext:
        """The user's recent likes, follows, friends and hidden items and sellers.

        An unknown user gets an empty context, never an error.
        """
        ...

    def read_activity(
        self,
        seller_ids: Sequence[str],
        friend_ids: Sequence[str],
        per_key_limit: int,
        trending_limit: int,
    ) -> Activity:
        """Newest listings of each seller, newest likes of each friend and the top trending items.

        Unknown sellers and friends map to empty lists.
        """
        ...

    def hydrate(self, user_id: str, item_ids: Sequence[str]) -> Hydration:
        """Item state (stock, seller, creation time, like count) and liked flags for ``user_id``."""
        ...
