"""Typed ingest events and their validation.

Stores apply a batch only after ``validate_batch`` has accepted every event in it, so a
bad event never leaves half a batch applied.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_ID_BYTES = 256
MAX_BATCH = 10_000
MAX_TITLE_BYTES = 512
MAX_IMAGE_URL_BYTES = 2048
MAX_CATEGORY_BYTES = 256
MAX_SHIP_DAYS = 365


class EventKind(enum.Enum):
    LIKE = "like"
    UNLIKE = "unlike"
    FOLLOW = "follow"
    UNFOLLOW = "unfollow"
    FRIEND = "friend"
    UNFRIEND = "unfriend"
    ITEM_UPSERT = "item_upsert"
    STOCK_UPDATE = "stock_update"
    NOT_INTERESTED_ITEM = "not_interested_item"
    NOT_INTERESTED_SELLER = "not_interested_seller"
    ITEM_UPDATE = "item_update"
    SELLER_VACATION = "seller_vacation"
    SELLER_VACATION_END = "seller_vacation_end"
    SHARE = "share"
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"


ENGAGEMENTS = (EventKind.SHARE, EventKind.VIEW, EventKind.CLICK, EventKind.ADD_TO_CART, EventKind.PURCHASE)
"""A user's engagement with an item beyond a like; the trainer weighs each kind."""
ENGAGED = (EventKind.LIKE, EventKind.SHARE, EventKind.CLICK, EventKind.ADD_TO_CART, EventKind.PURCHASE)
"""Kinds that show the user cared about the item: each clears the item's unengaged views (fatigue)."""


# The id fields each kind must carry; any other id field must be empty.
REQUIRED_IDS: dict[EventKind, tuple[str, ...]] = {
    EventKind.LIKE: ("user_id", "item_id"),
    EventKind.UNLIKE: ("user_id", "item_id"),
    EventKind.FOLLOW: ("user_id", "seller_id"),
    EventKind.UNFOLLOW: ("user_id", "seller_id"),
    EventKind.FRIEND: ("user_id", "friend_id"),
    EventKind.UNFRIEND: ("user_id", "friend_id"),
    EventKind.ITEM_UPSERT: ("item_id", "seller_id"),
    EventKind.STOCK_UPDATE: ("item_id",),
    EventKind.NOT_INTERESTED_ITEM: ("user_id", "item_id"),
    EventKind.NOT_INTERESTED_SELLER: ("user_id", "seller_id"),
    EventKind.ITEM_UPDATE: ("item_id",),
    EventKind.SELLER_VACATION: ("seller_id",),
    EventKind.SELLER_VACATION_END: ("seller_id",),
    **{kind: ("user_id", "item_id") for kind in ENGAGEMENTS},
}
OPTIONAL_IDS: dict[EventKind, tuple[str, ...]] = {EventKind.SHARE: ("friend_id",)}
"""Id fields a kind may leave empty: a share names the friend it went to, or none (all friends)."""
ID_FIELDS = ("user_id", "item_id", "seller_id", "friend_id")

CARD_FIELDS = ("title", "image_url", "price", "currency", "category", "ship_days", "feed_eligible")
"""What a client draws an item's card from, and whether the seller lets the feed show it.

Presence rule: on ITEM_UPSERT and ITEM_UPDATE a field that is None is not named and keeps
its stored value (its default on a new item: empty text, no price, no ship time,
eligible); a named field replaces it, an empty string included."""
CARD_EVENTS = (EventKind.ITEM_UPSERT, EventKind.ITEM_UPDATE)
ITEM_REFERENCES = (EventKind.LIKE, EventKind.STOCK_UPDATE, EventKind.ITEM_UPDATE, *ENGAGEMENTS)
"""Kinds that must name an item the store holds, or one upserted earlier in the batch."""


@dataclass(frozen=True)
class Event:
    """One change to the live state.

    ``ts`` is when it happened (Unix seconds). ``created_at`` and ``stock`` are read only
    by ITEM_UPSERT and STOCK_UPDATE (``stock`` only); the CARD_FIELDS only by ITEM_UPSERT
    and ITEM_UPDATE, where None means "not named"; ``vacation_until`` only by
    SELLER_VACATION: the Unix time the vacation ends, ``math.inf`` for until further notice.
    """

    event_id: str
    kind: EventKind
    ts: float
    user_id: str = ""
    item_id: str = ""
    seller_id: str = ""
    friend_id: str = ""
    created_at: float = 0.0
    stock: int = 0
    price: float | None = None
    category: str | None = None
    title: str | None = None
    image_url: str | None = None
    currency: str | None = None
    ship_days: int | None = None
    feed_eligible: bool | None = None
    vacation_until: float = 0.0

    def card(self) -> dict[str, str]:
        """The named card fields as the stores keep them (``card_strings``)."""
        return card_strings({name: getattr(self, name) for name in CARD_FIELDS if getattr(self, name) is not None})

    def to_record(self) -> dict[str, str]:
        """Flat string fields, for an event log; ``from_record`` inverts it.

        The card fields travel as one JSON object of the named ones, so "not named" and
        "named empty" stay apart.
        """
        record = {k: ("" if v is None else str(v)) for k, v in asdict(self).items() if k not in CARD_FIELDS}
        record["kind"] = self.kind.value
        record["vacation_until"] = repr(float(self.vacation_until))
        card = self.card()
        record["card"] = json.dumps(card, sort_keys=True, separators=(",", ":")) if card else ""
        return record

    @classmethod
    def from_record(cls, record: dict[str, str]) -> Event:
        return cls(
            event_id=record["event_id"],
            kind=EventKind(record["kind"]),
            ts=float(record["ts"]),
            user_id=record.get("user_id", ""),
            item_id=record.get("item_id", ""),
            seller_id=record.get("seller_id", ""),
            friend_id=record.get("friend_id", ""),
            created_at=float(record.get("created_at") or 0.0),
            stock=int(record.get("stock") or 0),
            vacation_until=float(record.get("vacation_until") or 0.0),
            **card_from_strings(json.loads(record.get("card") or "{}")),
        )


def card_strings(card: dict[str, Any]) -> dict[str, str]:
    """Typed card fields as the stores keep them: price exact, ship_days an integer,
    feed_eligible 1 or 0, text as is; ``card_from_strings`` inverts it."""
    strings = dict(card)
    if "price" in strings:
        strings["price"] = repr(float(strings["price"]))
    if "ship_days" in strings:
        strings["ship_days"] = str(int(strings["ship_days"]))
    if "feed_eligible" in strings:
        strings["feed_eligible"] = "1" if strings["feed_eligible"] else "0"
    return strings


def is_currency_code(text: str) -> bool:
    """Shaped like an ISO 4217 code: three upper-case ASCII letters."""
    return len(text) == 3 and text.isascii() and text.isalpha() and text.isupper()


def card_from_strings(fields: dict[str, str]) -> dict[str, Any]:
    """Typed card fields from their ``card_strings``; names not in CARD_FIELDS are ignored."""
    typed: dict[str, Any] = {name: value for name, value in fields.items() if name in CARD_FIELDS}
    if "price" in typed:
        typed["price"] = float(typed["price"])
    if "ship_days" in typed:
        typed["ship_days"] = int(typed["ship_days"])
    if "feed_eligible" in typed:
        typed["feed_eligible"] = typed["feed_eligible"] == "1"
    return typed


class EventValidationError(ValueError):
    """An event in a batch is invalid; names its index in the batch and the field."""

    def __init__(self, index: int, field: str, message: str) -> None:
        super().__init__(f"events[{index}].{field}: {message}")
        self.index = index
        self.field = field


def _check_id(index: int, field: str, value: str) -> None:
    if not value:
        raise EventValidationError(index, field, "must not be empty")
    if len(value.encode()) > MAX_ID_BYTES:
        raise EventValidationError(index, field, f"longer than {MAX_ID_BYTES} bytes")


def validate_event(index: int, event: Event) -> None:
    """Raise EventValidationError if ``event`` cannot be applied."""
    _check_id(index, "event_id", event.event_id)
    if not math.isfinite(event.ts) or event.ts < 0:
        raise EventValidationError(index, "ts", "must be a non-negative Unix time")
    required = REQUIRED_IDS[event.kind]
    for name in ID_FIELDS:
        value = getattr(event, name)
        if name in required:
            _check_id(index, name, value)
        elif name in OPTIONAL_IDS.get(event.kind, ()):
            if value:
                _check_id(index, name, value)
        elif value:
            raise EventValidationError(index, name, f"not used by a {event.kind.value} event")
    if event.kind in (EventKind.FRIEND, EventKind.UNFRIEND) and event.user_id == event.friend_id:
        raise EventValidationError(index, "friend_id", "a user cannot befriend themselves")
    if event.kind is EventKind.SHARE and event.user_id == event.friend_id:
        raise EventValidationError(index, "friend_id", "a user cannot share with themselves")
    if event.kind in (EventKind.ITEM_UPSERT, EventKind.STOCK_UPDATE) and event.stock < 0:
        raise EventValidationError(index, "stock", "must be >= 0")
    if event.kind is EventKind.ITEM_UPSERT:
        if not math.isfinite(event.created_at) or event.created_at < 0:
            raise EventValidationError(index, "created_at", "must be a non-negative Unix time")
    _check_card(index, event)
    if event.kind is EventKind.SELLER_VACATION and not (event.vacation_until > event.ts):
        raise EventValidationError(index, "vacation_until", "must be after the event's ts (0 means until further notice)")


def _check_text(index: int, field: str, value: str | None, max_bytes: int) -> None:
    if value is not None and len(value.encode()) > max_bytes:
        raise EventValidationError(index, field, f"longer than {max_bytes} bytes")


def _check_card(index: int, event: Event) -> None:
    named = [name for name in CARD_FIELDS if getattr(event, name) is not None]
    if event.kind not in CARD_EVENTS:
        if named:
            raise EventValidationError(index, named[0], f"not used by a {event.kind.value} event")
        return
    if event.kind is EventKind.ITEM_UPDATE and not named:
        raise EventValidationError(index, "item_update", "names no field to change")
    if event.price is not None and (not math.isfinite(event.price) or event.price < 0):
        raise EventValidationError(index, "price", "must be a non-negative number")
    if event.ship_days is not None and not 0 <= event.ship_days <= MAX_SHIP_DAYS:
        raise EventValidationError(index, "ship_days", f"must be between 0 and {MAX_SHIP_DAYS} days")
    if event.currency and not is_currency_code(event.currency):
        raise EventValidationError(index, "currency", "must be an ISO 4217 code such as EUR")
    _check_text(index, "title", event.title, MAX_TITLE_BYTES)
    _check_text(index, "category", event.category, MAX_CATEGORY_BYTES)
    _check_text(index, "image_url", event.image_url, MAX_IMAGE_URL_BYTES)
    if event.image_url and urlsplit(event.image_url).scheme not in ("http", "https"):
        raise EventValidationError(index, "image_url", "must be an http or https URL")


def validate_batch(events: Sequence[Event]) -> None:
    """Validate a whole batch before any of it is applied.

    Raises EventValidationError for the first invalid event, or for an empty, oversized
    or internally inconsistent batch (the same event id used twice with different content).
    """
    if not events:
        raise EventValidationError(0, "events", "batch is empty")
    if len(events) > MAX_BATCH:
        raise EventValidationError(MAX_BATCH, "events", f"batch larger than {MAX_BATCH} events")
    seen: dict[str, Event] = {}
    for index, event in enumerate(events):
        validate_event(index, event)
        earlier = seen.setdefault(event.event_id, event)
        if earlier != event:
            raise EventValidationError(index, "event_id", "reused within the batch for a different event")
