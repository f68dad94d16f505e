"""RedisStore beyond the shared contract: round trips, atomicity, equivalence with the
memory store, cluster spreading and retries, the loader, and outages."""

from __future__ import annotations

import logging
import math
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from ranking.feed import FeedSettings, build_feed_pipeline
from ranking.vocab import stable_hash
from serving.feed_service import FeedService
from serving.load import load_into_redis
import stores.redis
from stores.base import StoreForbidden, StoreUnavailable
from stores.events import Event, EventKind, EventValidationError
from stores.memory import MemoryStore
from stores.redis import PACKED_FIELD, RedisStore, access_probes, eviction_warning, pack_item, scan_keys, unavailable_on_redis_errors
from stores.redis_keys import Keys
from tests import store_views as views
from tests.builders import DAY, NOW, make_dataset, social_dataset
from tests.conftest import REPO, make_redis_store
from tests.redis_servers import RedisClusterServers, RedisServer
from training.generate import generate
from training.train import TrainParams, train

pytestmark = pytest.mark.redis

KINDS = ["redis", "redis-cluster"]


@pytest.fixture(params=KINDS)
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")


def snapshot(client) -> dict:
    """Every key with its type and full value, on every primary of a cluster; not the
    change log, which records how the writes were batched (stores/redis_cache.py)."""
    nodes = [client.get_redis_connection(n) for n in client.get_primaries()] if hasattr(client, "get_primaries") else [client]
    state = {}
    for node in nodes:
        for key in node.scan_iter(count=1000):
            if "{changes}" in key:
                continue
            kind = node.type(key)
            value = {
                "string": node.get,
                "hash": node.hgetall,
                "set": lambda k: sorted(node.smembers(k)),
                "zset": lambda k: node.zrange(k, 0, -1, withscores=True),
                "stream": lambda k: [fields for _, fields in node.xrange(k)],
            }[kind](key)
            state[key] = (kind, value)
    return state


class RoundTripCounter:
    """Counts writes of packed commands to Redis sockets: one per pipeline per node."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = redis.connection.AbstractConnection.send_packed_command

        def counted(conn, command, check_health=True):
            self.count += 1
            return original(conn, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)

    def measure(self, fn, *args) -> int:
        before = self.count
        fn(*args)
        return self.count - before


def hub_dataset(friends: int, sellers: int):
    items = [(f"x{n}", f"s{n}", NOW - n, 1) for n in range(sellers)]
    likes = [(f"f{n}", f"x{n % sellers}", NOW - n) for n in range(friends)]
    return make_dataset(
        items,
        likes=likes,
        friends=[("hub", f"f{n}", NOW) for n in range(friends)],
        follows=[("hub", f"s{n}", NOW) for n in range(sellers)],
    )


def test_a_feed_reads_redis_in_four_round_trips_whatever_the_fan_out_and_in_one_once_kept(redis_url, monkeypatch):
    for friends, sellers in ((2, 1), (200, 50)):
        kept = make_redis_store(redis_url, hub_dataset(friends, sellers))
        store = RedisStore.from_url(f"{redis_url}?read_cache=0")
        for pipeline in (build_feed_pipeline(kept, None), build_feed_pipeline(store, None)):
            pipeline.run("hub", 10, NOW)  # connect, load the read scripts and keep what was read
        counter = RoundTripCounter(monkeypatch)
        assert counter.measure(build_feed_pipeline(kept, None).run, "hub", 10, NOW) == 1  # the user, with the change log
        kept.close()
        pipeline = build_feed_pipeline(store, None)
        assert counter.measure(pipeline.run, "hub", 10, NOW) == 4  # user, activity, hydration, the page's cards
        user = views.read_user(store, "hub")
        assert counter.measure(store.read_user, "hub") == 1
        assert counter.measure(store.read_activity, sorted(user.follows), sorted(user.friends), 20, 100) == 1
        assert counter.measure(store.hydrate, "hub", store.items.codes([f"x{n}" for n in range(sellers)], add=True)) == 1
        assert counter.measure(store.read_cards, store.items.codes([f"x{n}" for n in range(sellers)], add=True)) == 1
        monkeypatch.undo()
        store.close()


def test_on_a_cluster_each_read_is_one_round_trip_per_node(redis_cluster_url, redis_cluster, monkeypatch):
    nodes = len(redis_cluster.nodes)
    for friends, sellers in ((2, 1), (200, 50)):
        store = make_redis_store(redis_cluster_url, hub_dataset(friends, sellers))
        store.ping()
        pipeline = build_feed_pipeline(store, None)
        pipeline.run("hub", 10, NOW)  # open a connection to every node first
        counter = RoundTripCounter(monkeypatch)
        # read_user stays on the user's node; activity and the cards go once to each node
        # they touch; hydration runs one script on each node holding candidates, then reads
        # the user's liked flags and views (their node), the trending scores (its node) and
        # the vacations' version, and once more the vacations' node when that version moved.
        assert counter.measure(store.read_user, "hub") == 1
        assert counter.measure(pipeline.run, "hub", 10, NOW) <= 1 + nodes + (nodes + 2) + nodes
        store.apply([Event("away", EventKind.SELLER_VACATION, NOW, seller_id="elsewhere", vacation_until=math.inf)])
        pipeline.run("hub", 10, NOW)
        assert counter.measure(pipeline.run, "hub", 10, NOW) <= 1 + nodes + (nodes + 3) + nodes
        store.apply([Event("back", EventKind.SELLER_VACATION_END, NOW, seller_id="elsewhere")])
        monkeypatch.undo()
        store.close()


def test_a_cluster_read_through_a_stale_slot_map_refreshes_it_and_reads_right(redis_cluster_url, monkeypatch):
    """Item reads run one script per node over the items the client believes it holds: when
    the slots moved, Redis refuses the non-local keys and the client refreshes its map."""
    dataset = generate(users=100, sellers=10, items=200, seed=4)
    store = make_redis_store(redis_cluster_url, dataset)
    memory = MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0)
    items, user = dataset.items.item_id[:60], dataset.user_ids()[0]
    manager = store.client.nodes_manager
    current = manager.slots_cache
    primaries = sorted({holders[0].name for holders in current.values()})
    # A stale map: every slot on the "next" primary, as if all had moved since.
    stale = {slot: [manager.get_node(node_name=primaries[(primaries.index(holders[0].name) + 1) % len(primaries)])]
             for slot, holders in current.items()}  # fmt: skip
    refreshes = []
    monkeypatch.setattr(manager, "slots_cache", stale)
    monkeypatch.setattr(manager, "initialize", lambda: refreshes.append(1) or setattr(manager, "slots_cache", current))
    assert views.hydrate(store, user, items) == views.hydrate(memory, user, items)
    assert refreshes == [1]  # refused once through the stale map, then read through the fresh one
    store.close()


def test_a_cluster_reads_the_items_of_a_slot_being_migrated_where_each_is_now(tmp_path):
    """While a reshard moves a slot, its owner refuses a script naming a key it handed on
    (and the slot map says it still owns the slot): every feed with one of its items among
    its candidates answered UNAVAILABLE for as long as the slot moved, 39 of 861 GetFeeds
    during a 3,000-slot reshard (a review)."""
    cluster = RedisClusterServers(tmp_path / "cluster", masters=3).start()
    try:
        dataset = generate(users=100, sellers=10, items=200, seed=4)
        store = make_redis_store(cluster.url, dataset)
        memory = MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0)
        items, user = list(dataset.items.item_id[:60]), dataset.user_ids()[0]
        expected = views.hydrate(memory, user, items)
        assert views.hydrate(store, user, items) == expected
        slot = key_slot(store.keys.item(items[0]).encode())
        owner = store.client.get_node_from_key(store.keys.item(items[0])).port
        source = next(node for node in cluster.nodes if node.port == owner).client()
        target = next(node for node in cluster.primaries() if node.port != owner).client()
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.execute_command("CLUSTER", "MYID"))
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.execute_command("CLUSTER", "MYID"))
        keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        source.execute_command("MIGRATE", "127.0.0.1", target.connection_pool.connection_kwargs["port"], "", 0, 5000, "KEYS", *keys)
        assert views.hydrate(store, user, items) == expected
        fresh = RedisStore.from_url(cluster.url)  # a process that never read them
        assert views.hydrate(fresh, user, items) == expected
        [card] = fresh.read_cards(fresh.items.codes(items[:1], add=True))
        assert card.title == dataset.items.title[0] and card.title
        store.close()
        fresh.close()
    finally:
        cluster.stop()


def test_a_cluster_write_into_a_slot_being_migrated_waits_for_it_and_leaves_the_reshard_whole(tmp_path):
    """A per-slot write script named one key of its slot, which a user's slot does not hold:
    while the slot was migrating, the source answered ASK and the script ran on the importing
    node, writing there the user's liked hash and recent likes that the source still held.
    MIGRATE of those keys then failed BUSYKEY, stopping the reshard, and the
    like lived in a key the source's would replace (a review)."""
    cluster = RedisClusterServers(tmp_path / "cluster", masters=3).start()
    try:
        dataset = generate(users=100, sellers=10, items=200, seed=4)
        store = make_redis_store(cluster.url, dataset)
        k = store.keys
        user = dataset.user_ids()[0]
        liked_before = store.client.hgetall(k.liked(user))
        item = next(i for i in dataset.items.item_id if i not in liked_before)
        count_before = int(store.client.hget(k.item(item), "like_count"))
        slot = key_slot(k.liked(user).encode())
        owner = store.client.get_node_from_key(k.liked(user)).port
        source = next(node for node in cluster.nodes if node.port == owner).client()
        target_port = next(node for node in cluster.primaries() if node.port != owner).port
        target = next(node for node in cluster.nodes if node.port == target_port).client()
        source_id, target_id = source.execute_command("CLUSTER", "MYID"), target.execute_command("CLUSTER", "MYID")
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        like = [Event("moving-like", EventKind.LIKE, NOW, user_id=user, item_id=item)]
        with pytest.raises(StoreUnavailable):
            store.apply(like)  # the slot's keys are on both sides: not applied, a retry is safe
        assert target.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100) == []
        keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        assert source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys) == "OK"
        for node in cluster.nodes:
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        assert store.apply(like).applied == 1
        assert store.client.hgetall(k.liked(user)) == {**liked_before, item: store.client.hget(k.liked(user), item)}
        assert int(store.client.hget(k.item(item), "like_count")) == count_before + 1
        assert source.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        store.close()
    finally:
        cluster.stop()


def test_a_cluster_scan_sees_every_key_while_a_slot_moves_between_its_primaries(tmp_path, monkeypatch):
    """Keys are scanned node by node: a slot moved from a node not scanned yet to one already
    scanned hid its keys. `serving export` during a 4,000-slot reshard wrote 4,997 of
    5,000 items, 53,960 of 54,251 likes and 8,275 of 8,320 follows, and said nothing (a review)."""
    cluster = RedisClusterServers(tmp_path / "cluster", masters=3).start()
    try:
        store = make_redis_store(cluster.url, generate(users=100, sellers=10, items=200, seed=4))
        client, pattern = store.client, store.keys.liked_pattern
        every = sorted(stores.redis.scan_keys(client, pattern))
        by_port = {node.port: node for node in cluster.nodes}
        first, later = (by_port[node.port] for node in client.get_primaries()[:2])
        moving = next(slot for key in every if client.get_node_from_key(key).port == later.port for slot in [key_slot(key.encode())])
        scan_iter, moved = redis.Redis.scan_iter, []

        def scan_then_move(connection, *args, **kwargs):
            yield from scan_iter(connection, *args, **kwargs)
            if connection.connection_pool.connection_kwargs["port"] == first.port and not moved:
                cluster.move_slot(moving, later, first)  # from a node not scanned yet to one scanned
                moved.append(moving)

        monkeypatch.setattr(redis.Redis, "scan_iter", scan_then_move)
        assert sorted(stores.redis.scan_keys(client, pattern)) == every
        assert moved
        store.close()
    finally:
        cluster.stop()


def test_a_scan_whose_slots_never_settle_ends_in_one_line_naming_the_reshard(redis_cluster_url, monkeypatch):
    """`export` and `repack` during a reshard that outlasts every scan: it used to say
    "Redis unreachable", of a cluster that answered every command."""
    from serving.load import exit_on_redis_errors

    client = stores.redis.connect(redis_cluster_url)
    layouts = iter(range(1_000))
    monkeypatch.setattr(stores.redis, "_slot_layout", lambda client: next(layouts))  # a slot moves between every two reads
    with pytest.raises(SystemExit) as stopped, exit_on_redis_errors(redis_cluster_url):
        list(stores.redis.scan_keys(client, "no-such-key:*"))
    assert "the cluster is resharding: the cluster's slots moved while its keys were scanned, 5 times" in str(stopped.value.code)
    assert "unreachable" not in str(stopped.value.code)
    client.close()


def test_cluster_state_spreads_over_every_primary(redis_cluster_url, redis_cluster):
    dataset = generate(users=300, sellers=30, items=500, seed=3)
    store = make_redis_store(redis_cluster_url, dataset)
    sizes = [node.client().dbsize() for node in redis_cluster.nodes]
    assert min(sizes) > 0.2 * sum(sizes), sizes
    store.close()


def test_a_batch_rejected_for_an_unknown_item_writes_nothing(url):
    store = make_redis_store(url, social_dataset())
    before = snapshot(store.client)
    batch = [
        Event("ok1", EventKind.LIKE, NOW, user_id="carol", item_id="i1"),
        Event("ok2", EventKind.ITEM_UPSERT, NOW, item_id="n1", seller_id="s9", created_at=NOW, stock=1),
        Event("ok3", EventKind.FRIEND, NOW, user_id="dave", friend_id="erin"),
        Event("bad", EventKind.LIKE, NOW, user_id="carol", item_id="nope"),
    ]
    with pytest.raises(EventValidationError) as error:
        store.apply(batch)
    assert (error.value.index, error.value.field) == (3, "item_id")
    assert snapshot(store.client) == before
    store.close()


def test_a_malformed_batch_through_ingest_leaves_redis_unchanged(url):
    store = make_redis_store(url, social_dataset())
    service = FeedService(store, artifact=_NoArtifact(), codec=None, settings=_settings())
    before = snapshot(store.client)
    batch = [
        Event("ok1", EventKind.LIKE, NOW, user_id="carol", item_id="i1"),
        Event("bad", EventKind.FOLLOW, NOW, user_id="", seller_id="s1"),
    ]
    with pytest.raises(EventValidationError):
        service.ingest(batch)
    assert snapshot(store.client) == before
    store.close()


class _NoArtifact:
    version = "none"
    model = None
    manifest: dict = {}

    @property
    def ranker(self):
        from ranking.ranker import DEFAULT_RANKER

        return DEFAULT_RANKER


def _settings():
    from ranking.feed import FeedSettings

    return FeedSettings()


def random_batches(seed: int, n_batches: int, size: int) -> list[list[Event]]:
    """Mixed events over social_dataset's ids, with repeats, unlikes and seller moves."""
    rng = random.Random(seed)
    users = ["alice", "bob", "carol", "dave", "erin"]
    items = ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "a1"]
    sellers = ["s1", "s2", "s3"]
    batches, n = [], 0
    for _ in range(n_batches):
        batch = []
        for _ in range(size):
            n += 1
            ts = NOW + rng.choice([0, 1, 2.5, 3.123456, 10]) * 60 - rng.randrange(30) * DAY
            kind = rng.choice(list(EventKind) + [EventKind.LIKE, EventKind.UNLIKE] * 3)
            user, other = rng.sample(users, 2)
            item, seller = rng.choice(items), rng.choice(sellers)
            fields = {
                EventKind.LIKE: dict(user_id=user, item_id=item),
                EventKind.UNLIKE: dict(user_id=user, item_id=item),
                EventKind.FOLLOW: dict(user_id=user, seller_id=seller),
                EventKind.UNFOLLOW: dict(user_id=user, seller_id=seller),
                EventKind.FRIEND: dict(user_id=user, friend_id=other),
                EventKind.UNFRIEND: dict(user_id=user, friend_id=other),
                EventKind.ITEM_UPSERT: dict(item_id=item, seller_id=seller, created_at=None if n % 3 == 0 else ts - DAY, stock=rng.randrange(3),
                                            **rng.choice([{}, dict(title="Lamp", image_url="https://i.example/x.jpg")])),
                EventKind.STOCK_UPDATE: dict(item_id=item, stock=rng.randrange(3)),
                EventKind.NOT_INTERESTED_ITEM: dict(user_id=user, item_id=item),
                EventKind.NOT_INTERESTED_SELLER: dict(user_id=user, seller_id=seller),
                EventKind.ITEM_UPDATE: rng.choice([
                    dict(item_id=item, title=rng.choice(["", "Mug"]), price=rng.choice([None, 3.25])),
                    dict(item_id=item, feed_eligible=rng.random() < 0.5, ship_days=rng.randrange(5)),
                    dict(item_id=item, category=rng.choice(["", "home"]), currency="EUR"),
                ]),
                EventKind.SELLER_VACATION: dict(seller_id=seller, vacation_until=rng.choice([math.inf, ts + DAY])),
                EventKind.SELLER_VACATION_END: dict(seller_id=seller),
                EventKind.SHARE: dict(user_id=user, item_id=item, friend_id=rng.choice(["", other])),
                EventKind.VIEW: dict(user_id=user, item_id=item),
                EventKind.CLICK: dict(user_id=user, item_id=item),
                EventKind.ADD_TO_CART: dict(user_id=user, item_id=item),
                EventKind.PURCHASE: dict(user_id=user, item_id=item),
            }[kind]
            event_id = f"e{n}" if rng.random() > 0.1 else f"e{rng.randrange(1, n + 1)}"
            batch.append(Event(event_id, kind, ts, **fields))
        # An id reused for different content is refused by validation; keep the first.
        seen: dict[str, Event] = {}
        batches.append([seen.setdefault(e.event_id, e) for e in batch])
    return batches


def packed_items_match_the_item_hashes(store: RedisStore) -> None:
    """Every item's packed value is its fields packed: on standalone Redis in the hash of
    packed items only, with the item's trending score; on a cluster in the item hash only.
    Numbers compare as numbers: Lua writes a score as Redis formats it, pack_item as repr."""
    client = store.client
    nodes = [client.get_redis_connection(n) for n in client.get_primaries()] if store.is_cluster else [client]
    packed, expected = {}, {}
    for node in nodes:
        for key in node.scan_iter(match=store.keys.item_pattern, count=1000):
            fields, item = node.hgetall(key), store.keys.item_id_of(key)
            trending = 0.0 if store.is_cluster else client.zscore(store.keys.trending, item) or 0.0
            expected[item] = pack_item(fields, trending)
            if PACKED_FIELD in fields:
                packed[item] = fields[PACKED_FIELD]
    if not store.is_cluster:
        assert not packed, "standalone item hashes carry no packed field"
        packed = client.hgetall(store.keys.packed_items)
    assert {item: _numbers_read(value) for item, value in packed.items()} == {
        item: _numbers_read(value) for item, value in expected.items()
    }


def _numbers_read(packed: str) -> tuple[tuple[str, ...], str]:
    numbers, _, rest = packed.partition("|")
    return tuple(repr(float(number)) for number in numbers.split(",")), rest


def same_reads(memory: MemoryStore, store: RedisStore) -> None:
    packed_items_match_the_item_hashes(store)
    users = ["alice", "bob", "carol", "dave", "erin", "nobody"]
    items = ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "a1", "missing"]
    for user in users:
        assert views.read_user(store, user) == views.read_user(memory, user), user
        assert views.hydrate(store, user, items) == views.hydrate(memory, user, items), user
    for limit in (1, 2, 5, 50):
        expected = views.read_activity(memory, ["s1", "s2", "s3", "x"], users, limit, 20)
        assert views.read_activity(store, ["s1", "s2", "s3", "x"], users, limit, 20) == expected


def test_random_batches_leave_the_same_state_as_the_memory_store(url):
    """Regression guard for exact memory-store semantics, with a recent-likes bound of 2."""
    memory = MemoryStore.from_dataset(social_dataset(), recent_likes=2, trending_refresh_seconds=0.0)
    store = RedisStore.from_url(url + ("?" if "?" not in url else "&") + "recent_likes=2", socket_timeout=5.0)
    load_into_redis(store.client, social_dataset(), recent_likes=2)
    same_reads(memory, store)
    for batch in random_batches(seed=11, n_batches=40, size=12):
        try:
            expected = memory.apply(batch)
        except EventValidationError as error:
            with pytest.raises(EventValidationError) as got:
                store.apply(batch)
            assert got.value.index == error.index
            continue
        assert store.apply(batch) == expected
        assert store.apply(batch).duplicates == len(batch)
    same_reads(memory, store)
    store.close()


def test_a_cluster_batch_interrupted_after_logging_converges_on_retry(redis_cluster_url, monkeypatch):
    memory = MemoryStore.from_dataset(social_dataset(), trending_refresh_seconds=0.0)
    store = make_redis_store(redis_cluster_url, social_dataset())
    batch = [
        Event("c1", EventKind.ITEM_UPSERT, NOW, item_id="i1", seller_id="s2", created_at=NOW, stock=4),
        Event("c2", EventKind.LIKE, NOW + 1, user_id="carol", item_id="i1"),
        Event("c3", EventKind.UNLIKE, NOW + 2, user_id="bob", item_id="i6"),
        Event("c4", EventKind.FRIEND, NOW + 3, user_id="dave", friend_id="erin"),
    ]
    original = RedisStore._run_slot_ops
    calls = {"n": 0}

    def crash_in_second_stage(self, ops, *weight):
        calls["n"] += 1
        if calls["n"] == 2:
            raise redis.exceptions.ConnectionError("simulated crash between the stages")
        return original(self, ops, *weight)

    monkeypatch.setattr(RedisStore, "_run_slot_ops", crash_in_second_stage)
    with pytest.raises(StoreUnavailable):
        store.apply(batch)
    monkeypatch.undo()
    assert store.apply(batch) == memory.apply(batch)  # the retry re-applies, nothing twice
    assert store.apply(batch).duplicates == len(batch)
    same_reads(memory, store)
    events = store.client.xrange(store.keys.events)
    assert [fields["event_id"] for _, fields in events] == ["c1", "c2", "c3", "c4"]  # logged once
    store.close()


@pytest.mark.parametrize(
    ("stock", "first", "second"),
    [
        (3, dict(kind=EventKind.STOCK_UPDATE, stock=0), dict(kind=EventKind.STOCK_UPDATE, stock=5)),
        (0, dict(kind=EventKind.STOCK_UPDATE, stock=5), dict(kind=EventKind.STOCK_UPDATE, stock=0)),
        (3, dict(kind=EventKind.ITEM_UPSERT, seller_id="shop", created_at=NOW - DAY, stock=0), dict(kind=EventKind.STOCK_UPDATE, stock=4)),
    ],
    ids=["sold out, then back", "back, then sold out", "upserted sold out, then back"],
)
def test_two_cluster_batches_racing_on_one_items_stock_leave_it_listed_as_its_stock_says(redis_cluster_url, stock, first, second):
    """Two concurrent batches change one item's stock across 0: each item-slot stage runs in
    order, then the seller-slot stages in the other order (as two Ingest calls' can). The
    seller's set used to follow the stage that ran last, not the item's stock."""
    from stores.redis import _stage_one, _stage_two

    store = make_redis_store(redis_cluster_url, make_dataset([("x", "shop", NOW - DAY, stock)]))
    batches = [[Event(f"e{n}", ts=NOW + n, item_id="x", **fields)] for n, fields in enumerate((first, second))]
    found = [store._run_slot_ops(_stage_one(batch)) for batch in batches]
    for batch, first_stage in reversed(list(zip(batches, found))):
        store._run_slot_ops(_stage_two(batch, first_stage))
    in_stock = int(store.client.hget(store.keys.item("x"), "stock")) > 0
    assert store.client.zrange(store.keys.listings("shop"), 0, -1) == (["x"] if in_stock else [])
    store.close()


def test_hydrating_thousands_of_items_at_once(url):
    items = [(f"x{n}", "s", NOW - n, n % 3) for n in range(2500)]
    dataset = make_dataset(items, likes=[("u", f"x{n}", NOW) for n in range(0, 2500, 7)])
    store = make_redis_store(url, dataset)
    memory = MemoryStore.from_dataset(dataset)
    asked = [f"x{n}" for n in range(2600)]
    assert views.hydrate(store, "u", asked) == views.hydrate(memory, "u", asked)
    store.close()


@pytest.mark.parametrize("compact_entries", [512, 16])  # 16: the user's hashes too large for one HSCAN call
def test_a_users_liked_and_views_hashes_read_whole_or_by_candidate_hydrate_alike(redis_url, monkeypatch, compact_entries):
    """Standalone hydration reads the user's liked and views hashes with one HSCAN call
    each. Redis answers a compact (listpack) hash whole; a larger one in parts, and then
    the hash is read at the candidates instead (HMGET)."""
    monkeypatch.setattr("stores.redis.USER_HASH_SCAN", 8)
    client = redis.Redis.from_url(redis_url)
    before = client.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"]
    client.config_set("hash-max-listpack-entries", compact_entries)
    try:
        items = [(f"x{n}", f"s{n % 7}", NOW - n, 1) for n in range(400)]
        dataset = make_dataset(items, likes=[("u", f"x{n}", NOW - n) for n in range(0, 400, 2)])
        store, memory = make_redis_store(redis_url, dataset), MemoryStore.from_dataset(dataset)
        viewed = [Event(f"v{n}", EventKind.VIEW, NOW + n, user_id="u", item_id=f"x{n % 300}") for n in range(450)]
        assert store.apply(viewed) == memory.apply(viewed)
    finally:
        client.config_set("hash-max-listpack-entries", before)
    asked = [f"x{n}" for n in range(0, 400, 3)] + ["x1", "unknown"]
    assert views.hydrate(store, "u", asked) == views.hydrate(memory, "u", asked)
    direct = RedisStore.from_url(f"{redis_url}?read_cache=0")
    assert views.hydrate(direct, "u", asked) == views.hydrate(memory, "u", asked)
    counter = RoundTripCounter(monkeypatch)
    read_whole = compact_entries > 300
    assert counter.measure(direct.hydrate, "u", direct.items.codes(asked[:-1])) == (1 if read_whole else 2)
    # This process's copy keeps hashes read whole, and never a hash read by candidate.
    assert counter.measure(store.hydrate, "u", store.items.codes(asked[:-1])) == (0 if read_whole else 2)
    store.close()
    direct.close()
    client.close()


def _drop_packed_values(store: RedisStore) -> int:
    """Remove every item's packed value, as in a Redis written before they existed."""
    client = store.client
    if not store.is_cluster:
        dropped = client.hlen(store.keys.packed_items)
        client.delete(store.keys.packed_items)
        return dropped
    dropped = 0
    for node in (client.get_redis_connection(n) for n in client.get_primaries()):
        for key in node.scan_iter(match=store.keys.item_pattern, count=1000):
            dropped += node.hdel(key, PACKED_FIELD)
    return dropped


def test_items_written_before_packed_values_hydrate_alike_and_a_write_packs_them(url):
    dataset = generate(users=200, sellers=20, items=300, seed=5)
    store = make_redis_store(url, dataset)
    memory = MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0)
    items = dataset.items.item_id[:120] + ["missing"]
    users = dataset.user_ids()[:5]
    expected = {user: views.hydrate(memory, user, items) for user in users}
    assert {user: views.hydrate(store, user, items) for user in users} == expected  # packed by the loader
    assert _drop_packed_values(store) == len(dataset.items)
    assert {user: views.hydrate(store, user, items) for user in users} == expected  # packed on the fly
    batch = [
        Event("s", EventKind.STOCK_UPDATE, NOW, item_id=items[0], stock=0),
        Event("l", EventKind.LIKE, NOW, user_id=users[0], item_id=items[1]),
        Event("u", EventKind.ITEM_UPDATE, NOW, item_id=items[2], price=1.5, category="new"),
    ]
    assert store.apply(batch) == memory.apply(batch)
    if store.is_cluster:
        repacked = [store.client.hget(store.keys.item(item), PACKED_FIELD) for item in items[:3]]
    else:
        repacked = store.client.hmget(store.keys.packed_items, items[:3])
    assert all(repacked)
    assert {user: views.hydrate(store, user, items) for user in users} == {user: views.hydrate(memory, user, items) for user in users}
    store.close()


def test_repack_rebuilds_every_packed_value_of_a_live_redis(url, capsys):
    """An older layout's Redis, events applied since its load: repack packs every item
    from its fields, trending scores included, without touching anything else."""
    from serving import repack

    dataset = generate(users=200, sellers=20, items=300, seed=5)
    store = make_redis_store(url, dataset)
    memory = MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0)
    items, users = dataset.items.item_id[:3], dataset.user_ids()[:3]
    batch = [Event("l", EventKind.LIKE, NOW, user_id=users[0], item_id=items[1]), Event("s", EventKind.STOCK_UPDATE, NOW, item_id=items[0], stock=0)]
    assert store.apply(batch) == memory.apply(batch)
    assert _drop_packed_values(store) == len(dataset.items)
    before = snapshot(store.client)
    repack.main(["--redis", url, "--batch", "64", "--no-progress"])
    out = capsys.readouterr().out
    assert out.startswith(f"repacked {len(dataset.items)} items; ") and ": 0 changed, 0 listings removed" in out, out
    packed_items_match_the_item_hashes(store)
    def without_packed(state: dict) -> dict:
        return {key: (kind, {f: v for f, v in value.items() if f != PACKED_FIELD} if kind == "hash" else value)
                for key, (kind, value) in state.items() if key != store.keys.packed_items}  # fmt: skip

    after = snapshot(store.client)
    assert after != before and without_packed(after) == without_packed(before)  # the packed values only
    asked = dataset.items.item_id[:120]
    assert {u: views.hydrate(store, u, asked) for u in users} == {u: views.hydrate(memory, u, asked) for u in users}
    store.close()


def _older_versions_listings(url: str) -> tuple[RedisStore, dict[str, list[tuple[str, float]]], list[str]]:
    """A Redis as the version before in-stock-only listings left it (listings=2, 4 kept now):
    "shop"'s set holds its two newest items, both sold out, and none of its five older
    in-stock ones (trimmed); "other"'s holds its one item, sold out. Also the sets a load
    writes now, and what "fan", who follows shop, was served from those."""
    in_stock = [(f"old{k}", "shop", NOW - (30 + k) * DAY, 3) for k in range(5)]
    sold_out = [(f"sold{k}", "shop", NOW - (5 + k) * DAY, 0) for k in range(3)] + [("gone", "other", NOW - DAY, 0)]
    store = make_redis_store(url, make_dataset(in_stock + sold_out, follows=[("fan", "shop", NOW - 60 * DAY)]), listings=2)
    k = store.keys
    loaded = {seller: store.client.zrange(k.listings(seller), 0, -1, withscores=True) for seller in ("shop", "other")}
    assert [item for item, _ in loaded["shop"]] == ["old0", "old1", "old2", "old3"] and loaded["other"] == []
    served = views.served_to(store, "fan")
    assert sorted(served) == ["old0", "old1"]  # the newest `listings`
    for item, seller, created, _ in sold_out:
        store.client.zadd(k.listings(seller), {item: -created})
    store.client.zremrangebyrank(k.listings("shop"), 2, -1)
    assert store.client.zrange(k.listings("shop"), 0, -1) == ["sold0", "sold1"]
    return store, loaded, served


def test_repack_rebuilds_sellers_listings_as_the_version_before_left_them(url, capsys):
    """Sold-out items in a seller's set and its in-stock ones trimmed out: repack makes each
    set what a load writes now, so the follower's feed is what it was, also from a process
    that copied the sets before (standalone: the change log tells it); run again, it
    changes nothing."""
    from serving import repack

    store, loaded, served = _older_versions_listings(url)
    server = RedisStore.from_url(url, {"listings": 2})
    assert views.served_to(server, "fan") == []
    repack.main(["--redis", f"{url}?listings=2", "--batch", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert out.startswith("repacked 9 items; rebuilt 2 sellers' listings (the newest 4 in stock each): "
                          "2 changed, 3 listings removed (sold out, gone or past 4), 4 added, in "), out  # fmt: skip
    k = store.keys
    assert {seller: store.client.zrange(k.listings(seller), 0, -1, withscores=True) for seller in loaded} == loaded
    assert views.served_to(server, "fan") == served
    server.close()
    before = snapshot(store.client)
    repack.main(["--redis", f"{url}?listings=2", "--no-progress"])
    assert ": 0 changed, 0 listings removed" in capsys.readouterr().out
    assert snapshot(store.client) == before
    store.close()


def test_an_item_an_ingest_changes_while_its_seller_is_rebuilt_ends_listed_as_its_stock_says(url):
    """Between the listings rebuild's read of the items and its write of the seller's set,
    an ingest sells out an item the rebuild adds and restocks one it removes: that write
    would undo both. The rebuild reads them again and rebuilds the seller."""
    store, _, _ = _older_versions_listings(url)
    relist, calls = store._relist, []

    def ingest_first(changes):
        if not calls:
            (drop, add), = changes.values()
            assert "old3" in dict(add) and "sold0" in drop
            store.apply([Event("out", EventKind.STOCK_UPDATE, NOW, item_id="old3", stock=0),
                         Event("back", EventKind.STOCK_UPDATE, NOW, item_id="sold0", stock=2)])  # fmt: skip
        calls.append(changes)
        return relist(changes)

    store._relist = ingest_first
    relisted = store.rebuild_listings({"shop": [f"old{k}" for k in range(5)]})
    assert store.client.zrange(store.keys.listings("shop"), 0, -1) == ["sold0", "old0", "old1", "old2"]
    assert len(calls) == 2 and relisted.unsettled == []
    store.close()


def test_repack_refuses_a_cluster_with_a_primary_that_came_back_empty(redis_cluster_url, redis_cluster):
    """Its items read as missing: rebuilding the sellers' listings from them would unlist
    them from every seller's set on the other primaries."""
    from serving import repack

    dataset = generate(users=100, sellers=20, items=300, seed=5)
    store = make_redis_store(redis_cluster_url, dataset)
    victim = redis_cluster.primaries()[0]
    with victim.client() as client:
        client.flushall()
    before = snapshot(store.client)
    with pytest.raises(SystemExit) as stopped:
        repack.main(["--redis", redis_cluster_url, "--no-progress"])
    assert str(stopped.value.code).startswith(f"error: --redis {redis_cluster_url}: Redis lost its data at 127.0.0.1:{victim.port} ")
    assert snapshot(store.client) == before
    store.close()


def test_view_counts_written_before_their_times_joined_them_still_read_and_upgrade(url):
    """An older version kept only the count in the views hash (the time in seen)."""
    store = make_redis_store(url, social_dataset())
    store.apply([Event(f"v{n}", EventKind.VIEW, NOW + n, user_id="alice", item_id="i1") for n in range(3)])
    store.apply([Event("v3", EventKind.VIEW, NOW, user_id="alice", item_id="i3")])
    assert store.client.hget(store.keys.views("alice"), "i1") == f"3,{NOW + 2!r}"
    store.client.hset(store.keys.views("alice"), mapping={"i1": "3", "i3": "1"})
    assert views.hydrate(store, "alice", ["i1", "i3", "i6"]).seen == {"i1": (3, NOW + 2), "i3": (1, NOW)}
    store.apply([Event("v4", EventKind.VIEW, NOW + 4, user_id="alice", item_id="i1")])
    assert views.hydrate(store, "alice", ["i1", "i3", "i6"]).seen == {"i1": (4, NOW + 4), "i3": (1, NOW)}
    store.close()


def test_a_vacation_set_through_another_server_reaches_the_next_feed_and_only_then_rereads(url, monkeypatch):
    """Each process keeps a copy of the vacations hash, refreshed when its version moves."""
    reader, writer = make_redis_store(url, social_dataset()), RedisStore.from_url(url)
    codes = reader.items.codes(["i1", "i6"], add=True)
    reads = []
    hgetall = reader.client.hgetall
    monkeypatch.setattr(reader.client, "hgetall", lambda key: reads.append(key) or hgetall(key))
    assert reader.hydrate("alice", codes).seller_away_until.tolist() == [0.0, 0.0]
    assert reader.hydrate("alice", codes).seller_away_until.tolist() == [0.0, 0.0]
    assert len(reads) <= 1  # once at most, then the copy
    writer.apply([Event("away", EventKind.SELLER_VACATION, NOW, seller_id="s2", vacation_until=NOW + DAY)])
    assert reader.hydrate("alice", codes).seller_away_until.tolist() == [0.0, NOW + DAY]
    writer.apply([Event("back", EventKind.SELLER_VACATION_END, NOW, seller_id="s2")])
    assert reader.hydrate("alice", codes).seller_away_until.tolist() == [0.0, 0.0]
    read_so_far = len(reads)
    reader.hydrate("alice", codes)
    assert len(reads) == read_so_far
    writer.apply([Event("again", EventKind.SELLER_VACATION_END, NOW, seller_id="s2")])  # nothing to end: no new version
    reader.hydrate("alice", codes)
    assert len(reads) == read_so_far
    reader.close()
    writer.close()


def test_loading_twice_gives_the_same_state(url, tmp_path: Path):
    dataset = generate(users=200, sellers=20, items=300, seed=5)
    store = make_redis_store(url, dataset)
    first = snapshot(store.client)
    load_into_redis(store.client, dataset, batch=7)
    # The same state, but for the vacations' version counter: servers read them again.
    version = store.keys.vacations_version
    assert {k: v for k, v in snapshot(store.client).items() if k != version} == {k: v for k, v in first.items() if k != version}
    memory = MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0)
    for user in dataset.user_ids()[:50]:
        assert views.read_user(store, user) == views.read_user(memory, user)
    assert views.read_activity(store, [], [], 0, 50) == views.read_activity(memory, [], [], 0, 50)
    store.close()


# -- outages -----------------------------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.mark.parametrize("reply", [
    "CLUSTERDOWN The cluster is down",
    "Script attempted to execute a command while the cluster is down script: b369, on @user_script:18.",
    # A slot that moved while a failover spreads: GetFeed answered INTERNAL (an outside review).
    "Script attempted to access a non local key in a cluster node script: 5d1f, on @user_script:31.",
])  # fmt: skip
def test_a_cluster_down_reply_is_unavailable_even_from_inside_a_script(reply):
    with pytest.raises(StoreUnavailable):
        with unavailable_on_redis_errors():
            raise redis.exceptions.ResponseError(reply)
    with pytest.raises(redis.exceptions.ResponseError):  # a script's own bug stays a bug
        with unavailable_on_redis_errors():
            raise redis.exceptions.ResponseError("user_script:3: attempt to index a nil value")


def test_a_seed_that_serves_no_slot_is_unavailable_not_an_internal_error(tmp_path):
    """A process connecting through a cluster node that serves no slot (a node removed with
    `redis-cli --cluster del-node`, which resets it; or one not joined yet) got redis-py's
    RedisClusterException "All slots are not covered": a feed process started after the
    store URL's node left the cluster answered INTERNAL, with a traceback, to 574 of 761
    GetFeeds (a review)."""
    node = RedisServer(tmp_path / "lone", extra=["--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "lone" / "nodes.conf")],
                       cluster=True).start()  # fmt: skip
    try:
        store = RedisStore.from_url(f"redis-cluster://127.0.0.1:{node.port}")
        with pytest.raises(StoreUnavailable, match="not covered"):
            store.read_user("alice")
        with pytest.raises(StoreUnavailable, match="not covered"):
            store.apply([Event("e1", EventKind.FOLLOW, NOW, user_id="alice", seller_id="s1")])
        assert not store.ping() and "not covered" in store.ping_failure
        store.close()
    finally:
        node.stop()


@pytest.mark.parametrize("error", [
    redis.exceptions.NoPermissionError("this user has no permissions to run the 'hset' command"),
    # Redis 7.0's reply to a script's command refused (7.2: "ACL failure in script: ...").
    redis.exceptions.ResponseError("The user executing the script can't run this command or subcommand script: 016f, on @user_script:38."),
])  # fmt: skip
def test_a_command_the_acl_refuses_is_store_forbidden(error):
    with pytest.raises(StoreForbidden, match=re.escape(str(error))):
        with unavailable_on_redis_errors():
            raise error


def test_a_frozen_redis_gives_store_unavailable_quickly_and_recovers(own_server):
    store = RedisStore.from_url(own_server.url)  # default socket timeouts: 0.5 s
    load_into_redis(store.client, social_dataset())
    assert store.ping()
    own_server.pause()
    try:
        for call in (lambda: views.read_user(store, "alice"), lambda: store.apply([Event("z", EventKind.FOLLOW, NOW, user_id="a", seller_id="b")])):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < 1.5
        started = time.monotonic()
        assert store.ping() is False
        assert time.monotonic() - started < 1.5
        assert store.ping_failure.startswith("TimeoutError: ")  # the reason the server logs
    finally:
        own_server.resume()
    assert store.ping() and store.ping_failure == ""
    assert views.read_user(store, "alice").follows == {"s1"}
    store.close()


def test_a_dead_redis_gives_store_unavailable_and_a_restarted_one_is_used_again(own_server, caplog):
    store = RedisStore.from_url(own_server.url)
    load_into_redis(store.client, social_dataset())
    own_server.kill()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        views.read_user(store, "alice")
    assert store.ping() is False
    assert time.monotonic() - started < 1.5
    own_server.start()
    with caplog.at_level(logging.ERROR, logger="feedrank.store"):
        assert store.ping()
        assert views.read_user(store, "alice").is_empty  # no persistence configured: it came back empty
    # Health says SERVING (it answers): the log says why every feed is empty.
    assert "is a new process that holds no data" in caplog.text and "python -m serving load" in caplog.text
    store.close()


def test_a_cluster_primary_restarted_without_its_data_is_logged(tmp_path, caplog):
    """The log line above came only from the standalone copy's connect hook: a cluster
    primary restarted in place without persistence (no replica took over) was used again
    in silence, a third of the feeds empty (a review)."""
    cluster = RedisClusterServers(tmp_path / "cluster", masters=3, node_timeout_ms=15_000).start()
    try:
        dataset = generate(users=100, sellers=10, items=200, seed=4)
        store = make_redis_store(cluster.url, dataset)
        user = dataset.user_ids()[0]
        assert not views.read_user(store, user).is_empty
        victim = next(node for node in cluster.nodes if node.port == store.client.get_node_from_key(store.keys.liked(user)).port)
        victim.kill()
        with pytest.raises(StoreUnavailable):
            views.read_user(store, user)
        victim.start()
        cluster.wait_ok()
        with caplog.at_level(logging.ERROR, logger="feedrank.store"):
            assert views.read_user(store, user).is_empty  # no persistence: it came back empty
        assert f"Redis at 127.0.0.1:{victim.port} is a new process that holds no data" in caplog.text
        store.close()
    finally:
        cluster.stop()


def test_ingest_into_a_cluster_primary_that_came_back_empty_is_unavailable_and_writes_nothing_until_loaded(tmp_path, caplog):
    """A cluster primary restarted in place without its data (no replica took over) was only
    logged: follows and friendships of its users were applied into a store that had lost
    everything else of theirs, and a like of one of its items answered INVALID_ARGUMENT.
    Now an Ingest that touches its slots is refused as unavailable, writing nothing on any
    node (but a share whose recipient is on it, found only once its sender's part ran: it
    fails part-way, all-or-retry), until the data is loaded again; one that touches only
    the other primaries is applied."""
    cluster = RedisClusterServers(tmp_path / "cluster", masters=3, node_timeout_ms=15_000).start()
    try:
        dataset = generate(users=100, sellers=10, items=200, seed=4)
        store = make_redis_store(cluster.url, dataset)
        k = store.keys
        markers = list(scan_keys(store.client, f"{k.prefix}{{*}}:holds_data"))
        assert sorted(key_slot(key.encode()) for key in markers) == list(range(16384))  # the load marked every slot

        def port(key: str) -> int:
            return store.client.get_node_from_key(key).port

        log_port = port(k.events)
        victim = next(node for node in cluster.nodes if node.port != log_port)
        lost = [u for u in dataset.user_ids() if port(k.liked(u)) == victim.port]
        kept = [u for u in dataset.user_ids() if port(k.liked(u)) != victim.port]
        seller = next(s for s in map(str, dataset.items.seller_id) if port(k.listings(s)) != victim.port)
        item = next(i for i in map(str, dataset.items.item_id) if port(k.item(i)) != victim.port)
        follow_lost = [Event("f-lost", EventKind.FOLLOW, NOW, user_id=lost[0], seller_id=seller)]
        follow_kept = [Event("f-kept", EventKind.FOLLOW, NOW, user_id=kept[0], seller_id=seller)]
        like_lost = [Event("l-lost", EventKind.LIKE, NOW, user_id=lost[1], item_id=item)]
        friends = [Event("fr", EventKind.FRIEND, NOW, user_id=kept[1], friend_id=lost[2])]
        # A share to all of a kept user's friends, one of them on the victim: only the
        # first stage finds the recipients, and the victim's script refuses its part.
        sharer = next(str(a) for a, b in zip(dataset.friends.src, dataset.friends.dst) if str(a) in kept and str(b) in lost)
        share = [Event("sh", EventKind.SHARE, NOW, user_id=sharer, item_id=item)]
        assert store.apply([Event("warm", EventKind.VIEW, NOW, user_id=kept[2], item_id=item)]).applied == 1
        victim.kill()
        victim.start()
        cluster.wait_ok()
        events_before = store.client.xlen(k.events)
        follows_before = store.client.smembers(k.follows(kept[0]))
        with caplog.at_level(logging.ERROR, logger="feedrank.store"):
            for batch in (follow_lost, like_lost, friends, follow_kept + follow_lost):
                with pytest.raises(StoreUnavailable, match=f"Redis lost its data at 127.0.0.1:{victim.port} .*python -m serving load"):
                    store.apply(batch)
            assert store.apply(follow_kept).applied == 1  # the other primaries' slots only
            with pytest.raises(StoreUnavailable, match=f"Redis lost its data at 127.0.0.1:{victim.port} "):
                store.apply(share)
            with pytest.raises(StoreUnavailable):
                store.apply(follow_lost)
        assert caplog.text.count("Ingest is refused") == 1  # logged once, not per Ingest
        with victim.client() as admin:
            assert admin.dbsize() == 0  # nothing written into it
        assert store.client.xlen(k.events) == events_before + 2  # follow_kept's, and the share's logged pending
        assert store.client.smembers(k.follows(kept[0])) == follows_before | {seller}
        # A process started since, which never saw the data, refuses it too: the others hold theirs.
        other = RedisStore.from_url(cluster.url)
        with pytest.raises(StoreUnavailable, match="Redis lost its data at"):
            other.apply(follow_lost)
        load_into_redis(store.client, dataset)
        assert store.apply(follow_lost + like_lost + friends + share).applied == 4
        assert other.apply(follow_lost).duplicates == 1
        assert seller in views.read_user(store, lost[0]).follows
        other.close()
        store.close()
        # A process on a cluster that never held data (nor a load) writes as before.
        cluster.flushall()
        fresh = RedisStore.from_url(cluster.url)
        assert fresh.apply(follow_lost).applied == 1
        assert fresh.apply(follow_kept).applied == 1
        fresh.close()
    finally:
        cluster.stop()


def _slot_range(node: RedisServer) -> tuple[int, int]:
    with node.client() as admin:
        (first, last, *_), = [entry for entry in admin.cluster("slots") if entry[2][1] == node.port]
    return first, last


def test_the_refusal_names_every_primary_that_lost_its_data_with_its_slots_markers(tmp_path, caplog):
    """Two of four primaries restarted without their data: an Ingest touching only one was
    refused naming that one alone (the first missing marker's node), so the operator of a
    larger cluster had to search for the others. Now the refusal and its log line name each
    primary that lost its data, its slots and how many of their markers are left, and the
    command that fixes it."""
    cluster = RedisClusterServers(tmp_path / "cluster", masters=4, node_timeout_ms=15_000).start()
    try:
        dataset = generate(users=100, sellers=10, items=200, seed=4)
        store = make_redis_store(cluster.url, dataset)
        k = store.keys
        log_port = store.client.get_node_from_key(k.events).port
        victims = [node for node in cluster.nodes if node.port != log_port][:2]
        user = next(u for u in dataset.user_ids() if store.client.get_node_from_key(k.liked(u)).port == victims[0].port)
        seller = next(s for s in map(str, dataset.items.seller_id)
                      if store.client.get_node_from_key(k.listings(s)).port not in {v.port for v in victims})
        assert store.apply([Event("warm", EventKind.FOLLOW, NOW, user_id=user, seller_id=seller)]).applied == 1
        for victim in victims:
            victim.kill()
            victim.start()  # no persistence: back empty
        cluster.wait_ok()
        lost = [(victim.port, *_slot_range(victim)) for victim in victims]
        named = ", ".join(f"127.0.0.1:{port} \\(slots {first}-{last}: 0 of {last - first + 1} data markers left\\)"
                          for port, first, last in sorted(lost, key=lambda entry: entry[1]))
        expected = f"Redis lost its data at {named}.*Ingest is refused.*python -m serving load --data DIR --redis URL"
        follow = [Event("f1", EventKind.FOLLOW, NOW, user_id=user, seller_id=seller)]
        with caplog.at_level(logging.ERROR, logger="feedrank.store"):
            for _ in range(2):
                with pytest.raises(StoreUnavailable, match=expected):
                    store.apply(follow)
        refusals = [r.getMessage() for r in caplog.records if "Ingest is refused" in r.getMessage()]
        assert len(refusals) == 1 and re.search(expected, refusals[0]), refusals
        other = RedisStore.from_url(cluster.url)  # a process started since names them too
        with pytest.raises(StoreUnavailable, match=expected):
            other.apply(follow)
        other.close()
        store.close()
    finally:
        cluster.stop()


def test_ingest_into_a_redis_that_came_back_empty_is_unavailable_and_writes_nothing_until_loaded(own_server, caplog):
    """A Redis restarted without its data answered a valid like INVALID_ARGUMENT (unknown
    item: a client drops the event for good) and applied follows to the empty store (an
    outside review). Now each is refused as unavailable, retried once the data is back,
    and logged once, not at every Ingest (an error line per batch flooded the log)."""
    store = RedisStore.from_url(own_server.url)
    load_into_redis(store.client, social_dataset())
    like = [Event("l1", EventKind.LIKE, NOW, user_id="alice", item_id="i1")]
    follow = [Event("f1", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s2")]
    assert store.apply(like).applied == 1
    own_server.kill()
    own_server.start()
    with caplog.at_level(logging.ERROR, logger="feedrank.store"):
        for batch in (like, follow, follow + like):
            with pytest.raises(StoreUnavailable, match="Redis lost its data at 127.0.0.1:[0-9]+ \\(no change-log epoch\\).*python -m serving load"):
                store.apply(batch)
    assert caplog.text.count("Ingest is refused") == 1
    with own_server.client() as admin:
        assert admin.dbsize() == 0  # nothing written
    load_into_redis(store.client, social_dataset())
    assert store.apply(like + follow).applied == 2
    assert "s2" in views.read_user(store, "dave").follows
    with own_server.client() as admin:
        admin.flushall()
    with caplog.at_level(logging.ERROR, logger="feedrank.store"), pytest.raises(StoreUnavailable):
        store.apply(follow)
    assert caplog.text.count("Ingest is refused") == 2  # lost again: logged again
    store.close()
    # A process that never saw data (a server started on an empty Redis) writes as before.
    with own_server.client() as admin:
        admin.flushall()
    fresh = RedisStore.from_url(own_server.url)
    assert fresh.apply(follow).applied == 1
    assert fresh.apply([Event("f2", EventKind.FOLLOW, NOW, user_id="erin", seller_id="s2")]).applied == 1
    fresh.close()


def test_a_primary_that_may_evict_feed_state_is_named_by_its_policy(redis_cluster_url, redis_cluster):
    """Nothing read maxmemory-policy: under allkeys-lru (a managed Redis's usual default) a
    full Redis dropped stock and likes silently (a review). Every primary is asked."""
    store = RedisStore.from_url(redis_cluster_url)
    assert eviction_warning(store.client) is None  # redis-server's default: noeviction
    evicting = redis_cluster.primaries()[1]
    with evicting.client() as admin:
        admin.config_set("maxmemory-policy", "volatile-lru")
        try:
            warning = eviction_warning(store.client)
        finally:
            admin.config_set("maxmemory-policy", "noeviction")
    assert warning is not None and warning.startswith(f"Redis 127.0.0.1:{evicting.port} has maxmemory-policy volatile-lru: ")
    assert warning.count("maxmemory-policy volatile-lru") == 1 and warning.endswith("set maxmemory-policy noeviction")
    store.close()


def test_a_user_not_allowed_info_is_told_the_policy_could_not_be_read(redis_url, redis_server):
    with redis_server.client() as admin:
        admin.acl_setuser("no-info", enabled=True, passwords=["+pw"], keys=["fr:*"], commands=["+@all", "-info"])
        try:
            store = RedisStore.from_url(redis_url.replace("redis://", "redis://no-info:pw@"))
            warning = eviction_warning(store.client)
            store.close()
        finally:
            admin.acl_deluser("no-info")
    assert warning == (f"could not read the maxmemory-policy of Redis 127.0.0.1:{redis_server.port} (this user has no "
                       "permissions to run the 'info' command): make sure it is noeviction, and grant the server +info")


def test_a_shop_followers_deep_pages_reach_its_older_listings_as_on_the_memory_store(url, monkeypatch):
    # Every page read the shop's 50 newest listings, and the feed ended after them.
    shop = [(f"b{k:03d}", "bigshop", NOW - (k + 1) * 3600, 0 if k % 6 == 5 else 5) for k in range(240)]
    dataset = make_dataset(shop, follows=[("fan", "bigshop", NOW - DAY)])
    store = make_redis_store(url, dataset)
    served = {}
    for name, feed_store in (("memory", MemoryStore.from_dataset(dataset)), ("redis", store)):
        pipeline = build_feed_pipeline(feed_store, None, settings=FeedSettings(max_per_seller=20))
        served[name] = []
        while True:
            page = pipeline.run("fan", 20, NOW, served_hashes=np.sort(np.array([stable_hash(i) for i in served[name]], np.uint32)))
            served[name] += [i.item_id for i in page.items]
            if not (page.has_more and page.items):
                break
    assert served["redis"] == served["memory"]
    assert sorted(served["redis"]) == [f"b{k:03d}" for k in range(240) if k % 6 != 5]
    store.close()
    if not store.is_cluster:
        uncached = RedisStore.from_url(f"{url}?read_cache=0")
        uncached.read_activity(["bigshop"], [], 50, 20)  # connect and load the read script
        counter = RoundTripCounter(monkeypatch)
        assert counter.measure(uncached.read_activity, ["bigshop"], [], 1_000, 2_000) == 1  # a deep page's read, as a first's
        uncached.close()


def test_a_fresh_process_serves_its_first_feeds_exactly_as_the_memory_store(url):
    """Regression: a new RedisStore learns item and seller codes from its replies, so the
    followed-seller feature, own-listing filter and exclusions of the very first request
    once saw no codes for ids they had not met yet, and ranked differently."""
    dataset = generate(users=150, sellers=20, items=600, seed=3)
    model, _ = train(dataset, TrainParams(factors=16, iterations=4, show_progress=False))
    store = make_redis_store(url, dataset)
    memory = MemoryStore.from_dataset(dataset)
    now = float(np.nanmax(dataset.likes.ts)) + 1.0
    users = dataset.user_ids()[:20]
    exclude = [dataset.items.item_id[7], dataset.items.item_id[11]]
    served = {}
    for name, feed_store in (("memory", memory), ("redis", store)):
        pipeline = build_feed_pipeline(feed_store, model)
        served[name] = [
            [(i.item_id, round(i.score, 5)) for i in pipeline.run(user, 20, now, exclude_ids=exclude).items] for user in users
        ]
    assert served["redis"] == served["memory"]
    store.close()


def test_a_loaded_share_and_the_same_share_ingested_later_are_one_entry(redis_url):
    """The loader writes members as the Lua scripts' cjson does (it escapes '/'), so odd ids dedupe too."""
    import dataclasses

    from training.dataset import Engagements

    odd = 'shop/é"1'
    dataset = make_dataset([(odd, "s1", NOW - DAY, 3)], friends=[("alice", "bob", NOW - DAY)])
    dataset = dataclasses.replace(dataset, engagements=Engagements(["bob"], [odd], ["share"], np.array([NOW - 60.0]), ["alice"]))
    store = make_redis_store(redis_url, dataset)
    store.apply([Event("again", EventKind.SHARE, NOW, user_id="bob", item_id=odd, friend_id="alice")])
    assert views.read_user(store, "alice").shared == ((odd, "bob", NOW),)
    store.close()


# --------------------------------------------------------------------------- URL parsing


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/15", "rediss://h:6380/0?db=2",
    "unix:///tmp/redis.sock", "unix:///tmp/redis.sock?db=3", "redis-cluster://127.0.0.1:7000",
    "redis-cluster://u:p@10.0.0.1:7000,10.0.0.2:7001,node3:7002/0?socket_timeout=2",
])
def test_a_url_with_a_known_scheme_and_a_numeric_db_is_taken(url):
    from stores.redis import split_url

    assert split_url(url)[0] == url


@pytest.mark.parametrize(("url", "says"), [
    ("redis://127.0.0.1:6379/abc", "the DB must be a non-negative integer, got 'abc'"),
    ("redis://127.0.0.1:6379/-1", "the DB must be a non-negative integer, got '-1'"),
    ("redis://127.0.0.1:6379/0/1", "the DB must be a non-negative integer, got '0/1'"),
    ("redis://127.0.0.1:6379/0?db=x", "the DB must be a non-negative integer, got 'x'"),
    ("unix:///tmp/redis.sock?db=", "the DB must be a non-negative integer, got ''"),
    ("redis-cluster://127.0.0.1:7000/abc", "the DB must be a non-negative integer, got 'abc'"),
    ("http://127.0.0.1:6379/0", "the scheme must be one of redis://, rediss://, unix://, redis-cluster://"),
    ("redis://127.0.0.1:x/0", "the port must be a whole number from 0 to 65535, got 'x'"),
    ("redis-cluster://h1:7000,h2", "each node of a redis-cluster:// URL naming several must be HOST:PORT, got 'h2'"),
    ("redis-cluster://h1:7000,,h2:7001", "each node of a redis-cluster:// URL naming several must be HOST:PORT, got ''"),
    ("redis-cluster://h1:7000,h2:70000", "each node of a redis-cluster:// URL naming several must be HOST:PORT, got 'h2:70000'"),
])
def test_a_url_redis_py_would_misread_is_a_value_error(url, says):
    from stores.redis import connect, split_url

    for parse in (split_url, connect):
        with pytest.raises(ValueError) as error:
            parse(url)
        assert str(error.value) == says


@pytest.mark.parametrize(("option", "says"), [
    ("colour=1", "unknown store URL option 'colour'; ours: recent_likes,"),
    ("socket_timeout=abc", "store URL option socket_timeout='abc': could not convert"),
    ("write_chunk=0", "write_chunk must be >= 1"),
    # Redis refused SET ... EX past about 9.2e15 s at every Ingest; a negative TTL was read as 0, forever.
    ("dedupe_ttl=10000000000000000", "dedupe_ttl must be from 0 (forever) to 1000000000000 seconds, got 10000000000000000"),
    ("dedupe_ttl=-1", "dedupe_ttl must be from 0 (forever) to 1000000000000 seconds, got -1"),
])
def test_a_bad_store_url_option_is_refused_at_open_naming_the_flag(option, says):
    """Each failed in the first connection (in a feed process, or as a traceback) or
    without naming --store; redis-py's own options and ours still pass."""
    from serving.store_url import open_store

    with pytest.raises(ValueError) as error:
        open_store(f"redis://u:secret@127.0.0.1:1/0?{option}")
    assert str(error.value).startswith(f"--store redis://u:***@127.0.0.1:1/0?{option}: {says}")
    open_store("redis://127.0.0.1:1/0?client_name=feeds&health_check_interval=5&write_chunk=100&read_cache=0").close()


@pytest.mark.parametrize(("db", "says"), [
    ("abc", "bad URL: the DB must be a non-negative integer, got 'abc'"),
    ("99999", "ResponseError: DB index is out of range"),
])
def test_serving_load_names_redis_for_a_db_it_cannot_use_before_reading_the_data(redis_url, tmp_path, db, says):
    import subprocess
    import sys

    from tests.conftest import REPO

    url = redis_url.rsplit("/", 1)[0] + "/" + db
    argv = [sys.executable, "-m", "serving", "load", "--data", str(tmp_path / "no-such-dir"), "--redis", url]
    loaded = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert loaded.returncode == 1 and loaded.stderr == f"error: --redis {url}: {says}\n"
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0


def readme_acl_user(admin: redis.Redis, password: str) -> str:
    """Create the ACL user README.md documents (its ``ACL SETUSER feedrank`` line); its name."""
    line = next(text.strip() for text in (REPO / "README.md").read_text().splitlines() if text.strip().startswith("ACL SETUSER feedrank "))
    admin.execute_command(*line.replace(">PASSWORD", f">{password}").split())
    return "feedrank"


def test_the_readme_acl_user_may_ingest_into_a_redis_never_loaded(own_server):
    """The ACL user README.md documents lacked +time, which the write script runs to start
    the change log of a Redis no load ever wrote: the first Ingest failed ("The user executing
    the script can't run this command"), found when checking the user's permissions at start."""
    with own_server.client() as admin:
        user = readme_acl_user(admin, "pw")
    store = RedisStore.from_url(own_server.url.replace("redis://", f"redis://{user}:pw@"))
    assert store.apply([Event("acl-1", EventKind.FOLLOW, NOW, user_id="alice", seller_id="s1")]).applied == 1
    store.close()


def test_every_command_the_scripts_run_is_asked_about_at_start():
    """access_refusals asks Redis about access_probes: a command a script runs that no probe
    names would again be found refused only by an Ingest."""
    called = {command for source in RedisStore(redis.Redis())._sources.values()
              for command in re.findall(r"redis\.call\('([A-Z]+)'", source) + re.findall(r"'(SADD|SREM)'", source)}  # fmt: skip
    assert called <= {probe[0] for probe in access_probes(Keys(), cluster=False)}


def test_the_readme_acl_user_may_run_everything_the_store_runs(own_server):
    with own_server.client() as admin:
        user = readme_acl_user(admin, "pw")
    store = RedisStore.from_url(own_server.url.replace("redis://", f"redis://{user}:pw@"))
    store.check_access()
    assert store.access_refusals() == {}
    store.close()


@pytest.mark.parametrize(("rules", "refused"), [
    (["~fr:*", "+@all", "-xadd"], "the ACL user may not run XADD on fr:{log}:events"),
    (["~fr:{u:*", "~fr:{i:*", "~fr:{s:*", "~fr:{changes}:*", "~fr:{log}:*", "~fr:d:*", "~fr:{vacations}*", "~fr:{items}:*", "+@all"],
     "the ACL user may not run ZINCRBY on fr:{trending}; ZREVRANGEBYSCORE on fr:{trending}"),
    (["%R~fr:*", "+@all"], "the ACL user may not run HSET on fr:{i:*}, fr:{u:*}:views, "),
])  # fmt: skip
def test_a_user_not_allowed_a_command_or_key_the_store_writes_is_named_at_start(own_server, rules, refused):
    """A user that could read but not write (a command, or a key pattern short of ours)
    passed check_access: the first Ingest failed INTERNAL (a review)."""
    with own_server.client() as admin:
        admin.acl_setuser("partial", enabled=True, passwords=["+pw"], reset=True)
        admin.execute_command("ACL", "SETUSER", "partial", *rules)
    store = RedisStore.from_url(own_server.url.replace("redis://", "redis://partial:pw@"))
    with pytest.raises(StoreForbidden) as error:
        store.check_access()
    assert str(error.value).startswith(f"Redis 127.0.0.1:{own_server.port}: {refused}"), error.value
    assert str(error.value).endswith(", which feeds and Ingest run")
    store.close()


def test_each_primary_of_a_cluster_is_asked_whether_the_user_may_write(redis_cluster_url, redis_cluster):
    """ACL users are per node: a primary whose user may not write is named."""
    primaries = redis_cluster.primaries()
    for at, primary in enumerate(primaries):
        with primary.client() as admin:
            admin.execute_command("ACL", "SETUSER", "writer", "reset", "on", ">pw", "~*", "+@all", *(["-sadd"] if at == 1 else []))
    try:
        store = RedisStore.from_url(redis_cluster_url.replace("redis-cluster://", "redis-cluster://writer:pw@"))
        assert store.access_refusals() == {f"127.0.0.1:{primaries[1].port}": "the ACL user may not run SADD on "
                                           "fr:{u:*}:follows, fr:{u:*}:friends, fr:{u:*}:hidden_items, fr:{u:*}:hidden_sellers"}  # fmt: skip
        store.close()
    finally:
        for primary in primaries:
            with primary.client() as admin:
                admin.acl_deluser("writer")


def test_a_policy_changed_on_a_running_redis_is_warned_about_by_a_later_ping(own_server, monkeypatch, caplog):
    """maxmemory-policy was read at start only (and never when Redis was down then): an
    operator's CONFIG SET allkeys-lru on a running Redis went without a warning (a review)."""
    store = RedisStore.from_url(own_server.url)
    assert store.read_eviction_policy() is None
    assert RoundTripCounter(monkeypatch).measure(store.ping) == 1  # within the minute: the PING alone
    monkeypatch.setattr(stores.redis, "EVICTION_RECHECK_SECONDS", 0.0)
    with own_server.client() as admin, caplog.at_level(logging.INFO, logger="feedrank.store"):
        admin.config_set("maxmemory-policy", "allkeys-lru")
        assert store.ping() and store.ping()
        admin.config_set("maxmemory-policy", "noeviction")
        assert store.ping() and store.ping()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"Redis 127.0.0.1:{own_server.port} has maxmemory-policy allkeys-lru: ")
    assert caplog.text.count("every primary of Redis has maxmemory-policy noeviction again") == 1
    store.close()


def test_a_failed_read_of_the_eviction_policy_leaves_the_ping_healthy(own_server, monkeypatch):
    """The policy is no part of serving feeds: an INFO that fails (a cluster primary just
    failed over, still in the client's list) must not turn health NOT_SERVING."""
    store = RedisStore.from_url(own_server.url)

    def unreachable(client):
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(stores.redis, "eviction_warning", unreachable)
    assert store.ping() and store.ping_failure == ""
    store.close()
