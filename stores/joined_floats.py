"""float64 of a comma-joined string of decimal numbers: how Redis's read scripts reply.

A feed's replies from Redis carry a few thousand numbers (item columns, sorted-set
scores), each column joined into one string. pyarrow parsed them in about 30 µs per call
plus 80 ns per number, and about three times that inside a feed: a fifth of a Redis
feed's client CPU (benchmarks/README.md, "Redis: numbers parsed without pyarrow"). The
compiled parser below reads them in one pass with no allocation beyond the result.

It is exact where it answers: a number with at most 2^53 as its digits and a power of
ten up to 22 is one correctly rounded multiplication or division of two exact doubles
(Clinger's fast path), so it gives the same double as ``float()``. Anything else (17
significant digits, as Redis writes many scores; a large exponent; a malformed token)
sends the whole string to pyarrow, which is correctly rounded too and raises on
malformed text.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_EXACT_POWERS_OF_TEN = np.array([10.0**k for k in range(23)])
_LARGEST_EXACT_MANTISSA = 2**53
_MAX_DIGITS = 19  # what a uint64 mantissa holds without overflow

_COMMA, _MINUS, _PLUS, _DOT, _ZERO, _NINE = (ord(c) for c in ",-+.09")
_LOWER_E, _UPPER_E, _LOWER_I, _LOWER_N, _LOWER_A, _LOWER_F = (ord(c) for c in "eEinaf")


def joined_floats(text: str) -> np.ndarray:
    """The numbers of ``text`` ("1.5,-2,inf,nan,3e+20"), none when it is empty."""
    if not text:
        return np.zeros(0)
    out = np.empty(text.count(",") + 1)
    if _parse(np.frombuffer(text.encode(), np.uint8), out):
        return out
    return pc.cast(pc.split_pattern(pa.array([text]), ",").flatten(), pa.float64()).to_numpy(zero_copy_only=False, writable=True)


def warm_up() -> None:
    """Compile the parser (or load it from numba's cache) before the first feed needs it."""
    joined_floats("0")


@numba.njit(cache=True, nogil=True)
def _parse(text, out):
    """Fill ``out`` with the numbers of ``text`` (ASCII bytes); False: a token needs the
    correctly rounded slow path (or is malformed), and ``out`` is partly written."""
    n = len(text)
    at = 0
    for k in range(len(out)):
        negative = at < n and text[at] == _MINUS
        if at < n and (text[at] == _MINUS or text[at] == _PLUS):
            at += 1
        if at + 3 <= n and text[at] == _LOWER_I and text[at + 1] == _LOWER_N and text[at + 2] == _LOWER_F:
            value = np.inf
            at += 3
        elif at + 3 <= n and text[at] == _LOWER_N and text[at + 1] == _LOWER_A and text[at + 2] == _LOWER_N:
            value = np.nan
            at += 3
        else:
            mantissa = np.uint64(0)
            digits = 0  # significant digits in the mantissa
            decimals = 0  # digits after the point, leading zeros included
            any_digit = False
            after_point = False
            while at < n:
                c = text[at]
                if _ZERO <= c <= _NINE:
                    any_digit = True
                    if after_point:
                        decimals += 1
                    if mantissa != 0 or c != _ZERO:
                        if digits == _MAX_DIGITS:
                            return False
                        mantissa = mantissa * np.uint64(10) + np.uint64(c - _ZERO)
                        digits += 1
                elif c == _DOT and not after_point:
                    after_point = True
                else:
                    break
                at += 1
            if not any_digit:
                return False
            exponent = 0
            if at < n and (text[at] == _LOWER_E or text[at] == _UPPER_E):
                at += 1
                negative_exponent = at < n and text[at] == _MINUS
                if at < n and (text[at] == _MINUS or text[at] == _PLUS):
                    at += 1
                exponent_digits = 0
                while at < n and _ZERO <= text[at] <= _NINE:
                    if exponent_digits == 4:
                        return False
                    exponent = exponent * 10 + (text[at] - _ZERO)
                    exponent_digits += 1
                    at += 1
                if exponent_digits == 0:
                    return False
                if negative_exponent:
                    exponent = -exponent
            exponent -= decimals
            if mantissa > np.uint64(_LARGEST_EXACT_MANTISSA):
                return False
            value = float(mantissa)
            if mantissa != 0:
                if 0 <= exponent <= 22:
                    value *= _EXACT_POWERS_OF_TEN[exponent]
                elif -22 <= exponent < 0:
                    value /= _EXACT_POWERS_OF_TEN[-exponent]
                else:
                    return False
        if at < n and text[at] != _COMMA:
            return False
        out[k] = -value if negative else value
        at += 1
    return at >= n
