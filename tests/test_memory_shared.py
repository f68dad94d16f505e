"""The memory store's shares with one user (stores.memory._SharedWith): newest first, ties by
item id then sharer, one entry per (item, sharer) at its newest share, at most SHARED_BOUND."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranking.store import SHARED_BOUND
from stores.memory import _SharedWith


def expected(shares: list[tuple[int, str, float]]) -> list[tuple[str, str, float]]:
    """(item id, sharer, time) of each (item, sharer)'s newest share, ordered and cut as the store keeps them."""
    newest: dict[tuple[int, str], float] = {}
    for code, sharer, ts in shares:
        newest[(code, sharer)] = max(ts, newest.get((code, sharer), ts))
    kept = sorted((-ts, f"i{code:03d}", sharer) for (code, sharer), ts in newest.items())
    return [(item_id, sharer, -minus_ts) for minus_ts, item_id, sharer in kept[:SHARED_BOUND]]


shares = st.lists(
    st.tuples(st.integers(0, 80), st.sampled_from(["ann", "bob", "cy"]), st.integers(0, 40).map(float)),
    min_size=SHARED_BOUND - 10, max_size=3 * SHARED_BOUND,
)


@settings(max_examples=200, deadline=None)
@given(shares)
def test_the_kept_shares_are_the_newest_per_item_and_sharer_in_order_and_bounded(shares):
    """Many shares of a few items by a few sharers at a few times: ties, repeats, older shares
    after newer ones, and more than the bound, against a model of the whole history."""
    shared = _SharedWith()
    for code, sharer, ts in shares:
        shared.add(code, f"i{code:03d}", sharer, ts)
    read = shared.read()
    assert list(zip([f"i{code:03d}" for code in read.items.tolist()], read.sharers, read.times.tolist())) == expected(shares)


@pytest.mark.parametrize("seed", range(20))
def test_long_runs_of_shares_past_the_bound(seed):
    """A thousand shares over 150 items by three sharers, in random order of time: the bound
    is reached early, and most later shares land among, or just past, the kept ones."""
    rnd = random.Random(seed)
    history = [(rnd.randrange(150), rnd.choice(["ann", "bob", "cy"]), float(rnd.randrange(300))) for _ in range(1000)]
    shared = _SharedWith()
    for code, sharer, ts in history:
        shared.add(code, f"i{code:03d}", sharer, ts)
    read = shared.read()
    assert list(zip([f"i{code:03d}" for code in read.items.tolist()], read.sharers, read.times.tolist())) == expected(history)
