"""Length-prefixed packed values split in one compiled pass, as a plain Python split would."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stores import packed_frames
from stores.packed_frames import PACKED_NUMBERS, split_frames, split_values
from stores.redis import pack_item

TEXT = st.one_of(st.sampled_from(["", "s1", "a|b:c,ü", "1:x", "|", ":" * 3, "ß" * 40, "0:"]), st.text(max_size=12))
NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**9), 10**9).map(float))
ITEM = st.one_of(
    st.none(),  # a missing item
    st.builds(
        lambda seller, category, created, stock, likes, eligible, price, ship, trending: (
            {"seller": seller, "category": category, "created_at": repr(created), "stock": str(stock), "like_count": str(likes),
             "feed_eligible": "1" if eligible else "0", "price": repr(price), "ship_days": repr(ship)}, trending),
        TEXT, TEXT, NUMBER, st.integers(0, 10**6), st.integers(0, 10**6), st.booleans(), NUMBER, NUMBER,
        st.floats(min_value=0, allow_infinity=False, allow_nan=False),
    ),  # fmt: skip
)


def _framed(items: list) -> str:
    values = [None if item is None else pack_item(*item) for item in items]
    return "".join("0:" if v is None else f"{len(v.encode())}:{v}" for v in values)


def _expected(item) -> tuple:
    if item is None:
        return False, ("0.0", "0.0", "0.0", "1.0", "nan", "nan", "0.0"), "", ""
    fields, trending = item
    numbers = (fields["created_at"], fields["stock"], fields["like_count"], "0" if fields["feed_eligible"] == "0" else "1",
               fields["price"], fields["ship_days"], repr(float(trending)))  # fmt: skip
    return True, tuple(repr(float(v)) for v in numbers), fields["seller"], fields["category"]


def _got(frames, row: int) -> tuple:
    return (bool(frames.exists[row]), tuple(repr(float(v)) for v in frames.numbers[row]),
            frames.sellers[frames.seller_of[row]], frames.categories[frames.category_of[row]])  # fmt: skip


@settings(max_examples=300, deadline=None)  # the first example compiles the splitter (or loads numba's cache)
@given(st.lists(ITEM, max_size=30))
def test_frames_split_into_each_items_numbers_seller_and_category(items: list) -> None:
    frames = split_frames(_framed(items), len(items))
    assert frames.numbers.shape == (len(items), PACKED_NUMBERS)
    assert [_got(frames, row) for row in range(len(items))] == [_expected(item) for item in items]
    assert len(set(frames.sellers)) == len(frames.sellers) and len(set(frames.categories)) == len(frames.categories)


@settings(max_examples=300, deadline=None)
@given(st.lists(ITEM, max_size=30))
def test_values_as_hmget_answers_them_split_as_their_frames_do(items: list) -> None:
    values = [None if item is None else pack_item(*item).encode() for item in items]
    frames = split_values(values)
    assert [_got(frames, row) for row in range(len(items))] == [_expected(item) for item in items]


@pytest.mark.parametrize("value", [b"", b"1,2", b"x,1,1,1,nan,nan,0|1:s", b"1,1,1,1,nan,nan,0|9:s", b"1,1,1,1,nan,nan|1:s"])
def test_a_malformed_value_raises(value: bytes) -> None:
    good = pack_item({"seller": "s", "created_at": "1", "stock": "1"}).encode()
    if value:
        with pytest.raises(ValueError, match="malformed packed item values"):
            split_values([good, value])
    else:  # an empty value is a missing item, as HMGET's nil is
        assert split_values([good, value]).exists.tolist() == [True, False]


def test_strings_that_share_a_hash_still_get_their_own_value(monkeypatch) -> None:
    items = [({"seller": seller, "category": "c", "created_at": "1", "stock": "1"}, 0.0) for seller in ("a", "b", "a", "é")]
    real = packed_frames._fnv.py_func
    monkeypatch.setattr(packed_frames, "_split", packed_frames._split.py_func)
    monkeypatch.setattr(packed_frames, "_fnv", lambda blob, start, end: np.uint64(7) if end > start else real(blob, start, end))
    frames = split_frames(_framed(items), 4)
    assert [frames.sellers[at] for at in frames.seller_of] == ["a", "b", "a", "é"]


@pytest.mark.parametrize("text", ["", "5:abc", "3:1,2", "x:", "2:", "0:0:"])
def test_malformed_frames_raise(text: str) -> None:
    with pytest.raises(ValueError, match="malformed packed item values"):
        split_frames(text, 1)


def test_a_missing_items_numbers_are_the_stores_defaults() -> None:
    frames = split_frames("0:", 1)
    assert not frames.exists[0] and frames.numbers[0, 3] == 1.0 and math.isnan(frames.numbers[0, 4])
