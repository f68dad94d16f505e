"""Dense int32 codes for string ids, so the feed pipeline can work on arrays.

A code is local to one process and one store: it never leaves the process (ids are
strings at every boundary). Codes are handed out in order of first sight and never
change or get reused, so an array indexed by code stays valid as the vocabulary grows;
a code past the end of such an array is simply newer than the array.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numba
import numpy as np

UNKNOWN = -1
"""The code of an id a vocabulary does not hold (when asked not to add it)."""


BULK_ENCODE_MIN = 4096
"""From this many ids on, ``Vocabulary.codes`` hash-encodes them with pyarrow first, so
Python touches each distinct id once rather than every occurrence."""


def encode(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """int32 codes of ``values`` in order of first appearance, and the distinct values.

    pyarrow's hash-based dictionary encoding: seconds for tens of millions of ids, where a
    Python dict loop takes minutes.
    """
    if isinstance(values, EncodedIds):
        return values.encoding()
    return _dictionary_encoded(values)


def _dictionary_encoded(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(values):
        return np.zeros(0, np.int32), []
    encoded = pc.dictionary_encode(pa.array(values, type=pa.string()))
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32), encoded.dictionary.to_pylist()


def encode_concatenation(columns: Sequence[Sequence[str]]) -> tuple[np.ndarray, list[str]]:
    """``encode`` of the columns one after the other, without building that concatenation:
    each column's own encoding (kept by an EncodedIds) is mapped onto the distinct values of all."""
    parts = [encode(column) for column in columns]
    joined_codes, distinct = encode([value for _, values in parts for value in values])
    mapped, start = [], 0
    for codes, values in parts:
        mapped.append(joined_codes[start : start + len(values)][codes])
        start += len(values)
    return (np.concatenate(mapped).astype(np.int32) if mapped else np.zeros(0, np.int32)), distinct


def per_distinct(values: Sequence[str], function: Callable[[str], Any], dtype: Any) -> np.ndarray:
    """``function(value)`` of each of ``values`` as an array, called once per distinct value."""
    codes, distinct = encode(values)
    return np.fromiter((function(value) for value in distinct), dtype, len(distinct))[codes]


def take_ids(values: Sequence[str], rows: np.ndarray) -> list[str]:
    """The values at ``rows`` (an index array), in that order; an EncodedIds stays one."""
    if isinstance(values, EncodedIds):
        return values.take(rows)
    return [values[i] for i in np.asarray(rows).tolist()]


def distinct_ids(values: Sequence[str]) -> set[str]:
    """``set(values)``, from an EncodedIds' distinct values when it has them."""
    return set(values.encoding()[1]) if isinstance(values, EncodedIds) else set(values)


class EncodedIds(list):
    """A list of ids that keeps its ``encode`` (int32 codes in first-seen order, and the
    distinct values), so that encoding it again costs nothing.

    A retrain encodes its columns of tens of millions of ids again and again (to deduplicate
    them, join them, lay out the interaction matrix), and each time pyarrow first copies
    every str. The loader has the encoding from its CSV reader anyway and keeps it here;
    ``take`` carries it over to a subset. Any change to the list drops it (the next
    ``encoding()`` computes it again), so the codes always describe the list as it is.
    """

    __slots__ = ("_encoding",)

    def __init__(self, values: Iterable[str] = ()) -> None:
        super().__init__(values)
        self._encoding: tuple[np.ndarray, list[str]] | None = None

    @classmethod
    def from_codes(cls, codes: np.ndarray, distinct: Sequence[str]) -> EncodedIds:
        """The ids ``distinct[codes]``; ``distinct`` must be unique, each value used, in
        order of first use (as ``encode`` gives them)."""
        ids = cls(np.asarray(distinct, dtype=object)[codes].tolist() if len(codes) else [])
        codes = np.asarray(codes, dtype=np.int32)
        codes.flags.writeable = False
        ids._encoding = (codes, list(distinct))
        return ids

    def encoding(self) -> tuple[np.ndarray, list[str]]:
        """(codes, distinct values) as ``encode`` gives them; the codes are read-only."""
        if self._encoding is None:
            codes, distinct = _dictionary_encoded(self)
            codes.flags.writeable = False
            self._encoding = (codes, distinct)
        return self._encoding

    @classmethod
    def of_codes(cls, codes: np.ndarray, values: Sequence[str]) -> EncodedIds:
        """The ids ``values[codes]``; ``values`` must be unique, in any order, some unused."""
        first_seen, used = _renumbered_by_first_sight(np.ascontiguousarray(codes, dtype=np.int32), len(values))
        return cls.from_codes(first_seen, [values[c] for c in used.tolist()])

    def take(self, rows: np.ndarray) -> EncodedIds:
        """The ids at ``rows`` (an index array or a boolean mask), in that order."""
        codes, distinct = self.encoding()
        return EncodedIds.of_codes(codes[rows], distinct)


def _dropping_the_encoding(change: Callable[..., Any]) -> Callable[..., Any]:
    def changed(self: EncodedIds, *args: Any, **kwargs: Any) -> Any:
        self._encoding = None
        return change(self, *args, **kwargs)

    changed.__name__ = change.__name__
    return changed


# Every list method that changes the list in place: the codes would no longer describe it.
for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "clear", "sort", "reverse"):
    setattr(EncodedIds, _name, _dropping_the_encoding(getattr(list, _name)))
del _name


@numba.njit(cache=True, nogil=True)
def _renumbered_by_first_sight(codes, n_distinct):
    """(codes renumbered 0, 1, ... in order of first sight, the old code of each new one)."""
    new_code = np.full(n_distinct, -1, np.int32)
    old_code = np.empty(n_distinct, np.int32)
    out = np.empty(len(codes), np.int32)
    seen = 0
    for at in range(len(codes)):
        code = codes[at]
        if new_code[code] < 0:
            new_code[code] = seen
            old_code[seen] = code
            seen += 1
        out[at] = new_code[code]
    return out, old_code[:seen]


def positions_in(values: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    """int32 position of each value in ``vocabulary``, -1 where it is absent."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(values):
        return np.zeros(0, np.int32)
    if isinstance(values, EncodedIds):
        codes, distinct = values.encoding()
        return positions_in(distinct, vocabulary)[codes]
    found = pc.index_in(pa.array(values, type=pa.string()), value_set=pa.array(vocabulary, type=pa.string()))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)


def stable_hash(item_id: str) -> int:
    """A 32-bit hash of an id that is the same in every process (page tokens, tie-breaks)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=4).digest(), "little")


class Vocabulary:
    """Append-only map between string ids and int32 codes 0..n-1, with a stable hash per code.

    Writers serialise on an internal lock; readers need none: a reader sees every code
    that was handed out before it asked, and codes are never reassigned.
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._code: dict[str, int] = {}
        # Filled up to len(self._ids); the rest is room to grow into without a copy.
        self._hashes = np.zeros(0, dtype=np.uint32)
        self.codes(list(ids), add=True)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._code

    def code(self, item_id: str) -> int:
        """The id's code, or UNKNOWN."""
        return self._code.get(item_id, UNKNOWN)

    def id(self, code: int) -> str:
        return self._ids[code]

    def ids(self, codes: Iterable[int]) -> list[str]:
        """The id of each code, same order; every code must be known."""
        ids = self._ids
        return [ids[c] for c in codes]

    def codes(self, ids: Sequence[str], add: bool = False) -> np.ndarray:
        """int32 code per id, same order. Unknown ids get new codes when ``add``, else UNKNOWN."""
        if len(ids) >= BULK_ENCODE_MIN:
            first_seen, distinct = encode(ids)
            if len(distinct) < len(ids):
                return self._codes_one_by_one(distinct, add)[first_seen]
        return self._codes_one_by_one(ids, add)

    def _codes_one_by_one(self, ids: Sequence[str], add: bool) -> np.ndarray:
        get = self._code.get
        # A list comprehension, then one conversion: 40 % faster than np.fromiter over a
        # generator, and a feed on Redis looks up about a thousand ids.
        codes = np.array([get(i, UNKNOWN) for i in ids], dtype=np.int32)
        if add and (codes < 0).any():
            self._add_all([ids[at] for at in np.flatnonzero(codes < 0).tolist()])
            codes = np.array([get(i, UNKNOWN) for i in ids], dtype=np.int32)
        return codes

    def add(self, item_id: str) -> int:
        """The id's code, adding it when new."""
        code = self._code.get(item_id)
        if code is not None:
            return code
        self._add_all([item_id])
        return self._code[item_id]

    def hashes(self, codes: np.ndarray) -> np.ndarray:
        """uint32 stable_hash of each code's id, same order; every code must be known."""
        return self._hashes[codes]

    def _add_all(self, item_ids: Sequence[str]) -> None:
        """Give each new id of ``item_ids`` the next code.

        Readers take no lock, so a code is published (in ``_code``) only once its id and
        hash are in place: whoever is handed a code can look both up. The hashes grow into
        spare room, doubling it when full, so adding a few ids to a large vocabulary does
        not copy all of its hashes; a reader still holding the old array only ever reads
        codes it already had.
        """
        with self._lock:
            fresh = [item_id for item_id in dict.fromkeys(item_ids) if item_id not in self._code]
            if not fresh:
                return
            start, end = len(self._ids), len(self._ids) + len(fresh)
            hashes = self._hashes
            if end > len(hashes):
                hashes = np.zeros(max(end, 2 * len(hashes)), dtype=np.uint32)
                hashes[:start] = self._hashes[:start]
            hashes[start:end] = np.fromiter((stable_hash(i) for i in fresh), dtype=np.uint32, count=len(fresh))
            self._hashes = hashes
            self._ids.extend(fresh)
            self._code.update(zip(fresh, range(start, end)))


def lookup(table: np.ndarray, codes: np.ndarray, missing: int | float) -> np.ndarray:
    """``table[codes]``, with ``missing`` for negative codes and codes past the end of ``table``."""
    codes = np.asarray(codes)
    inside = (codes >= 0) & (codes < len(table))
    if inside.all():
        return table[codes]
    out = np.full(len(codes), missing, dtype=table.dtype)
    out[inside] = table[codes[inside]]
    return out


def sorted_positions(sorted_codes: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, at): which ``codes`` occur in ``sorted_codes`` (ascending; a negative code
    never does), and where (``at`` is meaningful only where found)."""
    codes = np.asarray(codes)
    if not len(sorted_codes) or not len(codes):
        return np.zeros(len(codes), bool), np.zeros(len(codes), np.int64)
    at = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    return (sorted_codes[at] == codes) & (codes >= 0), at


def distinct_inverse(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct, inverse): the distinct ``codes`` ascending, and each code's index into them.

    ``np.unique(codes, return_inverse=True)`` at a fifth of its cost on the few hundred
    codes of one request: numpy's sort, then one compiled pass over the sorted runs.
    """
    codes = np.asarray(codes)
    return _sorted_runs(codes, np.argsort(codes, kind="stable"))


@numba.njit(cache=True, nogil=True)
def _sorted_runs(codes, order):
    distinct = np.empty(len(codes), codes.dtype)
    inverse = np.empty(len(codes), np.intp)
    last = -1
    for at in order:
        if last < 0 or codes[at] != distinct[last]:
            last += 1
            distinct[last] = codes[at]
        inverse[at] = last
    return distinct[: last + 1], inverse


def count_and_newest(keys: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys ascending, rows per key, newest time per key) of parallel (key, time) rows."""
    keys = np.asarray(keys)
    return _count_and_newest_runs(keys, np.asarray(times, np.float64), np.argsort(keys, kind="stable"))


@numba.njit(cache=True, nogil=True)
def _count_and_newest_runs(keys, times, order):
    distinct = np.empty(len(keys), keys.dtype)
    counts = np.zeros(len(keys), np.int64)
    newest = np.full(len(keys), -np.inf)
    last = -1
    for at in order:
        if last < 0 or keys[at] != distinct[last]:
            last += 1
            distinct[last] = keys[at]
        counts[last] += 1
        newest[last] = max(newest[last], times[at])
    return distinct[: last + 1], counts[: last + 1], newest[: last + 1]


def warm_up() -> None:
    """Compile the kernels above (or load them from numba's cache) for the int32 codes a
    feed passes, so that a server's first feed does not pay for it: writable arrays, and
    the read-only ones a Redis reply is decoded into (numba compiles each apart)."""
    codes, times = np.zeros(1, np.int32), np.zeros(1)
    distinct_inverse(codes)
    count_and_newest(codes, times)
    codes.setflags(write=False)
    times.setflags(write=False)
    count_and_newest(codes, times)


def concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(start, start + length) ...])`` without a Python loop."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, np.int64)
    offsets = np.asarray(starts, np.int64) - np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.repeat(offsets, lengths) + np.arange(total)
