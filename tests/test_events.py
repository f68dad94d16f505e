from __future__ import annotations

import pytest

from stores.events import Event, EventKind, EventValidationError, validate_batch


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
    ],
)
def test_invalid_events_name_the_index_and_field(event, field):
    with pytest.raises(EventValidationError) as error:
        validate_batch([like("ok"), event])
    assert (error.value.index, error.value.field) == (1, field)
    assert str(error.value).startswith(f"events[1].{field}: ")


def test_empty_batches_and_conflicting_ids_are_rejected():
    with pytest.raises(EventValidationError, match="empty"):
        validate_batch([])
    with pytest.raises(EventValidationError, match="reused"):
        validate_batch([like("same"), like("same", item_id="other")])


def test_records_round_trip():
    event = Event("e", EventKind.ITEM_UPSERT, 5.0, item_id="i", seller_id="s", created_at=4.0, stock=2, price=9.5, category="c")
    assert Event.from_record(event.to_record()) == event
    assert Event.from_record(like().to_record()) == like()
