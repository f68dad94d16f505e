"""Plain data types shared by the ranking pipeline, the stores and the trainer.

Ids are strings at every boundary; only numpy code maps them to dense int32 rows.
Times are Unix seconds as floats.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ReasonKind(enum.Enum):
    """Why an item is in a feed. Values match the proto enum numbers."""

    FOLLOWED_SELLER = 1
    FRIENDS_LIKED = 2
    SIMILAR_TO_LIKES = 3
    TRENDING = 4


@dataclass(frozen=True, slots=True)
class ItemState:
    """What the store knows about one item at request time."""

    item_id: str
    seller_id: str
    created_at: float
    stock: int
    like_count: int = 0

    @property
    def in_stock(self) -> bool:
        return self.stock > 0


@dataclass(slots=True)
class Reason:
    """One reason an item was gathered: its kind, the ids behind it and a count.

    For FRIENDS_LIKED ``actor_ids`` are the friends who liked the item; for
    FOLLOWED_SELLER it is the seller; for SIMILAR_TO_LIKES and TRENDING it is empty.
    ``count`` is the number of actors, or 1 where there are none.
    """

    kind: ReasonKind
    actor_ids: list[str] = field(default_factory=list)
    count: int = 1


@dataclass(slots=True)
class Candidate:
    """An item gathered for one feed, with everything scoring needs.

    Sources fill ``item_id``, ``reasons`` and their own signal (``embedding_score``,
    ``friend_like_times``, ``social_time``); hydration fills ``item``.
    """

    item_id: str
    reasons: list[Reason] = field(default_factory=list)
    embedding_score: float | None = None
    friend_like_times: list[float] = field(default_factory=list)
    social_time: float | None = None  # latest listing by a followed seller or like by a friend
    item: ItemState | None = None
    score: float = 0.0

    def reason(self, kind: ReasonKind) -> Reason | None:
        return next((r for r in self.reasons if r.kind is kind), None)

    @property
    def seller_id(self) -> str:
        return self.item.seller_id if self.item else ""


@dataclass(frozen=True)
class UserContext:
    """A user's social state, read once per request.

    ``recent_likes`` is newest first and bounded by the store; ``liked`` membership
    for filtering is checked separately at hydration, so a bound never leaks an
    already-liked item into the feed.
    """

    user_id: str
    recent_likes: tuple[tuple[str, float], ...] = ()
    follows: frozenset[str] = frozenset()
    friends: frozenset[str] = frozenset()
    hidden_items: frozenset[str] = frozenset()
    hidden_sellers: frozenset[str] = frozenset()

    @property
    def is_empty(self) -> bool:
        return not (self.recent_likes or self.follows or self.friends)
