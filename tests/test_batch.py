"""CandidateBatch.merged (a compiled kernel) against a plain-Python reading of its contract."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ranking import batch as bits
from ranking.batch import CandidateBatch, SourceCandidates

ABSENT = {"embedding_score": math.nan, "friend_likes": 0, "friend_like_time": -math.inf, "social_time": -math.inf, "friend_shares": 0}
TIMES = st.sampled_from([-math.inf, 0.0, 5.0, 100.0, 1e9])
SIGNAL_VALUES = {
    "embedding_score": st.sampled_from([math.nan, -1.5, 0.0, 0.25, 2.0]),
    "friend_likes": st.integers(0, 4),
    "friend_like_time": TIMES,
    "social_time": TIMES,
    "friend_shares": st.integers(0, 3),
}


@st.composite
def source_parts(draw):
    parts = []
    for source, _ in draw(st.lists(st.sampled_from(bits.SOURCE_BITS), max_size=6)):
        codes = draw(st.lists(st.integers(0, 12), max_size=8))
        names = draw(st.lists(st.sampled_from(sorted(SIGNAL_VALUES)), unique=True, max_size=3))
        signals = {name: np.array([draw(SIGNAL_VALUES[name]) for _ in codes]) for name in names}
        parts.append(SourceCandidates(np.array(codes, np.int64), dict(bits.SOURCE_BITS)[source], signals))
    return parts


def strongest(values: list[float], absent: float) -> float:
    known = [v for v in values if not math.isnan(v)]
    return max(known) if known else absent


@settings(max_examples=200, deadline=None)
@given(source_parts())
def test_merged_keeps_one_row_per_item_with_its_strongest_signals(parts):
    merged = CandidateBatch.merged(parts)
    rows: dict[int, dict] = {}
    for part in parts:
        for at, code in enumerate(part.codes.tolist()):
            row = rows.setdefault(code, {"sources": 0, **{name: [] for name in ABSENT}})
            row["sources"] |= int(part.source)
            for name, values in part.signals.items():
                row[name].append(float(values[at]))
    assert merged.codes.tolist() == sorted(rows)
    assert merged.codes.dtype == np.int32 and merged.sources.dtype == np.uint8
    for at, code in enumerate(merged.codes.tolist()):
        assert merged.sources[at] == rows[code]["sources"]
        for name, absent in ABSENT.items():
            expected = strongest(rows[code][name], absent)
            got = float(getattr(merged, name)[at])
            assert got == expected or (math.isnan(got) and math.isnan(expected)), (name, code)


def test_merged_of_nothing_is_empty_with_the_batch_dtypes():
    for parts in ([], [SourceCandidates.none()]):
        merged = CandidateBatch.merged(parts)
        assert len(merged) == 0 and merged.codes.dtype == np.int32 and merged.friend_likes.dtype == np.int32
