"""Typed ingest events and their validation.

Stores apply a batch only after ``validate_batch`` has accepted every event in it, so a
bad event never leaves half a batch applied.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

MAX_ID_BYTES = 256
MAX_BATCH = 10_000
MAX_TITLE_BYTES = 512
MAX_IMAGE_URL_BYTES = 2048
MAX_CATEGORY_BYTES = 256
MAX_SHIP_DAYS = 365
# Times from the future: an event's ts and an upsert's created_at may be at most this far
# ahead of the server's clock (client clock skew); a vacation may end at most
# MAX_VACATION_SECONDS ahead (inf, until further notice, is always allowed). A store reads
# a future time as now, so whatever the skew admits counts as just happened (news, trending,
# recency) until the clock gets there: a day let a listing dated tomorrow top its seller's
# news for a day. Five minutes is far more than NTP-synced clocks drift apart.
DEFAULT_MAX_CLOCK_SKEW = 300.0
MAX_VACATION_SECONDS = 366 * 86_400.0
# Graph degrees the stores accept at ingest (a dataset load is trusted and not capped).
DEFAULT_MAX_FRIENDS = 1_000
DEFAULT_MAX_FOLLOWS = 1_000


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
RECEIVED_SHARE = "received_share"
"""A dataset's engagement kind (not an event) for a share as its recipient's store held it:
the user who received it, the item, the friend who shared it (training.dataset)."""
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
    by ITEM_UPSERT and STOCK_UPDATE (``stock`` only); ``created_at`` None keeps an existing
    item's listing time, and lists a new item at ``ts``; the CARD_FIELDS only by ITEM_UPSERT
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
    created_at: float | None = None
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
        record = {k: ("" if v is None else str(v)) for k, v in ((f, getattr(self, f)) for f in _RECORD_FIELDS)}
        record["kind"] = self.kind.value
        record["vacation_until"] = repr(float(self.vacation_until))
        card = self.card()
        record["card"] = json.dumps(card, sort_keys=True, separators=(",", ":")) if card else ""
        return record

    @classmethod
    def from_record(cls, record: dict[str, str]) -> Event:
        card = record.get("card")
        return cls(
            event_id=record["event_id"],
            kind=EventKind(record["kind"]),
            ts=float(record["ts"]),
            user_id=record.get("user_id", ""),
            item_id=record.get("item_id", ""),
            seller_id=record.get("seller_id", ""),
            friend_id=record.get("friend_id", ""),
            created_at=float(record["created_at"]) if record.get("created_at") else None,
            stock=int(record.get("stock") or 0),
            vacation_until=float(record.get("vacation_until") or 0.0),
            **(card_from_strings(json.loads(card)) if card else {}),  # most events name none: no json.loads
        )


_RECORD_FIELDS = tuple(f.name for f in fields(Event) if f.name not in CARD_FIELDS)


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
    """An event in a batch is invalid; names its index in the batch and the field.

    ``index`` None: the batch as a whole is invalid (empty, too large) and ``field`` is
    "events". ``path`` is the request field a client reads: ``events[3].item_id``, or
    ``events``; the message starts with it.
    """

    def __init__(self, index: int | None, field: str, message: str) -> None:
        self.index = index
        self.field = field
        self.description = message
        super().__init__(f"{self.path}: {message}")

    @property
    def path(self) -> str:
        return self.field if self.index is None else f"events[{self.index}].{self.field}"


def id_problem(value: str, stripped: bool = True) -> str | None:
    """What is wrong with an id, or None. A user, item or seller id (``stripped``) may not
    have whitespace around it: a dataset's ids are stripped when loaded, so such an id
    would name someone else than the same id in the files the model was trained on."""
    if not value:
        return "must not be empty"
    if len(value.encode()) > MAX_ID_BYTES:
        return f"longer than {MAX_ID_BYTES} bytes"
    if stripped and value != value.strip():
        return f"has whitespace around it: {value!r} (ids are compared as they are; datasets' ids are stripped)"
    return None


def _check_id(index: int, field: str, value: str) -> None:
    problem = id_problem(value, stripped=field != "event_id")  # an event id is an opaque dedupe key
    if problem is not None:
        raise EventValidationError(index, field, problem)


def validate_event(index: int, event: Event, now: float | None = None, max_skew: float = DEFAULT_MAX_CLOCK_SKEW) -> None:
    """Raise EventValidationError if ``event`` cannot be applied.

    With ``now`` (the server's clock), times from the future are rejected: ``ts`` and
    ``created_at`` beyond ``now + max_skew``, a finite ``vacation_until`` beyond
    ``now + MAX_VACATION_SECONDS``.
    """
    _check_id(index, "event_id", event.event_id)
    if not math.isfinite(event.ts) or event.ts < 0:
        raise EventValidationError(index, "ts", "must be a non-negative Unix time")
    if now is not None:
        _check_not_future(index, "ts", event.ts, now + max_skew)
        if event.kind is EventKind.ITEM_UPSERT and event.created_at is not None and math.isfinite(event.created_at):
            _check_not_future(index, "created_at", event.created_at, now + max_skew)
        if event.kind is EventKind.SELLER_VACATION and math.isfinite(event.vacation_until):
            latest = now + MAX_VACATION_SECONDS
            _check_not_future(index, "until", event.vacation_until, latest, _vacation_end_hint(event.vacation_until, event.ts, latest))
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
    if event.kind is EventKind.FRIEND and event.user_id == event.friend_id:
        raise EventValidationError(index, "friend_id", "a user cannot befriend themselves")
    if event.kind is EventKind.UNFRIEND and event.user_id == event.friend_id:
        raise EventValidationError(index, "friend_id", "a user is never their own friend: nothing to unfriend")
    if event.kind is EventKind.SHARE and event.user_id == event.friend_id:
        raise EventValidationError(index, "friend_id", "a user cannot share with themselves")
    if event.kind is EventKind.FOLLOW and event.user_id == event.seller_id:
        raise EventValidationError(index, "seller_id", "a user cannot follow themselves")
    if event.kind is EventKind.NOT_INTERESTED_SELLER and event.user_id == event.seller_id:
        raise EventValidationError(index, "seller_id", "a user's own listings are never in their feed: nothing to hide")
    if event.kind in (EventKind.ITEM_UPSERT, EventKind.STOCK_UPDATE) and event.stock < 0:
        raise EventValidationError(index, "stock", "must be >= 0")
    if event.kind is EventKind.ITEM_UPSERT and event.created_at is not None:
        if not math.isfinite(event.created_at) or event.created_at < 0:
            raise EventValidationError(index, "created_at", "must be a non-negative Unix time")
    _check_card(index, event)
    if event.kind is EventKind.SELLER_VACATION and not (event.vacation_until > event.ts):
        raise EventValidationError(index, "until", "must be after the event's ts (0 means until further notice)")


MAX_UNIX_SECONDS = 1e11
"""Later than this (the year 5138) a time is not Unix seconds: almost surely milliseconds."""


def _check_not_future(index: int, field: str, value: float, latest: float, hint: str | None = None) -> None:
    """EventValidationError when ``value`` is after ``latest``, ending with ``hint`` (by
    default the milliseconds hint of a value past MAX_UNIX_SECONDS)."""
    if value > latest:
        if hint is None:
            hint = _MILLISECONDS_HINT if value > MAX_UNIX_SECONDS else ""
        raise EventValidationError(index, field, f"is in the future: {value!r} is after the latest accepted time {latest:.0f}{hint}")


_MILLISECONDS_HINT = " (milliseconds? times are Unix seconds)"


def _vacation_end_hint(until: float, ts: float, latest: float) -> str:
    """What a vacation's end too late most likely meant: milliseconds, when a thousandth of
    it is an end accepted (after ``ts``, by ``latest``); else no end (a 'forever' such as
    9999-12-31), which is 0."""
    if ts < until / 1000 <= latest:
        return _MILLISECONDS_HINT
    return " (a vacation ends at most a year ahead; 0 means until further notice)"


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
    if event.image_url and not _is_http_url(event.image_url):
        raise EventValidationError(index, "image_url", "must be an http or https URL")


def _is_http_url(text: str) -> bool:
    """An http or https URL with a host ("http://" or "https:x.jpg" names no image to fetch)."""
    try:
        parts = urlsplit(text)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a malformed port or IPv6 host
        return False


_ITEM_STATE = (EventKind.ITEM_UPSERT, EventKind.ITEM_UPDATE, EventKind.STOCK_UPDATE)
_SELLER_STATE = (EventKind.SELLER_VACATION, EventKind.SELLER_VACATION_END)


def visibility_key(event: Event) -> tuple[str, str] | None:
    """What decides whether an item may be served that ``event`` changes: the item's
    listing, card or stock, or its seller's vacation; None for every other kind."""
    if event.kind in _ITEM_STATE:
        return ("item", event.item_id)
    if event.kind in _SELLER_STATE:
        return ("seller", event.seller_id)
    return None


def chunk_bounds(keys: Sequence[Hashable | None], size: int, weights: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """``[start, end)`` ranges that cover ``keys`` in order, for applying a long batch in
    chunks: each holds at least ``size`` elements (but the last), or elements of at least
    ``size`` ``weights`` in all, and a chunk ends only where no key (None is no key) occurs
    on both sides.

    A store that applies a batch chunk by chunk lets feeds read between chunks. Cut this
    way, none of them sees an item's state half-changed: an item listed and sold out in one
    batch is never seen in stock. A key that spans the batch makes one long chunk.
    """
    last = {key: index for index, key in enumerate(keys) if key is not None}
    bounds: list[tuple[int, int]] = []
    start, reach, held = 0, -1, 0
    for index, key in enumerate(keys):
        if key is not None:
            reach = max(reach, last[key])
        held += 1 if weights is None else weights[index]
        if held >= size and reach <= index:
            bounds.append((start, index + 1))
            start, held = index + 1, 0
    if start < len(keys):
        bounds.append((start, len(keys)))
    return bounds


def check_batch_size(count: int) -> None:
    """EventValidationError (field ``events``, no index) for a batch of ``count`` events that
    is empty or over MAX_BATCH: checkable before any event is read."""
    if not count:
        raise EventValidationError(None, "events", "batch is empty")
    if count > MAX_BATCH:
        raise EventValidationError(None, "events", f"batch larger than {MAX_BATCH} events")


def validate_batch(
    events: Sequence[Event], now: float | None = None, max_skew: float = DEFAULT_MAX_CLOCK_SKEW, applied: Collection[str] = frozenset()
) -> None:
    """Validate a whole batch before any of it is applied.

    Raises EventValidationError for the first invalid event, or (field ``events``, no
    index) for an empty or oversized batch, or for an internally inconsistent one (the
    same event id used twice with different content). ``now`` and ``max_skew``: see
    ``validate_event``; without ``now`` times are not checked against the clock. An event
    whose id is in ``applied`` (the store applied it before) is a retry the store will
    count as a duplicate: its content is not checked.
    """
    check_batch_size(len(events))
    seen: dict[str, Event] = {}
    for index, event in enumerate(events):
        if event.event_id not in applied:
            validate_event(index, event, now, max_skew)
        earlier = seen.setdefault(event.event_id, event)
        if earlier != event:
            raise EventValidationError(index, "event_id", "reused within the batch for a different event")


GRAPH_KINDS = {
    EventKind.FOLLOW: "follows",
    EventKind.UNFOLLOW: "follows",
    EventKind.FRIEND: "friends",
    EventKind.UNFRIEND: "friends",
}
"""The graph edits a degree cap applies to, and the edge set each changes ("friends" are stored both ways)."""


def graph_edges(event: Event) -> list[tuple[str, str, str]]:
    """(edge set, owner, member) of each stored edge a graph event adds or removes."""
    what = GRAPH_KINDS.get(event.kind)
    if what == "follows":
        return [(what, event.user_id, event.seller_id)]
    if what == "friends":
        return [(what, event.user_id, event.friend_id), (what, event.friend_id, event.user_id)]
    return []


def degree_error(index: int, field: str, what: str, user_id: str, bound: int) -> EventValidationError:
    """The error for an edit past a degree cap: ``what`` is "friends" or "follows"."""
    noun = "friends" if what == "friends" else "followed sellers"
    return EventValidationError(index, field, f"{user_id!r} already has {bound} {noun}, the most allowed")


def check_references(events: Sequence[Event], fresh: Sequence[int], exists: Callable[[str], bool]) -> None:
    """Raise EventValidationError for the first of the ``fresh`` events that names an item
    (ITEM_REFERENCES) the store does not hold (``exists``) and no earlier upsert of the batch adds."""
    upserted: set[str] = set()
    for index in fresh:
        event = events[index]
        if event.kind is EventKind.ITEM_UPSERT:
            upserted.add(event.item_id)
        elif event.kind in ITEM_REFERENCES and event.item_id not in upserted and not exists(event.item_id):
            raise EventValidationError(index, "item_id", f"unknown item {event.item_id!r}")


def check_degrees(
    events: Sequence[Event],
    indices: Iterable[int],
    degree: Callable[[str, str], int],
    has_edge: Callable[[str, str, str], bool],
    max_friends: int,
    max_follows: int,
) -> None:
    """Raise EventValidationError for the first event of ``indices`` (in order) that would
    give a user more than ``max_friends`` friends or ``max_follows`` followed sellers
    (0: no cap), replaying the batch's earlier graph edits over the stored graph.

    ``degree(edge set, user)`` and ``has_edge(edge set, user, member)`` read the stored
    graph ("friends" or "follows"). An edit that changes nothing (an existing edge) is
    always accepted, so a retried batch never trips the cap.
    """
    if max_friends <= 0 and max_follows <= 0:  # no cap (a state directory's replay lifts them)
        return
    counts: dict[tuple[str, str], int] = {}
    edges: dict[tuple[str, str, str], bool] = {}

    def count(what: str, user: str) -> int:
        if (what, user) not in counts:
            counts[(what, user)] = degree(what, user)
        return counts[(what, user)]

    def present(edge: tuple[str, str, str]) -> bool:
        if edge not in edges:
            edges[edge] = has_edge(*edge)
        return edges[edge]

    bounds = {"friends": max_friends, "follows": max_follows}
    for index in indices:
        event = events[index]
        adding = event.kind in (EventKind.FOLLOW, EventKind.FRIEND)
        for position, edge in enumerate(graph_edges(event)):
            what, user, _ = edge
            if adding and not present(edge) and 0 < bounds[what] <= count(what, user):
                raise degree_error(index, "user_id" if position == 0 else "friend_id", what, user, bounds[what])
        for edge in graph_edges(event):
            if present(edge) != adding:
                edges[edge] = adding
                counts[edge[:2]] = count(*edge[:2]) + (1 if adding else -1)


def first_error(*checks: Callable[[], None]) -> None:
    """Run each check; raise the EventValidationError of the earliest event any of them
    rejects (the same error whichever order a store runs its checks in)."""
    errors = []
    for check in checks:
        try:
            check()
        except EventValidationError as error:
            errors.append(error)
    if errors:
        raise min(errors, key=lambda error: -1 if error.index is None else error.index)
