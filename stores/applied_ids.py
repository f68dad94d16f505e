"""The event ids a memory store applied, each remembered for a TTL of wall time (its dedupe)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from itertools import groupby, repeat
from json.encoder import encode_basestring_ascii
from operator import itemgetter
from typing import Any


class AppliedIds:
    """Applied event ids; one applied with a TTL > 0 is forgotten by the first
    ``forget_expired`` at or after its time plus the TTL, one applied with 0 never.

    Expiry runs from the id remembered first: one remembered under a shorter TTL (or a
    clock set back) waits behind those before it, exactly as it did the first time a log
    is replayed, which the durable store's snapshots rely on.
    """

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._expiry: deque[tuple[float, str]] = deque()  # (forget at, event id), in the order remembered

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            self._ids.discard(expiry.popleft()[1])

    def fresh(self, event_ids: Sequence[str]) -> list[int]:
        """Indices of the ids not remembered, each id's first in ``event_ids`` only."""
        distinct = set(event_ids)
        if len(distinct) == len(event_ids) and distinct.isdisjoint(self._ids):  # no retry: most batches
            return list(range(len(event_ids)))
        seen: set[str] = set()
        fresh = []
        for index, event_id in enumerate(event_ids):
            if event_id in self._ids or event_id in seen:
                continue
            seen.add(event_id)
            fresh.append(index)
        return fresh

    def remember(self, event_ids: Sequence[str], now: float, ttl: float) -> None:
        self._ids.update(event_ids)
        if ttl > 0:
            self._expiry.extend(zip(repeat(now + ttl), event_ids))

    def to_json(self) -> bytes:
        """The record ``from_record`` reads, as compact ASCII JSON: the ids remembered for
        ever, and the others with their forget times in order. Encoded a run of ids with one
        forget time (a batch's) at a time, without building the record's [time, id] pairs:
        those were a third of a fold's CPU."""
        expiring = {event_id for _, event_id in self._expiry}
        runs = []
        for at, run in groupby(self._expiry, key=itemgetter(0)):
            pair_start = "[%s," % json.dumps(at)
            runs.append(pair_start + ("]," + pair_start).join(map(encode_basestring_ascii, map(itemgetter(1), run))) + "]")
        forever = json.dumps(sorted(self._ids - expiring), separators=(",", ":"), ensure_ascii=True)
        return ('{"forever":%s,"expiring":[%s]}' % (forever, ",".join(runs))).encode("ascii")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AppliedIds:
        applied = cls()
        applied._expiry.extend((float(at), str(event_id)) for at, event_id in record["expiring"])
        applied._ids.update(str(event_id) for event_id in record["forever"])
        applied._ids.update(event_id for _, event_id in applied._expiry)
        return applied
