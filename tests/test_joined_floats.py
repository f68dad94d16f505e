"""The compiled parser of comma-joined numbers gives exactly what float() gives."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stores.joined_floats import _fast_path, _parse, joined_floats

# How the numbers in Redis's replies are written: Python's repr (what the loader and the
# ingest path store), Redis's %.17g (sorted-set scores) and Lua's %.14g (numbers a script
# turned into text), plus integers and the specials.
_FORMATS = (repr, lambda x: "%.17g" % x, lambda x: "%.14g" % x, lambda x: "%.6f" % x, lambda x: str(int(x)) if math.isfinite(x) else repr(x))

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=1.5e9, max_value=1.9e9),  # Unix times
    st.integers(min_value=-(10**12), max_value=10**12).map(float),
    st.decimals(min_value=0, max_value=10_000, places=2).map(float),  # prices
)


def _same(got: np.ndarray, want: list[float]) -> bool:
    want_array = np.array(want, dtype=np.float64)
    return got.shape == want_array.shape and np.array_equal(got, want_array, equal_nan=True) and (
        np.signbit(got) == np.signbit(want_array)
    )[~np.isnan(want_array)].all()


@settings(max_examples=400, deadline=None)  # the first example compiles the parser (or loads numba's cache)
@given(st.lists(numbers, min_size=1, max_size=60), st.sampled_from(_FORMATS))
def test_joined_floats_equal_float_of_each_number(values: list[float], write) -> None:
    tokens = [write(v) for v in values]
    text = ",".join(tokens)
    assert _same(joined_floats(text), [float(t) for t in tokens]), text


# Decimal tokens around the compiled path's limits: 2^53 as digits, powers of ten up to 22.
tokens = st.builds(
    lambda sign, digits, point, exponent: f"{sign}{digits[:point]}.{digits[point:]}e{exponent}" if point else f"{sign}{digits}e{exponent}",
    st.sampled_from(["", "-", "+"]),
    st.integers(min_value=0, max_value=10**25).map(str),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=-30, max_value=30),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(tokens, min_size=1, max_size=20))
def test_tokens_at_the_limits_equal_float(values: list[str]) -> None:
    text = ",".join(values)
    assert _same(joined_floats(text), [float(t) for t in values]), text


def _bytes(text: str) -> np.ndarray:
    return np.frombuffer((text + "\0").encode(), np.uint8)


def _exact_on_the_fast_path(token: str) -> bool:
    return _fast_path(_bytes(token), 0, len(token))[1]


def test_the_numbers_of_a_feed_take_the_fast_path() -> None:
    # Packed item columns, times, flags, no scores, an absent time: no strtod, no pyarrow.
    for text in ("1764598952.0,43,6,1,52.87,6,1762529513.25,0,0,1,nan,nan", "-1767213367,-1767204864.5", "0,0,inf,-inf,0"):
        assert all(_exact_on_the_fast_path(token) for token in text.split(",")), text
        assert _same(joined_floats(text), [float(t) for t in text.split(",")])


def test_seventeen_digits_go_to_strtod_and_still_read_exactly() -> None:
    # Redis's %.17g of a trending score; 2^64 + 5, twenty digits, which a uint64
    # mantissa would wrap to 5; a power of ten past 22.
    for token in ("3.2206672326480324e+32", "18446744073709551621", "1e+23", "4.9406564584124654e-324"):
        assert not _exact_on_the_fast_path(token), token
        text = f"0.1,{token},7"
        out = np.empty(3)
        assert _parse(_bytes(text), out, np.zeros(1, np.intp)), text  # not pyarrow's
        assert _same(out, [0.1, float(token), 7.0]), text


def test_empty_text_is_no_numbers() -> None:
    assert joined_floats("").shape == (0,)


@pytest.mark.parametrize("text", ["1,,2", "1,", ",1", "abc", "1.2.3", "1e", "--1", "1 ,2", "1e400x", "0x10"])
def test_malformed_text_raises(text: str) -> None:
    with pytest.raises(pa.ArrowInvalid):
        joined_floats(text)
