"""``python -m serving load``: load a dataset directory into Redis.

  python -m serving load --data DIR --redis URL [--batch 10000] [--no-progress] [--drop-unknown-items]

Writes are pipelined, ``--batch`` commands per round trip, with a progress bar over the
dataset's rows. Every write sets an absolute value (HSET, ZADD, SADD; like counts and
trending scores are computed from the dataset, never incremented), so loading the same
dataset twice leaves the same state (but for the vacations' version counter, which tells
feed servers to read the vacations again): an interrupted load is simply run again. Loading is
meant for an empty Redis or one holding the same dataset; it does not log events. It warns
when a primary's maxmemory-policy is not noeviction (a full Redis would evict feed state).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
from redis.exceptions import NoPermissionError, RedisClusterException, RedisError
from tqdm import tqdm

from ranking.store import trending_weight
from serving.store_url import password_missing, redacted
from stores.base import StoreForbidden, StoreFull, StoreUnavailable
from stores.events import RECEIVED_SHARE, EventKind, card_strings
from stores.memory import DEFAULT_RECENT_LIKES, replay_engagements
from stores.redis import (
    DEFAULT_LISTINGS,
    NOT_A_CLUSTER,
    NOT_A_CLUSTER_CAUSES,
    PACKED_FIELD,
    DataLost,
    SlotsMoving,
    acl_refusals,
    connect,
    eviction_warning,
    is_cluster_client,
    listings_kept,
    mark_every_slot,
    pack_item,
    refusals_by_node,
    split_url,
    unavailable_on_redis_errors,
)
from stores.redis_keys import DEFAULT_PREFIX, Keys
from training.__main__ import add_drop_unknown_items_argument
from training.dataset import Dataset, DatasetError, Items, load_dataset
from training.flag_types import bounded

DEFAULT_BATCH = 10_000  # commands per pipeline round trip
INTERRUPTED_STATUS = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
LOAD_SOCKET_TIMEOUT = 60.0  # a 10k-command pipeline can take a while on a busy server


@dataclass(frozen=True)
class LoadStats:
    rows: int  # items + likes + follows + friendships
    commands: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def load_summary(dataset: Dataset, stats: LoadStats, read_seconds: float) -> str:
    """A load's last line: the rows of every table loaded, then the rate over the rows the
    load times (items, likes, follows, friendships: the rate the benchmarks compare)."""
    always = [(len(dataset.items), "item", "items"), (len(dataset.likes), "like", "likes"), (len(dataset.follows), "follow", "follows"),
              (len(dataset.friends), "friendship", "friendships")]
    away = int(np.count_nonzero(~np.isnan(dataset.sellers.vacation_until)))  # an empty vacation_until is no vacation
    optional = [(len(dataset.engagements), "engagement", "engagements"), (away, "vacation", "vacations"),
                (len(dataset.hidden_items), "hidden item", "hidden items"), (len(dataset.hidden_sellers), "hidden seller", "hidden sellers")]
    counts = [f"{count} {one if count == 1 else many}" for count, one, many in always + [t for t in optional if t[0]]]
    return (f"loaded {', '.join(counts)} ({stats.commands} commands) in {stats.seconds:.2f} s: "
            f"{stats.rows_per_second:,.0f} rows/s of items, likes, follows and friendships "
            f"(reading the dataset took {read_seconds:.2f} s)")


def _time(value: float) -> str:
    return repr(0.0 if math.isnan(value) else float(value))


def _card(items: Items, row: int) -> dict[str, str]:
    """The item's card fields that differ from a new item's defaults, as the stores keep them."""
    price, ship_days = float(items.price[row]), float(items.ship_days[row])
    card = {
        "price": None if math.isnan(price) else price,
        "category": items.category[row] or None,
        "title": items.title[row] or None,
        "image_url": items.image_url[row] or None,
        "currency": items.currency[row] or None,
        "ship_days": None if math.isnan(ship_days) else ship_days,
        "feed_eligible": None if items.feed_eligible[row] else False,
    }
    return card_strings({name: value for name, value in card.items() if value is not None})


def _commands(
    dataset: Dataset, keys: Keys, recent_likes: int, listings: int, packed_items: bool
) -> Iterator[tuple[int, str, tuple[Any, ...]]]:
    """(rows done by this command, method name, args), grouped by key. The items' packed
    values go to the hash of every item with ``packed_items`` (standalone Redis), else to
    the item hashes (a cluster)."""
    items, likes = dataset.items, dataset.likes
    like_count: dict[str, int] = defaultdict(int)
    trending: dict[str, float] = defaultdict(float)
    by_user: dict[str, dict[str, str]] = defaultdict(dict)
    for user_id, item_id, ts in zip(likes.src, likes.dst, likes.ts.tolist()):
        ts = 0.0 if math.isnan(ts) else ts
        by_user[user_id][item_id] = repr(float(ts))
        like_count[item_id] += 1
        trending[item_id] += trending_weight(ts)

    by_seller: dict[str, dict[str, str]] = defaultdict(dict)
    packed: dict[str, str] = {}
    for row, (item_id, seller_id, created_at, stock) in enumerate(
        zip(items.item_id, items.seller_id, items.created_at.tolist(), items.stock.tolist())
    ):
        created = _time(created_at)
        fields = {
            "seller": seller_id,
            "created_at": created,
            "stock": str(stock),
            "like_count": str(like_count.get(item_id, 0)),
            **_card(items, row),
        }
        if packed_items:
            packed[item_id] = pack_item(fields, trending.get(item_id, 0.0))
        else:
            fields[PACKED_FIELD] = pack_item(fields)
        yield 1, "hset", (keys.item(item_id), None, None, fields)
        if seller_id and stock > 0:  # a seller's listings are its in-stock items
            by_seller[seller_id][item_id] = "-" + created
    if packed_items:
        packed_rows = list(packed.items())
        for start in range(0, len(packed_rows), 1000):
            yield 0, "hset", (keys.packed_items, None, None, dict(packed_rows[start : start + 1000]))
    sellers = dataset.sellers
    away = {s: repr(t) for s, t in zip(sellers.seller_id, sellers.vacation_until.tolist()) if not math.isnan(t)}
    if away:
        yield 0, "hset", (keys.vacations, None, None, away)
        yield 0, "incr", (keys.vacations_version,)  # servers' copies of the hash refresh
    for seller_id, listed in by_seller.items():
        yield 0, "zadd", (keys.listings(seller_id), listed)
        yield 0, "zremrangebyrank", (keys.listings(seller_id), listings_kept(listings), -1)

    for user_id, liked in by_user.items():
        yield len(liked), "hset", (keys.liked(user_id), None, None, liked)
        yield 0, "zadd", (keys.recent_likes(user_id), {item: "-" + ts for item, ts in liked.items()})
        yield 0, "zremrangebyrank", (keys.recent_likes(user_id), recent_likes, -1)
    scores = list(trending.items())
    for start in range(0, len(scores), 1000):
        yield 0, "zadd", (keys.trending, dict(scores[start : start + 1000]))

    # One SADD per user with all its members: a command per edge made loading 1M users'
    # graph a matter of an hour instead of minutes.
    followed: dict[str, list[str]] = defaultdict(list)
    for user_id, seller_id in zip(dataset.follows.src, dataset.follows.dst):
        followed[user_id].append(seller_id)
    for user_id, sellers in followed.items():
        yield len(sellers), "sadd", (keys.follows(user_id), *sellers)
    befriended: dict[str, list[str]] = defaultdict(list)
    listed_first: dict[str, int] = defaultdict(int)  # friendships counted on their src side
    for a, b in zip(dataset.friends.src, dataset.friends.dst):
        befriended[a].append(b)
        befriended[b].append(a)
        listed_first[a] += 1
    for user_id, friends in befriended.items():
        yield listed_first.get(user_id, 0), "sadd", (keys.friends(user_id), *friends)
    for edges, key in ((dataset.hidden_items, keys.hidden_items), (dataset.hidden_sellers, keys.hidden_sellers)):
        hidden: dict[str, list[str]] = defaultdict(list)
        for user_id, what in zip(edges.src, edges.dst):
            hidden[user_id].append(what)
        for user_id, members in hidden.items():
            yield 0, "sadd", (key(user_id), *members)
    yield from _engagement_commands(dataset, keys, befriended)


def lua_json(values: list[str]) -> str:
    """``values`` as the Lua scripts' cjson.encode writes them (it escapes "/" and DEL,
    which json.dumps leaves as they are), so a loaded member and one a script writes later
    are the same member."""
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/").replace("\x7f", "\\u007f")


def _engagement_commands(dataset: Dataset, keys: Keys, befriended: dict[str, list[str]]) -> Iterator[tuple[int, str, tuple[Any, ...]]]:
    """Shares received, fatigue and the engagement record: the state the memory store replays."""
    engagements = dataset.engagements
    if not len(engagements):
        return
    friends = {user: set(others) for user, others in befriended.items()}
    shared, seen = replay_engagements(dataset, friends, _ItemIds().code)
    for user_id, received in shared.items():
        yield 0, "zadd", (keys.shared(user_id), {lua_json([item, sharer]): repr(negated_ts) for negated_ts, item, sharer, _ in received.entries})
    for user_id, fatigue in seen.items():
        if fatigue.views:
            yield 0, "zadd", (keys.seen(user_id), {item: repr(last) for _, last, item in fatigue.views.values()})
            yield 0, "hset", (keys.views(user_id), None, None, {item: f"{count},{last!r}" for count, last, item in fatigue.views.values()})
    engaged: dict[str, dict[str, float]] = defaultdict(dict)
    for user_id, item_id, kind, ts, friend_id in zip(
        engagements.user_id, engagements.item_id, engagements.kind, np.nan_to_num(engagements.ts, nan=0.0).tolist(), engagements.friend_id
    ):
        if kind not in (EventKind.VIEW.value, RECEIVED_SHARE):  # each is kept in its own form above
            field = lua_json([kind, item_id, friend_id])
            engaged[user_id][field] = max(engaged[user_id].get(field, ts), ts)
    for user_id, fields in engaged.items():
        yield len(fields), "hset", (keys.engaged(user_id), None, None, {f: repr(t) for f, t in fields.items()})


class _ItemIds:
    """Item codes for the replay, which keeps ids beside them."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def code(self, item_id: str) -> int:
        return self._codes.setdefault(item_id, len(self._codes))


def load_into_redis(
    client: Any,
    dataset: Dataset,
    prefix: str = DEFAULT_PREFIX,
    recent_likes: int = DEFAULT_RECENT_LIKES,
    listings: int = DEFAULT_LISTINGS,
    batch: int = DEFAULT_BATCH,
    progress: bool = False,
) -> LoadStats:
    """Write ``dataset`` into Redis through ``client`` (standalone or cluster), pipelined.

    ``recent_likes`` and ``listings`` must match the serving store's bounds (each seller's
    set keeps ``listings_kept(listings)`` of its in-stock items).
    Raises StoreUnavailable when Redis cannot be reached.
    """
    keys = Keys(prefix)
    total = len(dataset.items) + len(dataset.likes) + len(dataset.follows) + len(dataset.friends)
    started = time.perf_counter()
    commands = 0
    bar = tqdm(total=total, unit="rows", desc="load", disable=not progress, file=sys.stderr, smoothing=0.1)
    pipe = client.pipeline()
    pending_rows = 0
    with bar, unavailable_on_redis_errors():
        for rows, method, args in _commands(dataset, keys, recent_likes, listings, not is_cluster_client(client)):
            if method == "hset":
                pipe.hset(args[0], mapping=args[3])
            else:
                getattr(pipe, method)(*args)
            commands += 1
            pending_rows += rows
            if len(pipe) >= batch:
                pipe.execute()
                bar.update(pending_rows)
                pending_rows = 0
        if len(pipe):
            pipe.execute()
        bar.update(pending_rows)
        # A feed server's copy of what it read (stores/redis_cache.py) cannot tell what a
        # load changed: a change log of a new epoch makes every copy start afresh.
        seq, epoch, log = keys.change_log_keys()
        client.delete(seq, log)
        client.set(epoch, f"load {uuid.uuid4()}")
        if is_cluster_client(client):  # the feed servers then write into slots that hold the data, only
            mark_every_slot(client, keys)
    return LoadStats(rows=total, commands=commands, seconds=time.perf_counter() - started)


def load_probes(keys: Keys, cluster: bool) -> list[list[str]]:
    """A call of each command ``load_into_redis`` runs, on a key of each kind it runs it on
    (ids "*", as stores.redis.access_probes): what ``check_write_access`` asks about."""
    u = i = s = "*"
    seq, epoch, log = keys.change_log_keys()
    probes = [
        ["HSET", keys.item(i), "stock", "0"], ["HSET", keys.vacations, s, "0"], ["INCR", keys.vacations_version],
        ["ZADD", keys.listings(s), "0", i], ["ZREMRANGEBYRANK", keys.listings(s), "0", "-1"],
        ["HSET", keys.liked(u), i, "0"], ["ZADD", keys.recent_likes(u), "0", i],
        ["ZREMRANGEBYRANK", keys.recent_likes(u), "0", "-1"], ["ZADD", keys.trending, "0", i],
        ["SADD", keys.follows(u), s], ["SADD", keys.friends(u), u], ["SADD", keys.hidden_items(u), i],
        ["SADD", keys.hidden_sellers(u), s], ["ZADD", keys.shared(u), "0", i], ["ZADD", keys.seen(u), "0", i],
        ["HSET", keys.views(u), i, "0"], ["HSET", keys.engaged(u), i, "0"],
        ["DEL", seq], ["DEL", log], ["SET", epoch, "0"],
    ]  # fmt: skip
    if cluster:  # a cluster's pipeline is no transaction, and keeps no packed items' hash
        return [*probes, ["SET", keys.data_marker(0), "1"]]
    return [*probes, ["HSET", keys.packed_items, i, "0"], ["MULTI"], ["EXEC"]]


def check_write_access(client: Any, keys: Keys) -> None:
    """StoreForbidden naming each command of a load the ACL user may not run, or not on a
    kind of key it runs it on, asked of each primary before anything is written: a user
    refused part-way left a partial load. Nothing when Redis (before 7) cannot tell;
    NoPermissionError when the user may not run EVAL, which asks."""
    refusals = acl_refusals(client, load_probes(keys, is_cluster_client(client)))
    if refusals:
        raise StoreForbidden(f"{refusals_by_node(refusals)}, which a load writes")


def _check_write_access(client: Any, keys: Keys, url_text: str) -> None:
    """``check_write_access``, exiting with one line on a refusal; a warning when it cannot be asked."""
    with exit_on_redis_errors(url_text):
        try:
            check_write_access(client, keys)
        except NoPermissionError as error:
            print(f"warning: --redis {redacted(url_text)}: could not ask Redis whether this user may write all a load "
                  f"writes ({error}; grant +eval): a permission refused part-way leaves a partial load", file=sys.stderr)  # fmt: skip


def _fail(url: str, message: str) -> NoReturn:
    sys.exit(f"error: --redis {redacted(url)}: {message}")


def connect_checked(url_text: str, **options: Any) -> tuple[Any, dict[str, Any]]:
    """(client, our own URL options) for ``--redis``, after a PING; exits with one line
    (no traceback) on a bad URL or an unreachable Redis."""
    try:
        url, own = split_url(url_text)
        with unavailable_on_redis_errors():
            client = connect(url, **options)  # a cluster client connects here
            client.ping()  # a standalone one here, where an unknown URL option fails too
    except (ValueError, TypeError) as error:
        _fail(url_text, f"bad URL: {error}")
    except StoreUnavailable as error:
        _fail_unavailable(url_text, error)
    except (RedisError, RedisClusterException) as error:
        _fail(url_text, f"{type(error).__name__}: {error}")
    return client, own


def _fail_unavailable(url_text: str, error: StoreUnavailable) -> NoReturn:
    """Exit with one line saying why Redis cannot be used: out of memory, a permission the
    user lacks, a URL of no cluster, or down."""
    if isinstance(error, StoreFull):
        _fail(url_text, f"Redis is out of memory (raise its maxmemory): {error}")
    if isinstance(error, StoreForbidden):
        _fail(url_text, f"Redis refuses this user a permission: {error}")
    if NOT_A_CLUSTER in str(error):
        _fail(url_text, f"{NOT_A_CLUSTER}: {NOT_A_CLUSTER_CAUSES}")
    if isinstance(error, SlotsMoving):
        _fail(url_text, f"the cluster is resharding: {error}")
    if isinstance(error, DataLost):
        _fail(url_text, str(error))
    _fail(url_text, password_missing(url_text, error) or f"Redis unreachable: {error}")


@contextlib.contextmanager
def exit_on_redis_errors(url_text: str) -> Iterator[None]:
    """One line and exit status 1 instead of a traceback when Redis fails mid-command."""
    try:
        with unavailable_on_redis_errors():
            yield
    except StoreUnavailable as error:
        _fail_unavailable(url_text, error)
    except (RedisError, RedisClusterException) as error:
        _fail(url_text, f"{type(error).__name__}: {error}")


LOAD_INTERRUPTED = "load interrupted part-way: Redis holds part of the dataset; run the same load again to complete it"


@contextlib.contextmanager
def exit_on_interrupt(url_text: str, what_now: str = LOAD_INTERRUPTED) -> Iterator[None]:
    """Ctrl-C (or SIGINT) while writing: one line saying in what state Redis is left and what
    to do (``what_now``), exit status 130, instead of a traceback that says neither."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"error: --redis {redacted(url_text)}: {what_now}", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory, CSV or Parquet, as train reads it: items, likes, follows, friends, sellers, engagements and the not-interested tables")
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB, rediss://HOST:PORT/DB, unix://PATH or redis-cluster://HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--batch", type=bounded(int, 1), default=DEFAULT_BATCH, help="commands per pipeline round trip (default: %(default)s)")
    parser.add_argument("--recent-likes", type=bounded(int, 1), default=DEFAULT_RECENT_LIKES, help="recent likes kept per user (default: %(default)s)")
    parser.add_argument("--listings", type=bounded(int, 1), default=DEFAULT_LISTINGS, help="newest in-stock listings a feed reads per seller; twice as many are kept (default: %(default)s)")
    add_drop_unknown_items_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none either when stderr is not a terminal)")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    client, own = connect_checked(args.redis, socket_timeout=LOAD_SOCKET_TIMEOUT, socket_connect_timeout=5.0)
    prefix = own.get("prefix", DEFAULT_PREFIX)
    try:
        _check_write_access(client, Keys(prefix), args.redis)
        with exit_on_redis_errors(args.redis):
            warning = eviction_warning(client)
        if warning:
            print(f"warning: --redis {redacted(args.redis)}: {warning}", file=sys.stderr)
        started = time.perf_counter()
        warnings: list[str] = []
        try:
            dataset = load_dataset(args.data, on_unknown_item="drop" if args.drop_unknown_items else "error", warnings=warnings)
        except DatasetError as error:
            sys.exit(f"error: {error}")
        finally:
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
        read_seconds = time.perf_counter() - started
        with exit_on_redis_errors(args.redis), exit_on_interrupt(args.redis):
            stats = load_into_redis(
                client,
                dataset,
                prefix=prefix,
                recent_likes=own.get("recent_likes", args.recent_likes),
                listings=own.get("listings", args.listings),
                batch=args.batch,
                progress=sys.stderr.isatty() and not args.no_progress,
            )
    finally:
        client.close()
    print(load_summary(dataset, stats, read_seconds))
