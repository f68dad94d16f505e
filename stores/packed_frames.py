"""Items' packed values, split into columns in one compiled pass.

They reach a client two ways. Standalone Redis answers a plain HMGET, one bulk string
per item (``split_values``): a hydrate script did the same reading at four times
Redis's CPU, most of it spent moving a few hundred item ids in and out of Lua
(benchmarks/README.md, "2026-12-04 (later)"). A cluster node's script joins "LEN:VALUE"
per item, LEN the value's length in bytes ("0:" for a missing item), so that it does no
per-item parsing (``split_frames``). A value is stores/redis.py's packed layout:
"created_at,stock,like_count,eligible,price,ship_days,trending|LEN:SELLER" then the
category. Sellers and categories are decoded once per distinct value, found by a hash of
their bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from stores.joined_floats import parse_number

PACKED_NUMBERS = 7  # created_at, stock, like_count, eligible, price, ship_days, trending
STOCK, LIKE_COUNT, ELIGIBLE = 1, 2, 3  # some of those columns, by name
_MISSING = np.array([0.0, 0.0, 0.0, 1.0, np.nan, np.nan, 0.0])  # a missing item's numbers
_COLON, _COMMA, _BAR, _ZERO, _NINE = (ord(c) for c in ":,|09")
_FNV_OFFSET, _FNV_PRIME = np.uint64(14695981039346656037), np.uint64(1099511628211)


@dataclass(frozen=True)
class Frames:
    exists: np.ndarray  # bool per item
    numbers: np.ndarray  # (n, PACKED_NUMBERS) float64
    sellers: list[str]  # distinct sellers ("" for a missing item's)
    seller_of: np.ndarray  # each item's position in ``sellers``
    categories: list[str]
    category_of: np.ndarray


def split_frames(text: str, n: int) -> Frames:
    """The ``n`` length-prefixed packed values of ``text``; ValueError when malformed."""
    blob = np.frombuffer((text + "\0").encode(), np.uint8)  # the NUL: see parse_number
    starts, lengths = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if not _frame_spans(blob, starts, lengths):
        raise ValueError(f"malformed packed item values for {n} items: {text[:200]!r}")
    # An ASCII reply's byte offsets are its character offsets: slices of it need no decoding.
    return _split_spans(blob, starts, lengths, text if text.isascii() else None, lambda: text[:200])


def split_values(values: list[bytes | None]) -> Frames:
    """Packed values as an HMGET answers them undecoded (None: no such item); ValueError
    when one is malformed."""
    n = len(values)
    if None in values:
        values = [b"" if value is None else value for value in values]  # length 0: missing
    lengths = np.fromiter(map(len, values), np.int64, n)
    raw = b"".join(values)
    starts = np.zeros(n, np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    blob = np.frombuffer(raw + b"\0", np.uint8)
    return _split_spans(blob, starts, lengths, raw.decode("ascii") if raw.isascii() else None, lambda: values[:20])


def _split_spans(blob: np.ndarray, starts: np.ndarray, lengths: np.ndarray, ascii_text: str | None, shown: Callable[[], object]) -> Frames:
    n = len(starts)
    exists, numbers = np.zeros(n, bool), np.empty((n, PACKED_NUMBERS))
    spans, hashes = np.zeros((n, 4), np.int64), np.zeros((n, 2), np.uint64)
    if not _split(blob, starts, lengths, numbers, exists, spans, hashes, _MISSING, np.zeros(1, np.intp)):
        raise ValueError(f"malformed packed item values for {n} items: {shown()!r}")
    sellers, seller_of = _distinct(blob, spans[:, 0], spans[:, 1], hashes[:, 0], ascii_text)
    categories, category_of = _distinct(blob, spans[:, 2], spans[:, 3], hashes[:, 1], ascii_text)
    return Frames(exists, numbers, sellers, seller_of, categories, category_of)


def warm_up() -> None:
    """Compile the splitter (or load it from numba's cache: about a second either way)
    before the first feed needs it."""
    split_frames("0:" + "".join(f"{len(v)}:{v}" for v in ["1,1,1,1,nan,nan,0|1:sc"]), 2)
    split_values([None, b"1,1,1,1,nan,nan,0|1:sc"])


def distinct_positions(values: list[str]) -> tuple[list[str], np.ndarray]:
    """The distinct values in order of first sight, and each value's position among them."""
    distinct = list(dict.fromkeys(values))
    at = {value: k for k, value in enumerate(distinct)}
    return distinct, np.array([at[value] for value in values], np.intp)


def _distinct(
    blob: np.ndarray, starts: np.ndarray, ends: np.ndarray, hashes: np.ndarray, ascii_text: str | None
) -> tuple[list[str], np.ndarray]:
    """The distinct strings of these spans and each span's position among them; ``ascii_text``
    is the blob as a str when it is ASCII (then the strings are slices of it)."""
    if not len(hashes):
        return [], np.zeros(0, np.intp)
    # One layout whatever the caller sliced (a column of spans is strided): each layout
    # would be compiled apart, on the feed that first met it.
    starts, ends = np.ascontiguousarray(starts), np.ascontiguousarray(ends)
    _, first, position = np.unique(hashes, return_index=True, return_inverse=True)
    if not _same_spans(blob, starts, ends, first[position]):  # two strings share a 64-bit hash
        return distinct_positions(_strings(blob, starts, ends, ascii_text))
    return _strings(blob, starts[first], ends[first], ascii_text), position


def _strings(blob: np.ndarray, starts: np.ndarray, ends: np.ndarray, ascii_text: str | None) -> list[str]:
    if ascii_text is not None:
        return [ascii_text[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
    return [blob[s:e].tobytes().decode() for s, e in zip(starts.tolist(), ends.tolist())]


@numba.njit(cache=True, nogil=True)
def _same_spans(blob, starts, ends, representative):
    for row in range(len(starts)):
        other = representative[row]
        length = ends[row] - starts[row]
        if ends[other] - starts[other] != length:
            return False
        for k in range(length):
            if blob[starts[row] + k] != blob[starts[other] + k]:
                return False
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def _fnv(blob, start, end):
    h = _FNV_OFFSET
    for at in range(start, end):
        h = (h ^ np.uint64(blob[at])) * _FNV_PRIME
    return h


@numba.njit(cache=True, nogil=True, inline="always")
def _length(blob, at, end):
    """The decimal length at ``at`` up to a ":", and where its value starts; -1 if malformed."""
    length = 0
    digits = 0
    while at < end and _ZERO <= blob[at] <= _NINE:
        length = length * 10 + (blob[at] - _ZERO)
        digits += 1
        at += 1
    if digits == 0 or digits > 9 or at >= end or blob[at] != _COLON:
        return -1, at
    return length, at + 1


@numba.njit(cache=True, nogil=True)
def _frame_spans(blob, starts, lengths):
    """Each "LEN:VALUE" frame's value span; False when the frames are malformed or do not
    fill the blob (up to its closing NUL) exactly."""
    size = len(blob) - 1
    at = 0
    for row in range(len(starts)):
        length, at = _length(blob, at, size)
        if length < 0 or at + length > size:
            return False
        starts[row], lengths[row] = at, length
        at += length
    return at == size


@numba.njit(cache=True, nogil=True)
def _split(blob, starts, lengths, numbers, exists, spans, hashes, missing, end_pointer):
    """Each span's numbers, seller and category (a length of 0: a missing item); False
    when a value is malformed."""
    for row in range(len(numbers)):
        at = starts[row]
        end = at + lengths[row]
        if lengths[row] == 0:
            numbers[row] = missing
            spans[row] = at
            hashes[row] = _FNV_OFFSET
            continue
        exists[row] = True
        for k in range(numbers.shape[1]):
            start = at
            while at < end and blob[at] != _COMMA and blob[at] != _BAR:
                at += 1
            last = k == numbers.shape[1] - 1
            if at >= end or (blob[at] == _BAR) != last:
                return False
            value, read = parse_number(blob, start, at, end_pointer)
            if not read:
                return False
            numbers[row, k] = value
            at += 1
        seller_length, at = _length(blob, at, end)
        if seller_length < 0 or at + seller_length > end:
            return False
        spans[row, 0], spans[row, 1] = at, at + seller_length
        spans[row, 2], spans[row, 3] = at + seller_length, end
        hashes[row, 0] = _fnv(blob, at, at + seller_length)
        hashes[row, 1] = _fnv(blob, at + seller_length, end)
    return True
