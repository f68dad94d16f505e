from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stores.events import Event, EventKind, EventValidationError, check_degrees, validate_batch


def like(event_id="e1", **overrides) -> Event:
    fields = dict(event_id=event_id, kind=EventKind.LIKE, ts=1.0, user_id="u", item_id="i")
    fields.update(overrides)
    return Event(**fields)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (like(event_id=""), "event_id"),
        (like(user_id=""), "user_id"),
        (like(item_id="x" * 300), "item_id"),
        (like(seller_id="s"), "seller_id"),
        (like(ts=-1.0), "ts"),
        (like(ts=float("nan")), "ts"),
        (Event("e", EventKind.FRIEND, 1.0, user_id="a", friend_id="a"), "friend_id"),
        (Event("e", EventKind.STOCK_UPDATE, 1.0, item_id="i", stock=-2), "stock"),
        (Event("e", EventKind.ITEM_UPSERT, 1.0, item_id="i", seller_id="", stock=1), "seller_id"),
        (Event("e", EventKind.ITEM_UPSERT, 1.0, item_id="i", seller_id="s", price=-1.0), "price"),
        (Event("e", EventKind.NOT_INTERESTED_SELLER, 1.0, user_id="u"), "seller_id"),
        (Event("e", EventKind.FOLLOW, 1.0, user_id="u", seller_id="u"), "seller_id"),  # as a self-friendship is
        (Event("e", EventKind.NOT_INTERESTED_SELLER, 1.0, user_id="u", seller_id="u"), "seller_id"),
        (Event("e", EventKind.SELLER_VACATION, 5.0, seller_id="s", vacation_until=4.0), "until"),  # the proto's name
    ],
)
def test_invalid_events_name_the_index_and_field(event, field):
    with pytest.raises(EventValidationError) as error:
        validate_batch([like("ok"), event])
    assert (error.value.index, error.value.field) == (1, field)
    assert str(error.value).startswith(f"events[1].{field}: ")


@pytest.mark.parametrize(("kind", "said"), [
    (EventKind.FRIEND, "a user cannot befriend themselves"),
    (EventKind.UNFRIEND, "a user is never their own friend: nothing to unfriend"),  # was refused with befriend's words
])  # fmt: skip
def test_an_edge_to_oneself_is_refused_in_the_words_of_its_own_kind(kind, said):
    with pytest.raises(EventValidationError) as error:
        validate_batch([Event("e", kind, 1.0, user_id="a", friend_id="a")])
    assert str(error.value) == f"events[0].friend_id: {said}"


def test_without_degree_caps_a_batch_is_not_checked_against_the_graph():
    """Caps 0 (as a state directory's replay sets them): no edit can be refused, so the
    stored graph is not read for any of the batch's edits."""
    edits = [Event(f"f{n}", kind, 1.0, user_id="u", friend_id=f"v{n}") for n in range(5) for kind in (EventKind.FRIEND, EventKind.UNFRIEND)]
    reads = []

    def degree(what, user):
        reads.append((what, user))
        return 10**6

    def has_edge(what, user, member):
        reads.append((what, user, member))
        return False

    check_degrees(edits, range(len(edits)), degree, has_edge, max_friends=0, max_follows=0)
    assert reads == []
    with pytest.raises(EventValidationError):
        check_degrees(edits, range(len(edits)), degree, has_edge, max_friends=3, max_follows=0)


def test_empty_batches_and_conflicting_ids_are_rejected():
    with pytest.raises(EventValidationError, match="empty"):
        validate_batch([])
    with pytest.raises(EventValidationError, match="reused"):
        validate_batch([like("same"), like("same", item_id="other")])


def test_records_round_trip():
    event = Event("e", EventKind.ITEM_UPSERT, 5.0, item_id="i", seller_id="s", created_at=4.0, stock=2, price=9.5, category="c")
    assert Event.from_record(event.to_record()) == event
    assert Event.from_record(like().to_record()) == like()
    for named_empty_or_none in ({"title": ""}, {}):  # a card field named empty stays apart from one not named
        update = Event("u", EventKind.ITEM_UPDATE, 5.0, item_id="i", **named_empty_or_none)
        assert Event.from_record(update.to_record()) == update


def test_batch_errors_name_the_events_field_without_an_index():
    from stores.events import MAX_BATCH

    for batch, message in (([], "events: batch is empty"), ([like(f"e{i}") for i in range(MAX_BATCH + 1)], "batch larger than")):
        with pytest.raises(EventValidationError) as error:
            validate_batch(batch)
        assert (error.value.index, error.value.field, error.value.path) == (None, "events", "events")
        assert str(error.value).startswith("events: ") and message in str(error.value)
    with pytest.raises(EventValidationError) as error:
        validate_batch([like("ok"), like("bad", item_id="")])
    assert (error.value.path, error.value.description) == ("events[1].item_id", "must not be empty")


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (like(ts=NOW + 301), "ts"),
        (like(ts=1e300), "ts"),
        # a listing dated an hour ahead was taken, and topped its seller's news until then
        (Event("e", EventKind.ITEM_UPSERT, NOW, item_id="i", seller_id="s", created_at=NOW + 3600), "created_at"),
        (Event("e", EventKind.ITEM_UPSERT, NOW, item_id="i", seller_id="s", created_at=4e9), "created_at"),
        (Event("e", EventKind.ITEM_UPSERT, NOW, item_id="i", seller_id="s", created_at=1e300), "created_at"),
        (Event("e", EventKind.SELLER_VACATION, NOW, seller_id="s", vacation_until=NOW + 400 * 86_400), "until"),
    ],
)
def test_times_from_the_future_are_rejected_given_the_clock(event, field):
    validate_batch([event])  # without a clock, times are not checked against it
    with pytest.raises(EventValidationError) as error:
        validate_batch([like("ok", ts=NOW), event], now=NOW)
    assert (error.value.index, error.value.field) == (1, field)


def test_a_time_in_milliseconds_is_named_as_such():
    with pytest.raises(EventValidationError) as error:
        validate_batch([like(ts=NOW * 1000)], now=NOW)
    assert error.value.description.endswith("is after the latest accepted time 1800000300 (milliseconds? times are Unix seconds)")
    with pytest.raises(EventValidationError) as error:
        validate_batch([like(ts=NOW + 301)], now=NOW)
    assert "milliseconds" not in error.value.description


@pytest.mark.parametrize(("until", "hint"), [
    (253_402_214_400.0, " (a vacation ends at most a year ahead; 0 means until further notice)"),  # 9999-12-31
    (1e300, " (a vacation ends at most a year ahead; 0 means until further notice)"),
    (NOW + 400 * 86_400, " (a vacation ends at most a year ahead; 0 means until further notice)"),
    ((NOW + 86_400) * 1000, " (milliseconds? times are Unix seconds)"),
])  # fmt: skip
def test_a_vacation_end_too_late_says_what_was_likely_meant(until, hint):
    """A 'forever' end such as 9999-12-31 was answered "milliseconds?": 0 is what the client meant."""
    with pytest.raises(EventValidationError) as error:
        validate_batch([Event("e", EventKind.SELLER_VACATION, NOW, seller_id="s", vacation_until=until)], now=NOW)
    assert error.value.field == "until"
    assert error.value.description == f"is in the future: {until!r} is after the latest accepted time 1831622400{hint}"


def test_times_within_the_skew_and_open_ended_vacations_pass():
    validate_batch([
        like(ts=NOW + 290),
        Event("u", EventKind.ITEM_UPSERT, NOW, item_id="i", seller_id="s", created_at=NOW + 300),
        Event("v", EventKind.SELLER_VACATION, NOW, seller_id="s", vacation_until=float("inf")),
        Event("w", EventKind.SELLER_VACATION, NOW, seller_id="t", vacation_until=NOW + 30 * 86_400),
    ], now=NOW)  # fmt: skip
    with pytest.raises(EventValidationError):
        validate_batch([like(ts=NOW + 120)], now=NOW, max_skew=60)


def test_every_string_field_of_an_event_is_capped():
    long = "x" * 5_000
    for event, field in (
        (like(event_id=long), "event_id"),
        (like(user_id=long), "user_id"),
        (Event("e", EventKind.FOLLOW, 1.0, user_id="u", seller_id=long), "seller_id"),
        (Event("e", EventKind.SHARE, 1.0, user_id="u", item_id="i", friend_id=long), "friend_id"),
        (Event("e", EventKind.ITEM_UPDATE, 1.0, item_id="i", title=long), "title"),
        (Event("e", EventKind.ITEM_UPDATE, 1.0, item_id="i", category=long), "category"),
        (Event("e", EventKind.ITEM_UPDATE, 1.0, item_id="i", image_url="https://x/" + long), "image_url"),
        (Event("e", EventKind.ITEM_UPDATE, 1.0, item_id="i", currency=long), "currency"),
    ):
        with pytest.raises(EventValidationError) as error:
            validate_batch([event])
        assert error.value.field == field


@pytest.mark.parametrize("url", ["http://", "https:///items/1.jpg", "https:img.example.com/1.jpg", "http:/1.jpg", "ftp://x/1.jpg"])
def test_an_image_url_is_an_http_or_https_url_with_a_host(url):
    # A card's image must be fetchable: "http://" and "https:img.example.com/1.jpg" had
    # the scheme the check read, and were accepted, for every client to draw a broken image.
    with pytest.raises(EventValidationError) as error:
        validate_batch([Event("e", EventKind.ITEM_UPDATE, 1.0, item_id="i", image_url=url)])
    assert (error.value.field, error.value.description) == ("image_url", "must be an http or https URL")
    validate_batch([Event("e", EventKind.ITEM_UPDATE, 1.0, item_id="i", image_url="https://img.example.com/1.jpg")])


def test_an_upsert_names_its_created_at_only_when_the_client_set_it():
    from protos.feed.v1 import feed_pb2
    from serving.servicer import event_from_proto

    unset = feed_pb2.Event(event_id="a", ts=5.0, item_upsert=feed_pb2.ItemUpsert(item_id="i", seller_id="s", stock=1))
    given = feed_pb2.Event(event_id="b", ts=5.0, item_upsert=feed_pb2.ItemUpsert(item_id="i", seller_id="s", created_at=3.0))
    assert event_from_proto(0, unset, received_at=9.0).created_at is None  # the store keeps an existing item's
    assert event_from_proto(1, given, received_at=9.0).created_at == 3.0
    for event in (event_from_proto(0, unset, 9.0), event_from_proto(1, given, 9.0)):
        validate_batch([event])
        assert Event.from_record(event.to_record()) == event  # as the write-ahead log and the event stream keep it


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.one_of(st.none(), st.integers(0, 6)), max_size=60), size=st.integers(1, 8))
def test_chunk_bounds_cover_the_batch_in_order_and_split_no_key(keys, size):
    from stores.events import chunk_bounds

    bounds = chunk_bounds(keys, size)
    assert [i for start, end in bounds for i in range(start, end)] == list(range(len(keys)))
    assert all(end - start >= size for start, end in bounds[:-1])
    chunk_of = {}
    for number, (start, end) in enumerate(bounds):
        for key in keys[start:end]:
            if key is not None:
                assert chunk_of.setdefault(key, number) == number
    # Each chunk ends at the first place it may: one element less and a key would span.
    for start, end in bounds[:-1]:
        shorter = end - 1
        assert shorter - start < size or set(keys[start:shorter]) & set(keys[shorter:]) - {None}
