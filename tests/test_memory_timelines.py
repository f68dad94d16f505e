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
