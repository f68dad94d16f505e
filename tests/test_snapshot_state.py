"""A restart from a snapshot (stores/durable.py) answers every read exactly as the store
did before it: on random streams of every event kind, with retries, expired event ids and
rejected batches, snapshots and restarts at random points."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.bench_snapshot import snapshot_events
from stores import durable
from stores.applied_ids import AppliedIds
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


# Every kind, and more of those a snapshot may fold away or must keep though undone later.
KINDS = list(EventKind) + 3 * [EventKind.LIKE, EventKind.UNLIKE, EventKind.VIEW, EventKind.STOCK_UPDATE, EventKind.FOLLOW,
                               EventKind.UNFOLLOW, EventKind.CLICK]  # fmt: skip


@st.composite
def events(draw) -> Event:
    user, other = draw(st.permutations(USERS))[:2]
    # Few ids: many events are retries (within the TTL) or reuse an id forgotten since.
    return event(draw(st.sampled_from(KINDS)), f"e{draw(st.integers(0, 40))}", NOW + draw(st.integers(-DAY, 600)),
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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


def restarted_from_snapshot(store, state_dir: str):
    """``store`` snapshotted and closed, and its state directory opened again."""
    assert store.snapshot()
    store.close()
    return open_state(state_dir)


def test_a_snapshot_holds_the_state_not_the_history_and_still_knows_every_id(tmp_path):
    """Every stock change and follow toggle ever ingested was kept in the snapshot and
    replayed on each restart: 3,000 changes of one item's stock took 3,000 events."""
    store = open_state(str(tmp_path))
    toggles = [Event(f"s{n}", EventKind.STOCK_UPDATE, NOW, item_id="i1", stock=n % 2) for n in range(3_000)]
    follows = [Event(f"f{n}", EventKind.FOLLOW if n % 2 else EventKind.UNFOLLOW, NOW, user_id="bob", seller_id="s3")
               for n in range(1_000)]  # fmt: skip
    for start in range(0, 3_000, 100):
        store.apply(toggles[start : start + 100] + follows[start // 3 : start // 3 + 33])
    before = exact_state(store, {e.event_id for e in toggles + follows})
    store = restarted_from_snapshot(store, str(tmp_path))
    try:
        assert snapshot_events(str(tmp_path)) == 2  # the last stock change, the last follow toggle
        assert exact_state(store, {e.event_id for e in toggles + follows}) == before
        assert store.apply(toggles[:1] + follows[:1]).duplicates == 2  # retries of dropped events
    finally:
        store.close()


def test_a_fold_cuts_kept_events_out_of_the_log_whole_where_an_id_holds_the_separator(tmp_path):
    """A fold copies the kept events' bytes, cut at each "},{" between records: an event
    id holding one must not cut its record in two."""
    odd = 'x"},{"event_id":"y'
    batches = [[Event(f"s{n}", EventKind.STOCK_UPDATE, NOW + n, item_id="i1", stock=n),
                Event(f"{odd}{n}", EventKind.LIKE, NOW + n, user_id="alice", item_id="i2"),
                Event(f"v{n}", EventKind.VIEW, NOW + n, user_id="bob", item_id="i3")] for n in range(3)]  # fmt: skip
    ids = {event.event_id for batch in batches for event in batch}
    store = open_state(str(tmp_path))
    for batch in batches:
        store.apply(batch)
    before = exact_state(store, ids)
    store = restarted_from_snapshot(store, str(tmp_path))
    try:
        assert snapshot_events(str(tmp_path)) == 7  # less the two stock updates overwritten
        assert exact_state(store, ids) == before
    finally:
        store.close()


def _log_files(state_dir) -> list[str]:
    return sorted(name for name in os.listdir(state_dir) if name.startswith("wal-"))


def test_a_scheduled_snapshot_waits_for_logs_worth_the_snapshot(tmp_path):
    """Each fold rereads the whole snapshot: folding every period made a snapshot's CPU grow
    with the history, however little had been logged since. A scheduled one now waits
    until the logs hold SCHEDULED_FOLD_SHARE of the snapshot's bytes; an asked-for one folds."""
    store = open_state(str(tmp_path))
    try:
        likes = [Event(f"l{n}", EventKind.LIKE if n % 2 else EventKind.UNLIKE, NOW + n, user_id=USERS[n % 5], item_id=ITEMS[n % 4])
                 for n in range(3_000)]  # fmt: skip
        for start in range(0, 1_000, 100):
            store.apply(likes[start : start + 100])
        assert store.snapshot(durable.SCHEDULED_FOLD_SHARE)  # no snapshot yet: the first always folds
        snapshot_bytes = os.path.getsize(tmp_path / durable.SNAPSHOT)
        store.apply(likes[1_000:1_100])
        assert not store.snapshot(durable.SCHEDULED_FOLD_SHARE)
        assert os.path.getsize(tmp_path / durable.SNAPSHOT) == snapshot_bytes and _log_files(tmp_path)
        for start in range(1_100, 3_000, 100):
            store.apply(likes[start : start + 100])
        assert store.snapshot(durable.SCHEDULED_FOLD_SHARE)
        store.apply(likes[:1] + [Event("l-new", EventKind.LIKE, NOW, user_id="bob", item_id="i2")])
        assert store.snapshot()  # asked for: folds whatever the logs hold
        assert [name for name in _log_files(tmp_path) if os.path.getsize(tmp_path / name) > 200] == []
    finally:
        store.close()


def test_the_snapshot_schedule_leaves_a_small_log_to_the_next_fold(tmp_path):
    store = durable.open_durable_memory(social_dataset(), str(tmp_path), snapshot_seconds=0.02, **OPTIONS)
    try:
        likes = [Event(f"l{n}", EventKind.LIKE, NOW + n, user_id=USERS[n % 5], item_id=ITEMS[n % 5]) for n in range(1_100)]
        store.apply(likes[:1_000])  # one batch: the first fold takes all of it
        _wait_for(lambda: (tmp_path / durable.SNAPSHOT).exists() and snapshot_events(str(tmp_path)) == 1_000)
        folded = os.path.getsize(tmp_path / durable.SNAPSHOT)
        store.apply(likes[1_000:])
        time.sleep(0.5)  # 25 periods
        assert os.path.getsize(tmp_path / durable.SNAPSHOT) == folded
        assert snapshot_events(str(tmp_path)) == 1_000
    finally:
        store.close()


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_events_undone_later_are_kept_where_they_left_a_trace(tmp_path):
    """A like cleared the user's views of the item, and moved its trending score by a
    rounding that its unlike does not take back: the snapshot keeps both, and the views."""
    stream = [
        Event("v", EventKind.VIEW, NOW - 60, user_id="alice", item_id="i3"),
        Event("l1", EventKind.LIKE, NOW - 50, user_id="alice", item_id="i3"),
        Event("u1", EventKind.UNLIKE, NOW - 40, user_id="alice", item_id="i3"),
        Event("l2", EventKind.LIKE, NOW - 1234.567, user_id="alice", item_id="i6"),
        Event("u2", EventKind.UNLIKE, NOW - 30, user_id="alice", item_id="i6"),
        Event("l3", EventKind.LIKE, NOW - 20, user_id="alice", item_id="i6"),
    ]
    store = open_state(str(tmp_path))
    for event in stream:
        store.apply([event])
    before = exact_state(store, {event.event_id for event in stream})
    store = restarted_from_snapshot(store, str(tmp_path))
    try:
        assert exact_state(store, {event.event_id for event in stream}) == before
    finally:
        store.close()


def mixed_stream(prefix: str, count: int) -> list[list[Event]]:
    """``count`` batches of stock changes, follow toggles, likes and views, some retried."""
    batches = []
    for n in range(count):
        batches.append([
            Event(f"{prefix}s{n}", EventKind.STOCK_UPDATE, NOW + n, item_id=ITEMS[n % 4], stock=n % 3),
            Event(f"{prefix}f{n}", EventKind.FOLLOW if n % 3 else EventKind.UNFOLLOW, NOW + n, user_id=USERS[n % 5], seller_id="s3"),
            Event(f"{prefix}l{n}", EventKind.LIKE if n % 2 else EventKind.UNLIKE, NOW + n, user_id=USERS[n % 4], item_id=ITEMS[n % 3]),
            Event(f"{prefix}v{n}", EventKind.VIEW, NOW + n, user_id=USERS[n % 3], item_id=ITEMS[n % 5]),
        ] + (batches[-1][:2] if n % 4 == 3 else []))  # fmt: skip
    return batches


def test_a_snapshot_of_the_batches_themselves_still_replays_and_the_next_one_folds_it(tmp_path):
    """A state directory from before snapshots were compacted (format version 1: the
    batches concatenated) keeps working, and its next snapshot is compacted."""
    store = open_state(str(tmp_path))
    for batch in mixed_stream("a", 30):
        store.apply(batch)
    through = store._written
    store.close()
    logs = sorted(tmp_path.glob("wal-*.log"))
    lines = b"".join(log.read_bytes().split(b"\n", 1)[1] for log in logs)
    header = durable.header_record("snapshot", social_dataset().fingerprint(), through_seq=through)
    (tmp_path / durable.SNAPSHOT).write_bytes(header + lines)
    for log in logs:
        log.unlink()
    ids = {event.event_id for batch in mixed_stream("a", 30) + mixed_stream("b", 10) for event in batch}
    store = open_state(str(tmp_path))
    before = exact_state(store, ids)
    for batch in mixed_stream("b", 10):
        store.apply(batch)
    after = exact_state(store, ids)
    store = restarted_from_snapshot(store, str(tmp_path))
    try:
        assert before != after and exact_state(store, ids) == after
        assert snapshot_events(str(tmp_path)) < sum(map(len, mixed_stream("a", 30) + mixed_stream("b", 10)))
    finally:
        store.close()


def test_a_compacted_snapshot_missing_a_whole_record_is_an_error(tmp_path):
    store = open_state(str(tmp_path))
    for batch in mixed_stream("a", 10):
        store.apply(batch)
    assert store.snapshot()
    store.close()
    path = tmp_path / durable.SNAPSHOT
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))  # cut at a record's end: no torn tail to see
    with pytest.raises(durable.WalError, match="holds batches up to 9, its header says 10"):
        open_state(str(tmp_path))


def test_the_snapshot_benchmark_reports_each_stream_and_the_toggles_fold(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_snapshot", "--sizes", "1000"], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    kept = dict(re.findall(r"(\w+)\s+1,000 events: snapshot\s+[\d.]+ MB \(\s*([\d,]+) events\)", result.stdout))
    assert set(kept) == {"mixed", "toggles"}, result.stdout
    assert int(kept["toggles"].replace(",", "")) < 1000, result.stdout  # stock changes and follow toggles overwritten
    assert not list(tmp_path.iterdir()), "the benchmark left its state directory behind"
    # Events come in batches of 100: 150 ingested 200 and reported 150.
    refused = subprocess.run([sys.executable, "-m", "benchmarks.bench_snapshot", "--sizes", "150"], capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "--sizes: each a multiple of 100" in refused.stderr, refused.stderr


def test_the_applied_ids_are_written_as_the_json_of_their_record():
    applied = AppliedIds()
    applied.remember(["a", 'quote"d', "é"], 10.0, 0)
    applied.remember(["b1", "b2"], 10.5, 100.0)
    applied.remember(["c\\1"], 11.0, 99.5)
    record = {"forever": ["a", 'quote"d', "é"], "expiring": [[110.5, "b1"], [110.5, "b2"], [110.5, "c\\1"]]}
    assert applied.to_json() == json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert AppliedIds.from_record(record).to_json() == applied.to_json()
