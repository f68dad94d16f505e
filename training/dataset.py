"""The dataset directory: items.csv, likes.csv, follows.csv, friends.csv, sellers.csv,
engagements.csv.

Columns (header row required, order free, extra columns rejected):
  items.csv    item_id, seller_id, created_at, stock[, price][, category][, title]
               [, image_url][, currency][, ship_days][, feed_eligible]
  likes.csv    user_id, item_id, ts[, weight]
  follows.csv  user_id, seller_id, ts
  friends.csv  user_id, friend_id, ts        (undirected)
  sellers.csv  seller_id, vacation_until
  engagements.csv  user_id, item_id, kind, ts[, friend_id]
``ts`` / ``created_at`` are Unix seconds or ISO-8601, and ``ts`` may be empty.
``weight`` (optional, likes only) is the strength of a like, e.g. a listening count; a
positive number, 1 when the column is absent or the value empty.
The item card columns are optional and may be empty: ``price`` a non-negative number,
``currency`` an ISO 4217 code, ``ship_days`` the whole days until dispatch (0..365),
``feed_eligible`` 1 or 0 (empty: 1), whether the seller lets the feed show the item.
``vacation_until`` is when the seller's vacation ends (a time, or ``inf`` for until
further notice; empty: not on vacation); sellers not listed are not on vacation.
An engagement's ``kind`` is share, view, click, add_to_cart or purchase (ENGAGEMENT_KINDS);
``friend_id`` only on a share, the friend it went to (empty: all the user's friends).
Every row is kept (a view repeated is two views); the item must be in items.csv.

Only likes.csv is required. Without items.csv every liked item is an in-stock item
(stock 1) with no seller (``""``), unknown ``created_at`` (NaN), price NaN, empty card
text and eligible. A missing follows.csv / friends.csv / sellers.csv /
engagements.csv means no such rows.

Every bad value raises :class:`DatasetError` naming the file, the 1-based physical line
(the header is line 1) and the column.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import hashlib
import io
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Literal, Sequence

import numpy as np

from ranking.vocab import encode
from stores.events import ENGAGEMENTS, MAX_SHIP_DAYS, EventKind, is_currency_code

ENGAGEMENT_KINDS = tuple(kind.value for kind in ENGAGEMENTS)


@dataclass(frozen=True)
class Items:
    item_id: list[str]
    seller_id: list[str]  # "" when the item has no seller
    created_at: np.ndarray  # float64 Unix seconds; NaN when unknown
    stock: np.ndarray  # int64; 0 = out of stock
    price: np.ndarray  # float64; NaN when unknown
    category: list[str]
    # The card columns; None fills the default (empty text, NaN days, eligible).
    title: list[str] | None = None
    image_url: list[str] | None = None
    currency: list[str] | None = None
    ship_days: np.ndarray | None = None  # float64 whole days until dispatch; NaN when unknown
    feed_eligible: np.ndarray | None = None  # bool

    def __post_init__(self) -> None:
        n = len(self.item_id)
        defaults = {
            "title": lambda: [""] * n, "image_url": lambda: [""] * n, "currency": lambda: [""] * n,
            "ship_days": lambda: np.full(n, np.nan), "feed_eligible": lambda: np.ones(n, bool),
        }  # fmt: skip
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default())

    def take(self, rows: np.ndarray) -> Items:
        """The items at ``rows`` (an index array), in that order."""
        idx = rows.tolist()
        return Items(**{
            name: [getattr(self, name)[i] for i in idx] if isinstance(getattr(self, name), list) else getattr(self, name)[rows]
            for name in ITEM_FIELDS
        })  # fmt: skip

    @classmethod
    def without_listing(cls, item_ids: list[str]) -> Items:
        """Items known only by id: in stock, no seller, no creation time (e.g. no items.csv)."""
        n = len(item_ids)
        return cls(
            item_id=item_ids,
            seller_id=[""] * n,
            created_at=np.full(n, np.nan),
            stock=np.ones(n, dtype=np.int64),
            price=np.full(n, np.nan),
            category=[""] * n,
        )

    def __len__(self) -> int:
        return len(self.item_id)


ITEM_FIELDS = tuple(f.name for f in dataclasses.fields(Items))


@dataclass(frozen=True)
class Sellers:
    """Sellers with state of their own: today, vacations. Unlisted sellers have none."""

    seller_id: list[str]
    vacation_until: np.ndarray  # float64 end of the vacation; inf: until further notice; NaN: none

    @classmethod
    def none(cls) -> Sellers:
        return cls([], np.zeros(0))

    def __len__(self) -> int:
        return len(self.seller_id)


@dataclass(frozen=True)
class Edges:
    """Directed edges src -> dst with a time each (NaN when unknown).

    ``weight`` is the strength of each edge (float64, e.g. a listening count), or None
    when every edge weighs 1 (the common case: only likes.csv may carry weights).
    """

    src: list[str]
    dst: list[str]
    ts: np.ndarray  # float64
    weight: np.ndarray | None = None  # float64, one per edge; None = all 1

    def __len__(self) -> int:
        return len(self.src)

    def weights(self) -> np.ndarray:
        """float64 weight per edge, 1 where the edges carry none."""
        if self.weight is None:
            return np.ones(len(self.src), dtype=np.float64)
        return np.asarray(self.weight, dtype=np.float64)


@dataclass(frozen=True)
class Engagements:
    """Engagements beyond likes, one row each, in file order (repeats are kept: two views are two).

    ``kind`` holds ENGAGEMENT_KINDS values; ``friend_id`` is "" except on a share that
    named the friend it went to.
    """

    user_id: list[str]
    item_id: list[str]
    kind: list[str]
    ts: np.ndarray  # float64; NaN when unknown
    friend_id: list[str]

    @classmethod
    def none(cls) -> Engagements:
        return cls([], [], [], np.zeros(0), [])

    def __len__(self) -> int:
        return len(self.user_id)

    def take(self, rows: np.ndarray) -> Engagements:
        """The rows selected by an index array or a boolean mask, in that order."""
        idx = np.arange(len(self))[rows].tolist()
        return Engagements(
            [self.user_id[i] for i in idx], [self.item_id[i] for i in idx], [self.kind[i] for i in idx],
            self.ts[idx], [self.friend_id[i] for i in idx],
        )  # fmt: skip

    def of_kind(self, kind: EventKind) -> Engagements:
        return self.take(np.fromiter((k == kind.value for k in self.kind), bool, len(self)))


@dataclass(frozen=True)
class Dataset:
    """A validated dataset. Edges are deduplicated; friendships are stored once per pair."""

    items: Items
    likes: Edges  # user -> item
    follows: Edges  # user -> seller
    friends: Edges  # user <-> friend, src < dst
    sellers: Sellers = dataclasses.field(default_factory=Sellers.none)
    engagements: Engagements = dataclasses.field(default_factory=Engagements.none)

    def fingerprint(self) -> str:
        """sha256 hex digest of the dataset content.

        It is the hash of exactly the bytes :func:`write_dataset` writes (files in a
        fixed order), so equal datasets in equal order have equal fingerprints, and a
        dataset reloaded from its own written copy keeps its fingerprint.
        """
        digest = hashlib.sha256()
        with _gc_paused():
            rendered = _render(self)
        for name, text in rendered.items():
            data = text.encode("utf-8")
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
        return digest.hexdigest()

    def user_ids(self) -> list[str]:
        """Sorted distinct users acting in likes, follows (the follower), friends and engagements.

        Sellers appear only if they also act; an item's seller_id is not enough.
        """
        users: set[str] = set(self.likes.src)
        users.update(self.follows.src)
        users.update(self.friends.src)
        users.update(self.friends.dst)
        users.update(self.engagements.user_id)
        return sorted(users)

    def with_likes(self, likes: Edges) -> Dataset:
        """The same dataset with its likes replaced (items, follows, friends shared)."""
        return dataclasses.replace(self, likes=likes)


class DatasetError(ValueError):
    """A bad value in a dataset file, located by file, line and column."""

    def __init__(self, file: str, line: int, column: str, message: str) -> None:
        super().__init__(f"{file}:{line}: column {column!r}: {message}")
        self.file = file
        self.line = line
        self.column = column
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, int, str, str]]:
        # Picklable across processes despite the four-argument constructor.
        return (DatasetError, (self.file, self.line, self.column, self.message))


# --------------------------------------------------------------------------- schema

ITEMS, LIKES, FOLLOWS, FRIENDS, SELLERS = "items.csv", "likes.csv", "follows.csv", "friends.csv", "sellers.csv"
ENGAGEMENTS_FILE = "engagements.csv"

_CARD_COLUMNS = ("title", "image_url", "currency", "ship_days", "feed_eligible")
# (required columns, optional columns), in the order write_dataset writes them.
_SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    ITEMS: (("item_id", "seller_id", "created_at", "stock"), ("price", "category", *_CARD_COLUMNS)),
    LIKES: (("user_id", "item_id", "ts"), ("weight",)),
    FOLLOWS: (("user_id", "seller_id", "ts"), ()),
    FRIENDS: (("user_id", "friend_id", "ts"), ()),
    SELLERS: (("seller_id", "vacation_until"), ()),
    ENGAGEMENTS_FILE: (("user_id", "item_id", "kind", "ts"), ("friend_id",)),
}

_TIME_EXPECTED = "expected a Unix time or ISO-8601 timestamp"


def _empty_edges() -> Edges:
    return Edges(src=[], dst=[], ts=np.empty(0, dtype=np.float64))


# --------------------------------------------------------------------------- reading


class _Table:
    """The columns of one CSV file plus a map from data row index to physical line."""

    def __init__(
        self, file: str, columns: dict[str, list[str]], lines: np.ndarray | None, n: int
    ) -> None:
        self.file = file
        self.columns = columns
        self._lines = lines  # None: row i is on line i + 2 (no blank or multi-line rows)
        self.n = n

    def line(self, row: int) -> int:
        return int(self._lines[row]) if self._lines is not None else row + 2

    def error(self, row: int, column: str, message: str) -> DatasetError:
        return DatasetError(self.file, self.line(row), column, message)


def _read_table(directory: str, file: str) -> _Table:
    required, optional = _SCHEMA[file]
    with open(os.path.join(directory, file), newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DatasetError(file, 1, "<header>", "empty file; a header row is required")
        header = [h.strip() for h in header]
        seen: set[str] = set()
        for name in header:
            if name not in required and name not in optional:
                raise DatasetError(
                    file, 1, name, f"unknown column; expected {', '.join(required + optional)}"
                )
            if name in seen:
                raise DatasetError(file, 1, name, "duplicate column")
            seen.add(name)
        for name in required:
            if name not in seen:
                raise DatasetError(file, 1, name, "missing required column")
        header_lines = reader.line_num
        fast = _read_columns_fast(os.path.join(directory, file), header) if header_lines == 1 else None
        if fast is not None:
            columns, n = fast
            return _Table(file, columns, None, n)
        rows = list(reader)
        total_lines = reader.line_num

    lines: np.ndarray | None = None
    has_blank = [] in rows
    if has_blank or total_lines - header_lines != len(rows) or header_lines != 1:
        # Blank lines or quoted newlines: recover each row's first physical line.
        lines, rows = _rows_with_lines(directory, file)

    width = len(header)
    if rows and (min(map(len, rows)) != width or max(map(len, rows)) != width):
        table = _Table(file, {}, lines, len(rows))
        for i, r in enumerate(rows):
            if len(r) != width:
                column = header[len(r)] if len(r) < width else "<row>"
                raise table.error(i, column, f"expected {width} fields, got {len(r)}")

    if rows:
        cols = [list(c) for c in zip(*rows)]
    else:
        cols = [[] for _ in header]
    return _Table(file, dict(zip(header, cols)), lines, len(rows))


def _read_columns_fast(path: str, header: list[str]) -> tuple[dict[str, list[str]], int] | None:
    """Every column as strings, read by pyarrow's multithreaded CSV parser.

    None when the file needs the careful reader: a row with the wrong number of fields,
    a quoted newline, a blank line (anything that breaks "data row i is on line i + 2",
    which error messages rely on). That reader then finds and names the problem.
    """
    import pyarrow as pa
    import pyarrow.csv as pv

    try:
        table = pv.read_csv(
            path,
            read_options=pv.ReadOptions(column_names=header, skip_rows=1),
            parse_options=pv.ParseOptions(newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    newlines = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
    physical = newlines + (last != b"\n")
    if table.num_rows != physical - 1:
        return None
    return {
        name: _shared_strings(table.column(name)) if name.endswith("_id") else table.column(name).to_pylist() for name in header
    }, table.num_rows


def _shared_strings(column) -> list[str]:
    """The column as a list in which equal values are one str object.

    Ids repeat (a user on every one of their likes): one object per distinct id instead of
    one per row saves about 50 bytes a row, gigabytes at tens of millions of likes.
    """
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column.combine_chunks())
    distinct = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    return distinct[encoded.indices.to_numpy(zero_copy_only=False)].tolist()


def _rows_with_lines(directory: str, file: str) -> tuple[np.ndarray, list[list[str]]]:
    lines: list[int] = []
    rows: list[list[str]] = []
    with open(os.path.join(directory, file), newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        next(reader)
        prev = reader.line_num
        for r in reader:
            if r:  # blank lines are skipped, not errors
                rows.append(r)
                lines.append(prev + 1)
            prev = reader.line_num
    return np.asarray(lines, dtype=np.int64), rows


# --------------------------------------------------------------------------- values


def _parse_time(text: str) -> float:
    """One Unix-seconds or ISO-8601 value; naive ISO times are UTC. Raises ValueError."""
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        dt = datetime.fromisoformat(s)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _times(table: _Table, column: str, allow_empty: bool) -> np.ndarray:
    values = table.columns[column]
    try:
        # Fast path: every value is a plain number (the common case for machine-written data).
        out = np.array(values, dtype=np.float64)
        if np.isfinite(out).all():
            return out
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if not v.strip():
            if not allow_empty:
                raise table.error(i, column, "must not be empty")
            out[i] = np.nan
            continue
        try:
            out[i] = _parse_time(v)
        except ValueError:
            raise table.error(i, column, f"{_TIME_EXPECTED}, got {v!r}") from None
    return out


def _stock(table: _Table, column: str) -> np.ndarray:
    values = table.columns[column]
    expected = "expected a non-negative integer"
    try:
        out = np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        for i, v in enumerate(values):
            try:
                ok = 0 <= int(v) < 2**63
            except ValueError:
                ok = False
            if not ok:
                raise table.error(i, column, f"{expected}, got {v!r}") from None
        raise
    negative = np.flatnonzero(out < 0)
    if len(negative):
        i = int(negative[0])
        raise table.error(i, column, f"{expected}, got {values[i]!r}")
    return out


def _prices(table: _Table, column: str) -> np.ndarray:
    values = table.columns.get(column)
    if values is None:
        return np.full(table.n, np.nan, dtype=np.float64)
    expected = "expected a non-negative number or empty"
    try:
        out = np.array(values, dtype=np.float64)
    except ValueError:
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            try:
                out[i] = float(v) if v.strip() else np.nan
            except ValueError:
                raise table.error(i, column, f"{expected}, got {v!r}") from None
    bad = np.flatnonzero(np.isinf(out) | (out < 0))
    if len(bad):
        i = int(bad[0])
        raise table.error(i, column, f"{expected}, got {values[i]!r}")
    return out


def _ids(table: _Table, column: str) -> list[str]:
    values = table.columns[column]
    if "" in values:
        raise table.error(values.index(""), column, "must not be empty")
    return values


def _dedupe(src: list[str], dst: list[str], ts: np.ndarray, weight: np.ndarray | None = None) -> Edges:
    """Collapse repeated (src, dst) pairs, keeping the latest known ts and the largest weight.

    Output order is the order of each pair's first occurrence.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(src)
    if not n:
        return Edges(src=src, dst=dst, ts=np.asarray(ts, dtype=np.float64), weight=weight)
    su = encode(src)[0].astype(np.int64)
    dv = encode(dst)[0].astype(np.int64)
    key = su * (int(dv.max()) + 1) + dv
    if len(pc.unique(pa.array(key))) == n:
        return Edges(src=src, dst=dst, ts=np.asarray(ts, dtype=np.float64), weight=weight)
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    filled = np.where(np.isnan(ts), -np.inf, ts)
    latest = np.full(len(uniq), -np.inf)
    np.maximum.at(latest, inverse, filled)
    latest[np.isneginf(latest)] = np.nan
    order = np.argsort(first, kind="stable")
    rows = first[order]
    merged_weight = None
    if weight is not None:
        merged_weight = np.full(len(uniq), -np.inf)
        np.maximum.at(merged_weight, inverse, np.asarray(weight, dtype=np.float64))
        merged_weight = merged_weight[order]
    return Edges(
        src=[src[i] for i in rows.tolist()],
        dst=[dst[i] for i in rows.tolist()],
        ts=latest[order],
        weight=merged_weight,
    )


def _weights(table: _Table, column: str) -> np.ndarray | None:
    values = table.columns.get(column)
    if values is None:
        return None
    expected = "expected a positive number or empty"
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v) if v.strip() else 1.0
        except ValueError:
            raise table.error(i, column, f"{expected}, got {v!r}") from None
        if not (math.isfinite(out[i]) and out[i] > 0):
            raise table.error(i, column, f"{expected}, got {v!r}")
    return out


# --------------------------------------------------------------------------- load


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: building millions of small str/list objects otherwise
    triggers repeated full collections that triple load time; nothing here makes cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_dataset(
    path: str,
    on_unknown_item: Literal["error", "drop"] = "error",
    warnings: list[str] | None = None,
) -> Dataset:
    """Read and validate a dataset directory.

    Duplicate likes/follows/friendships are collapsed keeping the latest ts; friendships
    are undirected and stored once with ``src < dst``. A like of an item missing from
    items.csv raises DatasetError by default (``on_unknown_item="error"``); with
    ``"drop"`` such likes are dropped and, if ``warnings`` is a list, a message with the
    count is appended to it.

    Raises:
        DatasetError: a missing likes.csv (line 0, column "<file>"), a bad header, a
            bad value, a row with the wrong number of fields, a duplicate item_id, a
            self-friendship or an unknown item.
    """
    if on_unknown_item not in ("error", "drop"):
        raise ValueError(f"on_unknown_item must be 'error' or 'drop', got {on_unknown_item!r}")
    with _gc_paused():
        return _load(path, on_unknown_item, warnings)


def _load(path: str, on_unknown_item: str, warnings: list[str] | None) -> Dataset:
    if not os.path.isfile(os.path.join(path, LIKES)):
        raise DatasetError(LIKES, 0, "<file>", f"required file missing in {path!r}")

    likes_t = _read_table(path, LIKES)
    like_users = _ids(likes_t, "user_id")
    like_items = _ids(likes_t, "item_id")
    like_ts = _times(likes_t, "ts", allow_empty=True)
    like_weight = _weights(likes_t, "weight")

    if os.path.isfile(os.path.join(path, ITEMS)):
        items = _load_items(_read_table(path, ITEMS))
        known = set(items.item_id)
        if not known.issuperset(like_items):
            keep = np.fromiter(
                map(known.__contains__, like_items), dtype=bool, count=len(like_items)
            )
            unknown = np.flatnonzero(~keep)
            if on_unknown_item == "error":
                i = int(unknown[0])
                raise likes_t.error(
                    i, "item_id", f"unknown item {like_items[i]!r} (not in {ITEMS})"
                )
            if warnings is not None:
                warnings.append(
                    f"{LIKES}: dropped {len(unknown)} likes of items not in {ITEMS} "
                    f"(first on line {likes_t.line(int(unknown[0]))})"
                )
            rows = np.flatnonzero(keep).tolist()
            like_users = [like_users[i] for i in rows]
            like_items = [like_items[i] for i in rows]
            like_ts = like_ts[keep]
            if like_weight is not None:
                like_weight = like_weight[keep]
    else:
        items = Items.without_listing(list(dict.fromkeys(like_items)))

    likes = _dedupe(like_users, like_items, like_ts, like_weight)

    follows = _empty_edges()
    if os.path.isfile(os.path.join(path, FOLLOWS)):
        t = _read_table(path, FOLLOWS)
        follows = _dedupe(_ids(t, "user_id"), _ids(t, "seller_id"), _times(t, "ts", True))

    friends = _empty_edges()
    if os.path.isfile(os.path.join(path, FRIENDS)):
        friends = _load_friends(_read_table(path, FRIENDS))

    sellers = Sellers.none()
    if os.path.isfile(os.path.join(path, SELLERS)):
        sellers = _load_sellers(_read_table(path, SELLERS))

    engagements = Engagements.none()
    if os.path.isfile(os.path.join(path, ENGAGEMENTS_FILE)):
        engagements = _load_engagements(_read_table(path, ENGAGEMENTS_FILE), set(items.item_id))

    return Dataset(items=items, likes=likes, follows=follows, friends=friends, sellers=sellers, engagements=engagements)


def _load_engagements(t: _Table, known_items: set[str]) -> Engagements:
    user_id, item_id = _ids(t, "user_id"), _ids(t, "item_id")
    kind = t.columns["kind"]
    friend_id = t.columns.get("friend_id", [""] * t.n)
    valid = set(ENGAGEMENT_KINDS)
    for i, (user, item, k, friend) in enumerate(zip(user_id, item_id, kind, friend_id)):
        if k not in valid:
            raise t.error(i, "kind", f"expected one of {', '.join(ENGAGEMENT_KINDS)}, got {k!r}")
        if item not in known_items:
            raise t.error(i, "item_id", f"unknown item {item!r} (not in {ITEMS} or {LIKES})")
        if friend and k != EventKind.SHARE.value:
            raise t.error(i, "friend_id", f"only a share names a friend, not a {k}")
        if friend == user:
            raise t.error(i, "friend_id", f"user {user!r} shares with themselves")
    return Engagements(user_id, item_id, kind, _times(t, "ts", allow_empty=True), friend_id)


def _load_sellers(t: _Table) -> Sellers:
    seller_id = _ids(t, "seller_id")
    first: dict[str, int] = {}
    for i, v in enumerate(seller_id):
        if first.setdefault(v, i) != i:
            raise t.error(i, "seller_id", f"duplicate seller {v!r} (first on line {t.line(first[v])})")
    until = np.full(t.n, np.nan)
    for i, v in enumerate(t.columns["vacation_until"]):
        text = v.strip()
        if text.lower() == "inf":
            until[i] = np.inf
        elif text:
            try:
                until[i] = _parse_time(text)
            except ValueError:
                raise t.error(i, "vacation_until", f"{_TIME_EXPECTED}, 'inf' or empty, got {v!r}") from None
    return Sellers(seller_id, until)


def _ship_days(table: _Table, column: str) -> np.ndarray | None:
    if column not in table.columns:
        return None
    out = np.full(table.n, np.nan)
    for i, v in enumerate(table.columns[column]):
        if v.strip():
            try:
                out[i] = int(v)
            except ValueError:
                out[i] = -1.0
            if not 0 <= out[i] <= MAX_SHIP_DAYS:
                raise table.error(i, column, f"expected whole days between 0 and {MAX_SHIP_DAYS} or empty, got {v!r}")
    return out


def _eligible(table: _Table, column: str) -> np.ndarray | None:
    values = table.columns.get(column)
    if values is None:
        return None
    bad = next((i for i, v in enumerate(values) if v.strip() not in ("", "0", "1")), None)
    if bad is not None:
        raise table.error(bad, column, f"expected 1, 0 or empty, got {values[bad]!r}")
    return np.fromiter((v.strip() != "0" for v in values), bool, len(values))


def _currencies(table: _Table, column: str) -> list[str] | None:
    values = table.columns.get(column)
    for i, v in enumerate(values or ()):
        if v and not is_currency_code(v):
            raise table.error(i, column, f"expected an ISO 4217 code such as EUR or empty, got {v!r}")
    return values


def _load_items(t: _Table) -> Items:
    item_id = _ids(t, "item_id")
    if len(set(item_id)) != len(item_id):
        first: dict[str, int] = {}
        for i, v in enumerate(item_id):
            if v in first:
                raise t.error(
                    i, "item_id", f"duplicate item {v!r} (first on line {t.line(first[v])})"
                )
            first[v] = i
    return Items(
        item_id=item_id,
        seller_id=t.columns["seller_id"],  # "" = no seller
        created_at=_times(t, "created_at", allow_empty=True),
        stock=_stock(t, "stock"),
        price=_prices(t, "price"),
        category=t.columns.get("category", [""] * t.n),
        title=t.columns.get("title"),
        image_url=t.columns.get("image_url"),
        currency=_currencies(t, "currency"),
        ship_days=_ship_days(t, "ship_days"),
        feed_eligible=_eligible(t, "feed_eligible"),
    )


def _load_friends(t: _Table) -> Edges:
    a = _ids(t, "user_id")
    b = _ids(t, "friend_id")
    ts = _times(t, "ts", allow_empty=True)
    src: list[str] = []
    dst: list[str] = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x < y:
            src.append(x)
            dst.append(y)
        elif y < x:
            src.append(y)
            dst.append(x)
        else:
            raise t.error(i, "friend_id", f"self-friendship: user {x!r} befriends itself")
    return _dedupe(src, dst, ts)


# --------------------------------------------------------------------------- write


def _format_times(ts: np.ndarray) -> list[str]:
    """Integral seconds as integers, other values by repr (exact), NaN as empty."""
    ts = np.asarray(ts, dtype=np.float64)
    finite = np.isfinite(ts)
    if finite.all() and (np.floor(ts) == ts).all() and (np.abs(ts) < 2**53).all():
        return ts.astype(np.int64).astype(str).tolist()
    return [_format_time(x) for x in ts.tolist()]


def _format_time(x: float) -> str:
    if math.isnan(x):
        return ""
    if x == math.floor(x) and abs(x) < 2**53:
        return str(int(x))
    return repr(x)


def _csv_text(header: Sequence[str], columns: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    # With a "\n" terminator, csv's minimal quoting leaves a bare "\r" unquoted, which
    # reads back as a line break; quote everything in the rare file that has one.
    has_cr = any("\r" in "".join(col) for col in columns)
    writer = csv.writer(
        buf, lineterminator="\n", quoting=csv.QUOTE_ALL if has_cr else csv.QUOTE_MINIMAL
    )
    writer.writerow(header)
    writer.writerows(zip(*columns))
    return buf.getvalue()


def _card_columns(it: Items) -> dict[str, list[str]]:
    """The card columns that hold anything but defaults: a dataset without cards writes
    (and fingerprints) exactly the files it did before cards existed."""
    columns = {
        "title": it.title,
        "image_url": it.image_url,
        "currency": it.currency,
        "ship_days": _format_times(it.ship_days),
        "feed_eligible": ["1" if e else "0" for e in it.feed_eligible.tolist()],
    }
    defaults = {"feed_eligible": "1"}
    return {name: values for name, values in columns.items() if any(v != defaults.get(name, "") for v in values)}


def _render(ds: Dataset) -> dict[str, str]:
    it = ds.items
    cards = _card_columns(it)
    out = {
        ITEMS: _csv_text(
            ("item_id", "seller_id", "created_at", "stock", "price", "category", *cards),
            (
                it.item_id,
                it.seller_id,
                _format_times(it.created_at),
                np.asarray(it.stock, dtype=np.int64).astype(str).tolist(),
                _format_times(it.price),
                it.category,
                *cards.values(),
            ),
        )
    }
    for name, edges in ((LIKES, ds.likes), (FOLLOWS, ds.follows), (FRIENDS, ds.friends)):
        header, columns = _SCHEMA[name][0], [edges.src, edges.dst, _format_times(edges.ts)]
        if name == LIKES and edges.weight is not None:
            # Only a weighted dataset gets the column: unweighted files (and their
            # fingerprints) are exactly what they were before weights existed.
            header, columns = header + ("weight",), columns + [_format_times(edges.weight)]
        out[name] = _csv_text(header, columns)
    if len(ds.engagements):
        e = ds.engagements
        out[ENGAGEMENTS_FILE] = _csv_text(
            _SCHEMA[ENGAGEMENTS_FILE][0] + ("friend_id",), (e.user_id, e.item_id, e.kind, _format_times(e.ts), e.friend_id)
        )
    if len(ds.sellers):
        until = ["inf" if np.isinf(t) else _format_time(t) for t in ds.sellers.vacation_until.tolist()]
        out[SELLERS] = _csv_text(_SCHEMA[SELLERS][0], (ds.sellers.seller_id, until))
    return out


def write_dataset(dataset: Dataset, path: str) -> None:
    """Write the CSV files into ``path`` (created if needed); sellers.csv only when a seller
    has state, engagements.csv only when there are engagements.

    Output is deterministic (byte-identical for equal datasets) and
    ``load_dataset(path)`` returns an equal dataset when the input was valid
    (deduplicated edges, friendships with ``src < dst``, unique item ids).
    """
    os.makedirs(path, exist_ok=True)
    with _gc_paused():
        rendered = _render(dataset)
    for optional in (SELLERS, ENGAGEMENTS_FILE):
        if optional not in rendered:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, optional))
    for name, text in rendered.items():
        tmp = os.path.join(path, f".{name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, os.path.join(path, name))


__all__ = [
    "Dataset",
    "DatasetError",
    "Edges",
    "Engagements",
    "Items",
    "Sellers",
    "load_dataset",
    "write_dataset",
]
