"""A process's copy of what its feeds read most from standalone Redis: the items' packed
columns, the page's cards, sellers' listings, users' recent likes, users' own state (what
the user script reads), users' liked and views hashes, the trending list and the vacations.

Every write script appends a tag per thing it changed to a change log in Redis
(``Keys.changes``): ``i:ITEM`` (the item's packed value and card), ``s:SELLER`` (the
seller's listings), ``u:USER`` (the user's recent likes, which their state holds too),
``p:USER`` (the user's follows, friends, hidden items and sellers, and what was shared
with them), ``h:USER`` (the user's liked and views hashes), ``t`` (the trending set) and
``v`` (the vacations), and adds their number to a sequence number. The script that reads
a feed's user (its first read) also reads the log since this process last did; ``sync``
drops the copies those tags name before the feed reads anything else. That script
answers with the user's state only when the copy lacks it or a tag since names them. So a feed sees every write that was
acknowledged before it began, as when it read Redis alone: read-your-writes holds across
processes and servers. A copy is kept only while no tag newer than the data it holds has
been applied (``_allows``); a fill that lost that race serves its own feed and is not kept.

The whole copy is dropped when the log cannot say what changed: the reader is further
behind than the log keeps (CHANGE_LOG_CAP tags), the log was started afresh (a new
``epoch``: Redis flushed, or a bulk load, which starts one), or a connection reached
another Redis server process than the last one did (its run_id: a restart or a failover
may have lost writes this process saw).
A process that copied the items at start (``RedisStore.warm``) copies them again in the
background when a feed finds the copy dropped.

Without this copy a feed on Redis spent more of its CPU, and of Redis's, reading the
same few thousand hot items and timelines again than ranking them (benchmarks/README.md,
"2026-12-04 (late night): a process's copy of Redis's feed reads").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ranking.types import ItemCard
from stores.packed_frames import ELIGIBLE, LIKE_COUNT, PACKED_NUMBERS, STOCK

CHANGE_LOG_CAP = 100_000  # tags the log keeps; a reader further behind drops its whole copy
# Entries (timelines, users' state and hashes, cards, the vacations); past it the older half
# is dropped. At 1M users it settles at about 0.85 GB per process, some 4 KB an entry
# (benchmarks/README.md, "2026-12-05"); the store URL's read_cache_entries sets it.
DEFAULT_CACHED_KEYS = 200_000
# Rows of a timeline (a seller's listings, a user's recent likes) that count as one entry of
# the bound: a longer one counts once per TIMELINE_ROWS rows begun. Deep pages read up to
# 1000 listings a seller (ranking.pipeline.per_key_read) from Redis: counted as one entry
# each, they took the copy from about 1.0 KB an entry to 12.7 KB, 0.21 to 2.54 GB at the
# default bound; counted by their rows, an entry stays near 1.3 KB of arrays.
TIMELINE_ROWS = 100


def timeline_weight(rows: int) -> int:
    """Entries of the bound that a kept timeline of ``rows`` rows counts for."""
    return max(1, -(-rows // TIMELINE_ROWS))


def read_ahead(limit: int, bound: int) -> int:
    """Rows to read of a timeline whose newest ``limit`` a page asks for, the list holding at
    most ``bound``: past TIMELINE_ROWS, the next power of two, so that a user paging deeper
    (each page ``per_key_read``'s 20 rows deeper) finds the copy's timeline long enough
    for the next pages instead of reading Redis at every one."""
    if limit <= TIMELINE_ROWS:
        return limit
    return min(1 << (limit - 1).bit_length(), max(bound, limit))


@dataclass(frozen=True)
class Fill:
    """When a read of missing entries began: the cache's generation, and the change log's
    sequence number that the read's data is at least as new as."""

    generation: int
    seq: int


class _Bounded:
    """A dict that drops its older half (insertion order, by weight) when the weights it holds
    would pass ``capacity``; an entry weighs 1 unless ``put`` says more. Every removal goes
    through ``pop`` and ``clear``, which keep the total."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict = {}
        self._heavy: dict = {}  # the weight of each entry that weighs more than 1
        self.weight = 0

    def put(self, key: object, value: object, weight: int = 1) -> None:
        self.pop(key)
        if weight > self.capacity:
            return  # it would leave room for nothing else
        entries = self.entries
        if entries and self.weight + weight > self.capacity:
            target, dropped = self.weight // 2, 0
            for old in list(entries):
                if dropped >= target and self.weight + weight <= self.capacity:
                    break
                dropped += self._heavy.get(old, 1)
                self.pop(old)
        entries[key] = value
        if weight > 1:
            self._heavy[key] = weight
        self.weight += weight

    def pop(self, key: object) -> None:
        if self.entries.pop(key, _ABSENT) is not _ABSENT:
            self.weight -= self._heavy.pop(key, 1)

    def clear(self) -> None:
        self.entries.clear()
        self._heavy.clear()
        self.weight = 0


_ABSENT = object()


class ReadCache:
    """The copy itself; thread-safe. Item columns are arrays indexed by the store's item
    codes (the packed layout's numbers, seller and category codes); the other entries
    are one bounded dict: timelines (newest first), users' hashes and the vacations by
    tag, cards by item code."""

    def __init__(self, item_code: Callable[[str], int], capacity: int = DEFAULT_CACHED_KEYS) -> None:
        self._item_code = item_code
        self._lock = threading.Lock()
        self.generation = 0
        self.seq = -1  # the log's sequence number this copy is in step with; -1: none yet
        self.epoch: str | None = None
        self._known = np.zeros(0, bool)
        self._numbers = np.zeros((0, PACKED_NUMBERS))
        self._seller = np.zeros(0, np.int32)
        self._category = np.zeros(0, np.int32)
        self._entries = _Bounded(capacity)
        self._grow(1)

    # -- the change log ------------------------------------------------------------------

    def clear(self) -> None:
        """Drop everything, and keep no read that began before."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self.generation += 1
        self.seq = -1
        self._known[:] = False
        self._entries.clear()

    def sync(self, seq: int, epoch: str | None, tags: Sequence[str] | None) -> None:
        """Apply the log's ``tags`` up to ``seq``; None: it could not tell them (start afresh)."""
        with self._lock:
            if tags is None or epoch != self.epoch:
                self._clear()
                self.epoch = epoch
            else:
                self._drop(tags)
            self.seq = max(self.seq, seq)

    def _drop(self, tags: Sequence[str]) -> None:
        entries = self._entries
        for tag in tags:
            if tag.startswith("i:"):
                code = self._item_code(tag[2:])
                if 0 <= code < len(self._known):
                    self._known[code] = False
                entries.pop(code)  # its card
            else:
                entries.pop(tag)
                if tag.startswith("u:"):  # a user's state holds their recent likes too
                    entries.pop("p:" + tag[2:])

    def begin_fill(self, seq: int, generation: int | None = None) -> Fill:
        """A read of missing entries whose data is at least as new as the log's ``seq``
        (read before it, in the same connection's order): kept only while ``_allows``.
        ``generation``: the copy's when the read was sent (default: now). A copy dropped
        while the read was under way (a load began a new log, at a lower number) must not
        keep it: its data may be older than the new log's first number."""
        return Fill(self.generation if generation is None else generation, seq)

    def _allows(self, fill: Fill) -> bool:
        # A tag newer than the fill's data may already have been applied (by another
        # thread's sync): it would not drop what the fill now brings.
        # Before the first sync this copy cannot know what a write changed: it keeps nothing.
        return fill.generation == self.generation and 0 <= self.seq <= fill.seq

    # -- items -----------------------------------------------------------------------------

    def items(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(known mask, numbers (n, PACKED_NUMBERS), seller codes, category codes) of ``codes``;
        rows not known are meaningless."""
        with self._lock:
            inside = codes < len(self._known)
            if inside.all():
                return self._known[codes], self._numbers[codes], self._seller[codes], self._category[codes]
            at = np.where(inside, codes, 0)
            return self._known[at] & inside, self._numbers[at], self._seller[at], self._category[at]

    def keep_items(self, fill: Fill, codes: np.ndarray, numbers: np.ndarray, sellers: np.ndarray, categories: np.ndarray) -> None:
        """Keep the read columns of existing items ``codes`` (distinct)."""
        if not len(codes):
            return
        with self._lock:
            if not self._allows(fill):
                return
            self._grow(int(codes.max()) + 1)
            self._numbers[codes] = numbers
            self._seller[codes] = sellers
            self._category[codes] = categories
            self._known[codes] = True

    def most_liked_on_sale(self, n: int) -> np.ndarray:
        """Codes of up to ``n`` items whose columns the copy holds, in stock and eligible,
        the most liked among them; least liked first."""
        if n < 1:
            return np.zeros(0, np.int64)
        with self._lock:
            known = np.flatnonzero(self._known)
            numbers = self._numbers[known]
        selling = (numbers[:, STOCK] > 0) & (numbers[:, ELIGIBLE] > 0)
        on_sale, likes = known[selling], numbers[selling, LIKE_COUNT]
        if n < len(on_sale):
            best = np.argpartition(likes, len(likes) - n)[len(likes) - n :]
            on_sale, likes = on_sale[best], likes[best]
        return on_sale[np.argsort(likes, kind="stable")]

    @property
    def kept(self) -> int:
        """Entries the copy holds now (timelines, users' state and hashes, cards, the
        vacations), a long timeline counted as ``timeline_weight`` of its rows."""
        return self._entries.weight

    @property
    def capacity(self) -> int:
        """Entries the copy keeps before it drops its older half."""
        return self._entries.capacity

    def _grow(self, size: int) -> None:
        if size <= len(self._known):
            return
        size = max(size, 2 * len(self._known), 1024)

        def grown(array: np.ndarray) -> np.ndarray:
            bigger = np.zeros((size, *array.shape[1:]), array.dtype)
            bigger[: len(array)] = array
            return bigger

        self._known, self._numbers = grown(self._known), grown(self._numbers)
        self._seller, self._category = grown(self._seller), grown(self._category)

    # -- timelines, hashes, cards and the vacations -------------------------------------------

    def entry(self, tag: str) -> object | None:
        """What ``keep`` kept under ``tag``, or None."""
        return self._entries.entries.get(tag)

    def entry_at_seq(self, tag: str) -> tuple[int, str | None, object | None, int]:
        """(the copy's sequence number, its log's epoch, what it keeps under ``tag``, its
        generation), taken together: the entry holds every change up to that number of that
        log, so a reader that checks the log after it for ``tag`` knows whether the entry
        still stands, unless the copy was dropped meanwhile (a newer generation): the log
        checked may be that of a Redis server process that lost the changes the entry holds."""
        with self._lock:
            return self.seq, self.epoch, self._entries.entries.get(tag), self.generation

    def keep(self, fill: Fill, entries: dict[str | int, object], weights: dict[str | int, int] | None = None) -> None:
        """Keep ``entries``: by tag, or cards by item code; ``weights`` those that weigh more than 1."""
        with self._lock:
            if self._allows(fill):
                for tag, value in entries.items():
                    self._entries.put(tag, value, 1 if weights is None else weights.get(tag, 1))

    def keep_timelines(self, fill: Fill, timelines: dict[str, tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Keep timelines read as (limit, codes, times), each counted by ``timeline_weight``.
        A read's timelines are slices of its one array, which a kept slice holds whole: when
        some were read longer than TIMELINE_ROWS, every one is copied, so that what a
        timeline holds is what it is counted for."""
        if any(limit > TIMELINE_ROWS for limit, _, _ in timelines.values()):
            timelines = {tag: (limit, codes.copy(), times.copy()) for tag, (limit, codes, times) in timelines.items()}
        weights = {tag: timeline_weight(len(codes)) for tag, (_, codes, _) in timelines.items() if len(codes) > TIMELINE_ROWS}
        self.keep(fill, timelines, weights)

    def timeline(self, tag: str, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The newest ``limit`` (codes, times) of the list ``tag`` names, or None."""
        kept = self._entries.entries.get(tag)
        if kept is None:
            return None
        read_limit, codes, times = kept
        if limit > read_limit and len(codes) == read_limit:
            return None  # the list may hold more than was read
        return codes[:limit], times[:limit]

    def cards(self, codes: Sequence[int]) -> list[ItemCard | None]:
        get = self._entries.entries.get
        return [get(code) for code in codes]
