"""The memory store's timelines (stores.memory.TimelineTable): each key's list, newest first,
ties by id, as adds and removes after the bulk build leave it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ranking.vocab import Vocabulary
from stores.memory import TimelineTable, id_ranks

IDS = [f"i{n:02d}" for n in range(30)]


def expected_row(entries: dict[int, float], ids: Vocabulary) -> list[tuple[int, float]]:
    return sorted(entries.items(), key=lambda entry: (-entry[1], ids.id(entry[0])))


@pytest.mark.parametrize("seed", range(20))
def test_adds_and_removes_keep_each_row_newest_first_ties_by_id(seed):
    """Random adds (replacing), adds unless present and removes, on a bulk-built table, against
    a dict per key; times come from a few values, so ties are common."""
    rnd = random.Random(seed)
    ids = Vocabulary()
    ids.codes(rnd.sample(IDS, len(IDS)), add=True)  # codes not in id order
    model: dict[int, dict[int, float]] = {key: {} for key in range(4)}
    for key in model:
        for item in rnd.sample(range(len(IDS)), rnd.randrange(6)):
            model[key][item] = float(rnd.randrange(5))
    keys = [key for key, entries in model.items() for _ in entries]
    table = TimelineTable.build(
        np.array(keys, np.int64), np.array([item for entries in model.values() for item in entries], np.int32),
        np.array([at for entries in model.values() for at in entries.values()]), len(model), id_ranks(ids),
    )  # fmt: skip
    for _ in range(60):
        key, item, at, what = rnd.randrange(5), rnd.randrange(len(IDS)), float(rnd.randrange(5)), rnd.randrange(3)
        entries = model.setdefault(key, {})
        if what == 0:
            table.add(key, item, at, ids)
            entries[item] = at
        elif what == 1:
            assert table.add_if_absent(key, item, at, ids) == (item not in entries)
            entries.setdefault(item, at)
        else:
            assert table.remove(key, item) == entries.pop(item, None)
        for each, its_entries in model.items():
            items, times = table.row(each)
            assert list(zip(items.tolist(), times.tolist())) == expected_row(its_entries, ids), (each, what)
            assert items.dtype == np.int32 and times.dtype == np.float64


def test_many_entries_at_one_time_are_inserted_without_walking_the_ties():
    """Events with ts 0 take the time their batch reached the server, the same for all: a
    seller's 5,000 new listings in one batch, or a user's 5,000 likes, walked every earlier
    tie in Python to place each one by id, 4-5 s each (19 s for 10,000 likes) under the
    memory store's lock, which every feed waits for and every feed process replays."""
    import time

    from stores.events import Event, EventKind
    from stores.memory import MemoryStore
    from tests.builders import NOW, social_dataset

    store = MemoryStore.from_dataset(social_dataset())
    upserts = [Event(f"n{n}", EventKind.ITEM_UPSERT, NOW, item_id=f"n{n}", seller_id="s9", stock=1) for n in range(5_000)]
    likes = [Event(f"l{n}", EventKind.LIKE, NOW, user_id="fan", item_id=f"n{n}") for n in range(5_000)]
    for batch in (upserts, likes):
        started = time.perf_counter()
        store.apply(batch)
        assert time.perf_counter() - started < 2.0
    newest = sorted(f"n{n}" for n in range(5_000))[:3]
    assert store.items.ids(store._likes.row(store.users.code("fan"))[0][:3].tolist()) == newest
    assert store.items.ids(store._listings.row(store.sellers.code("s9"))[0][:3].tolist()) == newest
