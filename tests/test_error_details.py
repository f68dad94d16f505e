"""Errors a client can act on, over real gRPC: INVALID_ARGUMENT carries google.rpc.BadRequest
naming the field, UNAVAILABLE carries google.rpc.RetryInfo and no internal address, the
page-depth cap is OUT_OF_RANGE, and a bug is INTERNAL without its text."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from ranking.feed import FeedSettings
from ranking.ranker import DEFAULT_RANKER
from serving.feed_service import FeedService
from serving.metrics import FeedMetrics
from serving.page_token import EMPTY, PageTokenCodec
from serving.server import ConcurrencyLimit, Drain, EventLoopThread
from serving.servicer import MAX_GET_FEED_FIELDS, FeedServicer, add_feed_service
from stores.memory import MemoryStore
from tests.builders import social_dataset
from tests.redis_servers import RedisServer

SECRET = b"error-details-secret-0123456789"
_ids = itertools.count()


class _NoModel:
    version = "none"
    model = None
    ranker = DEFAULT_RANKER
    manifest: dict = {}


@contextlib.contextmanager
def serving(service, pool: futures.Executor | None = None, interceptors: tuple = ()) -> Iterator[feed_pb2_grpc.FeedServiceStub]:
    """``service`` behind a grpc.aio server, its calls built on the event loop or on ``pool``."""
    events = EventLoopThread()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=interceptors)
        add_feed_service(FeedServicer(service, feed_pool=pool, ingest_pool=pool), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = events.run(start())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        stub.channel = channel  # for raw bytes no stub would send
        stub.events = events  # for what must run on the server's loop
        yield stub
    finally:
        channel.close()
        events.run(server.stop(0))
        events.close()


@pytest.fixture(scope="module", params=["on the event loop", "on feed threads"])
def stub(request):
    service = FeedService(MemoryStore.from_dataset(social_dataset()), _NoModel(), PageTokenCodec(SECRET), FeedSettings())
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(futures.ThreadPoolExecutor(2)) if request.param == "on feed threads" else None
        yield stack.enter_context(serving(service, pool))


def details_of(error: grpc.RpcError) -> list:
    """The google.rpc detail messages of a failed call, unpacked."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == error.code().value[0] and status.message == error.details()
    unpacked = []
    for detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                unpacked.append(message)
    return unpacked


def violation(error: grpc.RpcError) -> tuple[str, str]:
    (bad_request,) = details_of(error)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    (field_violation,) = bad_request.field_violations
    return field_violation.field, field_violation.description


def event(**payload) -> feed_pb2.Event:
    return feed_pb2.Event(event_id=f"d-{next(_ids)}", **payload)


def ingest_error(stub, events) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        stub.Ingest(feed_pb2.IngestRequest(events=events), timeout=5)
    return error.value


def feed_error(stub, **request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        stub.GetFeed(feed_pb2.GetFeedRequest(**{"user_id": "alice", "limit": 5, **request}), timeout=5)
    return error.value


@pytest.mark.parametrize(
    ("events", "field", "message"),
    [
        ([event(follow=feed_pb2.UserSeller(user_id="carol", seller_id="s2")), event(like=feed_pb2.UserItem(user_id="carol"))],
         "events[1].item_id", "events[1].item_id: must not be empty"),
        ([feed_pb2.Event(event_id="no-payload")], "events[0].payload", None),
        ([event(like=feed_pb2.UserItem(user_id="carol", item_id="nope"))], "events[0].item_id", "events[0].item_id: unknown item 'nope'"),
        ([event(item_upsert=feed_pb2.ItemUpsert(item_id="n", seller_id="s1", created_at=4e9, stock=1))], "events[0].created_at", None),
        ([event(item_update=feed_pb2.ItemUpdate(item_id="i1", category="c" * 1_000_000))], "events[0].category",
         "events[0].category: longer than 256 bytes"),
        ([], "events", "events: batch is empty"),
        ([event(follow=feed_pb2.UserSeller(user_id=" carol", seller_id="s2"))], "events[0].user_id",
         "events[0].user_id: has whitespace around it: ' carol' (ids are compared as they are; datasets' ids are stripped)"),
    ],
)  # fmt: skip
def test_invalid_ingest_names_the_field_in_a_bad_request(stub, events, field, message):
    error = ingest_error(stub, events)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    got_field, description = violation(error)
    assert got_field == field
    assert error.details() == f"{field}: {description}"  # the message is as before: field, then why
    if message is not None:
        assert error.details() == message


def test_an_oversized_batch_names_events(stub):
    follows = [event(follow=feed_pb2.UserSeller(user_id=f"u{i}", seller_id="s1")) for i in range(10_001)]
    error = ingest_error(stub, follows)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(error) == ("events", "batch larger than 10000 events")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        (dict(limit=0), "limit"),
        (dict(limit=2**31 - 1), "limit"),
        (dict(user_id=""), "user_id"),
        (dict(user_id="alice\t"), "user_id"),
        (dict(page_token="not a token!"), "page_token"),
        (dict(page_token="A" * 100_000), "page_token"),
        (dict(exclude_item_ids=["x" * 300]), "exclude_item_ids[0]"),
        (dict(include_categories=["c" * 300]), "include_categories"),
        (dict(min_price=float("nan")), "min_price"),
    ],
)
def test_invalid_get_feed_names_the_field_in_a_bad_request(stub, request_fields, field):
    error = feed_error(stub, **request_fields)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(error)[0] == field
    assert error.details().startswith(f"{field}: ")


def raw_call_error(stub, method: str, data: bytes) -> grpc.RpcError:
    """``data`` sent as ``method``'s request as it is, bytes no protobuf client would write."""
    call = stub.channel.unary_unary(f"/feedrank.feed.v1.FeedService/{method}")  # no serializer: bytes pass through
    with pytest.raises(grpc.RpcError) as error:
        call(data, timeout=5)
    return error.value


def two_events() -> bytes:
    follows = [event(follow=feed_pb2.UserSeller(user_id="carol", seller_id="s1")) for _ in range(2)]
    follows[1].event_id = "d-second"
    return feed_pb2.IngestRequest(events=follows).SerializeToString()


@pytest.mark.parametrize(
    ("method", "data", "field", "why"),
    [
        ("GetFeed", feed_pb2.GetFeedRequest(user_id="alice", limit=5).SerializeToString().replace(b"alice", b"al\xffce"),
         "user_id", "not UTF-8 (byte 2)"),
        ("Ingest", two_events().replace(b"d-second", b"d-s\xe9cond"), "events[1].event_id", "not UTF-8 (byte 3)"),
        ("Ingest", two_events()[:-3], "events[1]", "cut short: its length runs past the end of the message"),
        ("GetFeed", b"\x10\xff", "limit", "cut short inside a number"),
        ("GetFeed", b"\x93\x03\x08\x01\x94\x03" + feed_pb2.GetFeedRequest(user_id="alice").SerializeToString().replace(b"alice", b"al\xffce"),
         "user_id", "not UTF-8 (byte 2)"),  # after a proto2 group (field 50), which protobuf keeps as an unknown field
    ],
)  # fmt: skip
def test_request_bytes_that_do_not_parse_are_invalid_argument_naming_the_field(stub, method, data, field, why):
    error = raw_call_error(stub, method, data)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(error)[0] == field
    assert error.details().startswith(f"{field}: not a valid ") and error.details().endswith(why)


def test_a_request_of_more_fields_than_a_valid_one_is_refused_without_reading_them_all(stub):
    # Naming the field at fault read every field on the event loop first: behind the 2 million
    # empty exclude_item_ids of a 4 MiB GetFeed, 5 s in which the server answered no call.
    data = b"\x22\x00" * MAX_GET_FEED_FIELDS + b"\x0a\x05al\xffce"  # then a user_id that is not UTF-8
    error = raw_call_error(stub, "GetFeed", data)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(error)[0] == "request"


def test_page_token_errors_say_what_is_wrong(stub):
    other_key = PageTokenCodec(b"another-server-secret-0123").encode("alice", EMPTY.plus(["i1"]))
    error = feed_error(stub, page_token=other_key)
    assert violation(error)[0] == "page_token" and "signed by another server or key" in error.details()
    expired = PageTokenCodec(SECRET).encode("alice", EMPTY.plus(["i1"]), now=time.time() - 2 * 3_600)
    assert "expired" in feed_error(stub, page_token=expired).details()
    rotated = PageTokenCodec(b"next-secret-0123456789abcdef", previous=[SECRET]).encode("alice", EMPTY.plus(["i1"]))
    assert "signed by another server or key" in feed_error(stub, page_token=rotated).details()


# 4,999: a peer with a higher --max-feed-depth (a rolling restart that lowers it) issues tokens
# deeper than this server's cap plus a page: those were refused as INVALID_ARGUMENT "longer
# than any token this server issues", though a token past the cap is OUT_OF_RANGE.
@pytest.mark.parametrize("served", [1_000, 4_999])
def test_a_token_past_the_page_depth_cap_is_out_of_range(stub, served):
    deep = PageTokenCodec(SECRET, max_served=5_000).encode("alice", EMPTY.plus([f"x{n}" for n in range(served)]))
    error = feed_error(stub, page_token=deep)
    assert error.code() is grpc.StatusCode.OUT_OF_RANGE
    assert violation(error)[0] == "page_token"
    assert "the feed ends after 1000 items" in error.details()


def test_a_server_still_loading_is_unavailable_with_retry_info():
    with serving(None) as stub:
        error = feed_error(stub)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    (retry,) = details_of(error)
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.ToTimedelta().total_seconds() > 0


def test_a_server_draining_at_sigterm_is_unavailable_with_retry_info():
    """The drain's refusal said "retry" in words only: a client that reads RetryInfo, as the
    README tells it to, found none and took the UNAVAILABLE for one it must not retry."""
    drain = Drain()
    with serving(None, interceptors=(drain,)) as stub:
        stub.events.run(drain.begin(grace=1.0))  # returns once no call came for a moment: still draining
        error = feed_error(stub)
    assert error.code() is grpc.StatusCode.UNAVAILABLE and "shutting down" in error.details()
    (retry,) = details_of(error)
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.ToTimedelta().total_seconds() > 0



def test_a_busy_server_is_resource_exhausted_with_retry_info():
    """Past --max-concurrent-rpcs the refusal said "retry with backoff" in words only, so a
    client that decides on RetryInfo took it for final (found by the integrator review)."""
    with serving(None, interceptors=(ConcurrencyLimit(0),)) as stub:
        error = feed_error(stub)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "server busy" in error.details()
    (retry,) = details_of(error)
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.ToTimedelta().total_seconds() > 0

@pytest.mark.redis
def test_a_store_outage_is_unavailable_with_retry_info_and_no_internal_address(tmp_path, caplog, monkeypatch):
    from serving import servicer
    from serving.load import load_into_redis
    from stores.redis import RedisStore

    monkeypatch.setattr(servicer, "_log_outage", servicer.RateLimitedLog())  # not rate-limited by earlier tests

    redis_server = RedisServer(tmp_path / "redis").start()
    try:
        store = RedisStore.from_url(redis_server.url, socket_timeout=5.0)
        load_into_redis(store.client, social_dataset())
        store.close()
        store = RedisStore.from_url(redis_server.url)
        service = FeedService(store, _NoModel(), PageTokenCodec(SECRET), FeedSettings())
        with serving(service) as stub:
            assert stub.GetFeed(feed_pb2.GetFeedRequest(user_id="alice", limit=5), timeout=5).items
            redis_server.kill()
            errors = [feed_error(stub), ingest_error(stub, [event(follow=feed_pb2.UserSeller(user_id="a", seller_id="b"))])]
        store.close()
    finally:
        redis_server.stop()
    for error in errors:
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert error.details() == "store unavailable"
        assert str(redis_server.port) not in error.details() and "127.0.0.1" not in error.details()
        (retry,) = details_of(error)
        assert isinstance(retry, error_details_pb2.RetryInfo)
        assert retry.retry_delay.ToTimedelta().total_seconds() == pytest.approx(1.0)
    # The operator still learns where and why, from the server's log.
    assert any("store unavailable" in r.getMessage() and str(redis_server.port) in r.getMessage() for r in caplog.records)


def test_an_outage_report_says_when_the_calls_it_counts_failed(caplog, monkeypatch):
    """A report counted the calls suppressed since the previous one, and the count waited
    for the next failure: the 15 Ingests of a 5 s Redis freeze were reported 33 s later
    as "ConnectionError ... (15 more since the last report)", the first line of another
    outage, as if part of it; and a first report said "(0 more since the last report)"
    (found by the chaos review)."""
    from serving import servicer

    clock = [1000.0]
    monkeypatch.setattr(servicer.time, "monotonic", lambda: clock[0])
    report = servicer.RateLimitedLog(every_seconds=10.0)
    caplog.set_level("WARNING", logger="feedrank.serving")
    report("Ingest", TimeoutError("Timeout reading from redis"))
    for step in range(15):
        clock[0] = 1000.5 + step * 0.25
        report("Ingest", TimeoutError("Timeout reading from redis"))
    clock[0] = 1033.0
    report("Ingest", ConnectionError("Connection refused"))
    first, second = [record.getMessage() for record in caplog.records]
    assert first == "Ingest: store unavailable: Timeout reading from redis"
    assert second == ("Ingest: store unavailable: Connection refused "
                      "(and 15 more failed calls since the report 33 s ago, the latest 29 s ago)")


class _BrokenService:
    """A service whose feed raises an unexpected error naming an internal host."""

    metrics = FeedMetrics()

    def arm_of(self, user_id: str) -> str:
        return ""

    def get_feed(self, *args, **kwargs):
        raise RuntimeError("cannot reach 10.1.2.3:6379")

    def ingest(self, *args, **kwargs):
        raise KeyError("internal")


def test_a_bug_is_internal_without_its_text():
    with serving(_BrokenService()) as stub:
        errors = [feed_error(stub), ingest_error(stub, [event(follow=feed_pb2.UserSeller(user_id="a", seller_id="b"))])]
    for error in errors:
        assert error.code() is grpc.StatusCode.INTERNAL
        assert error.details() == "internal error"
