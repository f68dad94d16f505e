"""The proto only grows: today's clients keep working against every later server.

``tests/fixtures/feed_v1_2026-12-01.descriptor.txtpb`` is the proto as released before
the commerce fields. The checks: every field it had keeps its number, name, type and
label (proto3 ``optional`` on a field that had none is allowed: the wire format is the
same); no number is reused; and messages written with the old proto decode with the new
one, and the reverse, with every old field intact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from protos.feed.v1 import feed_pb2

FIXTURE = Path(__file__).parent / "fixtures" / "feed_v1_2026-12-01.descriptor.txtpb"


def _old_file() -> descriptor_pb2.FileDescriptorProto:
    return text_format.Parse(FIXTURE.read_text(), descriptor_pb2.FileDescriptorProto())


def _new_file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    feed_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto


@pytest.fixture(scope="module")
def old_classes():
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_old_file())
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"feedrank.feed.v1.{name}"))


def _fields(message: descriptor_pb2.DescriptorProto) -> dict[int, descriptor_pb2.FieldDescriptorProto]:
    return {field.number: field for field in message.field}


def test_every_old_field_keeps_its_number_name_and_type():
    new_messages = {m.name: m for m in _new_file().message_type}
    for old in _old_file().message_type:
        assert old.name in new_messages, f"message {old.name} was removed"
        new_fields = _fields(new_messages[old.name])
        for number, field in _fields(old).items():
            assert number in new_fields, f"{old.name}.{field.name} (= {number}) was removed"
            new = new_fields[number]
            assert (new.name, new.type, new.label, new.type_name) == (field.name, field.type, field.label, field.type_name), (
                f"{old.name} field {number} changed from {field.name} to {new.name}"
            )
            if field.HasField("oneof_index"):
                assert new.HasField("oneof_index"), f"{old.name}.{field.name} left its oneof"
    new_enums = {e.name: {v.number: v.name for v in e.value} for e in _new_file().enum_type}
    for old in _old_file().enum_type:
        for value in old.value:
            assert new_enums[old.name].get(value.number) == value.name, f"{old.name} value {value.number} changed"


def test_reserved_numbers_are_not_reused():
    for message in _new_file().message_type:
        numbers = [field.number for field in message.field]
        assert len(numbers) == len(set(numbers))
        for reserved in message.reserved_range:
            assert not [n for n in numbers if reserved.start <= n < reserved.end], f"{message.name} reuses a reserved number"


def test_an_old_request_decodes_with_the_new_proto(old_classes):
    old = old_classes("GetFeedRequest")(user_id="u1", limit=20, page_token="tok", exclude_item_ids=["i1", "i2"])
    new = feed_pb2.GetFeedRequest.FromString(old.SerializeToString())
    assert (new.user_id, new.limit, new.page_token, list(new.exclude_item_ids)) == ("u1", 20, "tok", ["i1", "i2"])

    old_ingest = old_classes("IngestRequest")()
    event = old_ingest.events.add(event_id="e1", ts=5.0)
    event.item_upsert.item_id, event.item_upsert.seller_id, event.item_upsert.stock = "i1", "s1", 3
    event.item_upsert.category = "shoes"
    decoded = feed_pb2.IngestRequest.FromString(old_ingest.SerializeToString()).events[0]
    assert decoded.WhichOneof("payload") == "item_upsert"
    assert (decoded.item_upsert.item_id, decoded.item_upsert.stock, decoded.item_upsert.category) == ("i1", 3, "shoes")


def test_a_new_response_decodes_with_the_old_proto(old_classes):
    """Every response field an old client knows arrives intact; what it does not know it skips."""
    new = feed_pb2.GetFeedResponse(next_page_token="next", model_version="v7")
    item = new.items.add(item_id="i1", seller_id="s1", score=0.5)
    item.reasons.add(kind=feed_pb2.REASON_KIND_FRIENDS_LIKED, actor_ids=["f1"], count=1)
    for name, value in {"title": "Red shoes", "image_url": "https://img/1.jpg", "currency": "EUR", "category": "shoes"}.items():
        if name in feed_pb2.FeedItem.DESCRIPTOR.fields_by_name:
            setattr(item, name, value)
    old = old_classes("GetFeedResponse").FromString(new.SerializeToString())
    assert (old.next_page_token, old.model_version) == ("next", "v7")
    assert (old.items[0].item_id, old.items[0].seller_id, old.items[0].score) == ("i1", "s1", 0.5)
    assert (old.items[0].reasons[0].kind, list(old.items[0].reasons[0].actor_ids)) == (2, ["f1"])
