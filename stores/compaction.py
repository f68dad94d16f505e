"""A durable memory store's logged batches folded down to the events its state still shows.

A snapshot (stores/durable.py) is replayed over the dataset the log was ingested over,
which this module never reads, so an event is dropped only where the state after the
fold is the same whatever that dataset holds:

- a retry, an event whose id the store had applied and still remembered when the batch
  came (it changed nothing then);
- a stock update followed by another stock update or an upsert of the same item (each
  sets the stock, and nothing reads it while events apply);
- a follow or unfollow followed by another of the same user and seller.

Everything else is kept, in order, even where its effect is undone later: a like and its
unlike leave the item's trending score a float rounding away from where it was, and a
like clears the user's views of the item, so dropping such pairs would change what the
store answers.

The ids of the dropped events are not lost: the snapshot carries every id the store
remembers (AppliedIds), so a retry after a restart is still a retry. Events stay records
(``Event.to_record()``) throughout: decoding and encoding Events was 70% of a fold.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator

from stores.applied_ids import AppliedIds
from stores.events import EventKind
from stores.wal import RecordBatch

_STOCK_UPDATE, _ITEM_UPSERT = EventKind.STOCK_UPDATE.value, EventKind.ITEM_UPSERT.value
_FOLLOW_TOGGLES = (EventKind.FOLLOW.value, EventKind.UNFOLLOW.value)


def applied_part(batch: RecordBatch, applied: AppliedIds, ttl: float) -> RecordBatch:
    """The events of a logged batch that applied when it came (at ``batch.at`` under
    ``ttl``), judged by ``applied``, which remembers their ids as the store did."""
    applied.forget_expired(batch.at)
    event_ids = [record["event_id"] for record in batch.records]
    fresh = applied.fresh(event_ids)
    applied.remember([event_ids[index] for index in fresh], batch.at, ttl)
    return RecordBatch(batch.seq, batch.at, [batch.records[index] for index in fresh], ttl)


def _what_it_sets(record: dict[str, str]) -> tuple[Hashable, bool] | None:
    """(the piece of state the event sets whole, whether an earlier setter of it may be
    dropped when this event follows it), or None for an event that is always kept."""
    kind = record["kind"]
    if kind == _STOCK_UPDATE:
        return ("stock", record["item_id"]), True
    if kind == _ITEM_UPSERT:
        return ("stock", record["item_id"]), False
    if kind in _FOLLOW_TOGGLES:
        return ("follows", record["user_id"], record["seller_id"]), True
    return None


def last_setters(batches: Iterable[RecordBatch]) -> dict[Hashable, int]:
    """For each piece of state some event of ``batches`` sets whole, the position of the
    last such event among all the batches' events, in order."""
    last: dict[Hashable, int] = {}
    position = 0
    for batch in batches:
        for record in batch.records:
            sets = _what_it_sets(record)
            if sets is not None:
                last[sets[0]] = position
            position += 1
    return last


def without_overwritten(batches: Iterable[RecordBatch], last: dict[Hashable, int]) -> Iterator[RecordBatch]:
    """``batches`` less each stock update or (un)follow that a later event overwrites
    (``last``: their ``last_setters``), and less the batches that leaves empty."""
    position = 0
    for batch in batches:
        records = []
        for record in batch.records:
            sets = _what_it_sets(record)
            if sets is None or not sets[1] or last[sets[0]] == position:
                records.append(record)
            position += 1
        if records:
            yield RecordBatch(batch.seq, batch.at, records, batch.dedupe_ttl)
