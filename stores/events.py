"""Typed ingest events and their validation.

Stores apply a batch only after ``validate_batch`` has accepted every event in it, so a
bad event never leaves half a batch applied.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

MAX_ID_BYTES = 256
MAX_BATCH = 10_000


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
}
ID_FIELDS = ("user_id", "item_id", "seller_id", "friend_id")


@dataclass(frozen=True)
class Event:
    """One change to the live state.

    ``ts`` is when it happened (Unix seconds). ``created_at``, ``stock``, ``price`` and
    ``category`` are read only by ITEM_UPSERT and STOCK_UPDATE (``stock`` only).
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
    category: str = ""

    def to_record(self) -> dict[str, str]:
        """Flat string fields, for an event log; ``from_record`` inverts it."""
        record = {k: ("" if v is None else str(v)) for k, v in asdict(self).items()}
        record["kind"] = self.kind.value
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
            price=float(record["price"]) if record.get("price") else None,
            category=record.get("category", ""),
        )


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
        elif value:
            raise EventValidationError(index, name, f"not used by a {event.kind.value} event")
    if event.kind in (EventKind.FRIEND, EventKind.UNFRIEND) and event.user_id == event.friend_id:
        raise EventValidationError(index, "friend_id", "a user cannot befriend themselves")
    if event.kind in (EventKind.ITEM_UPSERT, EventKind.STOCK_UPDATE) and event.stock < 0:
        raise EventValidationError(index, "stock", "must be >= 0")
    if event.kind is EventKind.ITEM_UPSERT:
        if not math.isfinite(event.created_at) or event.created_at < 0:
            raise EventValidationError(index, "created_at", "must be a non-negative Unix time")
        if event.price is not None and (not math.isfinite(event.price) or event.price < 0):
            raise EventValidationError(index, "price", "must be a non-negative number")


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
