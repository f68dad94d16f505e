"""``python -m serving export``: write Redis's live state back as a dataset directory.

  python -m serving export --redis URL --out DIR [--format csv|parquet] [--since STREAM_ID]

Writes items.csv, likes.csv, follows.csv, friends.csv, sellers.csv (the sellers on
vacation) and engagements.csv (what users shared, clicked, carted or bought; one row
per user, item, kind and friend, at its latest time; views are not kept per view in
Redis, only the bounded fatigue state: the full history is in the event log, see
``--since``; and a received_share row per share a user holds, naming who shared it, so
that a store loaded from the export shows each share to whom it reached, not to friends
made since) (training.dataset format), these six always (a header alone when empty), so
the trainer can retrain from live data, and, when there are any, users' "not interested" hides as
not_interested_items.csv and not_interested_sellers.csv (their ``ts`` empty: Redis keeps
them as plain sets). With ``--format parquet`` the same tables are
written as items.parquet, likes.parquet, ... (the six main tables, and the hides when there are any, one file each, in types Spark
reads as they are: string, double, int64, bool); either format replaces the other's
files of the same tables in DIR. Keys are found with SCAN (on a cluster, on every
primary). Follows and friendships are kept in Redis as plain sets, so their ``ts`` column
is empty; likes keep their time; items with no known ``created_at`` are written as 0.

With ``--since STREAM_ID`` the event log entries after that id (exclusive; ``0`` for all)
are written to ``events.csv`` with the columns

  stream_id, event_id, kind, ts, user_id, item_id, seller_id, friend_id, created_at,
  stock, card, vacation_until

(one row per applied event, in log order; the fields of stores.events.Event.to_record,
empty when a kind does not use them: ``created_at`` only on item_upsert, ``stock`` on
item_upsert and stock_update, ``card`` on item_upsert and item_update, ``vacation_until``
on seller_vacation, and the ids stores.events.REQUIRED_IDS and OPTIONAL_IDS give the kind;
``card`` is the JSON object of the card fields the event named). The last stream id is printed (the
``--since`` id itself when there is nothing new): pass it as the next ``--since`` to export
only what is new. STREAM_ID is checked before anything is read or written.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from serving.load import connect_checked, exit_on_interrupt, exit_on_redis_errors
from stores.events import CARD_EVENTS, ID_FIELDS, OPTIONAL_IDS, RECEIVED_SHARE, REQUIRED_IDS, EventKind
from stores.redis import RECORD_FIELDS, scan_keys, unavailable_on_redis_errors
from stores.redis_keys import DEFAULT_PREFIX, Keys
from training.dataset import Dataset, Edges, Engagements, Items, Sellers, write_dataset
from training.flag_types import output_directory

EVENTS_FILE = "events.csv"
EVENT_COLUMNS = ("stream_id", *RECORD_FIELDS)
# Record fields only some kinds use (the ids: REQUIRED_IDS and OPTIONAL_IDS); the rest
# (event_id, kind, ts) every kind has.
_FIELD_KINDS: dict[str, tuple[EventKind, ...]] = {
    "created_at": (EventKind.ITEM_UPSERT,),
    "stock": (EventKind.ITEM_UPSERT, EventKind.STOCK_UPDATE),
    "card": CARD_EVENTS,
    "vacation_until": (EventKind.SELLER_VACATION,),
}


def _used_fields(kind: EventKind) -> frozenset[str]:
    ids = REQUIRED_IDS.get(kind, ID_FIELDS) + OPTIONAL_IDS.get(kind, ())
    unused = {name for name in ID_FIELDS if name not in ids}
    unused |= {name for name, kinds in _FIELD_KINDS.items() if kind not in kinds}
    return frozenset(name for name in RECORD_FIELDS if name not in unused)


_USED_FIELDS = {kind.value: _used_fields(kind) for kind in EventKind}


def event_row(stream_id: str, record: dict[str, str]) -> list[str]:
    """The events.csv row of a log record: the fields its kind does not use are empty
    (a like's record carries ``stock=0``: Event's default). An item_upsert's ``created_at``
    is empty when the event named none (the item kept its listing time, or a new one was
    listed at ``ts``)."""
    used = _USED_FIELDS.get(record.get("kind", ""))
    return [stream_id, *(record.get(name, "") if used is None or name in used else "" for name in RECORD_FIELDS)]
FETCH_BATCH = 1_000
EXPORT_INTERRUPTED = ("export interrupted part-way: each file in --out is whole, but some may be this export's and "
                      "some the one's before; run it again before reading them")
# A Redis stream id: MS-SEQ, or MS alone (SEQ 0), each a 64-bit unsigned number.
_STREAM_ID = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_MAX_ID_PART = 2**64 - 1
NOT_A_STREAM_ID = "not a Redis stream id (MS-SEQ or MS, e.g. 1718000000000-0; 0 for all)"


@dataclass(frozen=True)
class ExportStats:
    items: int
    likes: int
    follows: int
    friends: int
    events: int
    last_event_id: str | None
    hides_of_unlisted: int = 0
    engagements: int = 0  # engagements.csv's rows: shares, clicks, carts, purchases (views are events only)


def _fetch(client: Any, keys: list[str], method: str, *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    for start in range(0, len(keys), FETCH_BATCH):
        chunk = keys[start : start + FETCH_BATCH]
        pipe = client.pipeline()
        for key in chunk:
            getattr(pipe, method)(key, *args, **kwargs)
        yield from zip(chunk, pipe.execute())


def read_live_dataset(client: Any, prefix: str = DEFAULT_PREFIX) -> tuple[Dataset, int]:
    """The live state as a Dataset (rows sorted by id, so equal states give equal files),
    and how many hides of items not listed (yet) it leaves out: Ingest accepts them, a
    dataset cannot hold them."""
    k = Keys(prefix)
    vacations = sorted(client.hgetall(k.vacations).items())
    likes = sorted(
        (k.user_id_of(key, "liked"), item, float(ts))
        for key, liked in _fetch(client, sorted(scan_keys(client, k.liked_pattern)), "hgetall")
        for item, ts in liked.items()
    )
    follows = sorted(
        (k.user_id_of(key, "follows"), seller)
        for key, sellers in _fetch(client, sorted(scan_keys(client, k.follows_pattern)), "smembers")
        for seller in sellers
    )
    friends = sorted(
        {
            (min(user, friend), max(user, friend))
            for key, others in _fetch(client, sorted(scan_keys(client, k.friends_pattern)), "smembers")
            for user in [k.user_id_of(key, "friends")]
            for friend in others
            if friend != user
        }
    )
    hidden_items, hidden_sellers = (
        sorted(
            (k.user_id_of(key, what), member)
            for key, members in _fetch(client, sorted(scan_keys(client, k.user_pattern(what))), "smembers")
            for member in members
        )
        for what in ("hidden_items", "hidden_sellers")
    )
    engaged = sorted(
        (k.user_id_of(key, "engaged"), *json.loads(field), float(ts))
        for key, fields in _fetch(client, sorted(scan_keys(client, k.engaged_pattern)), "hgetall")
        for field, ts in fields.items()
    )  # (user, kind, item, friend, ts)
    # Whom each share reached, as received: a share to all friends reached those of then,
    # which a loader replaying it over today's friendships would not know.
    engaged += sorted(
        (k.user_id_of(key, "shared"), RECEIVED_SHARE, *json.loads(member), -float(negated_ts))
        for key, members in _fetch(client, sorted(scan_keys(client, k.user_pattern("shared"))), "zrange", 0, -1, withscores=True)
        for member, negated_ts in members
    )  # (recipient, received_share, item, sharer, ts)
    # Items last: they are never deleted, so every item a like, engagement or hide read
    # above refers to is here even when Ingest runs meanwhile (a like of a listing newer
    # than the items' scan made the export one no loader accepts).
    item_keys = sorted(scan_keys(client, k.item_pattern))
    rows = sorted((k.item_id_of(key), fields) for key, fields in _fetch(client, item_keys, "hgetall") if "seller" in fields)
    fields = [f for _, f in rows]

    def floats(name: str, missing: float) -> np.ndarray:
        return np.array([float(f.get(name) or missing) for f in fields], dtype=np.float64)

    items = Items(
        item_id=[item_id for item_id, _ in rows],
        seller_id=[f["seller"] for f in fields],
        created_at=floats("created_at", 0.0),
        stock=np.array([int(f.get("stock") or 0) for f in fields], dtype=np.int64),
        price=floats("price", math.nan),
        category=[f.get("category", "") for f in fields],
        title=[f.get("title", "") for f in fields],
        image_url=[f.get("image_url", "") for f in fields],
        currency=[f.get("currency", "") for f in fields],
        ship_days=floats("ship_days", math.nan),
        feed_eligible=np.array([f.get("feed_eligible") != "0" for f in fields], dtype=bool),
    )
    listed = set(items.item_id)
    hides_of_unlisted = sum(item not in listed for _, item in hidden_items)
    hidden_items = [(user, item) for user, item in hidden_items if item in listed]
    return Dataset(
        engagements=Engagements(
            [r[0] for r in engaged], [r[2] for r in engaged], [r[1] for r in engaged],
            np.array([r[4] for r in engaged], dtype=np.float64), [r[3] for r in engaged],
        ),  # fmt: skip
        items=items,
        likes=Edges([r[0] for r in likes], [r[1] for r in likes], np.array([r[2] for r in likes], dtype=np.float64)),
        follows=Edges([r[0] for r in follows], [r[1] for r in follows], np.full(len(follows), np.nan)),
        friends=Edges([r[0] for r in friends], [r[1] for r in friends], np.full(len(friends), np.nan)),
        sellers=Sellers([s for s, _ in vacations], np.array([float(t) for _, t in vacations], dtype=np.float64)),
        hidden_items=Edges([r[0] for r in hidden_items], [r[1] for r in hidden_items], np.full(len(hidden_items), np.nan)),
        hidden_sellers=Edges([r[0] for r in hidden_sellers], [r[1] for r in hidden_sellers], np.full(len(hidden_sellers), np.nan)),
    ), hides_of_unlisted


def is_stream_id(text: str) -> bool:
    """Whether ``text`` is a Redis stream id (MS-SEQ or MS)."""
    match = _STREAM_ID.fullmatch(text)
    return match is not None and all(int(part) <= _MAX_ID_PART for part in match.groups(default="0"))


def stream_id(text: str) -> str:
    """An argparse type: a Redis stream id, checked by its form alone (nothing to load)."""
    if not is_stream_id(text):
        raise argparse.ArgumentTypeError(f"{NOT_A_STREAM_ID}, got {text!r}")
    return text


def write_events(client: Any, path: str, since: str, prefix: str = DEFAULT_PREFIX) -> tuple[int, str]:
    """Write the log entries after ``since`` to ``path``; returns (count, last stream id),
    the last id ``since`` itself when there are none. ``path`` is left as it was on failure."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            count, last = _write_entries(client, csv.writer(fh, lineterminator="\n"), Keys(prefix).events, since)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return count, last


def _write_entries(client: Any, writer: Any, stream: str, since: str) -> tuple[int, str]:
    count, last = 0, since
    writer.writerow(EVENT_COLUMNS)
    start = _after(since) if since not in ("0", "-") else "-"
    while start is not None:
        entries = client.xrange(stream, min=start, max="+", count=FETCH_BATCH)
        if not entries:
            break
        for stream_id, record in entries:
            writer.writerow(event_row(stream_id, record))
            last = stream_id
        count += len(entries)
        start = _after(last)
    return count, last


def _after(stream_id: str) -> str | None:
    """XRANGE's start for the entries after ``stream_id``; None after the largest id, which
    Redis refuses as an exclusive start."""
    ms, _, seq = stream_id.partition("-")
    return None if int(ms) == int(seq or 0) == _MAX_ID_PART else "(" + stream_id


def export_from_redis(
    client: Any, out_dir: str, since: str | None = None, prefix: str = DEFAULT_PREFIX, format: Literal["csv", "parquet"] = "csv"
) -> ExportStats:
    """Write the live state (and the events after ``since``, if given) into ``out_dir``,
    the dataset as CSV or Parquet files (``format``); events.csv is CSV either way.

    Raises ValueError, before anything is read, when ``since`` is not a stream id, and
    StoreUnavailable when Redis cannot be reached.
    """
    if since is not None and not is_stream_id(since):
        raise ValueError(f"since {since!r}: {NOT_A_STREAM_ID}")
    with unavailable_on_redis_errors():
        dataset, hides_of_unlisted = read_live_dataset(client, prefix)
        # Every main table even when empty, in either format: a job that reads the export finds the same files every day.
        write_dataset(dataset, out_dir, format=format, all_main_tables=True)
        events, last = (0, None)
        if since is not None:
            events, last = write_events(client, os.path.join(out_dir, EVENTS_FILE), since, prefix)
    return ExportStats(len(dataset.items), len(dataset.likes), len(dataset.follows), len(dataset.friends), events, last, hides_of_unlisted,
                       engagements=len(dataset.engagements))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB, rediss://HOST:PORT/DB, unix://PATH or redis-cluster://HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--out", required=True, type=output_directory, help="dataset directory to write (created if needed)")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv",
                        help="dataset files to write: csv (default) or parquet (items.parquet, likes.parquet, ..., for Spark)")
    parser.add_argument("--since", type=stream_id, metavar="STREAM_ID", help="also write events.csv with the log entries after this stream id (MS-SEQ or MS; 0 = all)")
    parser.add_argument("--no-progress", action="store_true", help="accepted like every command's (export draws no progress bar)")
    args = parser.parse_args(argv)
    client, own = connect_checked(args.redis, socket_timeout=60.0, socket_connect_timeout=5.0)
    try:
        with exit_on_redis_errors(args.redis), exit_on_interrupt(args.redis, EXPORT_INTERRUPTED):
            stats = export_from_redis(client, args.out, args.since, own.get("prefix", DEFAULT_PREFIX), args.format)
    except OSError as error:  # the file it names (start_error's form, as serve's), else only --out: a full disk names none
        from serving.server import start_error  # not a light import: only on the way out

        sys.exit(f"error: --out {args.out}: {start_error(error).removeprefix(f'{args.out}: ')}")  # --out named once
    finally:
        client.close()
    print(
        f"exported {stats.items} items, {stats.likes} likes, {stats.follows} follows, {stats.friends} friendships, "
        f"{stats.engagements} engagements"
        + (f", {stats.events} events (last stream id {stats.last_event_id})" if args.since is not None else "")
        + f" to {args.out}"
        + (f"; left out {stats.hides_of_unlisted} hides of items not listed yet (a dataset's hidden items must be in items)"
           if stats.hides_of_unlisted else "")
    )
