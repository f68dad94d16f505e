"""Plain data types of a served page: what the pipeline returns for the items it picked.

Ids are strings here; inside the pipeline items travel as int32 codes in a
``ranking.batch.CandidateBatch`` and only the items of the returned page become
objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class ReasonKind(enum.Enum):
    """Why an item is in a feed. Values match the proto enum numbers."""

    FOLLOWED_SELLER = 1
    FRIENDS_LIKED = 2
    SIMILAR_TO_LIKES = 3
    TRENDING = 4
    FRIEND_SHARED = 5


MAX_REASON_ACTORS = 10
"""Actor ids a reason lists at most, the newest; its count has them all. A page of 100
items each liked by 100 friends with ids of 256 bytes would otherwise be 2.5 MB of ids,
over the 4 MB a gRPC client takes by default once shares are added, for "liked by Ann,
Bo and 98 others"."""


@dataclass(slots=True)
class Reason:
    """One reason an item was gathered: its kind, the ids behind it and a count.

    For FRIENDS_LIKED ``actor_ids`` are the friends who liked the item, newest like
    first; for FRIEND_SHARED the friends who shared it with the user, newest share first
    (both at most MAX_REASON_ACTORS); for FOLLOWED_SELLER it is the seller; for SIMILAR_TO_LIKES and TRENDING it is
    empty. ``count`` is the number of actors, or 1 where there are none.
    """

    kind: ReasonKind
    actor_ids: list[str] = field(default_factory=list)
    count: int = 1


@dataclass(frozen=True, slots=True)
class ShopperFilters:
    """What a shopper narrowed the feed to, on one request.

    Empty ``include_categories`` means every category. An item whose price (or ship
    time) is unknown does not pass a price range (or a ship-time bound): the feed cannot
    promise it.
    """

    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    max_ship_days: int | None = None

    @property
    def active(self) -> bool:
        return self != _NO_SHOPPER_FILTERS


_NO_SHOPPER_FILTERS = ShopperFilters()


class ItemCard(NamedTuple):
    """What a client draws an item from: text, picture, price and dispatch time.

    ``price`` and ``ship_days`` are None when the seller gave none; ``currency`` is an
    ISO 4217 code. A named tuple rather than a frozen dataclass: every page builds one per
    item, at a quarter of the cost.
    """

    title: str = ""
    image_url: str = ""
    price: float | None = None
    currency: str = ""
    category: str = ""
    ship_days: int | None = None


@dataclass(slots=True)
class RankedItem:
    """One item of a served page, best first, with its score, reasons (in ReasonKind order) and card."""

    item_id: str
    seller_id: str
    score: float
    reasons: list[Reason]
    card: ItemCard = ItemCard()
    news: bool = False  # leads the page as fresh activity of the user's graph, out of its score's order

    def reason(self, kind: ReasonKind) -> Reason | None:
        return next((r for r in self.reasons if r.kind is kind), None)
