"""A restart from a snapshot (stores/durable.py) answers every read exactly as the store
did before it: on random streams of every event kind, with retries, expired event ids and
rejected batches, snapshots and restarts at random points."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stores import durable
from stores.events import Event, EventKind, EventValidationError
from stores.memory import MemoryStore
from tests.builders import DAY, NOW, social_dataset

USERS = ["alice", "bob", "carol", "dave", "erin"]
SELLERS = ["s1", "s2", "s3"]
ITEMS = ["i1", "i2", "i3", "i6", "a1", "n0", "n1"]  # n0, n1: listed only by an upsert of the stream
TTL = 100.0
OPTIONS = {"trending_refresh_seconds": 0.0, "dedupe_ttl": TTL}


def plain(value):
    """``value`` with its arrays as exact bytes and its dataclasses as tuples, for ==."""
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.tobytes())
    if dataclasses.is_dataclass(value):
        return tuple(plain(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    return value


def exact_state(store, event_ids) -> tuple:
    """Every answer the store gives, as codes and raw columns (so vocabularies must match too),
    and which of ``event_ids`` it would count as retries."""
    vocabularies = [v.ids(range(len(v))) for v in (store.items, store.sellers, store.users, store.categories)]
    codes = np.arange(len(store.items), dtype=np.int32)
    users = vocabularies[2] + ["stranger"]
    per_user = []
    for user in users:
        state = store.read_user(user)
        hidden = (np.sort(state.hidden_items), np.sort(state.hidden_sellers))  # sets, in no order
        state = dataclasses.replace(state, hidden_items=hidden[0], hidden_sellers=hidden[1])
        per_user.append((plain(state), plain(store.hydrate(user, codes))))
    activity = store.read_activity(vocabularies[1], users, 10**6, 10**6)
    return (plain(vocabularies), per_user, plain(activity), plain(store.read_cards(codes)),
            sorted(store.applied_event_ids(sorted(event_ids))))  # fmt: skip


class Clock:
    """The wall clock the durable store stamps batches with (the dedupe TTL runs on it)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return time.monotonic()


def event(kind: EventKind, event_id: str, ts: float, user: str, other: str, item: str, seller: str, number: int) -> Event:
    if kind in (EventKind.FOLLOW, EventKind.UNFOLLOW, EventKind.NOT_INTERESTED_SELLER):
        return Event(event_id, kind, ts, user_id=user, seller_id=seller)
    if kind in (EventKind.FRIEND, EventKind.UNFRIEND):
        return Event(event_id, kind, ts, user_id=user, friend_id=other)
    if kind is EventKind.SHARE:
        return Event(event_id, kind, ts, user_id=user, item_id=item, friend_id=other if number % 2 else "")
    if kind is EventKind.ITEM_UPSERT:
        return Event(event_id, kind, ts, item_id=item, seller_id=seller, created_at=None if number % 3 else ts - number,
                     stock=number % 3, title=f"t{number}", category=f"c{number % 4}", price=None if number % 2 else 1.5 * number)  # fmt: skip
    if kind is EventKind.STOCK_UPDATE:
        return Event(event_id, kind, ts, item_id=item, stock=number % 3)
    if kind is EventKind.ITEM_UPDATE:
        return Event(event_id, kind, ts, item_id=item, category=f"c{number % 5}", ship_days=number % 4)
    if kind is EventKind.SELLER_VACATION:
        return Event(event_id, kind, ts, seller_id=f"v{number % 3}", vacation_until=ts + DAY if number % 2 else float("inf"))
    if kind is EventKind.SELLER_VACATION_END:
        return Event(event_id, kind, ts, seller_id=f"v{number % 3}")
    return Event(event_id, kind, ts, user_id=user, item_id=item)


@st.composite
def events(draw) -> Event:
    user, other = draw(st.permutations(USERS))[:2]
    # Few ids: many events are retries (within the TTL) or reuse an id forgotten since.
    return event(draw(st.sampled_from(list(EventKind))), f"e{draw(st.integers(0, 40))}", NOW + draw(st.integers(-DAY, 600)),
                 user, other, draw(st.sampled_from(ITEMS)), draw(st.sampled_from(SELLERS)), draw(st.integers(0, 11)))  # fmt: skip


# (events, seconds the clock moves on before the batch, then: "" go on, "snapshot", "restart")
steps = st.lists(
    st.tuples(st.lists(events(), min_size=1, max_size=6), st.sampled_from([0.0, 1.0, 30.0, 70.0]),
              st.sampled_from(["", "", "", "snapshot", "restart"])),  # fmt: skip
    min_size=1,
    max_size=30,
)


def open_state(state_dir: str):
    return durable.open_durable_memory(social_dataset(), state_dir, snapshot_seconds=0, **OPTIONS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps)
def test_a_restart_from_a_snapshot_and_logs_answers_exactly_as_the_store_did(tmp_path_factory, monkeypatch, steps):
    clock = Clock()
    monkeypatch.setattr(durable, "time", clock)
    state_dir = str(tmp_path_factory.mktemp("state"))
    store = open_state(state_dir)
    reference = MemoryStore.from_dataset(social_dataset(), clock=clock.time, **OPTIONS)
    event_ids = {f"e{n}" for n in range(41)}
    try:
        for batch, wait, then in steps:
            clock.now += wait
            outcomes = []
            for target in (store, reference):
                try:
                    outcomes.append(target.apply(batch))
                except EventValidationError as error:
                    outcomes.append(str(error))
            assert outcomes[0] == outcomes[1]
            if then:
                if then == "snapshot":
                    store.snapshot()
                before = exact_state(store, event_ids)
                store.close()
                store = open_state(state_dir)
                assert exact_state(store, event_ids) == before
        store.snapshot()
        store.close()
        store = open_state(state_dir)
        assert exact_state(store, event_ids) == exact_state(reference, event_ids)
    finally:
        store.close()


# -- the snapshot benchmark ----------------------------------------------------------------------


def bench(*sizes: int) -> None:
    """Snapshot size and restart (replay) time against the number of events ingested: a
    stream of stock toggles, likes, unlikes and views on 50 items of a small catalogue,
    in batches of 100, then one snapshot. Best of three restarts."""
    import os
    import random
    import shutil
    from pathlib import Path

    from training.generate import generate

    dataset = generate(users=500, sellers=50, items=200, seed=1)
    fingerprint = dataset.fingerprint()
    users, items = sorted(set(dataset.likes.src))[:200], list(dataset.items.item_id[:50])
    kinds = [EventKind.STOCK_UPDATE, EventKind.LIKE, EventKind.UNLIKE, EventKind.VIEW]
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"snapshot-bench-{os.getpid()}"
    for size in sizes or (10_000, 50_000, 200_000):
        rnd = random.Random(0)
        shutil.rmtree(root, ignore_errors=True)
        store = durable.DurableStore(MemoryStore.from_dataset(dataset), fingerprint, str(root), fsync="off", snapshot_seconds=0)
        for start in range(0, size, 100):
            batch = []
            for n in range(start, start + 100):
                kind, item, ts = rnd.choice(kinds), rnd.choice(items), NOW - 3600 + n * 0.01
                if kind is EventKind.STOCK_UPDATE:
                    batch.append(Event(f"b{n}", kind, ts, item_id=item, stock=rnd.randrange(2)))
                else:
                    batch.append(Event(f"b{n}", kind, ts, user_id=rnd.choice(users), item_id=item))
            store.apply(batch)
        store.snapshot()
        store.close()
        restarts = []
        for _ in range(3):
            memory = MemoryStore.from_dataset(dataset)
            started = time.perf_counter()
            durable.DurableStore(memory, fingerprint, str(root), snapshot_seconds=0).close()
            restarts.append(time.perf_counter() - started)
        print(f"{size:>9,} events: snapshot {os.path.getsize(root / durable.SNAPSHOT) / 1e6:7.2f} MB, "
              f"restart {min(restarts):6.2f} s", flush=True)  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["bench"]:
        bench(*(int(arg) for arg in sys.argv[2:]))
