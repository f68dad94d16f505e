"""A process's copy of its feeds' Redis reads (stores/redis_cache.py): what it keeps, what
drops it, and that a feed's reads through it equal reads of Redis itself, whoever wrote."""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import redis

import tests.store_views as views
from ranking.types import ItemCard
from stores.events import Event, EventKind
from stores.redis import WRITER_CHANGES_BOUND, RedisStore
from stores.redis_cache import TIMELINE_ROWS, ReadCache
from tests.builders import DAY, NOW, make_dataset, social_dataset
from tests.conftest import make_redis_store
from tests.redis_servers import RedisServer

ITEMS = ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "a1"]
USERS = ["alice", "bob", "carol", "dave"]
SELLERS = ["s1", "s2", "alice", "s3"]
TIMELINES = 3 + len(USERS)  # social_dataset's: the listings of s1, s2 and alice; every user's recent likes


def cache_of(codes: dict[str, int]) -> ReadCache:
    return ReadCache(lambda item: codes.get(item, -1))


def keep_one_item(cache: ReadCache, seq: int, code: int = 3) -> None:
    numbers = np.arange(7, dtype=float)[None, :]
    cache.keep_items(cache.begin_fill(seq), np.array([code]), numbers, np.array([1], np.int32), np.array([2], np.int32))


def test_a_synced_copy_keeps_what_it_read_and_a_tag_drops_it():
    cache = cache_of({"x": 3})
    keep_one_item(cache, 0)
    assert not cache.items(np.array([3]))[0].any()  # never synced: nothing kept
    cache.sync(5, "e", None)
    keep_one_item(cache, 5)
    cache.keep(cache.begin_fill(5), {"s:s1": (10, np.array([3], np.int32), np.array([1.0]))})
    cache.keep(cache.begin_fill(5), {3: ItemCard(title="x")})
    known, numbers, seller, category = cache.items(np.array([3, 3, 4000]))
    assert known.tolist() == [True, True, False] and numbers[0].tolist() == list(range(7)) and seller[0] == 1 and category[0] == 2
    assert cache.timeline("s:s1", 5)[0].tolist() == [3] and cache.cards([3]) == [ItemCard(title="x")]
    assert cache.timeline("s:s1", 20) is not None  # the list was read whole: 1 < 10
    cache.sync(6, "e", ["i:x", "s:s1"])
    assert not cache.items(np.array([3]))[0].any()
    assert cache.timeline("s:s1", 5) is None and cache.cards([3]) == [None]


def test_a_fill_that_began_before_an_applied_tag_is_not_kept():
    cache = cache_of({"x": 3})
    cache.sync(5, "e", [])
    fill = cache.begin_fill(5)  # read at seq 5, then another thread syncs past it
    cache.sync(7, "e", ["i:x"])
    cache.keep_items(fill, np.array([3]), np.zeros((1, 7)), np.array([1], np.int32), np.array([2], np.int32))
    assert not cache.items(np.array([3]))[0].any()
    keep_one_item(cache, 7)
    assert cache.items(np.array([3]))[0].all()


@pytest.mark.parametrize("cause", ["tags unknown", "new epoch", "clear"])
def test_a_copy_starts_afresh_when_the_log_cannot_say_what_changed(cause):
    cache = cache_of({"x": 3})
    cache.sync(5, "e", [])
    keep_one_item(cache, 5)
    fill = cache.begin_fill(5)
    if cause == "tags unknown":
        cache.sync(9, "e", None)
    elif cause == "new epoch":
        cache.sync(9, "f", [])
    else:
        cache.clear()
    assert not cache.items(np.array([3]))[0].any()
    cache.sync(9, cache.epoch, [])
    keep_one_item(cache, 9, code=5)
    cache.keep_items(fill, np.array([4]), np.zeros((1, 7)), np.array([1], np.int32), np.array([2], np.int32))
    assert cache.items(np.array([5]))[0].all() and not cache.items(np.array([4]))[0].any()  # a read from before is not kept


def test_timelines_and_cards_are_bounded():
    cache = ReadCache(lambda item: -1, capacity=10)
    cache.sync(0, "", [])
    for n in range(25):
        cache.keep(cache.begin_fill(0), {n: ItemCard(title=str(n))})
    kept = [card for card in cache.cards(range(25)) if card is not None]
    assert 5 <= len(kept) <= 10 and kept[-1] == ItemCard(title="24")


# -- through Redis ------------------------------------------------------------------------


_serial = itertools.count(1)


def ev(kind: EventKind, **fields) -> Event:
    n = next(_serial)
    return Event(event_id=f"c{n}", kind=kind, ts=NOW + n, **fields)


def random_events(rng: random.Random, new_items: list[str]) -> list[Event]:
    """One to three writes of what a feed's copy keeps: items, cards, listings, likes,
    trending, vacations, and the users' own follows, friends, hidden items and sellers and shares."""
    events = []
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(15)
        user, item = rng.choice(USERS), rng.choice(ITEMS + new_items)
        other, seller = rng.choice([u for u in USERS if u != user]), rng.choice(SELLERS)
        if choice >= 8:
            kind, field, value = [
                (EventKind.FOLLOW, "seller_id", seller), (EventKind.UNFOLLOW, "seller_id", seller),
                (EventKind.FRIEND, "friend_id", other), (EventKind.UNFRIEND, "friend_id", other),
                (EventKind.NOT_INTERESTED_ITEM, "item_id", item), (EventKind.NOT_INTERESTED_SELLER, "seller_id", seller),
                (EventKind.SHARE, "item_id", item),
            ][choice - 8]  # fmt: skip
            events.append(ev(kind, user_id=user, **{field: value}))
            continue
        if choice == 0:
            events.append(ev(EventKind.LIKE, user_id=user, item_id=item))
        elif choice == 1:
            events.append(ev(EventKind.UNLIKE, user_id=user, item_id=item))
        elif choice == 2:
            events.append(ev(EventKind.STOCK_UPDATE, item_id=item, stock=rng.choice([0, 0, 3])))
        elif choice == 3:
            events.append(ev(EventKind.ITEM_UPDATE, item_id=item, title=f"t{rng.randrange(100)}", price=float(rng.randrange(1, 9))))
        elif choice == 4:
            new_items.append(f"n{len(new_items)}")
            seller = rng.choice(SELLERS)
            events.append(ev(EventKind.ITEM_UPSERT, item_id=new_items[-1], seller_id=seller, created_at=NOW + len(new_items), stock=2))
        elif choice == 5:
            events.append(ev(EventKind.VIEW, user_id=user, item_id=item))
        elif choice == 6:
            events.append(ev(EventKind.SELLER_VACATION, seller_id=rng.choice(SELLERS), vacation_until=NOW + 9 * DAY))
        else:
            events.append(ev(EventKind.SELLER_VACATION_END, seller_id=rng.choice(SELLERS)))
    return events


def feed_reads(store: RedisStore, user: str, items: list[str]) -> tuple:
    """What a feed reads, in a feed's order: its user first."""
    return (
        views.read_user(store, user),
        views.read_activity(store, SELLERS, USERS, 3, 5),
        views.read_activity(store, SELLERS, USERS, 10, 20),  # a deeper page asks for more
        views.hydrate(store, user, items),
    )


@pytest.mark.parametrize("warmed", [None, "items", "everything"], ids=["filled by feeds", "items warmed at start", "all warmed at start"])
def test_a_feed_through_the_copy_reads_what_redis_holds_whoever_wrote(redis_url, warmed):
    writer = make_redis_store(redis_url, social_dataset())  # also the loader
    kept = RedisStore.from_url(redis_url)  # another process's store, with its copy
    direct = RedisStore.from_url(f"{redis_url}?read_cache=0")
    if warmed == "items":
        assert kept.warm_copy() == len(ITEMS)
    elif warmed == "everything":
        assert kept.warm() == (len(ITEMS), 8, TIMELINES)
    rng, new_items = random.Random(11), []
    for step in range(120):
        user = rng.choice(USERS)
        items = ITEMS + new_items
        assert feed_reads(kept, user, items) == feed_reads(direct, user, items), f"step {step}"
        if step % 3:  # the copy's own writes too: they bring it up to date at once
            (writer if step % 3 == 1 else kept).apply(random_events(rng, new_items))
    assert kept._cache.seq > 0 and kept._cache.items(kept.items.codes(ITEMS))[0].any()
    for store in (writer, kept, direct):
        store.close()


def test_a_batch_of_more_changes_than_a_writer_reads_back_keeps_its_writers_copy(redis_url):
    """A batch's reply brings its writer's copy up to date only while the copy is at most
    WRITER_CHANGES_BOUND tags behind. Past it the writer dropped its whole copy, so every
    Ingest of some 300 likes or more cost its server the copy (and a warmed one a whole
    copy again, in the background); the feed that follows reads the log back further."""
    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    direct = RedisStore.from_url(f"{redis_url}?read_cache=0")
    assert kept.warm() == (len(ITEMS), 8, TIMELINES)
    generation, items = kept._cache.generation, ITEMS[:8]
    assert feed_reads(kept, "alice", items) == feed_reads(direct, "alice", items)
    kept.apply([ev(EventKind.LIKE, user_id=f"fan{n}", item_id=items[n % len(items)]) for n in range(WRITER_CHANGES_BOUND)])
    assert kept._cache.generation == generation
    assert feed_reads(kept, "alice", items) == feed_reads(direct, "alice", items)
    writer.apply([ev(EventKind.LIKE, user_id="alice", item_id=item) for item in items])
    assert feed_reads(kept, "alice", items) == feed_reads(direct, "alice", items)
    for store in (writer, kept, direct):
        store.close()


def timeline_bytes_held(cache: ReadCache) -> tuple[int, int]:
    """(sellers' listings and users' recent likes the copy keeps, bytes of the arrays they
    hold): a kept slice of a read holds the read's whole array."""
    timelines = [entry for tag, entry in cache._entries.entries.items() if isinstance(tag, str) and tag[:2] in ("s:", "u:")]
    roots = {}
    for _, codes, times in timelines:
        for array in (codes, times):
            while isinstance(array.base, np.ndarray):
                array = array.base
            roots[id(array)] = array.nbytes
    return len(timelines), sum(roots.values())


@pytest.mark.parametrize(
    "per_keys, timeline_reads",
    [((50, 300, 50, 300), [3, 1, 0, 0]), ((300, 50, 300, 50), [3, 0, 0, 0]), ((120, 140, 160, 240, 260, 280), [3, 1, 0, 0, 1, 0])],
    ids=["first page first", "deep page first", "paging deeper"],
)
def test_a_deep_pages_read_is_kept_and_counted_by_its_rows(redis_url, per_keys, timeline_reads):
    """Deep pages read up to 1000 listings of a followed shop (ranking.pipeline.per_key_read).
    Counted as one entry each under the bound, such timelines took the copy from 0.6 KB to
    12 KB an entry; cut to TIMELINE_ROWS rows, every deep page read Redis again. A deep read
    now reads ahead to the next power of two (``read_ahead``) and is kept whole, counted as
    one entry per TIMELINE_ROWS rows begun: the arrays held stay within that count's rows,
    and the next pages read the copy."""
    shop = [(f"b{k:03d}", "bigshop", NOW - (k + 1) * 60.0, 1) for k in range(300)]
    likes = [("pal", f"b{k:03d}", NOW - k) for k in range(40)]
    writer = make_redis_store(redis_url, make_dataset([*shop, ("c1", "smallshop", NOW - DAY, 1)], likes=likes))
    kept = RedisStore.from_url(redis_url)
    direct = RedisStore.from_url(f"{redis_url}?read_cache=0")
    views.read_user(kept, "pal")  # brings the copy in step with the log: it keeps fills from now
    sellers, friends, reads = ["bigshop", "smallshop"], ["pal"], []
    with redis.Redis.from_url(redis_url) as admin:
        for per_key in per_keys:
            expected = views.read_activity(direct, sellers, friends, per_key, 20)
            before = admin.info("commandstats")["cmdstat_zrange"]["calls"]
            assert views.read_activity(kept, sellers, friends, per_key, 20) == expected
            reads.append(admin.info("commandstats")["cmdstat_zrange"]["calls"] - before)
            timelines, held = timeline_bytes_held(kept._cache)
            assert timelines == 3 and held <= (kept._cache.kept - 1) * TIMELINE_ROWS * (4 + 8), f"per_key {per_key}"  # one entry is the user's state
    assert reads == timeline_reads  # a deeper page reads the deep shop's listings only, and only past what the copy read ahead
    for store in (writer, kept, direct):
        store.close()


def test_long_timelines_count_by_their_rows_and_a_dropped_one_gives_its_room_back():
    cache = ReadCache(lambda item: -1, capacity=10)
    cache.sync(0, "", [])

    def timeline(rows: int) -> tuple[int, np.ndarray, np.ndarray]:
        return 1000, np.arange(rows, dtype=np.int32), np.zeros(rows)

    cache.keep_timelines(cache.begin_fill(0), {"s:big": timeline(350), "s:small": timeline(30)})
    assert cache.kept == 4 + 1
    cache.sync(1, "", ["s:big"])
    assert cache.kept == 1 and cache.entry("s:big") is None
    cache.keep_timelines(cache.begin_fill(1), {f"s:{n}": timeline(250) for n in range(6)})  # 3 each: the older ones make room
    assert cache.kept <= 10 and cache.entry("s:5") is not None
    cache.keep_timelines(cache.begin_fill(1), {"s:huge": timeline(1001)})  # more than the whole bound: not kept
    assert cache.entry("s:huge") is None and cache.kept <= 10
    cache.clear()
    assert cache.kept == 0


def test_a_copy_warmed_at_start_holds_every_item_and_sees_later_writes(redis_url):
    writer = make_redis_store(redis_url, social_dataset())
    many = [f"w{i}" for i in range(300)]  # more than a small hash answers in one HSCAN call
    writer.apply([ev(EventKind.ITEM_UPSERT, item_id=item, seller_id="s1", created_at=NOW, stock=2) for item in many])
    kept = RedisStore.from_url(redis_url)
    direct = RedisStore.from_url(f"{redis_url}?read_cache=0")
    items = ITEMS + many
    too_many = RedisStore.from_url(redis_url)
    assert too_many.warm_copy(max_items=len(items) - 1) is None and not too_many._cache._known.any()
    assert kept.warm_copy(count=10) >= len(items)  # HSCAN may answer an entry twice
    assert kept._cache.items(kept.items.codes(items))[0].all()
    with redis.Redis.from_url(redis_url) as admin:

        def packed_reads() -> int:
            return int(admin.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))

        before = packed_reads()
        kept.read_user("alice")
        kept.hydrate("alice", kept.items.codes(items))
        assert packed_reads() == before  # the copy held every item
        assert feed_reads(kept, "alice", items) == feed_reads(direct, "alice", items)
        writer.apply([ev(EventKind.STOCK_UPDATE, item_id="w7", stock=0), ev(EventKind.LIKE, user_id="bob", item_id="w9")])
        assert feed_reads(kept, "alice", items) == feed_reads(direct, "alice", items)
    for store in (writer, kept, direct, too_many):
        store.close()


def test_cards_copied_at_start_are_the_most_liked_on_sale_and_follow_writes(redis_url):
    writer = make_redis_store(redis_url, social_dataset())
    liked = [f"w{i}" for i in range(12)]  # w{i} liked by i users; w11 out of stock
    writer.apply([ev(EventKind.ITEM_UPSERT, item_id=item, seller_id="s1", created_at=NOW, stock=0 if item == "w11" else 3, title=item) for item in liked])
    writer.apply([ev(EventKind.LIKE, user_id=f"u{j}", item_id=item) for i, item in enumerate(liked) for j in range(i)])
    kept = RedisStore.from_url(f"{redis_url}?read_cache_entries=10")  # cards for half of it
    direct = RedisStore.from_url(f"{redis_url}?read_cache=0")
    assert kept.warm_cards() == 0  # no item's columns yet: nothing to choose from
    tiny = RedisStore.from_url(f"{redis_url}?read_cache_entries=1")  # no room for a card
    assert tiny.warm() == (len(ITEMS) + len(liked), 0, None)  # nor for users
    kept.warm_copy()
    assert kept.warm_cards() == 5
    codes = kept.items.codes(liked)
    assert [at for at, card in enumerate(kept._cache.cards(codes.tolist())) if card is not None] == [6, 7, 8, 9, 10]
    with redis.Redis.from_url(redis_url) as admin:

        def script_calls() -> int:
            return int(admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

        before = script_calls()
        assert kept.read_cards(codes[6:11]) == [ItemCard(title=item) for item in liked[6:11]]
        assert script_calls() == before
    writer.apply([ev(EventKind.ITEM_UPSERT, item_id="w10", seller_id="s1", created_at=NOW, stock=3, title="renamed")])
    kept.read_user("alice")  # a feed's first read brings the copy up to date
    assert kept.read_cards(codes) == direct.read_cards(direct.items.codes(liked, add=True))
    assert kept.read_cards(codes[10:11]) == [ItemCard(title="renamed")]
    for store in (writer, kept, direct, tiny):
        store.close()


def test_timelines_copied_at_start_serve_first_feeds_without_reading_them_and_follow_writes(redis_url):
    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    direct = RedisStore.from_url(f"{redis_url}?read_cache=0")
    assert kept.warm() == (len(ITEMS), 8, TIMELINES)
    sellers = ["s1", "s2", "alice"]  # s3 lists nothing: there is no listing to copy
    with redis.Redis.from_url(redis_url) as admin:

        def timeline_reads() -> int:
            return int(admin.info("commandstats").get("cmdstat_zrange", {}).get("calls", 0))

        for user in USERS:
            views.read_user(kept, user)  # its script reads the user's own likes
        before = timeline_reads()
        for user in USERS:
            views.read_activity(kept, sellers, USERS, 3, 5)
        assert timeline_reads() == before
    writer.apply([ev(EventKind.LIKE, user_id="bob", item_id="i1"), ev(EventKind.ITEM_UPSERT, item_id="n1", seller_id="s2", created_at=NOW, stock=2)])
    for user in USERS:
        assert feed_reads(kept, user, ITEMS + ["n1"]) == feed_reads(direct, user, ITEMS + ["n1"])
    roomless = RedisStore.from_url(f"{redis_url}?read_cache_entries=18")  # 9 cards (n1 too), a quarter left for feeds: room for 5
    assert roomless.warm() == (len(ITEMS) + 1, 9, None) and roomless._cache.kept == 9
    for store in (writer, kept, direct, roomless):
        store.close()


def test_timelines_copied_at_start_are_not_kept_when_a_newer_write_was_applied_meanwhile(redis_url, monkeypatch):
    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    direct = RedisStore.from_url(f"{redis_url}?read_cache=0")
    read_timelines = kept._read_timelines

    def then_a_write_and_a_feed(*args, **kwargs):  # a feed on another thread syncs past the read
        read = read_timelines(*args, **kwargs)
        writer.apply([ev(EventKind.LIKE, user_id="bob", item_id="i1")])
        kept.read_user("carol")
        return read

    monkeypatch.setattr(kept, "_read_timelines", then_a_write_and_a_feed)
    kept.warm()
    monkeypatch.undo()
    assert kept._cache.timeline("u:bob", 5) is None, "a timeline read before bob's like was kept after it"
    for user in USERS:
        assert feed_reads(kept, user, ITEMS) == feed_reads(direct, user, ITEMS)
    for store in (writer, kept, direct):
        store.close()


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (EventKind.LIKE, {"user_id": "alice", "item_id": "i7"}),
        (EventKind.UNLIKE, {"user_id": "alice", "item_id": "i8"}),
        (EventKind.FOLLOW, {"user_id": "alice", "seller_id": "s3"}),
        (EventKind.UNFOLLOW, {"user_id": "alice", "seller_id": "s1"}),
        (EventKind.FRIEND, {"user_id": "alice", "friend_id": "dave"}),
        (EventKind.FRIEND, {"user_id": "dave", "friend_id": "alice"}),  # alice's set changes by dave's event
        (EventKind.UNFRIEND, {"user_id": "alice", "friend_id": "bob"}),
        (EventKind.NOT_INTERESTED_ITEM, {"user_id": "alice", "item_id": "i5"}),
        (EventKind.NOT_INTERESTED_SELLER, {"user_id": "alice", "seller_id": "s2"}),
        (EventKind.SHARE, {"user_id": "bob", "item_id": "i6"}),  # shared with bob's friends, alice among them
    ],
    ids=lambda value: value.value if isinstance(value, EventKind) else "",
)
@pytest.mark.parametrize("written_by", ["another process", "the same process"])
def test_a_users_kept_state_follows_every_write_to_it(redis_url, kind, fields, written_by):
    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    before = views.read_user(kept, "alice")
    assert views.read_user(kept, "alice") == before  # the second from the copy
    assert kept._cache.entry("p:alice") is not None
    (writer if written_by == "another process" else kept).apply([ev(kind, **fields)])
    after = views.read_user(kept, "alice")
    assert after != before and after == views.read_user(RedisStore.from_url(f"{redis_url}?read_cache=0"), "alice")
    for store in (writer, kept):
        store.close()


def test_a_users_kept_state_is_not_taken_for_that_of_a_new_log(redis_url):
    """After a bulk load the log starts again at 0, where a copy's number may already be."""
    from serving.load import load_into_redis

    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    assert views.read_user(kept, "alice").follows == frozenset({"s1"}) and kept._cache.seq == 0
    with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
        load_into_redis(admin, make_dataset([("i1", "s1", NOW - DAY, 1)], follows=[("alice", "s3", NOW - DAY)]))
    assert views.read_user(kept, "alice").follows == frozenset({"s1", "s3"})
    writer.close()
    kept.close()


def test_a_load_and_a_flush_each_start_the_copy_afresh(redis_url):
    from serving.load import load_into_redis

    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    i1 = kept.items.codes(["i1"], add=True)

    def stock_seen() -> int:
        kept.read_user("alice")
        return int(kept.hydrate("alice", i1).stock[0])

    assert stock_seen() == 5 and stock_seen() == 5  # the second from the copy
    with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
        # A bulk load writes around the log: its end starts a new one.
        load_into_redis(admin, make_dataset([("i1", "s1", NOW - DAY, 1)]))
        assert stock_seen() == 1
        writer.apply([ev(EventKind.STOCK_UPDATE, item_id="i1", stock=7)])
        assert stock_seen() == 7
        admin.flushall()
        load_into_redis(admin, social_dataset())
        assert stock_seen() == 5
        writer.apply([ev(EventKind.STOCK_UPDATE, item_id="i1", stock=4)])
        assert stock_seen() == 4
        # A new connection to the same server process has lost nothing: the copy stays.
        generation = kept._cache.generation
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert stock_seen() == 4 and kept._cache.generation == generation
    for store in (writer, kept):
        store.close()


def test_a_read_under_way_while_a_load_starts_a_new_log_is_not_kept(redis_url, monkeypatch):
    """A read of what the copy lacks is kept only while no newer tag was applied; its data
    is as new as the log's number it read. A bulk load starts the log again at a lower
    number: another thread's sync of the new log, between the read and its keeping, dropped
    the copy and let it keep the card read before the load, which no tag of the new log names."""
    from serving.load import load_into_redis

    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    i1 = kept.items.codes(["i1"], add=True)
    kept.read_user("alice")
    read = kept._eval_keys

    def read_then_load(name, *args, **kwargs):
        reply = read(name, *args, **kwargs)
        if name == "cards":  # the load ends while the reply is on its way, and another feed syncs the new log
            with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
                load_into_redis(admin, make_dataset([("i1", "s1", NOW - DAY, 1)]))
                admin.hset(kept.keys.item("i1"), "title", "after the load")  # as a load of titles would
            kept.read_user("bob")
        return reply

    monkeypatch.setattr(kept, "_eval_keys", read_then_load)
    assert kept.read_cards(i1)[0].title != "after the load"  # read before it
    monkeypatch.undo()
    kept.read_user("alice")
    assert kept.read_cards(i1)[0].title == "after the load"
    for store in (writer, kept):
        store.close()


@contextlib.contextmanager
def warmed_on_own_server(tmp_path, **server_options) -> Iterator[tuple[RedisServer, RedisStore]]:
    """A redis-server of the test's own, loaded with social_dataset(), and a store on it
    whose copy was warmed; both stopped after."""
    server = RedisServer(tmp_path / "redis", **server_options).start()
    stores = []
    try:
        stores.append(make_redis_store(server.url, social_dataset()))
        kept = RedisStore.from_url(server.url)
        stores.append(kept)
        kept.warm()
        yield server, kept
    finally:
        for store in stores:
            store.close()
        server.stop()


def test_a_copy_is_dropped_when_redis_restarts_and_then_copied_again(tmp_path):
    with warmed_on_own_server(tmp_path, appendonly=True) as (server, kept):
        i1 = kept.items.codes(["i1"], add=True)

        def stock_seen() -> int:
            kept.read_user("alice")
            return int(kept.hydrate("alice", i1).stock[0])

        assert stock_seen() == 5
        server.kill()
        server.start()  # the same data (its AOF), another process
        with server.client() as admin:  # as if the restart had lost a write this process saw
            admin.hset("fr:{items}:packed7", "i1", admin.hget("fr:{items}:packed7", "i1").replace(",5,", ",9,", 1))
        assert stock_seen() == 9  # its first read reconnected, to another run_id
        kept._rewarm_thread.join(timeout=10)
        assert kept._cache.items(kept.items.codes(ITEMS))[0].all()


def test_a_users_kept_state_is_not_served_from_before_redis_restarted(tmp_path):
    """The user's state is the one read that the copy answers from Redis's reply: the feed
    that reconnected asked with the state it had kept before, and Redis, whose log names no
    change of the user since, said it stands: a state a restart may have lost was served."""
    with warmed_on_own_server(tmp_path, appendonly=True) as (server, kept):
        assert views.read_user(kept, "alice").follows == frozenset({"s1"})
        assert kept._cache.entry("p:alice") is not None
        server.kill()
        server.start()  # the same data (its AOF), another process
        with server.client() as admin:  # as if the restart had lost alice's follow
            admin.srem(kept.keys.follows("alice"), "s1")
        assert views.read_user(kept, "alice").follows == frozenset()  # its first read reconnected, to another run_id


def test_a_server_that_does_not_tell_its_run_id_drops_the_copy_at_every_connection(tmp_path):
    with warmed_on_own_server(tmp_path, extra=["--rename-command", "INFO", ""]) as (server, kept):
        kept.read_user("alice")
        generation = kept._cache.generation
        with server.client() as admin:
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        kept.read_user("alice")  # reconnected, and cannot tell whether to the same process
        assert kept._cache.generation > generation


def test_a_warmed_copy_that_is_dropped_is_copied_again_in_the_background(redis_url):
    from serving.load import load_into_redis

    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    direct = RedisStore.from_url(f"{redis_url}?read_cache=0")
    filled_by_feeds = RedisStore.from_url(redis_url)  # never warmed: never copies in the background
    assert kept.warm() == (len(ITEMS), 8, TIMELINES)  # a1 is out of stock: no card
    for store in (kept, filled_by_feeds):
        store.read_user("alice")
    with redis.Redis.from_url(redis_url, decode_responses=True) as admin:  # a bulk load starts a new log
        load_into_redis(admin, make_dataset([("i1", "s1", NOW - DAY, 1), ("n1", "s2", NOW - DAY, 3)]))
    generation = kept._cache.generation
    kept.read_user("alice")  # the feed that finds the copy dropped
    assert kept._cache.generation > generation and kept._rewarm_thread is not None
    kept._rewarm_thread.join(timeout=10)
    items = ITEMS + ["n1"]
    codes = kept.items.codes(items, add=True)
    known = kept._cache.items(codes)[0]
    assert known.tolist() == direct.hydrate("alice", direct.items.codes(items, add=True)).exists.tolist()  # what Redis holds now
    assert known.any() and not filled_by_feeds._cache.items(filled_by_feeds.items.codes(items, add=True))[0].any()
    assert feed_reads(kept, "alice", items) == feed_reads(direct, "alice", items)
    generation = kept._cache.generation
    kept.read_user("alice")  # copying again did not drop the copy: no second copy
    assert kept._cache.generation == generation and not kept._rewarm_thread.is_alive()
    for store in (writer, kept, direct, filled_by_feeds):
        store.close()


def reads_beside_writes(write: Callable[[], None], read: Callable[[random.Random], None], readers: int = 3) -> None:
    """``write()`` in one thread while ``readers`` threads, sharing whatever ``read``
    shares, call ``read(rng)`` again and again until the writes are done."""
    done = threading.Event()

    def write_then_stop() -> None:
        try:
            write()
        finally:
            done.set()

    def read_until_done(seed: int) -> None:
        rng = random.Random(seed)
        while not done.is_set():
            read(rng)

    threads = [threading.Thread(target=write_then_stop)] + [threading.Thread(target=read_until_done, args=(seed,)) for seed in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def test_threads_sharing_a_copy_never_read_a_stock_older_than_an_acknowledged_write(redis_url):
    """Feeds in threads (a server's --threads) share one copy while another process
    writes: a feed that begins after a write was acknowledged reads that write or a later
    one, whichever thread filled or dropped the copy meanwhile."""
    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    codes = kept.items.codes(ITEMS, add=True)
    acked = dict.fromkeys(ITEMS, 0)  # item -> the stock of its last acknowledged write (stocks only grow)
    failures = []

    def write() -> None:
        rng = random.Random(3)
        for step in range(1, 301):
            item = rng.choice(ITEMS)
            writer.apply([ev(EventKind.STOCK_UPDATE, item_id=item, stock=step)])
            acked[item] = step

    def read(rng: random.Random) -> None:
        floor = dict(acked)
        kept.read_user(rng.choice(USERS))  # a feed's first read
        stocks = kept.hydrate("alice", codes).stock.tolist()
        failures.extend((item, stock, floor[item]) for item, stock in zip(ITEMS, stocks) if stock < floor[item])

    reads_beside_writes(write, read)
    assert not failures, failures[:5]
    kept.read_user("alice")
    assert kept.hydrate("alice", codes).stock.tolist() == [acked[item] or stock for item, stock in zip(ITEMS, [5, 0, 5, 5, 5, 5, 5, 5, 5])]
    writer.close()
    kept.close()


def test_threads_sharing_a_copy_never_read_a_users_state_older_than_an_acknowledged_write(redis_url):
    """The same for a user's own state: alice follows one more seller per acknowledged
    write, and a read that begins after it must count at least that many."""
    writer = make_redis_store(redis_url, social_dataset())
    kept = RedisStore.from_url(redis_url)
    acked = [1]  # alice follows s1 at first
    failures = []

    def write() -> None:
        for step in range(300):
            writer.apply([ev(EventKind.FOLLOW, user_id="alice", seller_id=f"x{step}")])
            acked[0] = step + 2

    def read(rng: random.Random) -> None:
        floor = acked[0]
        kept.read_user(rng.choice(USERS))  # other users' reads move the copy along too
        follows = len(kept.read_user("alice").follows)
        if follows < floor:
            failures.append((follows, floor))

    reads_beside_writes(write, read)
    assert not failures, failures[:5]
    assert len(kept.read_user("alice").follows) == acked[0] == 301
    writer.close()
    kept.close()


@pytest.mark.parametrize(
    "query, named",
    [("read_cache=maybe", "read_cache='maybe'"), ("recent_likes=many", "recent_likes='many'"), ("read_cache_entries=lots", "read_cache_entries='lots'")],
)
def test_a_store_url_option_of_the_wrong_kind_is_refused_by_name(query, named):
    from stores.redis import split_url

    with pytest.raises(ValueError, match=f"store URL option {named}"):
        split_url(f"redis://127.0.0.1:6379/0?{query}")
    assert split_url("redis://127.0.0.1:6379/0?read_cache=off")[1] == {"read_cache": False}


def test_the_copys_bound_is_a_store_url_option(redis_url):
    writer = make_redis_store(redis_url, social_dataset())
    small = RedisStore.from_url(f"{redis_url}?read_cache_entries=3")
    for user in USERS:  # a user's state and hashes: two entries each
        small.read_user(user)
    assert len(small._cache._entries.entries) <= 3
    with pytest.raises(ValueError, match="read_cache_entries must be >= 1"):
        RedisStore.from_url(f"{redis_url}?read_cache_entries=0")
    for store in (writer, small):
        store.close()


def test_view_counts_written_before_their_time_take_it_from_the_seen_set(redis_url):
    from stores.memory import MemoryStore

    dataset = social_dataset()
    writer, memory = make_redis_store(redis_url, dataset), MemoryStore.from_dataset(dataset)
    viewed = [Event(f"bare{n}", EventKind.VIEW, NOW + n, user_id="alice", item_id=item) for n, item in enumerate(["i1", "i3", "i1"])]
    assert writer.apply(viewed) == memory.apply(viewed)
    with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
        key = writer.keys.views("alice")
        admin.hset(key, mapping={item: value.partition(",")[0] for item, value in admin.hgetall(key).items()})  # the older layout
    expected = views.hydrate(memory, "alice", ITEMS)
    assert expected.seen == {"i1": (2, NOW + 2), "i3": (1, NOW + 1)}
    for url in (redis_url, f"{redis_url}?read_cache=0"):
        store = RedisStore.from_url(url)
        views.read_user(store, "alice")
        assert views.hydrate(store, "alice", ITEMS) == expected
        store.close()
    writer.close()
