"""float64 of a comma-joined string of decimal numbers: how Redis's read scripts reply.

A feed's replies from Redis carry a few thousand numbers (item columns, sorted-set
scores), each column joined into one string. pyarrow parsed them in about 30 µs per call
plus 80 ns per number, and about three times that inside a feed: a fifth of a Redis
feed's client CPU (benchmarks/README.md, "Redis: numbers parsed without pyarrow"). The
compiled parser below reads them in one pass with no allocation beyond the result.

Every number gives the same double as ``float()``. One with at most 2^53 as its digits
and a power of ten up to 22 is one correctly rounded multiplication or division of two
exact doubles (Clinger's fast path); any other (17 significant digits, as Redis writes
sorted-set scores; a large exponent) goes to the C library's ``strtod``, which rounds
correctly too. A token neither reads whole (malformed text, or a locale whose decimal
point is not ".") sends the string to pyarrow, which raises on malformed text.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
import pyarrow as pa
import pyarrow.compute as pc

_EXACT_POWERS_OF_TEN = np.array([10.0**k for k in range(23)])
_LARGEST_EXACT_MANTISSA = 2**53
_MAX_DIGITS = 19  # what a uint64 mantissa holds without overflow

# strtod(const char *text, char **end), by symbol: the compiled code stays cacheable.
_strtod = types.ExternalFunction("strtod", types.float64(types.intp, types.intp))

_COMMA, _MINUS, _PLUS, _DOT, _ZERO, _NINE = (ord(c) for c in ",-+.09")
_LOWER_E, _UPPER_E, _LOWER_I, _LOWER_N, _LOWER_A, _LOWER_F = (ord(c) for c in "eEinaf")


def joined_floats(text: str) -> np.ndarray:
    """The numbers of ``text`` ("1.5,-2,inf,nan,3e+20"), none when it is empty."""
    if not text:
        return np.zeros(0)
    out = np.empty(text.count(",") + 1)
    # A NUL after the text, where strtod stops reading the last number.
    if _parse(np.frombuffer((text + "\0").encode(), np.uint8), out, np.zeros(1, np.intp)):
        return out
    return pc.cast(pc.split_pattern(pa.array([text]), ",").flatten(), pa.float64()).to_numpy(zero_copy_only=False, writable=True)


def warm_up() -> None:
    """Compile the parser (or load it from numba's cache) before the first feed needs it."""
    joined_floats("0")


@numba.njit(cache=True, nogil=True)
def _parse(text, out, end_pointer):
    """Fill ``out`` with the numbers of ``text`` (ASCII bytes ending in a NUL); False: a
    token does not read whole, and ``out`` is partly written."""
    n = len(text) - 1
    start = 0
    for k in range(len(out)):
        end = start
        while end < n and text[end] != _COMMA:
            end += 1
        value, read = parse_number(text, start, end, end_pointer)
        if not read:
            return False
        out[k] = value
        start = end + 1
    return start == n + 1


@numba.njit(cache=True, nogil=True, inline="always")
def parse_number(text, start, end, end_pointer):
    """The number in ``text[start:end]`` and True, or False when it does not read whole.
    ``text`` continues past ``end`` with a byte that ends a number (a NUL, "," or "|");
    ``end_pointer`` is one intp, strtod's out-parameter."""
    value, exact = _fast_path(text, start, end)
    if exact:
        return value, True
    if not _decimal_token(text, start, end):  # strtod would read hex, "infinity", spaces
        return 0.0, False
    value = _strtod(text.ctypes.data + start, end_pointer.ctypes.data)
    return value, end_pointer[0] == text.ctypes.data + end


@numba.njit(cache=True, nogil=True, inline="always")
def _decimal_token(text, start, end):
    if end == start:
        return False
    for at in range(start, end):
        c = text[at]
        if not (_ZERO <= c <= _NINE or c == _DOT or c == _MINUS or c == _PLUS or c == _LOWER_E or c == _UPPER_E):
            return False
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def _fast_path(text, at, end):
    """The number in ``text[at:end]`` and True, or False when Clinger's fast path cannot
    give it exactly (or the token is malformed)."""
    negative = at < end and text[at] == _MINUS
    if at < end and (text[at] == _MINUS or text[at] == _PLUS):
        at += 1
    if end - at == 3 and text[at] == _LOWER_I and text[at + 1] == _LOWER_N and text[at + 2] == _LOWER_F:
        return -np.inf if negative else np.inf, True
    if end - at == 3 and text[at] == _LOWER_N and text[at + 1] == _LOWER_A and text[at + 2] == _LOWER_N:
        return np.nan, True
    mantissa = np.uint64(0)
    digits = 0  # significant digits in the mantissa
    decimals = 0  # digits after the point, leading zeros included
    any_digit = False
    after_point = False
    while at < end:
        c = text[at]
        if _ZERO <= c <= _NINE:
            any_digit = True
            if after_point:
                decimals += 1
            if mantissa != 0 or c != _ZERO:
                if digits == _MAX_DIGITS:
                    return 0.0, False
                mantissa = mantissa * np.uint64(10) + np.uint64(c - _ZERO)
                digits += 1
        elif c == _DOT and not after_point:
            after_point = True
        else:
            break
        at += 1
    if not any_digit:
        return 0.0, False
    exponent = 0
    if at < end and (text[at] == _LOWER_E or text[at] == _UPPER_E):
        at += 1
        negative_exponent = at < end and text[at] == _MINUS
        if at < end and (text[at] == _MINUS or text[at] == _PLUS):
            at += 1
        exponent_digits = 0
        while at < end and _ZERO <= text[at] <= _NINE:
            if exponent_digits == 4:
                return 0.0, False
            exponent = exponent * 10 + (text[at] - _ZERO)
            exponent_digits += 1
            at += 1
        if exponent_digits == 0:
            return 0.0, False
        if negative_exponent:
            exponent = -exponent
    if at != end:
        return 0.0, False
    exponent -= decimals
    if mantissa > np.uint64(_LARGEST_EXACT_MANTISSA):
        return 0.0, False
    value = float(mantissa)
    if mantissa != 0:
        if 0 <= exponent <= 22:
            value *= _EXACT_POWERS_OF_TEN[exponent]
        elif -22 <= exponent < 0:
            value /= _EXACT_POWERS_OF_TEN[-exponent]
        else:
            return 0.0, False
    return -value if negative else value, True
