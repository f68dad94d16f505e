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
view may have pushed another item out of the user's bounded views before a click cleared
it, so dropping such pairs would change what the store answers.

The ids of the dropped events are not lost: the snapshot carries every id the store
remembers (AppliedIds), so a retry after a restart is still a retry.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from stores.applied_ids import AppliedIds
from stores.events import Event, EventKind
from stores.wal import Batch


def applied_part(batch: Batch, applied: AppliedIds, ttl: float) -> Batch:
    """The events of a logged batch that applied when it came (at ``batch.at`` under
    ``ttl``), judged by ``applied``, which remembers their ids as the store did."""
    applied.forget_expired(batch.at)
    event_ids = [event.event_id for event in batch.events]
    fresh = applied.fresh(event_ids)
    applied.remember([event_ids[index] for index in fresh], batch.at, ttl)
    return Batch(batch.seq, batch.at, [batch.events[index] for index in fresh], ttl)


def _what_it_sets(event: Event) -> tuple[Hashable, bool] | None:
    """(the piece of state ``event`` sets whole, whether an earlier setter of it may be
    dropped when this event follows it), or None for an event that is always kept."""
    kind = event.kind
    if kind is EventKind.STOCK_UPDATE:
        return ("stock", event.item_id), True
    if kind is EventKind.ITEM_UPSERT:
        return ("stock", event.item_id), False
    if kind in (EventKind.FOLLOW, EventKind.UNFOLLOW):
        return ("follows", event.user_id, event.seller_id), True
    return None


def without_overwritten(batches: Iterable[Batch]) -> list[Batch]:
    """``batches`` less each stock update or (un)follow that a later event overwrites, and
    less the batches that leaves empty."""
    overwritten: set[Hashable] = set()  # what some later event sets
    kept: list[Batch] = []
    for batch in reversed(list(batches)):
        events = []
        for event in reversed(batch.events):
            sets = _what_it_sets(event)
            if sets is not None:
                what, droppable = sets
                if droppable and what in overwritten:
                    continue
                overwritten.add(what)
            events.append(event)
        if events:
            kept.append(Batch(batch.seq, batch.at, events[::-1], batch.dedupe_ttl))
    return kept[::-1]
