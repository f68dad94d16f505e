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
remembers (AppliedIds), so a retry after a restart is still a retry. A fold decodes each
batch once, as records (``Event.to_record()``), to judge its events, and then copies the
kept events' bytes: decoding and encoding them again was half of a fold.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Hashable, Iterable
from itertools import compress
from operator import itemgetter

from stores.applied_ids import AppliedIds
from stores.events import EventKind
from stores.wal import RecordBatch

_STOCK_UPDATE, _ITEM_UPSERT = EventKind.STOCK_UPDATE.value, EventKind.ITEM_UPSERT.value
_FOLLOW_TOGGLES = (EventKind.FOLLOW.value, EventKind.UNFOLLOW.value)


def applied_part(batch: RecordBatch, applied: AppliedIds, ttl: float) -> list[int]:
    """The indices of the events of a logged batch that applied when it came (at
    ``batch.at`` under ``ttl``), judged by ``applied``, which remembers their ids as the
    store did."""
    applied.forget_expired(batch.at)
    event_ids = list(map(itemgetter("event_id"), batch.records))
    fresh = applied.fresh(event_ids)
    applied.remember(event_ids if len(fresh) == len(event_ids) else [event_ids[index] for index in fresh], batch.at, ttl)
    return fresh


def _what_it_sets(record: dict[str, str]) -> tuple[Hashable, bool] | None:
    """(the piece of state the event sets whole, whether the event may be dropped when a
    later event sets that piece), or None for an event that is always kept."""
    kind = record["kind"]
    if kind == _STOCK_UPDATE:
        return ("stock", record["item_id"]), True
    if kind == _ITEM_UPSERT:
        return ("stock", record["item_id"]), False
    if kind in _FOLLOW_TOGGLES:
        return ("follows", record["user_id"], record["seller_id"]), True
    return None


class KeptEvents:
    """Which events of batches met in order a fold keeps: ``flags``, one byte per event as
    logged (retries included), 1 for kept; ``sizes``, the events of each batch."""

    def __init__(self) -> None:
        self.flags = bytearray()
        self.sizes = array("I")
        # Each piece of state's last setter met: its position while a later setter drops it, else -1.
        self._last_setter: dict[Hashable, int] = {}

    def add(self, records: list[dict[str, str]], applied: Iterable[int]) -> None:
        """The next batch's events, of which the indices ``applied`` applied when it came."""
        flags, last_setter, start = self.flags, self._last_setter, len(self.flags)
        flags.extend(bytes(len(records)))
        self.sizes.append(len(records))
        for index in applied:
            flags[start + index] = 1
            sets = _what_it_sets(records[index])
            if sets is not None:
                piece, droppable = sets
                overwritten = last_setter.get(piece, -1)
                if overwritten >= 0:
                    flags[overwritten] = 0
                last_setter[piece] = start + index if droppable else -1


def kept_part(events: bytes, flags: bytes) -> bytes | None:
    """The JSON array of event records ``events``, as logged (compact, flat records), less
    those whose byte in ``flags`` is 0; None when none is kept. The records are cut out of
    it, not decoded and encoded again."""
    if 1 not in flags:
        return None
    if 0 not in flags:
        return events
    records = events[2:-2].split(b"},{")
    # Compact, the records are separated by exactly len(flags) - 1 "},{"; a string holding
    # one more makes more pieces.
    if len(records) != len(flags):
        kept = list(compress(json.loads(events), flags))
        return json.dumps(kept, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return b"[{" + b"},{".join(compress(records, flags)) + b"}]"
