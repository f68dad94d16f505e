"""Hostile input through real gRPC: random requests and event batches, on memory and on Redis.

The server must never crash or hang, must answer every call with a status a client can act
on (never UNKNOWN or INTERNAL), both stores must accept and refuse the same batches with
the same counts, and afterwards the feed's invariants hold on the live state: no item
served twice on a page, none unknown, out of stock, kept out of the feed, of a seller on
vacation, or already liked by the user.
"""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.feed.v1 import feed_pb2
from serving.load import load_into_redis
from stores.redis import connect
from tests.feed_world import all_pages, build_world, running_server

pytestmark = pytest.mark.redis

# The codes a client may get for bad input or a busy server; anything else is a bug.
ACCEPTABLE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
}  # DEADLINE_EXCEEDED is not here: a call that takes its whole 10 s deadline is a hang
USERS = ["u00001", "u00002", "u00003", "u00010", "nobody", "", "x" * 300, "é/ü\x00", "u00001 "]
TIMES = st.one_of(
    st.just(0.0), st.floats(allow_nan=True, allow_infinity=True), st.floats(1.6e9, 1.9e9), st.sampled_from([-1.0, 1e300, 4e9, time.time()])
)
TEXT = st.one_of(st.sampled_from(["", "home", "EUR", "https://img.example.com/a.jpg", "ftp://x", "é" * 300]), st.text(max_size=40))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("fuzz"), users=120, sellers=15, items=400)


@pytest.fixture(scope="module")
def servers(world, redis_server):
    """Two servers on the same data: the memory store and Redis."""
    with redis_server.client() as client:
        client.flushall()
    client = connect(redis_server.url, socket_timeout=30.0)
    load_into_redis(client, world.dataset)
    client.close()
    with running_server(world) as memory, running_server(world, store_url=redis_server.url) as redis:
        yield {"memory": memory, "redis": redis}


def _ids(world, kind: str) -> st.SearchStrategy[str]:
    data = world.dataset
    known = {"item": data.items.item_id[:30], "seller": sorted(set(data.items.seller_id))[:10], "user": data.user_ids()[:20]}[kind]
    return st.one_of(st.sampled_from(known), st.sampled_from(["", "new-" + kind, "z" * 300]), st.text(max_size=12))


def _events(world) -> st.SearchStrategy[list[feed_pb2.Event]]:
    user, item, seller = _ids(world, "user"), _ids(world, "item"), _ids(world, "seller")
    user_item = st.builds(feed_pb2.UserItem, user_id=user, item_id=item)
    payloads = st.one_of(
        *(st.builds(lambda m, k=k: {k: m}, user_item) for k in ("like", "unlike", "not_interested_item", "view", "click", "add_to_cart", "purchase")),
        *(st.builds(lambda m, k=k: {k: m}, st.builds(feed_pb2.UserSeller, user_id=user, seller_id=seller)) for k in ("follow", "unfollow", "not_interested_seller")),
        *(st.builds(lambda m, k=k: {k: m}, st.builds(feed_pb2.UserFriend, user_id=user, friend_id=user)) for k in ("friend", "unfriend")),
        st.builds(lambda m: {"share": m}, st.builds(feed_pb2.Share, user_id=user, item_id=item, friend_id=st.one_of(st.just(""), user))),
        st.builds(lambda m: {"stock_update": m}, st.builds(feed_pb2.StockUpdate, item_id=item, stock=st.integers(-5, 2**62))),
        st.builds(
            lambda m: {"item_upsert": m},
            st.builds(
                feed_pb2.ItemUpsert, item_id=item, seller_id=seller, created_at=TIMES, stock=st.integers(-2, 10**6),
                price=st.one_of(st.none(), st.floats()), category=st.one_of(st.none(), TEXT), title=st.one_of(st.none(), TEXT),
                image_url=st.one_of(st.none(), TEXT), currency=st.one_of(st.none(), TEXT),
                ship_days=st.one_of(st.none(), st.integers(-3, 1000)), feed_eligible=st.one_of(st.none(), st.booleans()),
            ),
        ),  # fmt: skip
        st.builds(
            lambda m: {"item_update": m},
            st.builds(feed_pb2.ItemUpdate, item_id=item, price=st.one_of(st.none(), st.floats()), title=st.one_of(st.none(), TEXT),
                      feed_eligible=st.one_of(st.none(), st.booleans()), ship_days=st.one_of(st.none(), st.integers(-3, 1000))),
        ),  # fmt: skip
        st.builds(lambda m: {"seller_vacation": m}, st.builds(feed_pb2.SellerVacation, seller_id=seller, until=TIMES)),
        st.builds(lambda m: {"seller_vacation_end": m}, st.builds(feed_pb2.SellerVacationEnd, seller_id=seller)),
        st.just({}),  # no payload
    )
    event_ids = st.one_of(st.sampled_from(["dup-1", "dup-2", ""]), st.uuids().map(str))
    event = st.builds(lambda eid, ts, payload: feed_pb2.Event(event_id=eid, ts=ts, **payload), event_ids, TIMES, payloads)
    return st.one_of(st.lists(event, min_size=0, max_size=12), _valid_events(world))


def _valid_events(world) -> st.SearchStrategy[list[feed_pb2.Event]]:
    """Batches a store must apply: known ids, sane values (hostile batches are mostly refused whole)."""
    data = world.dataset
    user, seller = st.sampled_from(data.user_ids()[:20]), st.sampled_from(sorted(set(data.items.seller_id))[:10])
    item = st.sampled_from(data.items.item_id[:30])
    user_item = st.builds(feed_pb2.UserItem, user_id=user, item_id=item)
    payloads = st.one_of(
        *(st.builds(lambda m, k=k: {k: m}, user_item) for k in ("like", "unlike", "view", "click", "purchase")),
        st.builds(lambda m: {"follow": m}, st.builds(feed_pb2.UserSeller, user_id=user, seller_id=seller)),
        st.builds(lambda m: {"stock_update": m}, st.builds(feed_pb2.StockUpdate, item_id=item, stock=st.integers(0, 3))),
        st.builds(lambda m: {"item_update": m}, st.builds(feed_pb2.ItemUpdate, item_id=item, feed_eligible=st.booleans())),
        st.builds(lambda m: {"seller_vacation": m}, st.builds(feed_pb2.SellerVacation, seller_id=seller)),
        st.builds(lambda m: {"seller_vacation_end": m}, st.builds(feed_pb2.SellerVacationEnd, seller_id=seller)),
        st.builds(lambda m: {"share": m}, st.builds(feed_pb2.Share, user_id=user, item_id=item)),
    )
    event = st.builds(lambda eid, payload: feed_pb2.Event(event_id=eid, **payload), st.uuids().map(str), payloads)
    return st.lists(event, min_size=1, max_size=12)


def _requests(world) -> st.SearchStrategy[feed_pb2.GetFeedRequest]:
    category = st.one_of(st.sampled_from(["c00", "c01", ""]), st.text(max_size=8))
    optional_float = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
    return st.builds(
        lambda **fields: feed_pb2.GetFeedRequest(**{k: v for k, v in fields.items() if v is not None}),
        user_id=st.one_of(st.sampled_from(USERS), _ids(world, "user")),
        limit=st.integers(-3, 300),
        page_token=st.one_of(st.just(""), st.text(max_size=60), st.sampled_from(["AAAA", "x" * 5000])),
        exclude_item_ids=st.lists(_ids(world, "item"), max_size=5),
        include_categories=st.lists(category, max_size=3),
        exclude_categories=st.lists(category, max_size=3),
        min_price=optional_float,
        max_price=optional_float,
        max_ship_days=st.one_of(st.none(), st.integers(-5, 2**31 - 1)),
    )  # fmt: skip


def _call(rpc, request) -> tuple[str, object]:
    try:
        return "OK", rpc(request, timeout=10)
    except grpc.RpcError as error:
        assert error.code() in ACCEPTABLE, f"{error.code()}: {error.details()}"
        return error.code().name, None


def test_random_batches_and_requests_get_statuses_and_both_stores_agree(world, servers):
    stubs = {name: stub for name, (_, stub) in servers.items()}

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(batch=_events(world), request=_requests(world))
    def one(batch, request):
        received = time.time()
        answers = {}
        for name, stub in stubs.items():
            status, response = _call(stub.Ingest, feed_pb2.IngestRequest(events=[_stamped(e, received) for e in batch]))
            answers[name] = (status, None if response is None else (response.applied, response.duplicates))
        assert answers["memory"] == answers["redis"], (answers, batch)
        outcomes.append(answers["memory"][0])
        for stub in stubs.values():
            status, page = _call(stub.GetFeed, request)
            if page is not None:
                ids = [item.item_id for item in page.items]
                assert len(ids) == len(set(ids)) and len(ids) <= request.limit

    outcomes: list[str] = []
    one()
    assert outcomes.count("OK") >= 10 and outcomes.count("INVALID_ARGUMENT") >= 10, outcomes  # both kinds were exercised
    for name, (server, stub) in servers.items():
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, name
        _feeds_hold_their_invariants(world, server, stub)


def _stamped(event: feed_pb2.Event, received: float) -> feed_pb2.Event:
    """The same absolute ts for both servers: a 0 ts would become each server's own clock."""
    if event.ts == 0:
        stamped = feed_pb2.Event()
        stamped.CopyFrom(event)
        stamped.ts = received
        return stamped
    return event


def _feeds_hold_their_invariants(world, server, stub) -> None:
    store = server.service.store
    now = time.time()
    for user in world.dataset.user_ids()[:40]:
        served = [item.item_id for page in all_pages(stub, user, 20, 3) for item in page.items]
        assert len(served) == len(set(served)), user
        if not served:
            continue
        columns = store.hydrate(user, store.items.codes(served, add=True))
        assert columns.exists.all() and (columns.stock > 0).all() and columns.eligible.all(), user
        assert not (columns.seller_away_until > now).any() and not columns.liked.any(), user
        assert not np.isnan(columns.created_at).any() and all(math.isfinite(t) for t in columns.created_at.tolist())
