"""serving/wire.py names the field at fault in request bytes protobuf refuses, whatever wire
types a client (an older or newer proto, a proto2 one with groups) put before it."""

from __future__ import annotations

import pytest

from protos.feed.v1 import feed_pb2
from serving.servicer import MAX_GET_FEED_FIELDS, MAX_INGEST_FIELDS
from serving.wire import MalformedRequest, lenient

get_feed = lenient(feed_pb2.GetFeedRequest, MAX_GET_FEED_FIELDS)
ingest = lenient(feed_pb2.IngestRequest, MAX_INGEST_FIELDS)


def tag(number: int, wire_type: int) -> bytes:
    key, out = (number << 3) | wire_type, b""
    while key > 0x7F:
        out += bytes([key & 0x7F | 0x80])
        key >>= 7
    return out + bytes([key])


def group(number: int, body: bytes = b"") -> bytes:
    return tag(number, 3) + body + tag(number, 4)


def refusal(parse, data: bytes) -> tuple[str, str]:
    parsed = parse(data)
    assert isinstance(parsed, MalformedRequest), parsed
    return parsed.error.field, str(parsed.error)


BAD_USER = tag(1, 2) + b"\x03a\xffb"  # user_id, not UTF-8 at byte 1


def bad_like_event(before: bytes) -> bytes:
    event = feed_pb2.Event(event_id="e1", like=feed_pb2.UserItem(user_id="u", item_id="iX")).SerializeToString()
    event = before + event.replace(b"iX", b"i\xff")
    return tag(1, 2) + bytes([len(event)]) + event


@pytest.mark.parametrize(
    "data",
    [
        group(50, tag(1, 0) + b"\x01"),
        group(50, tag(1, 2) + b"\x01\xff"),  # an unknown group's content is not checked
        group(50, group(51, tag(7, 1) + b"\x00" * 8 + tag(8, 5) + b"\x00" * 4)),
        group(2),  # a known field's number with another wire type: kept as an unknown field
    ],
)
def test_a_well_formed_group_parses(data):
    assert isinstance(get_feed(data), feed_pb2.GetFeedRequest)


@pytest.mark.parametrize(
    ("parse", "data", "field"),
    [
        (get_feed, group(50, tag(1, 0) + b"\x01") + BAD_USER, "user_id"),
        (get_feed, group(2) + BAD_USER, "user_id"),
        (get_feed, group(50, group(51, group(52))) + BAD_USER, "user_id"),
        (ingest, bad_like_event(group(99, tag(1, 2) + b"\x01x")), "events[0].like.item_id"),
    ],
)
def test_the_field_at_fault_after_a_group_is_named(parse, data, field):
    # A group stopped the walk: the group was named, "wire type 3 is not one protobuf 3 writes",
    # though protobuf keeps it as an unknown field and refused a later field.
    assert refusal(parse, data) == (field, f"{field}: not a valid {'GetFeedRequest' if parse is get_feed else 'IngestRequest'}: "
                                           "not UTF-8 (byte 1)")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (tag(50, 3) + tag(1, 0) + b"\x01", "cut short: the group has no end"),
        (tag(50, 3) + tag(51, 4), "the group ends with field 51's end"),
        (tag(50, 3) + tag(51, 3) + tag(50, 4) + tag(51, 4), "the group ends with field 50's end"),
        (tag(50, 4), "ends a group that did not start"),
        (group(50, tag(1, 2) + b"\x05a"), "cut short: its length runs past the end of the message"),
        (group(50, tag(51, 6)), "wire type 6 is not one protobuf 3 writes"),
        (tag(50, 3) * 101 + tag(50, 4) * 101, "nested too deeply"),
    ],
)
def test_a_malformed_group_is_named_with_what_is_wrong(data, why):
    field, message = refusal(get_feed, data)
    assert field == "field 50" and message.endswith(f": {why}")


def test_groups_nested_as_deep_as_protobuf_allows_parse():
    assert isinstance(get_feed(tag(50, 3) * 100 + tag(50, 4) * 100), feed_pb2.GetFeedRequest)


def test_a_group_cut_short_by_the_end_of_its_message_is_named():
    started = tag(50, 3)
    field, message = refusal(ingest, tag(1, 2) + bytes([len(started)]) + started + tag(50, 4))
    assert field == "events[0].field 50" and message.endswith(": cut short: the group has no end")


def test_the_largest_field_number_and_a_tag_in_five_bytes_parse():
    assert isinstance(get_feed(tag(2**29 - 1, 0) + b"\x01"), feed_pb2.GetFeedRequest)
    assert get_feed(b"\x8a\x80\x80\x80\x00\x01a").user_id == "a"  # user_id's tag, padded to 5 bytes
    assert isinstance(get_feed(group(50, tag(0, 0) + b"\x01") + tag(1, 2) + b"\x01a"), feed_pb2.GetFeedRequest)
    assert refusal(get_feed, group(50, tag(0, 0) + b"\x01") + BAD_USER)[0] == "user_id"


@pytest.mark.parametrize(
    ("parse", "data", "field", "why"),
    [
        (get_feed, tag(0, 0) + b"\x01", "field 0", "0 is not a field number"),
        (get_feed, tag(0, 2) + b"\x00" + BAD_USER, "field 0", "0 is not a field number"),
        (get_feed, group(50, tag(2**29, 0) + b"\x01"), "field 50", f"field numbers end at {2**29 - 1}"),
        (ingest, tag(1, 2) + b"\x02" + tag(0, 0) + b"\x01", "events[0].field 0", "0 is not a field number"),
        (get_feed, tag(2**29, 0) + b"\x01" + BAD_USER, f"field {2**29}", f"field numbers end at {2**29 - 1}"),
        (get_feed, b"\x8a\x80\x80\x80\x80\x00\x01a", "request", "a field's tag takes more than 5 bytes"),
    ],
)
def test_a_field_number_protobuf_refuses_is_named(parse, data, field, why):
    # Read as any other field: the message named a later field, or 'request' with protobuf's
    # "Wire format was corrupt".
    got_field, message = refusal(parse, data)
    assert (got_field, message.split(": ", 2)[2]) == (field, why)
