"""The dataset directory: items.csv, likes.csv, follows.csv, friends.csv, sellers.csv,
engagements.csv, not_interested_items.csv, not_interested_sellers.csv.

Columns (header row required, order free; other columns are ignored with a warning):
  items.csv    item_id, seller_id, created_at, stock[, price][, category][, title]
               [, image_url][, currency][, ship_days][, feed_eligible]
  likes.csv    user_id, item_id, ts[, weight]
  follows.csv  user_id, seller_id, ts
  friends.csv  user_id, friend_id, ts        (undirected)
  sellers.csv  seller_id, vacation_until
  engagements.csv  user_id, item_id, kind, ts[, friend_id]
  not_interested_items.csv    user_id, item_id, ts    (items the user hid from their feed)
  not_interested_sellers.csv  user_id, seller_id, ts  (sellers the user hid)
``ts`` / ``created_at`` are Unix seconds or ISO-8601, and ``ts`` may be empty; one above
MAX_UNIX_SECONDS (5138; milliseconds, most likely) is an error, and so is one before MIN_UNIX_SECONDS
(1900: times before 1970 are negative, and real data has some, such as Last.fm's tags from 1956);
the error gives the range, ACCEPTED_TIMES.
Times more than DEFAULT_MAX_CLOCK_SKEW past this machine's clock load with a warning.
``weight`` (optional, likes only) is the strength of a like, e.g. a listening count; a
positive number, 1 when the column is absent or the value empty.
The item card columns are optional and may be empty: ``price`` a non-negative number,
``currency`` an ISO 4217 code, ``ship_days`` the whole days until dispatch (0..365),
``feed_eligible`` 1 or 0 (empty: 1), whether the seller lets the feed show the item.
``vacation_until`` is when the seller's vacation ends (a time in the same range, or ``inf``
for until further notice; empty: not on vacation); sellers not listed are not on vacation.
An engagement's ``kind`` is share, view, click, add_to_cart or purchase, or received_share
(ENGAGEMENT_KINDS); ``friend_id`` only on a share, the friend it went to (empty: all the
user's friends), and on a received_share, the friend who shared the item with the user.
received_share rows are the users' received shares as a store held them (``serving
export`` writes them): a dataset with any reaches each user with exactly those, and its
shares reach no one else; without, each share reaches its friend, or all the user's
friends. They are not training signals (an engagement weight of 0).
Every row is kept (a view repeated is two views); the item must be in items.csv.
A row of items.csv that repeats an earlier one in every column is merged into it (as a
repeated like is); a repeated ``item_id`` with other values is an error.

Only likes.csv is required. Without items.csv every liked item is an in-stock item
(stock 1) with no seller (``""``), unknown ``created_at`` (NaN), price NaN, empty card
text and eligible. A missing follows.csv / friends.csv / sellers.csv /
engagements.csv / not_interested_*.csv means no such rows. A hidden item must be in
items.csv, as a liked one must.

Ids (the ``*_id`` columns) and ``kind`` are stripped of surrounding whitespace. ``stock``
and ``ship_days`` are whole numbers, also when written as ``18.0``.

Bad values raise :class:`DatasetError` naming the file, the 1-based physical line (the
header is line 1) and the column; loading goes on after one and reports up to
MAX_REPORTED_ERRORS at once. Any bad file (not UTF-8, broken CSV) gives a DatasetError.

Any table may be Parquet instead: ``likes.parquet``, a file or a directory of part files
(``likes.parquet/part-*.parquet`` as Spark writes them), with the same columns and
validation. Ids are strings (or integers, read as their digits); times numbers, ISO
strings, timestamps or dates (-> Unix seconds; naive is UTC); the numeric columns numbers
(or strings, parsed as in CSV); ``feed_eligible`` also booleans; null (and NaN) is empty.
An error names the file or part file (``likes.parquet/part-00001.parquet``), the 1-based
row in it as its line, and the column. A table in both formats is an error, and so is a
directory of CSV part files (``likes.csv/part-*.csv``): they are not read.
:func:`write_dataset` writes either format.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import math
import os
import shutil
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np

from ranking.vocab import EncodedIds, distinct_ids, encode, encode_concatenation, per_distinct, take_ids
from stores.base import gc_paused
from stores.events import DEFAULT_MAX_CLOCK_SKEW, ENGAGEMENTS, MAX_ID_BYTES, MAX_SHIP_DAYS, MAX_UNIX_SECONDS, RECEIVED_SHARE, EventKind, is_currency_code

ENGAGEMENT_KINDS = (*(kind.value for kind in ENGAGEMENTS), RECEIVED_SHARE)

MIN_UNIX_SECONDS = -2_208_988_800.0  # 1900-01-01


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
        return Items(**{
            name: take_ids(getattr(self, name), rows) if isinstance(getattr(self, name), list) else getattr(self, name)[rows]
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
        idx = np.arange(len(self))[rows]
        return Engagements(
            take_ids(self.user_id, idx), take_ids(self.item_id, idx), take_ids(self.kind, idx),
            self.ts[idx], take_ids(self.friend_id, idx),
        )  # fmt: skip

    def of_kind(self, kind: EventKind) -> Engagements:
        return self.take(per_distinct(self.kind, lambda k: k == kind.value, bool))


@dataclass(frozen=True)
class Dataset:
    """A validated dataset. Edges are deduplicated; friendships are stored once per pair."""

    items: Items
    likes: Edges  # user -> item
    follows: Edges  # user -> seller
    friends: Edges  # user <-> friend, src < dst
    sellers: Sellers = dataclasses.field(default_factory=Sellers.none)
    engagements: Engagements = dataclasses.field(default_factory=Engagements.none)
    # "Not interested": items and sellers users hid from their feeds; not training signals.
    hidden_items: Edges = dataclasses.field(default_factory=lambda: _empty_edges())  # user -> item
    hidden_sellers: Edges = dataclasses.field(default_factory=lambda: _empty_edges())  # user -> seller

    def fingerprint(self) -> str:
        """sha256 hex digest of the dataset content.

        It is the hash of exactly the bytes :func:`write_dataset` writes (files in a
        fixed order), so equal datasets in equal order have equal fingerprints, and a
        dataset reloaded from its own written copy keeps its fingerprint.
        """
        digest = hashlib.sha256()
        with gc_paused():
            rendered = _render(self)
        for name, data in rendered.items():
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
        return digest.hexdigest()

    def user_ids(self) -> list[str]:
        """Sorted distinct users acting in likes, follows (the follower), friends and engagements.

        Sellers appear only if they also act; an item's seller_id is not enough.
        """
        users: set[str] = set()
        for ids in (self.likes.src, self.follows.src, self.friends.src, self.friends.dst, self.engagements.user_id):
            users.update(distinct_ids(ids))
        return sorted(users)

    def with_likes(self, likes: Edges) -> Dataset:
        """The same dataset with its likes replaced (items, follows, friends shared)."""
        return dataclasses.replace(self, likes=likes)


MAX_REPORTED_ERRORS = 20
MAX_EXAMINED_ERRORS = 10_000  # a load stops here; the first MAX_REPORTED_ERRORS of these by line are reported
"""Loading goes on after a bad value and reports up to this many errors at once."""


class DatasetError(ValueError):
    """A bad value in a dataset file, located by file, line and column.

    A load that finds several reports them together (up to MAX_REPORTED_ERRORS): ``errors``
    lists them in order, one located error each, and the message has one line per error.
    ``file``, ``line``, ``column`` and ``message`` are those of the first. Line 0 is the
    file as a whole (a missing file); a missing directory has ``file`` "".
    """

    def __init__(
        self, file: str, line: int, column: str, message: str, errors: Sequence[DatasetError] = (), more: bool = False
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.message = message
        self.errors: list[DatasetError] = list(errors) or [self]
        self.more = more  # there were more errors than MAX_REPORTED_ERRORS
        text = "\n".join(_located(e.file, e.line, e.column, e.message) for e in self.errors)
        if more:
            text += f"\n(and more: only the first {len(self.errors)} errors are reported)"
        super().__init__(text)

    @classmethod
    def of(cls, errors: Sequence[DatasetError], more: bool = False) -> DatasetError:
        """One error that reports all of ``errors`` (each a single located error)."""
        if len(errors) == 1 and not more:
            return errors[0]
        first = errors[0]
        return cls(first.file, first.line, first.column, first.message, errors, more)

    def __reduce__(self) -> tuple[type, tuple]:
        # Picklable across processes despite the multi-argument constructor.
        errors = tuple(self.errors) if len(self.errors) > 1 else ()
        return (DatasetError, (self.file, self.line, self.column, self.message, errors, self.more))


def require_likes(dataset: Dataset, data_dir: str) -> None:
    """Refuse a dataset without a like for training: its model would be empty, and
    publishing it would replace a working one."""
    if not len(dataset.likes):
        raise DatasetError("", 0, "", f"dataset {data_dir}: the likes table holds no like: there is nothing to learn from")


def _located(file: str, line: int, column: str, message: str) -> str:
    if line > 0:
        return f"{file}:{line}: column {column!r}: {message}"
    return f"{file}: {message}" if file else message


class _Errors:
    """The errors found so far in one load. It reports the MAX_REPORTED_ERRORS first by file
    and line, not the first found (checks run a column at a time, so line 28's empty id was
    found before line 21's bad time), and stops the load once MAX_EXAMINED_ERRORS are found."""

    def __init__(self) -> None:
        self.found: list[DatasetError] = []
        self._file_rank: dict[str, int] = {}

    def add(self, error: DatasetError) -> None:
        self._file_rank.setdefault(error.file, len(self._file_rank))
        self.found.append(error)
        if len(self.found) == MAX_EXAMINED_ERRORS:
            self.raise_any()

    def raise_any(self) -> None:
        if self.found:
            first = sorted(self.found, key=lambda e: (self._file_rank[e.file], e.line))  # stable: a line's columns in found order
            raise DatasetError.of(first[:MAX_REPORTED_ERRORS], more=len(first) > MAX_REPORTED_ERRORS)


# --------------------------------------------------------------------------- schema

ITEMS, LIKES, FOLLOWS, FRIENDS, SELLERS = "items.csv", "likes.csv", "follows.csv", "friends.csv", "sellers.csv"
ENGAGEMENTS_FILE = "engagements.csv"
HIDDEN_ITEMS, HIDDEN_SELLERS = "not_interested_items.csv", "not_interested_sellers.csv"

_CARD_COLUMNS = ("title", "image_url", "currency", "ship_days", "feed_eligible")
# (required columns, optional columns), in the order write_dataset writes them.
_SCHEMA: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    ITEMS: (("item_id", "seller_id", "created_at", "stock"), ("price", "category", *_CARD_COLUMNS)),
    LIKES: (("user_id", "item_id", "ts"), ("weight",)),
    FOLLOWS: (("user_id", "seller_id", "ts"), ()),
    FRIENDS: (("user_id", "friend_id", "ts"), ()),
    SELLERS: (("seller_id", "vacation_until"), ()),
    ENGAGEMENTS_FILE: (("user_id", "item_id", "kind", "ts"), ("friend_id",)),
    HIDDEN_ITEMS: (("user_id", "item_id", "ts"), ()),
    HIDDEN_SELLERS: (("user_id", "seller_id", "ts"), ()),
}

_TIME_EXPECTED = "expected a Unix time or ISO-8601 timestamp"


def _empty_edges() -> Edges:
    return Edges(src=[], dst=[], ts=np.empty(0, dtype=np.float64))


# --------------------------------------------------------------------------- reading


class _Table:
    """The columns of one CSV file plus a map from data row index to physical line.

    A column is a list of str (CSV, and Parquet string columns; a Parquet null is "") or,
    for a numeric Parquet column, a float64 array (NaN where null) or an int64 array.
    """

    def __init__(
        self, file: str, columns: dict[str, Any], lines: np.ndarray | None, n: int, errors: _Errors
    ) -> None:
        self.file = file
        self.columns = columns
        self._lines = lines  # None: row i is on line i + 2 (no blank or multi-line rows)
        self.n = n
        self.errors = errors

    def line(self, row: int) -> int:
        return int(self._lines[row]) if self._lines is not None else row + 2

    def locate(self, row: int) -> tuple[str, int]:
        """(file, line) of a data row, as a DatasetError names them."""
        return self.file, self.line(row)

    def where(self, row: int) -> str:
        """A data row for a message: 'line 5'."""
        return f"line {self.line(row)}"

    def report(self, row: int, column: str, message: str) -> None:
        """Record a bad value and go on (raises once too many are found)."""
        file, line = self.locate(row)
        self.errors.add(DatasetError(file, line, column, message))


class _ParquetTable(_Table):
    """A Parquet file or directory of part files: rows are numbered from 1 in each file."""

    def __init__(self, file: str, parts: list[tuple[str, int]], columns: dict[str, Any], n: int, errors: _Errors) -> None:
        super().__init__(file, columns, None, n, errors)
        self.parts = parts  # (name as reported, first row), in row order
        self._starts = [start for _, start in parts]

    def locate(self, row: int) -> tuple[str, int]:
        name, start = self.parts[bisect.bisect_right(self._starts, row) - 1]
        return name, row - start + 1

    def line(self, row: int) -> int:
        return self.locate(row)[1]

    def where(self, row: int) -> str:
        name, number = self.locate(row)
        return f"row {number}" if name == self.file else f"row {number} of {name}"


def _is_stripped(name: str) -> bool:
    """Columns whose surrounding whitespace is dropped: ids (" u1" is u1) and the engagement kind."""
    return name.endswith("_id") or name == "kind"


def _read_table(path: str, file: str, schema: tuple[tuple[str, ...], tuple[str, ...]], errors: _Errors,
                warnings: list[str]) -> _Table | None:
    """The columns of CSV file ``path`` (reported as ``file``) that ``schema`` (required,
    optional) names, or None after reporting why it cannot be read (a bad header, rows with
    the wrong number of fields, an unclosed quote, bytes that are not UTF-8, a broken CSV)."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        # csv's default (131,072 characters) refused a long title or description that
        # pyarrow's reader takes: a file read either way must load the same. Only ever
        # raised, never restored, so that concurrent loads cannot lower it under each other.
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        return _read_table_unchecked(path, file, schema, errors, warnings)
    except UnicodeDecodeError as error:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic == b"PAR1":
            errors.add(DatasetError(file, 0, "<file>", f"a Parquet file, not CSV (a table in Parquet is named {parquet_name(file)})"))
        elif magic[:2] == b"\x1f\x8b":
            errors.add(DatasetError(file, 0, "<file>", "gzip-compressed: decompress it (gunzip), dataset files are plain CSV or Parquet"))
        else:
            line, offset = _undecodable_line(path)
            errors.add(DatasetError(file, line, "<row>", f"not UTF-8 text (byte {offset} of the line: {error.reason})"))
    except csv.Error as error:
        errors.add(DatasetError(file, getattr(error, "line_num", 0) or 0, "<row>", f"not valid CSV: {error}"))
    except OSError as error:
        dangling = f" (a symbolic link to {os.readlink(path)}, which is missing)" if os.path.islink(path) and not os.path.exists(path) else ""
        errors.add(DatasetError(file, 0, "<file>", f"cannot be read: {error.strerror or error}{dangling}"))
    return None


_CSV_FIELD_LIMIT = 2**31 - 1  # the largest a C long holds on every platform

# A header of one column holding one of these is a file written with another separator.
_OTHER_SEPARATORS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _expected_columns(missing: str, found: Sequence[str], schema: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    """What to say after "missing required column": the file's columns, and a column
    ``found`` that differs from ``missing`` only by case, which is the likely slip, or by a
    byte order mark (U+FEFF) in it: the reader drops one at the start of the file, and some
    Windows tools write two."""
    required, optional = schema
    near = next((name for name in found if name.lower() == missing.lower()), None)
    marked = next((name for name in found if "\ufeff" in name and name.replace("\ufeff", "").strip() == missing), None)
    return (f"(columns: {', '.join(required)}" + (f"[, {', '.join(optional)}]" if optional else "") + ")"
            + (f"; the header has {near!r}: column names are case-sensitive" if near else "")
            + (f"; the header has {marked!r}: a stray byte order mark (U+FEFF) in the name, remove it" if marked else ""))


class _CsvError(csv.Error):
    line_num = 0


def _reader_rows(reader: Any) -> Iterator[list[str]]:
    """The rows, with the physical line of a csv.Error attached to it."""
    try:
        yield from reader
    except csv.Error as error:
        located = _CsvError(str(error))
        located.line_num = max(reader.line_num, 1)  # type: ignore[attr-defined]
        raise located from None


def _undecodable_line(path: str) -> tuple[int, int]:
    """(1-based line, 1-based byte in it) of the first bytes that are not UTF-8."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.splitlines(), start=1):  # \r, \n and \r\n end lines, as to the csv reader
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return number, error.start + 1
    return 0, 0


def _read_table_unchecked(
    path: str, file: str, schema: tuple[tuple[str, ...], tuple[str, ...]], errors: _Errors, warnings: list[str]
) -> _Table | None:
    required, optional = schema
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        rows_iter = _reader_rows(reader)
        header = next(_unblank(rows_iter), None)
        if header is None:
            errors.add(DatasetError(file, 1, "<header>", "empty file; a header row is required"))
            return None
        header_line = reader.line_num
        header = [h.strip() for h in header]
        if any("\0" in h for h in header):
            errors.add(DatasetError(file, header_line, "<header>", "the header holds NUL bytes (\\x00): the file is not UTF-8 "
                                    "text (UTF-16? a binary file, or one zeroed by a crash?)"))
            return None
        separator = next((c for c in _OTHER_SEPARATORS if len(header) == 1 and c in header[0]), None)
        if separator:
            errors.add(DatasetError(file, header_line, "<header>", f"one column, {header[0]!r}: the file looks "
                                    f"{_OTHER_SEPARATORS[separator]}-separated; dataset files are comma-separated"))
            return None
        known = set(required + optional)
        seen: set[str] = set()
        ignored: list[str] = []
        broken = False
        for name in header:
            if name not in known:
                ignored.append(name)
            elif name in seen:
                errors.add(DatasetError(file, header_line, name, "duplicate column"))
                broken = True
            seen.add(name)
        for name in required:
            if name not in seen:
                errors.add(DatasetError(file, header_line, name, "missing required column " + _expected_columns(name, header, schema)))
                broken = True
        if broken:
            return None
        if ignored:
            names = ", ".join(repr(name) for name in ignored)
            warnings.append(f"{file}: ignored column{'s' if len(ignored) > 1 else ''} {names} "
                            f"(not one of {', '.join(required + optional)})")
        keep = [i for i, name in enumerate(header) if name in known]
        header_lines = reader.line_num
        fast = _read_columns_fast(path, header, keep) if header_lines == 1 else None
        if fast is not None:
            columns, n = fast
            return _Table(file, columns, None, n, errors)
        rows = list(rows_iter)
        total_lines = reader.line_num

    lines: np.ndarray | None = None
    has_blank = any(map(_is_blank, rows))
    if has_blank or total_lines - header_lines != len(rows) or header_lines != 1:
        # Blank lines or quoted newlines: recover each row's first physical line.
        lines, rows = _rows_with_lines(path, file)

    width = len(header)
    table = _Table(file, {}, lines, len(rows), errors)
    if rows and _opens_unclosed_quote(path, table.line(len(rows) - 1)):
        # Only the last row can: its last field took in the rest of the file.
        opened = len(rows[-1]) - 1
        table.report(len(rows) - 1, header[opened] if opened < width else "<row>",
                     "a quote (\") opened on this line is never closed: the rest of the file would be one value")
        return None
    if rows and (min(map(len, rows)) != width or max(map(len, rows)) != width):
        for i, r in enumerate(rows):
            if len(r) != width:
                column = header[len(r)] if len(r) < width else "<row>"
                table.report(i, column, f"expected {width} fields, got {len(r)}")
        return None

    if rows:
        cols = list(zip(*rows))
        table.columns = {
            header[i]: [v.strip() for v in cols[i]] if _is_stripped(header[i]) else list(cols[i]) for i in keep
        }
    else:
        table.columns = {header[i]: [] for i in keep}
    return table


def _opens_unclosed_quote(path: str, line: int) -> bool:
    """Whether the row that starts on physical ``line`` opens a quote the file never closes.

    csv.reader silently reads such a quote as running to the end of the file."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return _quote_left_open(itertools.islice(fh, line - 1, None))


_AFTER_THE_END = "after the end of the file"


def _quote_left_open(lines: Iterable[str]) -> bool:
    """Whether csv.reader ends ``lines`` inside a quoted field: a line appended after them is
    then part of that field, and a row of its own otherwise. (csv's strict mode says
    "unexpected end of data" then, but stops at the first quirk it refuses before, such as
    a field going on after its closing quote: "u1"x, which the loader reads as u1x.)"""
    last = None
    for last in csv.reader(itertools.chain(lines, [_AFTER_THE_END + "\n"])):
        pass
    return last != [_AFTER_THE_END]


def _read_columns_fast(path: str, header: list[str], keep: list[int]) -> tuple[dict[str, list[str]], int] | None:
    """The ``keep`` columns as strings, read by pyarrow's multithreaded CSV parser.

    None when the file needs the careful reader: a row with the wrong number of fields,
    a quoted newline, a blank line, a carriage return alone, which the careful reader
    counts as a line break (anything that breaks "data row i is on line i + 2",
    which error messages rely on), bytes that are not UTF-8, an odd number of quotes or a
    last line that opens one never closed (an unclosed one, which pyarrow reads to the end
    of the file). That reader then finds and names the problem.
    """
    import pyarrow as pa
    import pyarrow.csv as pv

    # Unique names for pyarrow: ignored columns may repeat or be unnamed.
    names = [name if i in keep else f"\0ignored{i}" for i, name in enumerate(header)]
    wanted = [names[i] for i in keep]
    try:
        table = pv.read_csv(
            path,
            read_options=pv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pv.ParseOptions(newlines_in_values=False, ignore_empty_lines=True),  # a blank line: row count differs
            convert_options=pv.ConvertOptions(
                column_types={name: pa.string() for name in wanted}, include_columns=wanted,
                strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, UnicodeDecodeError):
        return None
    newlines = quotes = lone_crs = 0
    last = b""
    # pyarrow checks the UTF-8 of the columns it keeps only: the others' bytes are checked here.
    utf8 = codecs.getincrementaldecoder("utf-8")() if len(wanted) < len(names) else None
    with open(path, "rb") as fh:
        try:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                newlines += chunk.count(b"\n")
                quotes += chunk.count(b'"')
                # A \r not before \n ends a line to the careful reader, not to this count.
                lone_crs += chunk.count(b"\r") - chunk.count(b"\r\n") - (last == b"\r" and chunk[:1] == b"\n")
                last = chunk[-1:]
                if utf8 is not None:
                    utf8.decode(chunk)
            if utf8 is not None:
                utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            return None
    physical = newlines + (last != b"\n")
    if table.num_rows != physical - 1 or quotes % 2 or lone_crs:
        return None
    if quotes and table.num_rows and _last_line_opens_quote(path):
        return None  # a quote in an unquoted field (27") evened the count: pyarrow read it to the end
    return {name: _fast_column(name, table.column(name)) for name in wanted}, table.num_rows


def _last_line_opens_quote(path: str) -> bool:
    """Whether the last line of ``path`` opens a quote the file never closes, as
    ``_opens_unclosed_quote`` tells for the careful reader. pyarrow reads such a quote to the
    end of the file without a word; on an earlier line it takes in the later lines, so the
    row count tells, but on the last one only this does."""
    with open(path, "rb") as fh:
        start = fh.seek(0, os.SEEK_END)
        tail = b""
        while start > 0 and b"\n" not in tail[:-1]:
            step = min(1 << 16, start)
            start -= step
            fh.seek(start)
            tail = fh.read(step) + tail
    line = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1 :].decode("utf-8", "replace")
    return _quote_left_open([line])


def _fast_column(name: str, column) -> list[str] | np.ndarray:
    if _is_stripped(name):
        return _shared_strings(column)
    plain = _plain_numbers(name, column) if name in _PLAIN_NUMBER_RANGES else None
    return column.to_pylist() if plain is None else plain


# Columns of tens of millions of rows that are numbers, with the values every row may take as is.
_PLAIN_NUMBER_RANGES = {"ts": (MIN_UNIX_SECONDS, MAX_UNIX_SECONDS), "weight": (np.nextafter(0, 1), np.finfo(np.float64).max)}


def _plain_numbers(name: str, column) -> np.ndarray | None:
    """The column as float64 when pyarrow reads every value as a finite number in its range,
    else None: its strings then go the careful way, which reads and reports them one by one.

    Parsing tens of millions of times in C++ rather than as Python strings saves most of
    a minute; pyarrow reads fewer spellings than Python's float (no spaces, no "1_000"),
    and the same value for every one it reads.
    """
    import pyarrow as pa

    try:
        values = column.cast(pa.float64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    low, high = _PLAIN_NUMBER_RANGES[name]
    return values if ((values >= low) & (values <= high)).all() else None


def _shared_strings(column) -> EncodedIds:
    """The column as a list of stripped values in which equal values are one str object,
    keeping its encoding (EncodedIds).

    Ids repeat (a user on every one of their likes): one object per distinct id instead of
    one per row saves about 50 bytes a row, gigabytes at tens of millions of likes.
    Stripping the distinct values costs next to nothing.
    """
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column.combine_chunks())
    stripped_codes, distinct = encode([value.strip() for value in encoded.dictionary.to_pylist()])
    return EncodedIds.from_codes(stripped_codes[encoded.indices.to_numpy(zero_copy_only=False)], distinct)


def _is_blank(row: list[str]) -> bool:
    """An empty line, or one of only spaces and tabs (it looks empty: no table has one column)."""
    return not row or (len(row) == 1 and not row[0].strip())


def _unblank(rows: Iterator[list[str]]) -> Iterator[list[str]]:
    return (row for row in rows if not _is_blank(row))


def _rows_with_lines(path: str, file: str) -> tuple[np.ndarray, list[list[str]]]:
    lines: list[int] = []
    rows: list[list[str]] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        rows_iter = _reader_rows(reader)
        next(_unblank(rows_iter))
        prev = reader.line_num
        for r in rows_iter:
            if not _is_blank(r):  # blank lines are skipped, not errors
                rows.append(r)
                lines.append(prev + 1)
            prev = reader.line_num
    return np.asarray(lines, dtype=np.int64), rows


# --------------------------------------------------------------------------- Parquet

PARQUET = ".parquet"
_TEXT_COLUMNS = frozenset({"item_id", "seller_id", "user_id", "friend_id", "kind", "category", "title", "image_url", "currency"})
_TIME_COLUMNS = frozenset({"ts", "created_at", "vacation_until"})
_UNIT_SECONDS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def parquet_name(file: str) -> str:
    """The Parquet name of a table given by its CSV name: likes.csv -> likes.parquet."""
    return file.removesuffix(".csv") + PARQUET


def _source(directory: str, file: str) -> str | None:
    """The name of what holds table ``file`` (a CSV name) in ``directory``: ``file``, its
    Parquet file or directory, or None. Both present is reported by _check_directory.
    A name that is there but cannot be opened (a dangling symlink) holds the table too: its
    read reports it, where taking it for absent dropped the catalogue without a word."""
    csv_path = os.path.join(directory, file)
    if os.path.isfile(csv_path) or (os.path.lexists(csv_path) and not os.path.isdir(csv_path)):
        return file
    name = parquet_name(file)
    return name if os.path.lexists(os.path.join(directory, name)) else None


def _parquet_parts(directory: str, name: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(name as reported, path) of the file ``name`` or of the part files in directory
    ``name`` (every *.parquet but hidden ones: Spark's _SUCCESS and .crc files are skipped),
    and that directory's partitions (day=2026-01-01/, as Spark's partitionBy writes them:
    subdirectories but hidden ones such as _temporary), which are not read."""
    path = os.path.join(directory, name)
    if not os.path.isdir(path):
        return [(name, path)], []
    entries = sorted(p for p in os.listdir(path) if not p.startswith((".", "_")))
    partitions = [p for p in entries if os.path.isdir(os.path.join(path, p))]
    parts = [p for p in entries if p.endswith(PARQUET) and p not in partitions]
    return [(f"{name}/{p}", os.path.join(path, p)) for p in parts], partitions


def _read_parquet(directory: str, file: str, errors: _Errors, warnings: list[str]) -> _ParquetTable | None:
    """Table ``file`` (its CSV name) from its Parquet file or part files, with the columns
    converted for the validators; None after reporting why it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = parquet_name(file)
    required, optional = _SCHEMA[file]
    known = required + optional
    files, partitions = _parquet_parts(directory, name)
    if partitions:
        # Refused, not skipped: skipping lost their rows without a word (and a partition column is only in their names).
        errors.add(DatasetError(name, 0, "<file>", f"a partitioned directory ({', '.join(p + '/' for p in partitions[:3])}"
                                f"{', …' if len(partitions) > 3 else ''}, as Spark's partitionBy writes it) is not read: write the "
                                f"table without partitionBy, part files directly in {name} ({name}/part-*.parquet)"))
        return None
    if not files:
        errors.add(DatasetError(name, 0, "<file>", "a directory without part files (*.parquet)"))
        return None
    pieces: list[tuple[str, int, dict[str, Any]]] = []  # (name, rows, columns)
    ignored: dict[str, None] = {}
    broken = False
    for shown, path in files:
        try:
            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            columns = [c.strip() for c in names]  # as a CSV header's names are
            problems = [f"duplicate column {c!r}" for c in sorted(set(columns)) if c in known and columns.count(c) > 1]
            problems += [f"missing required column {c!r} {_expected_columns(c, columns, _SCHEMA[file])}"
                         for c in required if c not in columns]
            for problem in problems:
                errors.add(DatasetError(shown, 0, "<file>", problem))
            if problems:
                broken = True
                continue
            ignored.update((c, None) for c in columns if c not in known)
            wanted = [c for c in known if c in columns]
            read = [names[columns.index(c)] for c in wanted]
            data = parquet.read(columns=read, use_threads=True).select(read).rename_columns(wanted)
        except (pa.ArrowException, OSError) as error:
            errors.add(DatasetError(shown, 0, "<file>", f"not a readable Parquet file: {error}"))
            broken = True
            continue
        converted: dict[str, Any] = {}
        for column in wanted:
            values = _parquet_column(column, data.column(column))
            if isinstance(values, str):
                errors.add(DatasetError(shown, 0, "<file>", f"column {column!r}: {values}, got Parquet type {data.schema.field(column).type}"))
                broken = True
            else:
                converted[column] = values
        pieces.append((shown, data.num_rows, converted))
    if ignored:
        names = ", ".join(repr(c) for c in ignored)
        warnings.append(f"{name}: ignored column{'s' if len(ignored) > 1 else ''} {names} (not one of {', '.join(known)})")
    if broken:
        return None
    present = [c for c in known if any(c in columns for _, _, columns in pieces)]
    parts: list[tuple[str, int]] = []
    start = 0
    for shown, rows, _ in pieces:
        parts.append((shown, start))
        start += rows
    columns = {c: _concat([cols.get(c) for _, _, cols in pieces], [rows for _, rows, _ in pieces], c) for c in present}
    return _ParquetTable(name, parts, columns, start, errors)


def _parquet_column(name: str, column: Any) -> list[str] | np.ndarray | str:
    """A Parquet column as the validators take it: a list of str for text (null: ""), a
    float64 array for numbers, booleans and times in Unix seconds (NaN where null), an
    int64 array for a stock without nulls. A string column of numbers or times is kept as
    text, parsed as in CSV. A type that does not fit the column: what was expected (a str)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_dictionary(t):
        column, t = column.cast(t.value_type), t.value_type
    string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    textual = pa.types.is_string(t) or pa.types.is_large_string(t) or string_view(t) or pa.types.is_null(t)
    if name in _TEXT_COLUMNS:
        if not (textual or (name.endswith("_id") and pa.types.is_integer(t))):
            return "expected strings" + (" or integers" if name.endswith("_id") else "")
        column = column.cast(pa.string())
        if column.null_count:
            column = pc.fill_null(column, "")
        return _shared_strings(column) if _is_stripped(name) else column.to_pylist()
    if textual and not pa.types.is_null(t):
        return (pc.fill_null(column, "") if column.null_count else column).to_pylist()
    if name in _TIME_COLUMNS and (pa.types.is_timestamp(t) or pa.types.is_date(t)):
        if pa.types.is_date(t):
            column = column.cast(pa.timestamp("s"))
        scale = _UNIT_SECONDS[column.type.unit]
        # Not safe: an int64 past 2**53 (microseconds of a year before 1685 or after 2255,
        # such as a 9999-12-31 "forever") rounds to a float, and _times names it if out of range.
        return column.cast(pa.int64()).cast(pa.float64(), safe=False).to_numpy() / scale
    if name == "stock" and pa.types.is_integer(t) and t != pa.uint64() and not column.null_count:
        return column.cast(pa.int64()).to_numpy()
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t)
    if numeric or (name == "feed_eligible" and pa.types.is_boolean(t)):
        # Not safe for integers: one past 2**53 (nanoseconds as int64) rounds to a float, which
        # the checks then name as out of range, where a safe cast raised ArrowInvalid.
        return column.cast(pa.float64(), safe=not pa.types.is_integer(t)).to_numpy()
    if name in _TIME_COLUMNS:
        return "expected numbers (Unix seconds), ISO-8601 strings or timestamps"
    return "expected " + ("booleans, numbers or strings" if name == "feed_eligible" else "numbers or strings")


def _concat(pieces: list[Any], rows: list[int], name: str) -> list[str] | np.ndarray:
    """One column from the part files' (None: a part without this optional column, all null)."""
    if len(pieces) == 1 and pieces[0] is not None:
        return pieces[0]
    if pieces and all(isinstance(p, EncodedIds) for p in pieces):  # ids of several part files
        return EncodedIds.from_codes(*encode_concatenation(pieces))
    text = name in _TEXT_COLUMNS or any(isinstance(p, list) for p in pieces)
    if not text:
        return np.concatenate([np.full(n, np.nan) if p is None else p for p, n in zip(pieces, rows)])
    out: list[str] = []
    for p, n in zip(pieces, rows):
        if p is None:
            out.extend([""] * n)
        elif isinstance(p, np.ndarray):  # numbers beside text in another part: as CSV text
            out.extend(str(v) if p.dtype.kind == "i" else _format_time(v) for v in p.tolist())
        else:
            out.extend(p)
    return out


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
        try:
            return dt.timestamp()
        except (OverflowError, OSError):  # e.g. year 1 at UTC+14
            raise ValueError(text) from None
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _same_value(a: Any, b: Any) -> bool:
    return bool(a == b) or (a != a and b != b)  # NaN (an empty number) is the same as NaN


def _shown(values: Any, i: int) -> str:
    """Value ``i`` of a column for a message: the text's repr, or the Parquet number ('null' when null)."""
    if isinstance(values, np.ndarray):
        v = values[i].item()
        return "null" if isinstance(v, float) and math.isnan(v) else repr(v)
    return repr(values[i])


def _iso_time(seconds: float) -> str | None:
    """``seconds`` as an ISO-8601 UTC time; None past the years 1 to 9999."""
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


ACCEPTED_TIMES = (f"{_iso_time(MIN_UNIX_SECONDS)} to {_iso_time(MAX_UNIX_SECONDS)} "
                  f"(Unix seconds {MIN_UNIX_SECONDS:.0f} to {MAX_UNIX_SECONDS:.0f})")


def _shown_time(values: list[str] | np.ndarray, i: int, seconds: float) -> tuple[str, bool]:
    """Time ``i`` of a column for a message, and whether it is a plain number (which may be
    milliseconds). A Parquet time shows its seconds and, when there is one, its date: a
    timestamp or date column's value is read as seconds, and the date is what its writer
    wrote; only one past the year 9999, which no date holds, counts as a plain number."""
    if not isinstance(values, np.ndarray):
        return repr(values[i]), _is_number(values[i])
    number = f"{seconds:.0f}" if abs(seconds) < 1e15 else f"{seconds:.6g}"
    date = _iso_time(seconds)
    return (f"{number} ({date})", False) if date else (number, True)


def _times(table: _Table, column: str, allow_empty: bool) -> np.ndarray:
    out = _parsed_times(table, column, allow_empty)
    _report_times_out_of_range(table, column, out)
    return out


def _report_times_out_of_range(table: _Table, column: str, out: np.ndarray, too_late_hint: str = "") -> None:
    """Report each time of ``out`` (column ``column``'s, parsed; NaN: none) outside
    ACCEPTED_TIMES; ``too_late_hint`` ends the message of one after them."""
    values = table.columns[column]
    with np.errstate(invalid="ignore"):
        outside = np.flatnonzero((out < MIN_UNIX_SECONDS) | (out > MAX_UNIX_SECONDS)).tolist()
    for i in outside:
        shown, number = _shown_time(values, i, out[i])
        side = "before" if out[i] < MIN_UNIX_SECONDS else "after"
        # Milliseconds would put every like in the far future and every recency feature at zero.
        milliseconds = number and side == "after" and out[i] / 1000 <= MAX_UNIX_SECONDS
        table.report(i, column, f"{shown} is {side} the accepted times, {ACCEPTED_TIMES}"
                                + (": milliseconds? (divide by 1,000)" if milliseconds else "")
                                + (too_late_hint if side == "after" else ""))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parsed_times(table: _Table, column: str, allow_empty: bool) -> np.ndarray:
    values = table.columns[column]
    if isinstance(values, np.ndarray):  # Parquet numbers or timestamps, as seconds; NaN where null
        out = values.astype(np.float64)
        for i in np.flatnonzero(np.isinf(out)).tolist():
            table.report(i, column, f"{_TIME_EXPECTED}, got {_shown(values, i)}")
        if not allow_empty:
            for i in np.flatnonzero(np.isnan(out)).tolist():
                table.report(i, column, "must not be empty")
        out[np.isinf(out)] = np.nan
        return out
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
                table.report(i, column, "must not be empty")
            out[i] = np.nan
            continue
        try:
            out[i] = _parse_time(v)
        except ValueError:
            table.report(i, column, f"{_TIME_EXPECTED}, got {v!r}")
            out[i] = np.nan
    return out


def _whole_number(text: str) -> int:
    """An integer written as one ("18") or as an integral float ("18.0", "1e3"). Raises ValueError."""
    s = text.strip()
    try:
        return int(s)
    except ValueError:
        value = float(s)
        if not value.is_integer():
            raise
        return int(value)


def _stock(table: _Table, column: str) -> np.ndarray:
    values = table.columns[column]
    expected = "expected a non-negative integer"
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":  # Parquet numbers; NaN where null
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(values) & (values >= 0) & (values < 2.0**63) & (np.floor(values) == values)
        for i in np.flatnonzero(~ok).tolist():
            table.report(i, column, f"{expected}, got {_shown(values, i)}")
        return np.where(ok, values, 0).astype(np.int64)
    try:
        out = np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        out = np.zeros(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            try:
                n = _whole_number(v)
            except (ValueError, OverflowError):
                n = -1
            if 0 <= n < 2**63:
                out[i] = n
            else:
                table.report(i, column, f"{expected}, got {v!r}")
        return out
    for i in np.flatnonzero(out < 0).tolist():
        table.report(i, column, f"{expected}, got {_shown(values, i)}")
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
                out[i] = np.nan
                table.report(i, column, f"{expected}, got {v!r}")
    for i in np.flatnonzero(np.isinf(out) | (out < 0)).tolist():
        table.report(i, column, f"{expected}, got {_shown(values, i)}")
    return out


def _ids(table: _Table, column: str) -> list[str]:
    values = table.columns[column]
    distinct = values.encoding()[1] if isinstance(values, EncodedIds) else values
    if "" in distinct:
        for i, v in enumerate(values):
            if not v:
                table.report(i, column, "must not be empty")
    # The API refuses ids over MAX_ID_BYTES: a model trained on one could never serve it.
    # A character is at most 4 bytes, so only ids over a quarter of that need encoding.
    if distinct and max(map(len, distinct)) > MAX_ID_BYTES // 4:
        for i, v in enumerate(values):
            if len(v) > MAX_ID_BYTES // 4 and len(v.encode()) > MAX_ID_BYTES:
                table.report(i, column, f"longer than {MAX_ID_BYTES} bytes (the API's limit for an id)")
    return values


def _pair_keys(src: list[str], dst: list[str]) -> np.ndarray:
    """One int64 per (src, dst) pair, equal exactly for equal pairs."""
    su = encode(src)[0].astype(np.int64)
    dv = encode(dst)[0].astype(np.int64)
    return su * (int(dv.max()) + 1) + dv


def _dedupe(src: list[str], dst: list[str], ts: np.ndarray, weight: np.ndarray | None = None) -> Edges:
    """Collapse repeated (src, dst) pairs, keeping the earliest known ts and the largest weight.

    The earliest, as both stores keep a repeated Like event's first time (and as the Last.fm
    converter dates a pair by its first tag): a pair liked before a time split's split time
    and again after it stays a training like, where its latest time made it a test like whose
    earlier like the training part lost. Output order is the order of each pair's first occurrence.
    """
    if not len(src):
        return Edges(src=src, dst=dst, ts=np.asarray(ts, dtype=np.float64), weight=weight)
    key = _pair_keys(src, dst)
    # numpy's sort beats a hash of tens of millions of distinct keys (0.3 s against 14 s at
    # 29M likes: the hash table misses the cache on every insert).
    ordered = np.sort(key)
    if not (ordered[1:] == ordered[:-1]).any():
        return Edges(src=src, dst=dst, ts=np.asarray(ts, dtype=np.float64), weight=weight)
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    filled = np.where(np.isnan(ts), np.inf, ts)
    earliest = np.full(len(uniq), np.inf)
    np.minimum.at(earliest, inverse, filled)
    earliest[np.isposinf(earliest)] = np.nan
    order = np.argsort(first, kind="stable")
    rows = first[order]
    merged_weight = None
    if weight is not None:
        merged_weight = np.full(len(uniq), -np.inf)
        np.maximum.at(merged_weight, inverse, np.asarray(weight, dtype=np.float64))
        merged_weight = merged_weight[order]
    return Edges(
        src=take_ids(src, rows),
        dst=take_ids(dst, rows),
        ts=earliest[order],
        weight=merged_weight,
    )


def _weights(table: _Table, column: str) -> np.ndarray | None:
    values = table.columns.get(column)
    if values is None:
        return None
    expected = "expected a positive number or empty"
    if isinstance(values, np.ndarray):  # Parquet numbers; null (NaN) is 1
        out = values.astype(np.float64)
        out[np.isnan(out)] = 1.0
        bad = ~(np.isfinite(out) & (out > 0))
        for i in np.flatnonzero(bad).tolist():
            table.report(i, column, f"{expected}, got {_shown(values, i)}")
        out[bad] = 1.0
        return out
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v) if v.strip() else 1.0
        except ValueError:
            out[i] = math.nan
        if not (math.isfinite(out[i]) and out[i] > 0):
            table.report(i, column, f"{expected}, got {v!r}")
            out[i] = 1.0
    return out


# --------------------------------------------------------------------------- load


@dataclass
class _LoadDefaults:
    on_unknown_item: str = "error"
    warn: Callable[[str], None] | None = None


_load_defaults = _LoadDefaults()


@contextlib.contextmanager
def load_defaults(on_unknown_item: Literal["error", "drop"] = "error", warn: Callable[[str], None] | None = None) -> Iterator[None]:
    """Defaults for the :func:`load_dataset` calls made inside, for this process.

    For command lines whose dataset is loaded deep in library code (the trainer, the
    server's store): ``on_unknown_item`` for calls that pass none, and ``warn`` called
    with each warning of calls that pass no ``warnings`` list. Restored on exit.
    """
    global _load_defaults
    if on_unknown_item not in ("error", "drop"):
        raise ValueError(f"on_unknown_item must be 'error' or 'drop', got {on_unknown_item!r}")
    previous = _load_defaults
    _load_defaults = _LoadDefaults(on_unknown_item, warn)
    try:
        yield
    finally:
        _load_defaults = previous


def load_dataset(
    path: str,
    on_unknown_item: Literal["error", "drop"] | None = None,
    warnings: list[str] | None = None,
) -> Dataset:
    """Read and validate a dataset directory.

    Duplicate likes/follows/friendships are collapsed keeping the earliest ts, and items.csv
    rows identical in every column are one item; friendships are undirected and stored
    once with ``src < dst``. Ids are stripped of surrounding whitespace. A like of an item
    missing from items.csv raises DatasetError by default (``on_unknown_item="error"``),
    and so does an engagement of one; with ``"drop"`` both are dropped with a warning that
    counts them. Columns a file does not define are ignored with a warning. Warnings are
    appended to ``warnings`` if it is a list (else passed to the ``warn`` of
    :func:`load_defaults`, if any); ``on_unknown_item`` None takes the default there
    ("error").

    Raises:
        DatasetError: a missing directory or likes.csv (line 0), or every problem found,
            up to MAX_REPORTED_ERRORS: a bad header, a bad value, a row with the wrong
            number of fields, an unclosed quote, a duplicate item_id with other values, a
            self-friendship, an unknown item, bytes that are not UTF-8, a broken CSV or
            a directory where a CSV file belongs. Never another exception for a bad file.
    """
    if on_unknown_item is None:
        on_unknown_item = _load_defaults.on_unknown_item  # type: ignore[assignment]
    if on_unknown_item not in ("error", "drop"):
        raise ValueError(f"on_unknown_item must be 'error' or 'drop', got {on_unknown_item!r}")
    with _warnings_to(warnings) as notes, gc_paused():
        return _load(path, on_unknown_item, notes)


def read_id_pairs(path: str, columns: tuple[str, str], warnings: list[str] | None = None) -> Edges:
    """The id columns ``columns`` of the CSV file ``path`` as edges without times (NaN),
    e.g. a file of test pairs.

    It is read as a dataset file is: a header row (a UTF-8 BOM allowed), columns in any
    order, other columns ignored with a warning, ids stripped, blank lines skipped.
    Warnings go as :func:`load_dataset`'s do (to ``warnings``, else to the ``warn`` of
    :func:`load_defaults`).

    Raises:
        DatasetError: every problem found, up to MAX_REPORTED_ERRORS, naming the file (its
            base name), line and column: a missing column, an empty id, a row with the
            wrong number of fields, bytes that are not UTF-8, a broken CSV, an unreadable file.
    """
    errors = _Errors()
    with _warnings_to(warnings) as notes:
        table = _read_table(path, os.path.basename(path), (columns, ()), errors, notes)
        src, dst = (_ids(table, column) for column in columns) if table is not None else ([], [])
    errors.raise_any()
    return Edges(src, dst, np.full(len(src), np.nan))


@contextlib.contextmanager
def _warnings_to(warnings: list[str] | None) -> Iterator[list[str]]:
    """The list to append warnings to: ``warnings``, or (None) one whose warnings go to the
    ``warn`` of :func:`load_defaults` on exit, also when the load fails."""
    defaults = _load_defaults
    notes: list[str] = warnings if warnings is not None else []
    try:
        yield notes
    finally:
        if warnings is None and defaults.warn is not None:
            for note in notes:
                defaults.warn(note)


def _check_directory(path: str) -> None:
    if not os.path.isdir(path):
        what = "not a directory" if os.path.exists(path) else "no such directory"
        raise DatasetError("", 0, "<directory>", f"dataset directory {path}: {what}")
    problems = [_csv_directory_error(path, file) for file in _SCHEMA if os.path.isdir(os.path.join(path, file))]
    problems += [
        DatasetError(file, 0, "<file>", f"both {file} and {parquet_name(file)} in dataset directory {path}: keep one of them")
        for file in _SCHEMA
        if os.path.isfile(os.path.join(path, file)) and os.path.exists(os.path.join(path, parquet_name(file)))
    ]
    if problems:
        raise DatasetError.of(problems)
    if _source(path, LIKES) is None:
        try:
            found = sorted(name for name in os.listdir(path) if name.endswith((".csv", PARQUET)))
        except OSError as error:  # not ours to read (its likes.csv not seen for that), EIO: not "holds no file"
            raise DatasetError("", 0, "<directory>", f"dataset directory {path}: cannot be read: {error.strerror or error}") from None
        holds = f"it holds {', '.join(found)}" if found else "it holds no .csv or .parquet file"
        raise DatasetError(LIKES, 0, "<file>", f"not found in dataset directory {path} (the one required file; {holds})")


def _csv_directory_error(path: str, file: str) -> DatasetError:
    return DatasetError(
        file, 0, "<file>",
        f"a directory, not a CSV file, in dataset directory {path}: CSV part directories ({file}/part-*.csv, as "
        f"Spark writes them) are not read; concatenate the parts into one {file} with a single header row, or "
        f"write {parquet_name(file)} (a directory of Parquet part files is read)",
    )


def _load(path: str, on_unknown_item: str, warnings: list[str]) -> Dataset:
    _check_directory(path)
    errors = _Errors()

    def table(file: str) -> _Table | None:
        source = _source(path, file)
        if source is None:
            return None
        if source != file:
            return _read_parquet(path, file, errors, warnings)
        return _read_table(os.path.join(path, file), file, _SCHEMA[file], errors, warnings)

    items_name, likes_name = _source(path, ITEMS), _source(path, LIKES) or LIKES

    like_users: list[str] = []
    like_items: list[str] = []
    like_ts = np.empty(0, dtype=np.float64)
    like_weight: np.ndarray | None = None
    likes_t = table(LIKES)
    if likes_t is not None:
        like_users = _ids(likes_t, "user_id")
        like_items = _ids(likes_t, "item_id")
        like_ts = _times(likes_t, "ts", allow_empty=True)
        like_weight = _weights(likes_t, "weight")

    items: Items | None = None  # None: items.csv is unreadable
    has_items_file = items_name is not None
    if has_items_file:
        items_t = table(ITEMS)
        if items_t is not None:
            items = _load_items(items_t)
    elif likes_t is not None:
        items = Items.without_listing(list(dict.fromkeys(like_items)))
    if has_items_file and items is not None and likes_t is not None:
        keep = _known_item_rows(likes_t, like_items, distinct_ids(items.item_id), items_name, on_unknown_item, warnings, "likes")
        if keep is not None:
            rows = np.flatnonzero(keep)
            like_users = take_ids(like_users, rows)
            like_items = take_ids(like_items, rows)
            like_ts = like_ts[keep]
            if like_weight is not None:
                like_weight = like_weight[keep]

    follows_t = table(FOLLOWS)
    follow_edges = None
    if follows_t is not None:
        follow_edges = (_ids(follows_t, "user_id"), _ids(follows_t, "seller_id"), _times(follows_t, "ts", True))

    friends_t = table(FRIENDS)
    friend_edges = _friend_edges(friends_t) if friends_t is not None else None

    sellers_t = table(SELLERS)
    sellers = _load_sellers(sellers_t) if sellers_t is not None else Sellers.none()

    engagements_t = table(ENGAGEMENTS_FILE)
    engagements = Engagements.none()
    if engagements_t is not None:
        engagements = _load_engagements(engagements_t, None if items is None else distinct_ids(items.item_id), items_name or likes_name,
                                        on_unknown_item, warnings)

    hidden_items_t, hidden_sellers_t = table(HIDDEN_ITEMS), table(HIDDEN_SELLERS)
    hidden_item_edges = hidden_seller_edges = None
    if hidden_items_t is not None:
        users, hidden, times = _ids(hidden_items_t, "user_id"), _ids(hidden_items_t, "item_id"), _times(hidden_items_t, "ts", True)
        keep = _known_item_rows(hidden_items_t, hidden, None if items is None else distinct_ids(items.item_id),
                                items_name or likes_name, on_unknown_item, warnings, "hidden items")
        if keep is not None:
            rows = np.flatnonzero(keep)
            users, hidden, times = take_ids(users, rows), take_ids(hidden, rows), times[keep]
        hidden_item_edges = (users, hidden, times)
    if hidden_sellers_t is not None:
        hidden_seller_edges = (_ids(hidden_sellers_t, "user_id"), _ids(hidden_sellers_t, "seller_id"), _times(hidden_sellers_t, "ts", True))

    errors.raise_any()
    assert items is not None
    likes = _collapsed((like_users, like_items, like_ts, like_weight), likes_name, warnings, "a (user_id, item_id) pair",
                       "like", "earliest ts and largest weight")
    follows = _collapsed(follow_edges, _source(path, FOLLOWS), warnings, "a (user_id, seller_id) pair", "follow")
    friends = _collapsed(friend_edges, _source(path, FRIENDS), warnings, "a friendship (u1,u2 and u2,u1 are one)",
                         "friendship")
    hidden_items = _collapsed(hidden_item_edges, _source(path, HIDDEN_ITEMS), warnings, "a (user_id, item_id) pair",
                              "hidden item")
    hidden_sellers = _collapsed(hidden_seller_edges, _source(path, HIDDEN_SELLERS), warnings,
                                "a (user_id, seller_id) pair", "hidden seller")
    listing = distinct_ids(items.seller_id) - {""} if items_name else None
    liking = distinct_ids(likes.src)
    unjoined = [
        (_source(path, FRIENDS), "users", distinct_ids(friends.src) | distinct_ids(friends.dst), liking, f"have no like in {likes_name}"),
        (_source(path, FOLLOWS), "users", distinct_ids(follows.src), liking, f"have no like in {likes_name}"),
        (_source(path, FOLLOWS), "sellers", distinct_ids(follows.dst), listing, f"list no item in {items_name}"),
        (_source(path, SELLERS), "sellers", set(sellers.seller_id), listing, f"list no item in {items_name}"),
    ]
    warnings.extend(filter(None, (_unjoined_ids_warning(*table_ids) for table_ids in unjoined)))
    dated = [(likes_name, "ts", likes.ts), (items_name, "created_at", items.created_at),
             (_source(path, FOLLOWS), "ts", follows.ts), (_source(path, FRIENDS), "ts", friends.ts),
             (_source(path, ENGAGEMENTS_FILE), "ts", engagements.ts)]
    warnings.extend(filter(None, (_future_times(file, column, ts) for file, column, ts in dated if file)))
    return Dataset(
        items=items, likes=likes, follows=follows, friends=friends, sellers=sellers, engagements=engagements,
        hidden_items=hidden_items, hidden_sellers=hidden_sellers,
    )


def _unjoined_ids_warning(file: str | None, noun: str, ids: set[str], known: set[str] | None, missing: str) -> str | None:
    """A warning when not one of ``ids`` is among ``known``: ids written otherwise than in the
    table they refer to (numbers for emails), which load without error and then join nothing."""
    if not file or known is None or not ids or ids & known:
        return None
    return f"{file}: its {noun} ({len(ids)}) {missing} (are the ids written as there?)"


def _collapsed(columns: tuple | None, file: str | None, warnings: list[str], repeated: str, noun: str,
               kept: str = "earliest ts") -> Edges:
    """``_dedupe(*columns)`` (no table: no edges), with a warning that counts the rows collapsed:
    a conversion that wrote one row per event (per tag, per play) learns from fewer rows than it wrote."""
    if columns is None:
        return _empty_edges()
    edges = _dedupe(*columns)
    rows, extra = len(columns[0]), len(columns[0]) - len(edges)
    if extra:
        several = _pairs_at_several_times(*columns[:3])
        retimed = f"; {several} at several times, which a time split places by the earliest" if several else ""
        warnings.append(f"{file}: {extra} row{' repeats' if extra == 1 else 's repeat'} {repeated}: {rows} rows are "
                        f"{len(edges)} {noun}{'' if len(edges) == 1 else 's'} (each keeps its {kept}{retimed})")
    return edges


def _pairs_at_several_times(src: list[str], dst: list[str], ts: np.ndarray) -> int:
    """How many (src, dst) pairs repeat with different known times: a pair liked before a time
    split and again after it is a training like, its later time forgotten."""
    times = np.asarray(ts, dtype=np.float64)
    timed = np.isfinite(times)
    pair, times = _pair_keys(src, dst)[timed], times[timed]
    order = np.lexsort((times, pair))
    pair, times = pair[order], times[order]
    retimed = (pair[1:] == pair[:-1]) & (times[1:] != times[:-1])
    return int(np.unique(pair[1:][retimed]).size)


def _future_times(file: str, column: str, ts: np.ndarray) -> str | None:
    """A warning when some of ``ts`` are further past this machine's clock than Ingest
    allows (DEFAULT_MAX_CLOCK_SKEW): a server reads such a time as now, so each of those
    events is as fresh as can be (news, trending, every decay) until the clock catches up.
    Most likely the times are off (a time zone, a unit, a generator's end time), not the clock."""
    ahead = ts > time.time() + DEFAULT_MAX_CLOCK_SKEW
    if not ahead.any():
        return None
    latest = datetime.fromtimestamp(float(ts[ahead].max()), timezone.utc)
    return (f"{file}: {int(ahead.sum()):,} of {len(ts):,} {column!r} values are more than {DEFAULT_MAX_CLOCK_SKEW / 60:g} minutes past "
            f"this machine's clock (the latest {latest:%Y-%m-%dT%H:%M:%SZ}): a server takes them for now, so they count as just "
            "happened (news, trending, recency) until then; are the times or the clock off?")


def _known_item_rows(t: _Table, item_ids: list[str], known_items: set[str] | None, item_file: str,
                     on_unknown_item: str, warnings: list[str], what: str) -> np.ndarray | None:
    """The rows of ``t`` to keep, as a mask, or None for all: an item not in ``known_items``
    (from ``item_file``; None: it is unreadable, reported already) is an error naming its
    line, or with ``on_unknown_item`` "drop" its row is dropped, with a warning that counts
    the ``what`` dropped. An empty id is reported already."""
    if known_items is None:
        return None
    unknown = np.flatnonzero(per_distinct(item_ids, lambda item: bool(item) and item not in known_items, bool)).tolist()
    if not unknown:
        return None
    if on_unknown_item == "error":
        for i in unknown:
            t.report(i, "item_id", f"unknown item {item_ids[i]!r} (not in {item_file})")
        return None
    warnings.append(_dropped_unknown_items(t, unknown, what, item_file))
    keep = np.ones(len(item_ids), dtype=bool)
    keep[unknown] = False
    return keep


def _load_engagements(t: _Table, known_items: set[str] | None, item_file: str,
                      on_unknown_item: str = "error", warnings: list[str] | None = None) -> Engagements:
    """``known_items`` None: items.csv could not be read, so unknown items are not checked.
    ``item_file`` is where the known items come from, for the message; ``on_unknown_item``
    "drop" drops the rows of unknown items with a warning in ``warnings``, as for likes."""
    user_id, item_id = _ids(t, "user_id"), _ids(t, "item_id")
    kind = t.columns["kind"]
    friend_id = t.columns.get("friend_id", [""] * t.n)
    valid = set(ENGAGEMENT_KINDS)
    known_kind = per_distinct(kind, lambda k: k in valid, bool)
    names_friend = per_distinct(friend_id, bool, bool)
    user_and_friend, _ = encode_concatenation([user_id, friend_id])
    suspect = (
        ~known_kind
        | (names_friend & ~per_distinct(kind, lambda k: k in (EventKind.SHARE.value, RECEIVED_SHARE), bool))
        | (~names_friend & per_distinct(kind, lambda k: k == RECEIVED_SHARE, bool))
        | (names_friend & (user_and_friend[: t.n] == user_and_friend[t.n :]))
    )
    for i in np.flatnonzero(suspect).tolist():  # tens of millions of rows: only these are looked at one by one
        user, k, friend = user_id[i], kind[i], friend_id[i]
        if k not in valid:
            t.report(i, "kind", f"expected one of {', '.join(ENGAGEMENT_KINDS)}, got {k!r}")
        if friend and k not in (EventKind.SHARE.value, RECEIVED_SHARE) and k in valid:
            t.report(i, "friend_id", f"only a share names a friend, not a {k}")
        if not friend and k == RECEIVED_SHARE:
            t.report(i, "friend_id", "a received_share names the friend who shared")
        if friend and friend == user:
            t.report(i, "friend_id", f"user {user!r} shares with themselves")
    keep = _known_item_rows(t, item_id, known_items, item_file, on_unknown_item, [] if warnings is None else warnings, "engagements")
    engagements = Engagements(user_id, item_id, kind, _times(t, "ts", allow_empty=True), friend_id)
    return engagements if keep is None else engagements.take(keep)


def _dropped_unknown_items(t: _Table, rows: list[int], what: str, item_file: str) -> str:
    return f"{t.file}: dropped {len(rows)} {what} of items not in {item_file} (first on {t.where(rows[0])})"


# A "forever" such as 9999-12-31 is past the accepted times: say how to write one.
_NO_END_HINT = "; a vacation with no end is 'inf' (until further notice)"


def _load_sellers(t: _Table) -> Sellers:
    seller_id = _ids(t, "seller_id")
    first: dict[str, int] = {}
    for i, v in enumerate(seller_id):
        if v and first.setdefault(v, i) != i:
            t.report(i, "seller_id", f"duplicate seller {v!r} (first on {t.where(first[v])})")
    until = _vacation_ends(t)
    _report_times_out_of_range(t, "vacation_until", np.where(np.isinf(until), np.nan, until), _NO_END_HINT)
    # Ingest's seller_vacation takes 0 for "no end": here it would be a vacation that ended in 1970.
    for i in np.flatnonzero(until == 0).tolist():
        t.report(i, "vacation_until", "0 would end the vacation in 1970: write 'inf' for until further notice (what 0 means to "
                                      "Ingest), or leave it empty for a seller not away")  # fmt: skip
    return Sellers(seller_id, until)


def _vacation_ends(t: _Table) -> np.ndarray:
    """sellers.csv's vacation_until as float64: inf for until further notice, NaN when empty."""
    values = t.columns["vacation_until"]
    if isinstance(values, np.ndarray):  # Parquet numbers or timestamps; inf: until further notice
        until = values.astype(np.float64)
        for i in np.flatnonzero(np.isneginf(until)).tolist():
            t.report(i, "vacation_until", f"{_TIME_EXPECTED}, 'inf' or empty, got {_shown(values, i)}")
        until[np.isneginf(until)] = np.nan
        return until
    until = np.full(t.n, np.nan)
    for i, v in enumerate(values):
        text = v.strip()
        if text.lower() == "inf":
            until[i] = np.inf
        elif text:
            try:
                until[i] = _parse_time(text)
            except ValueError:
                t.report(i, "vacation_until", f"{_TIME_EXPECTED}, 'inf' or empty, got {v!r}")
    return until


def _ship_days(table: _Table, column: str) -> np.ndarray | None:
    if column not in table.columns:
        return None
    values = table.columns[column]
    expected = f"expected whole days between 0 and {MAX_SHIP_DAYS} or empty"
    if isinstance(values, np.ndarray):  # Parquet numbers; NaN where null
        out = values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(out) & ~((out >= 0) & (out <= MAX_SHIP_DAYS) & (np.floor(out) == out))
        for i in np.flatnonzero(bad).tolist():
            table.report(i, column, f"{expected}, got {_shown(values, i)}")
        out[bad] = np.nan
        return out
    out = np.full(table.n, np.nan)
    for i, v in enumerate(table.columns[column]):
        if v.strip():
            try:
                days = _whole_number(v)
            except (ValueError, OverflowError):
                days = -1
            if 0 <= days <= MAX_SHIP_DAYS:
                out[i] = days
            else:
                table.report(i, column, f"{expected}, got {v!r}")
    return out


def _eligible(table: _Table, column: str) -> np.ndarray | None:
    values = table.columns.get(column)
    if values is None:
        return None
    if isinstance(values, np.ndarray):  # Parquet booleans or numbers; null (NaN) is eligible
        for i in np.flatnonzero(~(np.isnan(values) | (values == 0) | (values == 1))).tolist():
            table.report(i, column, f"expected 1, 0 or empty, got {_shown(values, i)}")
        return values != 0
    for i, v in enumerate(values):
        if v.strip() not in ("", "0", "1"):
            table.report(i, column, f"expected 1, 0 or empty, got {v!r}")
    return np.fromiter((v.strip() != "0" for v in values), bool, len(values))


def _currencies(table: _Table, column: str) -> list[str] | None:
    values = table.columns.get(column)
    for i, v in enumerate(values or ()):
        if v and not is_currency_code(v):
            table.report(i, column, f"expected an ISO 4217 code such as EUR or empty, got {v!r}")
    return values


def _load_items(t: _Table) -> Items:
    item_id = _ids(t, "item_id")
    items = Items(
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
    repeats = _repeated_rows(t, items)
    return items.take(np.delete(np.arange(t.n), repeats)) if repeats else items


def _repeated_rows(t: _Table, items: Items) -> list[int]:
    """The rows that repeat an earlier row of the same item in every column: one item with
    it, as a repeated like is one like. Values are compared as read (a stock of 18 is one of
    18.0). A repeated item with other values is reported."""
    item_id = items.item_id
    if len(distinct_ids(item_id)) == len(item_id):
        return []
    columns = {name: getattr(items, name) for name in t.columns if name != "item_id" and hasattr(items, name)}
    first: dict[str, int] = {}
    repeats: list[int] = []
    for i, v in enumerate(item_id):
        j = first.setdefault(v, i)
        if j == i or not v:  # an empty id is reported already
            continue
        differing = [name for name, values in columns.items() if not _same_value(values[i], values[j])]
        if differing:
            t.report(i, "item_id", f"duplicate item {v!r} (first on {t.where(j)}) differing in {', '.join(differing)}")
        else:
            repeats.append(i)
    return repeats


def _friend_edges(t: _Table) -> tuple[list[str], list[str], np.ndarray]:
    """(src, dst, ts) with src < dst: a friendship is undirected."""
    a = _ids(t, "user_id")
    b = _ids(t, "friend_id")
    ts = _times(t, "ts", allow_empty=True)
    codes, distinct = encode_concatenation([a, b])
    first, second = codes[: len(a)], codes[len(a) :]
    for i in np.flatnonzero(first == second).tolist():
        if a[i]:  # an empty id is reported already
            t.report(i, "friend_id", f"self-friendship: user {a[i]!r} befriends itself")
    rank = np.empty(len(distinct), np.int64)
    rank[sorted(range(len(distinct)), key=distinct.__getitem__)] = np.arange(len(distinct))
    swap = rank[first] > rank[second]
    return EncodedIds.of_codes(np.where(swap, second, first), distinct), EncodedIds.of_codes(np.where(swap, first, second), distinct), ts


# --------------------------------------------------------------------------- write


def _format_times(ts: np.ndarray) -> list[str]:
    """Integral seconds as integers, other values by repr (exact), NaN as empty."""
    column = _time_column(ts)
    return column.astype(str).tolist() if isinstance(column, np.ndarray) else column


def _format_time(x: float) -> str:
    if math.isnan(x):
        return ""
    if x == math.floor(x) and abs(x) < 2**53:
        return str(int(x))
    return repr(x)


def _time_column(ts: np.ndarray) -> np.ndarray | list[str]:
    """``_format_times(ts)`` as a column for ``_csv_bytes``: int64 seconds when every time
    is integral (joined as text by pyarrow, no str per row), else the formatted strings."""
    ts = np.asarray(ts, dtype=np.float64)
    if np.isfinite(ts).all() and (np.floor(ts) == ts).all() and (np.abs(ts) < 2**53).all():
        return ts.astype(np.int64)
    return [_format_time(x) for x in ts.tolist()]


_NEEDS_QUOTING = '[,"\r\n]'
_CSV_CHUNK_ROWS = 1 << 20


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


def _csv_bytes(header: Sequence[str], columns: Sequence[Sequence[str] | np.ndarray]) -> bytes:
    """UTF-8 of ``_csv_text(header, columns)``; int64 arrays are columns of integers."""
    rows = _csv_rows(columns)
    if rows is None:
        plain = [column.astype(str).tolist() if isinstance(column, np.ndarray) else column for column in columns]
        return _csv_text(header, plain).encode("utf-8")
    return _csv_text(header, []).encode("utf-8") + rows


def _csv_rows(columns: Sequence[Sequence[str] | np.ndarray]) -> bytes | None:
    """The CSV lines of ``columns`` (no header), byte for byte what csv.writer writes, or
    None when a field holds a carriage return: then only quoting every field of the file,
    header included, reads back right (see ``_csv_text``).

    When no field needs quoting (ids, numbers, times: the bulk of any dataset), pyarrow
    joins the fields in C++ a chunk of rows at a time, about ten times faster than
    csv.writer at tens of millions of rows (the fingerprint of a 29M-like dataset took
    53 s through csv.writer). Anything else goes through csv.writer.
    """
    joined = _joined_without_quoting(columns)
    if joined is not None:
        return joined
    plain = [column.astype(str).tolist() if isinstance(column, np.ndarray) else column for column in columns]
    if any("\r" in "".join(column) for column in plain):
        return None
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(zip(*plain))
    return buf.getvalue().encode("utf-8")


def _joined_without_quoting(columns: Sequence[Sequence[str] | np.ndarray]) -> bytes | None:
    """The CSV lines joined by pyarrow, or None when a field needs quoting."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def needs_quoting(text: pa.Array) -> bool:
        return pc.any(pc.match_substring_regex(text, _NEEDS_QUOTING)).as_py()

    distinct_text = {}
    for at, column in enumerate(columns):
        if isinstance(column, EncodedIds):
            codes, distinct = column.encoding()
            distinct_text[at] = codes, pa.array(distinct, pa.string())
            if needs_quoting(distinct_text[at][1]):
                return None
    pieces: list[bytes | memoryview] = []
    for start in range(0, len(columns[0]) if columns else 0, _CSV_CHUNK_ROWS):
        fields = []
        for at, column in enumerate(columns):
            if at in distinct_text:  # each distinct id converted once, then taken by code
                codes, text = distinct_text[at]
                fields.append(text.take(pa.array(codes[start : start + _CSV_CHUNK_ROWS])))
                continue
            part = column[start : start + _CSV_CHUNK_ROWS]
            if isinstance(part, np.ndarray):
                fields.append(pa.array(part).cast(pa.string()))  # integers never need quoting
                continue
            text = pa.array(part, pa.string())
            if needs_quoting(text):
                return None
            fields.append(text)
        lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*fields, ","), "", "\n")
        _, offsets, data = lines.buffers()
        offsets = np.frombuffer(offsets, np.int32)
        pieces.append(memoryview(data)[offsets[lines.offset] : offsets[lines.offset + len(lines)]])
    return b"".join(pieces)


def _card_columns(it: Items) -> dict[str, list[str]]:
    """The card columns that hold anything but defaults: a dataset without cards writes
    (and fingerprints) exactly the files it did before cards existed."""
    columns = _formatted_cards(it)
    defaults = {"feed_eligible": "1"}
    return {name: values for name, values in columns.items() if any(v != defaults.get(name, "") for v in values)}


def _formatted_cards(it: Items) -> dict[str, list[str]]:
    return {
        "title": it.title,
        "image_url": it.image_url,
        "currency": it.currency,
        "ship_days": _format_times(it.ship_days),
        "feed_eligible": ["1" if e else "0" for e in it.feed_eligible.tolist()],
    }


CsvColumns = tuple[tuple[str, ...], list[Sequence[str] | np.ndarray]]
"""A CSV table as (header, columns): int64 arrays are columns of integers."""


def items_csv(it: Items, cards: Sequence[str] | None = None) -> CsvColumns:
    """items.csv of ``it``, with the card columns ``cards`` (default: those holding anything but
    defaults; a writer of ``it`` in parts names those of the whole, as every part has the header)."""
    if cards is None:
        columns = _card_columns(it)
    else:
        formatted = _formatted_cards(it)
        columns = {name: formatted[name] for name in cards}
    header = ("item_id", "seller_id", "created_at", "stock", "price", "category", *columns)
    return header, [
        it.item_id,
        it.seller_id,
        _format_times(it.created_at),
        np.asarray(it.stock, dtype=np.int64).astype(str).tolist(),
        _format_times(it.price),
        it.category,
        *columns.values(),
    ]


def edges_csv(name: str, edges: Edges) -> CsvColumns:
    """The CSV of ``edges`` as table ``name`` (LIKES, FOLLOWS, FRIENDS, HIDDEN_ITEMS or HIDDEN_SELLERS)."""
    header, columns = _SCHEMA[name][0], [edges.src, edges.dst, _time_column(edges.ts)]
    if name == LIKES and edges.weight is not None:
        # Only a weighted dataset gets the column: unweighted files (and their
        # fingerprints) are exactly what they were before weights existed.
        header, columns = header + ("weight",), columns + [_time_column(edges.weight)]
    return header, columns


def engagements_csv(e: Engagements) -> CsvColumns:
    return _SCHEMA[ENGAGEMENTS_FILE][0] + ("friend_id",), [e.user_id, e.item_id, e.kind, _time_column(e.ts), e.friend_id]


def sellers_csv(sellers: Sellers) -> CsvColumns:
    until = ["inf" if np.isinf(t) else _format_time(t) for t in sellers.vacation_until.tolist()]
    return _SCHEMA[SELLERS][0], [sellers.seller_id, until]


def _render(ds: Dataset, all_main_tables: bool = False) -> dict[str, bytes]:
    """The CSV files of ``ds``: engagements.csv and sellers.csv only when they have rows,
    unless ``all_main_tables`` (the fingerprint's files are those of the default)."""
    out = {ITEMS: _csv_bytes(*items_csv(ds.items))}
    for name, edges in ((LIKES, ds.likes), (FOLLOWS, ds.follows), (FRIENDS, ds.friends)):
        out[name] = _csv_bytes(*edges_csv(name, edges))
    if len(ds.engagements) or all_main_tables:
        out[ENGAGEMENTS_FILE] = _csv_bytes(*engagements_csv(ds.engagements))
    if len(ds.sellers) or all_main_tables:
        out[SELLERS] = _csv_bytes(*sellers_csv(ds.sellers))
    for name, edges in ((HIDDEN_ITEMS, ds.hidden_items), (HIDDEN_SELLERS, ds.hidden_sellers)):
        if len(edges):  # only then: the files (and fingerprints) of datasets without are as before
            out[name] = _csv_bytes(*edges_csv(name, edges))
    return out


def _arrow_tables(ds: Dataset) -> dict[str, Any]:
    """The dataset as one Arrow table per file (by CSV name), in plain types Spark reads:
    string ids and text, double times and prices (null where unknown), int64 stock and
    ship_days, bool feed_eligible. Every table and item column is there (a fixed schema),
    except ``weight``, only on weighted likes, as in CSV."""
    import pyarrow as pa

    def text(values: list[str]) -> Any:
        return pa.array(values, pa.string())

    def doubles(values: np.ndarray) -> Any:
        values = np.asarray(values, dtype=np.float64)
        return pa.array(values, pa.float64(), mask=np.isnan(values))

    def whole(values: np.ndarray) -> Any:
        values = np.asarray(values, dtype=np.float64)
        if not (np.isnan(values) | (np.floor(values) == values)).all():
            return doubles(values)  # not whole days: loading says so, as it would in CSV
        missing = np.isnan(values)
        return pa.array(np.where(missing, 0, values).astype(np.int64), pa.int64(), mask=missing)

    it = ds.items
    out = {
        ITEMS: pa.table({
            "item_id": text(it.item_id), "seller_id": text(it.seller_id), "created_at": doubles(it.created_at),
            "stock": pa.array(np.asarray(it.stock, dtype=np.int64), pa.int64()), "price": doubles(it.price),
            "category": text(it.category), "title": text(it.title), "image_url": text(it.image_url),
            "currency": text(it.currency), "ship_days": whole(it.ship_days),
            "feed_eligible": pa.array(np.asarray(it.feed_eligible, dtype=bool), pa.bool_()),
        })  # fmt: skip
    }
    for name, edges in ((LIKES, ds.likes), (FOLLOWS, ds.follows), (FRIENDS, ds.friends)):
        src, dst, ts = _SCHEMA[name][0]
        columns = {src: text(edges.src), dst: text(edges.dst), ts: doubles(edges.ts)}
        if name == LIKES and edges.weight is not None:
            columns["weight"] = doubles(edges.weight)
        out[name] = pa.table(columns)
    e = ds.engagements
    out[ENGAGEMENTS_FILE] = pa.table({
        "user_id": text(e.user_id), "item_id": text(e.item_id), "kind": text(e.kind), "ts": doubles(e.ts),
        "friend_id": text(e.friend_id),
    })  # fmt: skip
    out[SELLERS] = pa.table({"seller_id": text(ds.sellers.seller_id), "vacation_until": doubles(ds.sellers.vacation_until)})
    for name, edges in ((HIDDEN_ITEMS, ds.hidden_items), (HIDDEN_SELLERS, ds.hidden_sellers)):
        if len(edges):
            user, hidden, ts = _SCHEMA[name][0]
            out[name] = pa.table({user: text(edges.src), hidden: text(edges.dst), ts: doubles(edges.ts)})
    return out


def _remove(path: str) -> None:
    """Remove a file or a directory (of Parquet parts), if there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def write_dataset(dataset: Dataset, path: str, format: Literal["csv", "parquet"] = "csv", all_main_tables: bool = False) -> None:
    """Write the dataset into ``path`` (created if needed) as CSV files or Parquet files.

    CSV: sellers.csv only when a seller has state, engagements.csv only when there are
    engagements, unless ``all_main_tables``: then both always (a header alone when empty),
    the six tables Parquet writes; output is deterministic (byte-identical for equal datasets).
    Parquet: one file per table (likes.parquet, ...), all six, and the not-interested
    tables when there are hides, in the types of :func:`_arrow_tables`, which Spark reads
    as they are. CSV writes those two only when there are hides, too.
    Either way the directory then holds this dataset only: the other format's files (or
    Parquet part directories) of the same tables are removed, so it never holds both.
    ``load_dataset(path)`` returns an equal dataset when the input was valid
    (deduplicated edges, friendships with ``src < dst``, unique item ids).
    """
    if format not in ("csv", "parquet"):
        raise ValueError(f"format must be 'csv' or 'parquet', got {format!r}")
    os.makedirs(path, exist_ok=True)
    if format == "parquet":
        import pyarrow.parquet as pq

        with gc_paused():
            tables = _arrow_tables(dataset)
        for name, table in tables.items():
            target = os.path.join(path, parquet_name(name))
            with _replacing(target) as tmp:
                pq.write_table(table, tmp)
                if os.path.isdir(target):
                    shutil.rmtree(target)
        for name in _SCHEMA:
            _remove(os.path.join(path, name))
            if name not in tables:  # a table this dataset has none of: not an older one's
                _remove(os.path.join(path, parquet_name(name)))
        return
    with gc_paused():
        rendered = _render(dataset, all_main_tables)
    for name, text in rendered.items():
        with _replacing(os.path.join(path, name)) as tmp, open(tmp, "wb") as fh:
            fh.write(text)
    _remove_tables_not_written(path, rendered)


def write_csv_tables(
    path: str, tables: Mapping[str, Iterable[CsvColumns]], on_rows: Callable[[int], None] = lambda rows: None
) -> None:
    """Write CSV tables into ``path`` (created if needed) a part at a time, byte for byte
    what ``write_dataset`` writes for a dataset of those tables' rows (the parts come from
    ``items_csv``, ``edges_csv``, ... of consecutive rows), without all rows in memory.

    ``tables`` maps a CSV name to its parts, at least one (possibly empty) each. Each file
    is replaced only once whole, and the optional tables not written and the Parquet
    tables are removed, as ``write_dataset`` does. ``on_rows`` hears each part's row count.

    Raises:
        ValueError: on a field with a carriage return: ``write_dataset`` then quotes every
            field of the file, which a file written in parts cannot do for its earlier parts.
    """
    os.makedirs(path, exist_ok=True)
    for name, parts in tables.items():
        with _replacing(os.path.join(path, name)) as tmp, open(tmp, "wb") as fh:
            for i, (header, columns) in enumerate(parts):
                if i == 0:
                    fh.write(_csv_text(header, []).encode("utf-8"))
                rows = _csv_rows(columns)
                if rows is None:
                    raise ValueError(f"{name}: a field holds a carriage return, which a CSV written in parts cannot quote")
                fh.write(rows)
                on_rows(len(columns[0]))
    _remove_tables_not_written(path, tables)


def _remove_tables_not_written(path: str, written: Collection[str]) -> None:
    """After writing the CSV tables ``written`` into ``path``: remove the optional CSV tables
    not among them and every Parquet table, so the directory holds this dataset only."""
    for optional in (SELLERS, ENGAGEMENTS_FILE, HIDDEN_ITEMS, HIDDEN_SELLERS):
        if optional not in written:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, optional))
    for name in _SCHEMA:
        _remove(os.path.join(path, parquet_name(name)))


@contextlib.contextmanager
def _replacing(target: str) -> Iterator[str]:
    """A temporary path beside ``target`` to write, renamed over ``target`` once written, so a
    reader never sees half a file; removed when the write or the rename fails."""
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


__all__ = [
    "Dataset",
    "DatasetError",
    "Edges",
    "Engagements",
    "Items",
    "Sellers",
    "load_dataset",
    "load_defaults",
    "write_csv_tables",
    "write_dataset",
]
