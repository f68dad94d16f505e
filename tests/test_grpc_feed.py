"""End to end over real gRPC: a generated dataset, a trained model, the memory store."""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from protos.feed.v1 import feed_pb2
from serving.wire import MAX_FIELDS_OF_OTHER_SERVICES
from tests.feed_world import all_pages, build_world, running_server

_ids = itertools.count()


def event(**payload) -> feed_pb2.Event:
    return feed_pb2.Event(event_id=f"t-{next(_ids)}", **payload)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture()
def server(world):
    with running_server(world) as (server, stub):
        yield server, stub


@pytest.fixture()
def stub(server):
    return server[1]


def served_ids(pages):
    return [item.item_id for page in pages for item in page.items]


def test_health_is_serving_and_reflection_lists_the_service(server):
    feed_server, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{feed_server.port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="feedrank.feed.v1.FeedService"), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"feedrank.feed.v1.FeedService", "grpc.health.v1.Health"} <= names


def test_health_lists_the_status_of_the_server_and_the_feed_service(server, caplog):
    # gRPC's asyncio health service has no List: it answered UNIMPLEMENTED and logged an
    # error with a NotImplementedError's traceback.
    feed_server, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{feed_server.port}") as channel:
        listed = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    assert {name: response.status for name, response in listed.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING, "feedrank.feed.v1.FeedService": health_pb2.HealthCheckResponse.SERVING}
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_reflection_answers_v1_as_grpcurl_asks_first(server):
    # grpcurl asks grpc.reflection.v1 first and falls back to v1alpha on UNIMPLEMENTED;
    # grpcio-reflection serves v1alpha only, so each use began with an UNIMPLEMENTED call.
    feed_server, _ = server
    request = reflection_pb2.ServerReflectionRequest
    with grpc.insecure_channel(f"127.0.0.1:{feed_server.port}") as channel:
        info = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=request.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        listed, method_file, v1_file = info(iter([
            request(list_services=""), request(file_containing_symbol="feedrank.feed.v1.FeedService.GetFeed"),
            request(file_containing_symbol="grpc.reflection.v1.ServerReflection")]), timeout=5)
    assert {"feedrank.feed.v1.FeedService", "grpc.reflection.v1.ServerReflection"} <= {s.name for s in listed.list_services_response.service}
    files = [descriptor_pb2.FileDescriptorProto.FromString(data) for data in method_file.file_descriptor_response.file_descriptor_proto]
    assert "feedrank.feed.v1" in {f.package for f in files}
    [v1] = [descriptor_pb2.FileDescriptorProto.FromString(data) for data in v1_file.file_descriptor_response.file_descriptor_proto]
    assert (v1.name, v1.package, v1.service[0].method[0].input_type) == (
        "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1", ".grpc.reflection.v1.ServerReflectionRequest")


@pytest.mark.parametrize("symbol", ["feedrank.feed.v1.FeedService.GetFeed", "grpc.health.v1.Health.Watch"])
def test_reflection_describes_a_method_as_grpcurl_asks(server, symbol):
    # `grpcurl describe SERVICE.METHOD` asks for the file containing the method; Python's
    # reflection answered NOT_FOUND (its descriptor pool indexes no methods, grpc/grpc#34743).
    feed_server, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{feed_server.port}") as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindMethodByName(symbol)
        assert method.input_type.fields and method.output_type.fields
        with pytest.raises(KeyError):
            pool.FindMethodByName("feedrank.feed.v1.FeedService.NoSuchMethod")


def test_a_request_that_does_not_parse_is_refused_by_health_and_reflection_too(server, caplog):
    # Before the fix gRPC answered UNKNOWN ("Unexpected <class DecodeError>") and logged an
    # error with the DecodeError's traceback for each such call, from any client: health and
    # reflection need no token.
    feed_server, _ = server
    cut_short = b"\x0a\x05ab"  # field 1, 5 bytes long, of which 2 came
    with grpc.insecure_channel(f"127.0.0.1:{feed_server.port}") as channel:
        calls = {
            "Check": lambda: channel.unary_unary("/grpc.health.v1.Health/Check")(cut_short, timeout=5),
            "Watch": lambda: next(channel.unary_stream("/grpc.health.v1.Health/Watch")(cut_short, timeout=5)),
            "reflection": lambda: next(channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(
                iter([cut_short]), timeout=5)),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "cut short" in refused.value.details() and refused.value.details().split(":")[0] in ("service", "host"), name
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_health_check_of_more_fields_than_a_valid_one_is_refused_without_reading_them_all(server):
    # Naming the field at fault read every field on the event loop first, for any client:
    # 2 million unknown fields before a service name that is not UTF-8 (a 4 MiB Check)
    # held every call of the server for 7.6 s.
    feed_server, _ = server
    data = b"\x12\x00" * (MAX_FIELDS_OF_OTHER_SERVICES + 1) + b"\x0a\x01\xff"
    with grpc.insecure_channel(f"127.0.0.1:{feed_server.port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/grpc.health.v1.Health/Check")(data, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("request: not a valid HealthCheckRequest")


def test_no_out_of_stock_item_is_ever_served_before_and_after_stock_updates(world, stub):
    out_of_stock = {i for i, s in zip(world.dataset.items.item_id, world.dataset.items.stock.tolist()) if s == 0}
    users = world.dataset.user_ids()
    served = Counter()
    for user in users:
        ids = served_ids(all_pages(stub, user, 20, 3))
        assert not out_of_stock & set(ids), user
        served.update(ids)
    # Sell out the 50 most served items, restock 20 that were out of stock, and check again.
    sold_out = [item for item, _ in served.most_common(50)]
    restocked = sorted(out_of_stock)[:20]
    stub.Ingest(feed_pb2.IngestRequest(events=[event(stock_update=feed_pb2.StockUpdate(item_id=i, stock=0)) for i in sold_out]
                                       + [event(stock_update=feed_pb2.StockUpdate(item_id=i, stock=3)) for i in restocked]), timeout=10)
    now_out = (out_of_stock - set(restocked)) | set(sold_out)
    for user in users:
        assert not now_out & set(served_ids(all_pages(stub, user, 20, 3))), user


def test_pages_never_repeat_and_the_seller_cap_holds(world, stub):
    for user in world.dataset.user_ids()[:80]:
        pages = all_pages(stub, user, 10, 6)
        ids = served_ids(pages)
        assert len(ids) == len(set(ids)), user
        for page in pages:
            assert max(Counter(i.seller_id for i in page.items).values(), default=0) <= 2


def test_a_friends_new_like_and_a_followed_sellers_new_item_show_up_next(world, stub):
    dataset = world.dataset
    user = dataset.follows.src[0]
    seller = dataset.follows.dst[0]
    friend = next(b if a == user else a for a, b in zip(dataset.friends.src, dataset.friends.dst) if user in (a, b))
    stub.Ingest(feed_pb2.IngestRequest(events=[
        event(item_upsert=feed_pb2.ItemUpsert(item_id="new-from-seller", seller_id=seller, stock=2)),
        event(item_upsert=feed_pb2.ItemUpsert(item_id="liked-by-friend", seller_id="some-shop", stock=2)),
        event(like=feed_pb2.UserItem(user_id=friend, item_id="liked-by-friend")),
    ]), timeout=5)
    items = {i.item_id: i for i in stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=10), timeout=5).items}
    followed = [r for r in items["new-from-seller"].reasons if r.kind == feed_pb2.REASON_KIND_FOLLOWED_SELLER]
    assert followed and list(followed[0].actor_ids) == [seller]
    liked = [r for r in items["liked-by-friend"].reasons if r.kind == feed_pb2.REASON_KIND_FRIENDS_LIKED]
    assert liked and friend in liked[0].actor_ids and liked[0].count >= 1


def test_excluded_and_not_interested_items_and_sellers_never_come_back(world, stub):
    user = world.dataset.follows.src[0]
    first = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=10), timeout=5).items
    excluded, hidden_item, hidden_seller = first[0].item_id, first[1].item_id, first[2].seller_id
    stub.Ingest(feed_pb2.IngestRequest(events=[
        event(not_interested_item=feed_pb2.UserItem(user_id=user, item_id=hidden_item)),
        event(not_interested_seller=feed_pb2.UserSeller(user_id=user, seller_id=hidden_seller)),
    ]), timeout=5)
    pages = all_pages(stub, user, 20, 8, exclude_item_ids=[excluded])
    ids = set(served_ids(pages))
    assert excluded not in ids and hidden_item not in ids
    assert hidden_seller not in {i.seller_id for p in pages for i in p.items}


def test_unknown_user_gets_a_cold_start_feed(stub):
    items = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="never-seen-before", limit=10), timeout=5).items
    assert len(items) == 10
    assert all(r.kind == feed_pb2.REASON_KIND_TRENDING for i in items for r in i.reasons)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"user_id": "", "limit": 10}, "user_id"),
        ({"user_id": "x" * 300, "limit": 10}, "user_id"),
        ({"user_id": "u00001", "limit": 0}, "limit"),
        ({"user_id": "u00001", "limit": 101}, "limit"),
        ({"user_id": "u00001", "limit": 10, "page_token": "garbage!"}, "page_token"),
        ({"user_id": "u00001", "limit": 10, "exclude_item_ids": ["x"] * 1001}, "exclude_item_ids"),
    ],
)
def test_bad_feed_requests_are_invalid_argument_naming_the_field(stub, request_fields, field):
    with pytest.raises(grpc.RpcError) as error:
        stub.GetFeed(feed_pb2.GetFeedRequest(**request_fields), timeout=5)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}:")


def test_page_tokens_are_bound_to_their_user_and_tamper_proof(world, stub):
    token = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=5).next_page_token
    assert token
    for user, bad_token in (("u00002", token), ("u00001", token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))):
        with pytest.raises(grpc.RpcError) as error:
            stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=5, page_token=bad_token), timeout=5)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("page_token:")


def test_an_invalid_batch_names_index_and_field_and_applies_nothing(world, stub):
    user = "u00005"
    before = served_ids(all_pages(stub, user, 20, 1))
    batch = [
        event(not_interested_item=feed_pb2.UserItem(user_id=user, item_id=before[0])),
        event(like=feed_pb2.UserItem(user_id=user, item_id="")),
    ]
    with pytest.raises(grpc.RpcError) as error:
        stub.Ingest(feed_pb2.IngestRequest(events=batch), timeout=5)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "events[1].item_id: must not be empty"
    assert served_ids(all_pages(stub, user, 20, 1)) == before
    for bad, message in (
        ([feed_pb2.Event(event_id="no-payload")], "events[0].payload:"),
        ([event(stock_update=feed_pb2.StockUpdate(item_id="no-such-item", stock=1))], "events[0].item_id: unknown item"),
        ([], "events: batch is empty"),
    ):
        with pytest.raises(grpc.RpcError) as error:
            stub.Ingest(feed_pb2.IngestRequest(events=bad), timeout=5)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(message)


def test_a_retried_batch_is_applied_once(stub):
    batch = feed_pb2.IngestRequest(events=[feed_pb2.Event(event_id="retry-me", follow=feed_pb2.UserSeller(user_id="u00009", seller_id="u00001"))])
    first = stub.Ingest(batch, timeout=5)
    second = stub.Ingest(batch, timeout=5)
    assert (first.applied, first.duplicates, second.applied, second.duplicates) == (1, 0, 0, 1)


def test_an_expired_deadline_is_deadline_exceeded(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=10), timeout=0.000001)
    assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # The server is still fine afterwards.
    assert stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=10), timeout=5).items


def test_a_newly_published_model_is_served_without_a_restart(world, tmp_path):
    import shutil

    from tests.feed_world import FAST_TRAINING
    from training.artifact import publish
    from training.train import default_ranker_spec, train

    models = tmp_path / "models"
    shutil.copytree(world.models_dir, models)
    world_copy = type(world)(world.dataset, world.data_dir, models)
    with running_server(world_copy, reload_seconds=0.2) as (_, stub):
        before = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=5).model_version
        model, _ = train(world.dataset, FAST_TRAINING)
        version = publish(str(models), model, {"params": {}, "metrics": {}, "ranker": default_ranker_spec()}).rsplit("/", 1)[-1]
        deadline = time.monotonic() + 10
        while stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=5).model_version != version:
            assert time.monotonic() < deadline, "the new model was not picked up"
            time.sleep(0.1)
    assert before != version


def test_prometheus_metrics_count_requests_sources_and_filters(world):
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with running_server(world, metrics_port=port) as (_, stub):
        stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.GetFeed(feed_pb2.GetFeedRequest(user_id="", limit=5), timeout=5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'feedrank_requests_total{code="OK",method="GetFeed"} 1.0' in text
    assert 'feedrank_requests_total{code="INVALID_ARGUMENT",method="GetFeed"} 1.0' in text
    assert 'feedrank_candidates_total{source="trending"}' in text
    assert 'feedrank_filtered_total{filter="out_of_stock"}' in text
    assert "feedrank_model_info{version=" in text


def test_metrics_bind_their_own_host_and_the_start_says_where(world, caplog):
    """The metrics have no token and no TLS: --metrics-host keeps them on a private address
    while gRPC answers on --host (found by the security review)."""
    import logging
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with caplog.at_level(logging.INFO, logger="feedrank.serving"), running_server(world, metrics_port=port, metrics_host="127.0.0.2"):
        text = urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5).read().decode()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert "feedrank_model_info{version=" in text
    started = [r.getMessage() for r in caplog.records if r.name == "feedrank.serving"]
    assert f"Prometheus metrics on http://127.0.0.2:{port}/metrics" in started, started
