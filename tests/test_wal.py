"""The durable memory store (stores/durable.py, stores/wal.py): a write-ahead log of every
acknowledged batch, replayed over the dataset on start, folded into a snapshot on a schedule.

Also run as a program: ``python -m tests.test_wal child ...`` is the ingesting process the
SIGKILL test kills. The ingest benchmark is ``python -m benchmarks.bench_wal``.
"""

from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serving.store_url import Durability, open_store
from stores import durable
from stores.base import StoreUnavailable
from stores.durable import SNAPSHOT, DurableStore, open_durable_memory
from stores.events import Event, EventKind, EventValidationError, validate_batch
from stores.memory import MemoryStore
from stores.wal import WalError, batch_record, encode_events, truncate
from tests import store_views as views
from tests.builders import DAY, NOW, make_dataset, social_dataset
from tests.test_store_contract import (  # noqa: F401 (re-collected here with the durable store_factory below)
    test_a_batch_with_an_unknown_item_changes_nothing,
    test_a_retried_event_id_changes_nothing,
    test_a_share_reaches_the_named_friend_or_every_friend,
    test_an_engagement_with_an_unknown_item_changes_nothing,
    test_an_item_upserted_earlier_in_the_batch_can_be_liked,
    test_an_upsert_without_created_at_keeps_an_existing_items_listing_time,
    test_follow_friend_and_their_reversals,
    test_item_events_change_only_the_card_fields_they_name,
    test_item_upsert_lists_the_item_and_stock_updates_apply,
    test_like_and_unlike_update_counts_and_activity,
    test_not_interested_hides_items_and_sellers,
    test_shares_with_a_user_are_bounded_newest_first,
    test_vacations_start_and_end_by_event,
    test_views_count_until_the_user_engages,
    test_views_far_apart_start_a_new_count,
)
from training.dataset import write_dataset

REPO = Path(__file__).resolve().parent.parent
USERS = ["alice", "bob", "carol", "dave", "erin"]
SELLERS = ["s1", "s2", "s3", "alice"]
ITEMS = ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "a1", "n0", "n1", "n2", "n3", "n4"]
STORE_OPTIONS = {"trending_refresh_seconds": 0.0}


# -- the contract suite, on the durable store ----------------------------------------------


class ReopeningStore:
    """A durable store closed and reopened after every apply (every other time through a
    snapshot), so each read that follows a write is answered by a store rebuilt from the
    dataset and the state directory alone."""

    def __init__(self, dataset, state_dir: Path) -> None:
        self._open = lambda: open_durable_memory(dataset, str(state_dir), snapshot_seconds=0, **STORE_OPTIONS)
        self.store = self._open()
        self.applies = 0

    def apply(self, events):
        try:
            return self.store.apply(events)
        finally:
            self.applies += 1
            if self.applies % 2 == 0:
                self.store.snapshot()
            self.store.close()
            self.store = self._open()

    def close(self) -> None:
        self.store.close()

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture(params=["durable", "durable-reopened"])
def store_factory(request, tmp_path):
    """The contract tests imported above, on the durable store: as it runs, and reopened
    from its state directory after every write."""
    created = []

    def factory(dataset):
        state_dir = tmp_path / f"state{len(created)}"
        if request.param == "durable":
            store = open_durable_memory(dataset, str(state_dir), snapshot_seconds=0, **STORE_OPTIONS)
        else:
            store = ReopeningStore(dataset, state_dir)
        created.append(store)
        return store

    yield factory
    for store in created:
        store.close()


# -- helpers -----------------------------------------------------------------------------------


def mixed_batches(seed: int, n_batches: int = 40, size: int = 6, prefix: str = "m") -> list[list[Event]]:
    """Valid batches of every event kind over social_dataset's ids (and five new items),
    with whole and partial retries mixed in."""
    rnd = random.Random(seed)
    sellers = ["s1", "s2", "s3"]
    batches = [[
        Event(f"{prefix}-up{k}", EventKind.ITEM_UPSERT, NOW, item_id=f"n{k}", seller_id=sellers[k % 3], created_at=NOW - k * 3600,
              stock=3, title=f"New {k}", price=9.5 + k, currency="EUR", category=f"c{k % 2}", ship_days=2)
        for k in range(5)
    ]]  # fmt: skip
    kinds = list(EventKind)
    for b in range(n_batches):
        batch = []
        for j in range(size):
            event_id, ts = f"{prefix}-{b}-{j}", NOW + b * 60 + j
            kind = rnd.choice(kinds)
            user, other = rnd.sample(USERS, 2)
            item, seller = rnd.choice(ITEMS), rnd.choice(sellers)
            if kind in (EventKind.LIKE, EventKind.UNLIKE, EventKind.NOT_INTERESTED_ITEM, EventKind.VIEW, EventKind.CLICK,
                        EventKind.ADD_TO_CART, EventKind.PURCHASE):  # fmt: skip
                event = Event(event_id, kind, ts, user_id=user, item_id=item)
            elif kind is EventKind.SHARE:
                event = Event(event_id, kind, ts, user_id=user, item_id=item, friend_id=rnd.choice([other, ""]))
            elif kind in (EventKind.FOLLOW, EventKind.UNFOLLOW, EventKind.NOT_INTERESTED_SELLER):
                event = Event(event_id, kind, ts, user_id=user, seller_id=seller)
            elif kind in (EventKind.FRIEND, EventKind.UNFRIEND):
                event = Event(event_id, kind, ts, user_id=user, friend_id=other)
            elif kind is EventKind.ITEM_UPSERT:
                event = Event(event_id, kind, ts, item_id=f"n{rnd.randrange(5)}", seller_id=seller, created_at=None if b % 3 == 0 else ts - 60,
                              stock=rnd.randrange(3), title="", feed_eligible=rnd.random() < 0.8)  # fmt: skip
            elif kind is EventKind.STOCK_UPDATE:
                event = Event(event_id, kind, ts, item_id=item, stock=rnd.randrange(4))
            elif kind is EventKind.ITEM_UPDATE:
                event = Event(event_id, kind, ts, item_id=item, title=f"t{b}", price=None if rnd.random() < 0.5 else 1.25 * b)
            elif kind is EventKind.SELLER_VACATION:
                event = Event(event_id, kind, ts, seller_id=seller, vacation_until=rnd.choice([ts + DAY, float("inf")]))
            else:
                event = Event(event_id, kind, ts, seller_id=seller)
            batch.append(event)
        validate_batch(batch)
        batches.append(batch)
        if rnd.random() < 0.15:
            batches.append(rnd.choice(batches))  # a retried batch
        if rnd.random() < 0.15:
            batches.append(batch[:2] + [Event(f"{prefix}-{b}-x", EventKind.VIEW, ts, user_id=user, item_id="i1")])
    return batches


def state_of(store) -> tuple:
    """Everything a feed reads, by ids."""
    return (
        [views.read_user(store, user) for user in USERS],
        views.read_activity(store, SELLERS, USERS, 50, 50),
        [views.hydrate(store, user, ITEMS) for user in USERS],
    )


def apply_all(stores, batches) -> None:
    for batch in batches:
        outcomes = []
        for store in stores:
            try:
                outcomes.append(store.apply(batch))
            except EventValidationError as error:
                outcomes.append(str(error))
        assert all(outcome == outcomes[0] for outcome in outcomes)


def log_files(state_dir: Path) -> list[Path]:
    return sorted(state_dir.glob("wal-*.log"))


def reference(batches) -> MemoryStore:
    store = MemoryStore.from_dataset(social_dataset(), **STORE_OPTIONS)
    apply_all([store], batches)
    return store


def open_state(state_dir: Path, **options) -> DurableStore:
    return open_durable_memory(social_dataset(), str(state_dir), **{"snapshot_seconds": 0, **STORE_OPTIONS, **options})


# -- replay ------------------------------------------------------------------------------------

def test_the_log_holds_each_batch_as_event_records(tmp_path):

    batches = mixed_batches(seed=9)
    batches.append([Event("c", EventKind.ITEM_UPDATE, NOW, item_id="i1", title="", price=0.1, ship_days=0, category="", feed_eligible=False)])
    assert {event.kind for batch in batches for event in batch} == set(EventKind)
    store = open_state(tmp_path)
    logged = [batch for batch in batches if store.apply(batch).applied]
    store.close()
    lines = log_files(tmp_path)[0].read_bytes().splitlines()[1:]
    assert [json.loads(line.split(b" ", 2)[2])["events"] for line in lines] == [[e.to_record() for e in batch] for batch in logged]
    assert all(Event.from_record(event.to_record()) == event for batch in batches for event in batch)


@pytest.mark.parametrize("fsync", ["batch", "off"])
def test_a_reopened_store_reads_exactly_as_before(tmp_path, fsync):
    batches = mixed_batches(seed=1)
    store = open_state(tmp_path, fsync=fsync)
    apply_all([store], batches)
    before = state_of(store)
    store.close()
    reopened = open_state(tmp_path, fsync=fsync)
    assert state_of(reopened) == before == state_of(reference(batches))
    # Dedupe by event id survives the restart: a retried batch is a duplicate.
    assert reopened.apply(batches[1]).applied == 0
    reopened.close()


def test_a_batch_the_store_rejects_is_not_logged_and_a_batch_of_duplicates_is_not_logged(tmp_path):
    store = open_state(tmp_path)
    like = [Event("e1", EventKind.LIKE, NOW, user_id="alice", item_id="i1")]
    store.apply(like)
    size = log_files(tmp_path)[-1].stat().st_size
    with pytest.raises(EventValidationError):
        store.apply([Event("e2", EventKind.LIKE, NOW, user_id="alice", item_id="nowhere")])
    assert store.apply(like).duplicates == 1
    assert log_files(tmp_path)[-1].stat().st_size == size
    store.close()
    store = open_state(tmp_path)
    assert [item for item, _ in views.read_user(store, "alice").recent_likes] == ["i1", "i8"]
    store.close()


def conflicting_batches(thread: int, count: int) -> list[list[Event]]:
    """``count`` batches of one of several threads: every thread sets the same items' stock
    and toggles the same likes, so the final state depends on the order of the batches."""
    return [[
        Event(f"t{thread}-{k}-s", EventKind.STOCK_UPDATE, NOW, item_id=ITEMS[k % 5], stock=thread * 100 + k),
        Event(f"t{thread}-{k}-l", EventKind.LIKE if k % 2 == 0 else EventKind.UNLIKE, NOW + k, user_id="erin", item_id=ITEMS[thread % 4]),
        Event(f"t{thread}-{k}-v", EventKind.VIEW, NOW + k, user_id=USERS[thread % 5], item_id=ITEMS[k % 9]),
    ] for k in range(count)]  # fmt: skip


def test_concurrent_applies_replay_in_the_order_they_were_applied(tmp_path):
    # The log must hold the order the memory store applied.
    store = open_state(tmp_path)

    def work(thread: int) -> None:
        for batch in conflicting_batches(thread, 30):
            store.apply(batch)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    before = state_of(store)
    store.close()
    reopened = open_state(tmp_path)
    assert state_of(reopened) == before
    reopened.close()


@pytest.mark.skipif("dedupe_ttl" not in inspect.signature(MemoryStore).parameters, reason="the memory store remembers ids forever")
def test_replay_forgets_event_ids_when_the_first_run_did(tmp_path, monkeypatch):
    # An id retried after the dedupe TTL is applied again; replay pins each batch's time,
    # so it does the same (replaying at today's time would call the retry a duplicate).
    class Clock:
        now = 1_000.0

        def time(self):
            return self.now

        def monotonic(self):
            return time.monotonic()

    clock = Clock()
    monkeypatch.setattr(durable, "time", clock)
    view = [Event("v1", EventKind.VIEW, NOW, user_id="alice", item_id="i1")]
    store = open_state(tmp_path, dedupe_ttl=100)
    assert store.apply(view).applied == 1
    clock.now = 1_050.0
    assert store.apply(view).duplicates == 1
    clock.now = 1_200.0
    assert store.apply(view).applied == 1
    assert views.hydrate(store, "alice", ["i1"]).seen["i1"][0] == 2
    store.close()
    clock.now = 1_250.0
    store = open_state(tmp_path, dedupe_ttl=100)
    assert views.hydrate(store, "alice", ["i1"]).seen["i1"][0] == 2
    assert store.apply(view).duplicates == 1  # applied at 1200: remembered until 1300
    store.close()


@pytest.mark.parametrize(("first_ttl", "restart_ttl"), [(100, 10), (10, 100)])
def test_replay_judges_retries_by_the_dedupe_ttl_they_met(tmp_path, monkeypatch, first_ttl, restart_ttl):
    """A restart with another --dedupe-ttl-seconds replayed the log with the new TTL: a
    retried like, a duplicate when it came, was applied on replay after the user's unlike,
    so the item came back liked (or, with a longer TTL, a like applied again after the old
    TTL was skipped on replay)."""
    clock = type("Clock", (), {"now": 1_000.0, "time": lambda self: self.now, "monotonic": lambda self: time.monotonic()})()
    monkeypatch.setattr(durable, "time", clock)
    like = Event("L", EventKind.LIKE, NOW, user_id="carol", item_id="i1")
    unlike = [Event("U", EventKind.UNLIKE, NOW, user_id="carol", item_id="i1")]
    store = open_state(tmp_path, dedupe_ttl=first_ttl)
    apply_all([store], [[like], unlike])
    clock.now = 1_050.0  # within 100 s of the like, not within 10
    store.apply([like, Event("F", EventKind.FOLLOW, NOW, user_id="carol", seller_id="s2")])
    liked = views.hydrate(store, "carol", ["i1"]).liked
    store.close()
    store = open_state(tmp_path, dedupe_ttl=restart_ttl)
    try:
        assert views.hydrate(store, "carol", ["i1"]).liked == liked
    finally:
        store.close()


def test_a_state_directory_of_another_dataset_is_refused(tmp_path):
    store = open_state(tmp_path)
    store.apply([Event("e1", EventKind.LIKE, NOW, user_id="alice", item_id="i1")])
    store.close()
    other = make_dataset([("i1", "s1", NOW, 5)], likes=[("bob", "i1", NOW)])
    with pytest.raises(WalError, match="another dataset"):
        open_durable_memory(other, str(tmp_path), snapshot_seconds=0)
    data_dir = tmp_path / "other-data"
    write_dataset(other, str(data_dir))
    with pytest.raises(ValueError, match=r"wal-0000000000000001\.log holds events ingested over another dataset"):
        open_store("memory", str(data_dir), Durability(state_dir=str(tmp_path)), progress=False)


def test_a_state_directory_that_cannot_be_one_is_named_in_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    for path in [tmp_path / "a-file", tmp_path / "a-file" / "sub"]:
        with pytest.raises(WalError, match=rf"^--state-dir {path}: Not a directory$"):
            open_state(path)


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "Permission denied"),
                                   OSError(errno.EROFS, "Read-only file system"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_a_lock_file_that_cannot_be_written_is_named_in_one_line_before_the_dataset_is_read(tmp_path, monkeypatch, error):
    """The early check of the state directory's LOCK (before the dataset is read) let an
    OSError through: a server on a state directory another user made, on a file system
    remounted read-only or on a full disk stopped with a traceback instead of one line."""
    state = tmp_path / "state"
    open_state(state).close()  # LOCK exists

    def refused(path, *args, **kwargs):
        raise error

    monkeypatch.setattr(durable, "open", refused, raising=False)
    with pytest.raises(WalError, match=rf"^--state-dir {state}: {error.strerror}"):
        durable.check_not_in_use(str(state))


def test_a_read_error_in_a_log_is_one_error_naming_the_file_and_offset(tmp_path, monkeypatch):
    """A log that the disk fails to read (EIO) stopped the start with a traceback ending in
    "OSError: [Errno 5] Input/output error", naming neither the file nor where."""
    _three_batches(tmp_path)
    path = log_files(tmp_path)[-1]
    header = len(path.read_bytes().splitlines(keepends=True)[0])
    real_open = open

    class FailingFile:
        def __init__(self, file):
            self.file, self.lines = file, 0

        def readline(self):
            self.lines += 1
            if self.lines == 2:
                raise OSError(errno.EIO, "Input/output error")
            return self.file.readline()

        def __iter__(self):
            return iter(self.readline, b"")

        def close(self):
            self.file.close()

    def failing_open(name, mode="r", *args, **kwargs):
        file = real_open(name, mode, *args, **kwargs)
        return FailingFile(file) if str(name) == str(path) and "b" in mode and "r" in mode else file

    from stores import wal

    monkeypatch.setattr(wal, "open", failing_open, raising=False)
    with pytest.raises(WalError, match=rf"^{path}: byte offset {header}: cannot be read: Input/output error"):
        open_state(tmp_path)
    monkeypatch.undo()
    assert _follows(tmp_path) == {"s0", "s1", "s2"}  # nothing was changed on disk


@pytest.mark.parametrize("step", ["fsync_dir", "truncate"])
def test_a_disk_error_while_recovering_is_one_error_naming_the_state_directory(tmp_path, monkeypatch, step):
    """The directory fsync that ends a recovery, or the cut of a torn tail, failing (EIO,
    a file system remounted read-only after an error) stopped the start with a bare OSError
    traceback."""
    _three_batches(tmp_path)
    path = log_files(tmp_path)[-1]
    path.write_bytes(path.read_bytes()[:-10])  # a torn tail, for the truncate

    def fails(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(durable, step, fails)
    with pytest.raises(WalError, match=rf"^--state-dir {tmp_path}: .*Input/output error"):
        open_state(tmp_path)
    monkeypatch.undo()
    assert _follows(tmp_path) == {"s0", "s1"}


def test_one_process_at_a_time_uses_a_state_directory(tmp_path):
    store = open_state(tmp_path)
    with pytest.raises(WalError, match=rf"^--state-dir {tmp_path} is in use by another process \(pid {os.getpid()}\)"):
        open_state(tmp_path)
    store.close()
    open_state(tmp_path).close()


def test_a_state_directory_in_use_is_refused_before_the_dataset_is_read(tmp_path, monkeypatch):
    import training.dataset

    state = tmp_path / "state"
    store = open_state(state)

    def read(*args, **kwargs):
        raise AssertionError("the dataset was read for a state directory another process holds")

    monkeypatch.setattr(training.dataset, "load_dataset", read)
    try:
        with pytest.raises(WalError, match=rf"^--state-dir {state} is in use by another process"):
            open_store("memory", str(tmp_path / "data"), Durability(state_dir=str(state)), progress=False)
    finally:
        store.close()


# -- damage ------------------------------------------------------------------------------------


def _three_batches(state_dir: Path) -> list[list[Event]]:
    batches = [[Event(f"e{k}", EventKind.FOLLOW, NOW, user_id="dave", seller_id=f"s{k}")] for k in range(3)]
    store = open_state(state_dir)
    apply_all([store], batches)
    store.close()
    return batches


def _follows(state_dir: Path) -> set[str]:
    store = open_state(state_dir)
    try:
        return set(views.read_user(store, "dave").follows)
    finally:
        store.close()


@pytest.mark.parametrize("tail", ["half a record", "a record cut short", "zeros"])
def test_a_torn_tail_is_cut_off_with_a_warning(tmp_path, caplog, tail):
    _three_batches(tmp_path)
    path = log_files(tmp_path)[-1]
    whole = path.read_bytes()
    if tail == "half a record":
        record = batch_record(4, time.time(), encode_events([Event("e9", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s9")]))
        path.write_bytes(whole + record[: len(record) // 2])
        expected, kept = {"s0", "s1", "s2"}, whole
    elif tail == "a record cut short":
        path.write_bytes(whole[:-10])  # the third batch's write never completed: it was never acknowledged
        expected, kept = {"s0", "s1"}, whole[: whole.rfind(b"\n", 0, len(whole) - 1) + 1]
    else:
        path.write_bytes(whole + b"\0" * 4096)
        expected, kept = {"s0", "s1", "s2"}, whole
    with caplog.at_level(logging.WARNING, logger="feedrank.stores.durable"):
        assert _follows(tmp_path) == expected
    assert "torn record" in caplog.text and path.name in caplog.text
    assert path.read_bytes() == kept
    assert _follows(tmp_path) == expected  # and the next start is clean


@pytest.mark.parametrize("kind", ["log", "snapshot"])
def test_a_file_that_lost_only_its_final_newline_keeps_its_last_batch(tmp_path, caplog, kind):
    """A log (or snapshot) cut one byte short, its last record whole but for its newline
    (its length and checksum hold): the record was cut off as a crash's torn write,
    "never acknowledged", and with it a batch that may well have been. Written whole, it is
    kept (at worst a batch never acknowledged applies, which a client's retry meets as
    duplicates), and the newline is put back."""
    _three_batches(tmp_path)
    if kind == "snapshot":
        store = open_state(tmp_path)
        assert store.snapshot()
        store.close()
    path = tmp_path / SNAPSHOT if kind == "snapshot" else log_files(tmp_path)[0]
    whole = path.read_bytes()
    path.write_bytes(whole[:-1])
    with caplog.at_level(logging.WARNING, logger="feedrank.stores.durable"):
        assert _follows(tmp_path) == {"s0", "s1", "s2"}
    assert "torn record" not in caplog.text
    assert "final newline" in caplog.text and path.name in caplog.text
    assert path.read_bytes() == whole
    store = open_state(tmp_path)
    apply_all([store], [[Event("e3", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s3")]])
    assert store.snapshot()  # it folds as any file
    store.close()
    assert _follows(tmp_path) == {"s0", "s1", "s2", "s3"}


def test_a_torn_first_record_of_a_new_log_is_cut_off_with_a_warning(tmp_path, caplog):
    """A log that held nothing but its header and a torn first record (a crash, or a full
    disk, cutting short the first write after a restart or a snapshot) was removed as empty,
    then truncated: every start failed with FileNotFoundError."""
    _three_batches(tmp_path)
    open_state(tmp_path).close()  # a restart: the next batch goes to a new log
    path = log_files(tmp_path)[-1]
    header = path.read_bytes()
    record = batch_record(4, time.time(), encode_events([Event("e9", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s9")]))
    path.write_bytes(header + record[: len(record) // 2])
    with caplog.at_level(logging.WARNING, logger="feedrank.stores.durable"):
        assert _follows(tmp_path) == {"s0", "s1", "s2"}
    assert f"{path}: a torn record at byte offset {len(header)} ({len(record) // 2} bytes" in caplog.text
    assert _follows(tmp_path) == {"s0", "s1", "s2"}


def test_a_damaged_end_of_a_log_before_the_last_is_an_error_and_changes_nothing(tmp_path):
    """Only the last log written can end in a crash's torn write: an earlier log's damaged
    end lost batches that were acknowledged, since later logs hold later ones. It was cut
    off as torn, then the start failed on the gap anyway, with the evidence truncated."""
    _three_batches(tmp_path)
    store = open_state(tmp_path)  # a restart: the next batches go to a second log
    apply_all([store], [[Event("e7", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s7")]])
    store.close()
    first, second = log_files(tmp_path)
    damaged = first.read_bytes()[:-7]
    first.write_bytes(damaged)
    with pytest.raises(WalError) as error:
        open_state(tmp_path)
    assert f"{first}: damaged from byte offset" in str(error.value) and f"{second} holds later batches" in str(error.value)
    assert "acknowledged batches were lost" in str(error.value)
    assert first.read_bytes() == damaged  # nothing changed on disk


def _three_batches_in_two_logs(tmp_path):
    """``_three_batches`` in a first log, then a restart and a fourth in a second: the two logs."""
    _three_batches(tmp_path)
    store = open_state(tmp_path)  # a restart: the next batch goes to a second log
    apply_all([store], [[Event("e7", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s7")]])
    store.close()
    return log_files(tmp_path)


def _repair_as_the_error_says(tmp_path, first, second, at: int) -> None:
    """The start refuses, saying to cut ``first`` at byte ``at`` and move ``second`` aside; do both."""
    with pytest.raises(WalError) as error:
        open_state(tmp_path)
    message = str(error.value)
    assert f"truncate -s {at} {first}" in message and f"move {second} aside" in message
    truncate(str(first), at)
    second.rename(tmp_path.parent / second.name)


def test_a_damaged_end_of_a_log_before_the_last_says_how_to_keep_the_batches_before_it(tmp_path):
    """The error said to move the damaged log and every later one aside, which dropped the
    good batches before the damage too (its first two here), though it said "to start from
    what precedes the damage"."""
    first, second = _three_batches_in_two_logs(tmp_path)
    whole = first.read_bytes()
    at = len(whole) - len(whole.splitlines(keepends=True)[-1])  # the last record, e2, is damaged
    first.write_bytes(whole[:-7])
    _repair_as_the_error_says(tmp_path, first, second, at)
    assert _follows(tmp_path) == {"s0", "s1"}


def test_corruption_in_the_middle_of_a_log_is_an_error_naming_file_line_and_offset(tmp_path):
    _three_batches(tmp_path)
    path = log_files(tmp_path)[-1]
    lines = path.read_bytes().splitlines(keepends=True)
    offset = len(lines[0])
    damaged = bytearray(lines[1])
    damaged[len(damaged) // 2] ^= 0x01  # one flipped bit in the first batch (line 2, after the header)
    path.write_bytes(lines[0] + bytes(damaged) + b"".join(lines[2:]))
    with pytest.raises(WalError) as error:
        open_state(tmp_path)
    assert f"{path}: line 2 (byte offset {offset}) is corrupt" in str(error.value)


def test_corruption_in_a_log_before_the_last_names_the_later_logs_to_move_aside(tmp_path):
    """The error said to cut the damaged log and start again: done so, the start failed on
    the next log's first batch ("batches are missing"), which the error had not named."""
    first, second = _three_batches_in_two_logs(tmp_path)
    lines = first.read_bytes().splitlines(keepends=True)
    at = len(lines[0]) + len(lines[1])  # line 3: the second batch
    damaged = bytearray(lines[2])
    damaged[len(damaged) // 2] ^= 0x01
    first.write_bytes(lines[0] + lines[1] + bytes(damaged) + b"".join(lines[3:]))
    _repair_as_the_error_says(tmp_path, first, second, at)
    assert _follows(tmp_path) == {"s0"}  # the batch before the damage


@pytest.mark.parametrize("damage", ["a flipped bit", "a lost newline joining the last two"])
def test_a_damaged_whole_last_record_is_an_error_not_a_torn_tail(tmp_path, damage):
    """A whole last record failing its checksum was cut off as a crash's torn write, with a
    warning saying it was never acknowledged: an acknowledged batch (two, when a lost
    newline joined them) silently gone."""
    _three_batches(tmp_path)
    path = log_files(tmp_path)[-1]
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    at = len(whole) - len(lines[-1]) - (len(lines[-2]) if damage != "a flipped bit" else 0)
    damaged = bytearray(whole)
    if damage == "a flipped bit":
        damaged[-20] ^= 0x01
    else:
        damaged[len(whole) - len(lines[-1]) - 1] = ord(" ")
    path.write_bytes(bytes(damaged))
    with pytest.raises(WalError) as error:
        open_state(tmp_path)
    assert f"{path}: line {len(lines) - (damage != 'a flipped bit')} (byte offset {at}) is corrupt: a whole record" in str(error.value)
    assert f"truncate -s {at} {path}" in str(error.value)
    assert path.read_bytes() == bytes(damaged)  # nothing changed on disk
    truncate(str(path), at)  # as the error says: the batches before the damage are kept
    assert _follows(tmp_path) == ({"s0", "s1"} if damage == "a flipped bit" else {"s0"})


def test_a_damaged_snapshot_is_an_error(tmp_path):
    _three_batches(tmp_path)
    store = open_state(tmp_path)
    assert store.snapshot()
    store.close()
    path = tmp_path / SNAPSHOT
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])
    with pytest.raises(WalError, match="snapshot is damaged"):
        open_state(tmp_path)
    # Cutting a snapshot only gives another refusal (its header says how far it goes, and
    # the logs after it need every batch), though the error advised it, as for a log.
    damaged = bytearray(whole)
    damaged[-20] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(WalError, match="a whole record that fails its checksum") as error:
        open_state(tmp_path)
    assert str(error.value).endswith("Restore the state directory from a backup")


def test_a_failed_log_write_refuses_ingest_and_loses_nothing_acknowledged(tmp_path, monkeypatch):
    store = open_state(tmp_path)
    store.apply([Event("e1", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s1")])

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreUnavailable, match="No space left"):
        store.apply([Event("e2", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s2")])
    assert not store.ping()
    with pytest.raises(StoreUnavailable, match="refused until a restart"):
        store.apply([Event("e3", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s3")])
    monkeypatch.undo()
    store.close()
    # e2 reached the file (only its fsync failed): unacknowledged, it may or may not be
    # there; e1 is; e3 was never applied.
    assert {"s1"} <= _follows(tmp_path) <= {"s1", "s2"}


def test_a_full_disk_refuses_ingest_until_there_is_room_then_ingest_goes_on(tmp_path, monkeypatch):
    """A full disk failed the log for good: ingest was refused, and health NOT_SERVING,
    until a restart, though room was made (an outside review, on a 2 MB tmpfs)."""
    from stores.wal import LogWriter

    def follow(event_id: str, seller: str) -> list[Event]:
        return [Event(event_id, EventKind.FOLLOW, NOW, user_id="dave", seller_id=seller)]

    store = open_state(tmp_path)
    store.apply(follow("e1", "s1"))
    path = log_files(tmp_path)[-1]
    before = path.read_bytes()
    real_write = LogWriter.write

    def full_midway(self, data):
        real_write(self, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LogWriter, "write", full_midway)
    with pytest.raises(StoreUnavailable, match="No space left on device; ingest is refused until there is room"):
        store.apply(follow("e2", "s2"))  # applied, not acknowledged: its record is held back
    assert path.read_bytes() == before  # the half record written is cut off
    with pytest.raises(StoreUnavailable, match="until there is room"):
        store.apply(follow("e3", "s3"))
    assert store.ping()  # feeds go on
    assert set(views.read_user(store, "dave").follows) >= {"s1", "s2"} and "s3" not in views.read_user(store, "dave").follows
    monkeypatch.undo()
    assert store.apply(follow("e3", "s3")).applied == 1
    assert store.apply(follow("e2", "s2")).duplicates == 1  # the client's retry
    store.close()
    assert _follows(tmp_path) >= {"s1", "s2", "s3"}
    assert [r["seq"] for r in map(json.loads, (line.split(b" ", 2)[2] for line in path.read_bytes().splitlines()[1:]))] == [1, 2, 3]


def test_a_full_disk_at_start_is_one_error_and_leaves_no_empty_log(tmp_path, monkeypatch):
    from stores.wal import LogWriter

    store = open_state(tmp_path)
    store.apply([Event("kept", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s2")])
    store.close()

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LogWriter, "write", full)
    with pytest.raises(WalError, match="cannot start a new log: No space left on device"):
        open_state(tmp_path)
    assert not [p.name for p in tmp_path.glob("wal-*.log") if p.stat().st_size == 0]
    monkeypatch.undo()
    assert "s2" in _follows(tmp_path)


# -- snapshots ---------------------------------------------------------------------------------


def test_a_snapshot_folds_the_logs_and_more_events_replay_after_it(tmp_path):
    first, then = mixed_batches(seed=2, prefix="a"), mixed_batches(seed=3, prefix="b")[1:]
    store = open_state(tmp_path)
    apply_all([store], first)
    assert store.snapshot()
    assert not store.snapshot()  # nothing new
    assert [p.name for p in log_files(tmp_path)] == ["wal-%016d.log" % (store._written + 1)]
    apply_all([store], then)
    before = state_of(store)
    store.close()
    store = open_state(tmp_path)
    assert state_of(store) == before == state_of(reference(first + then))
    # A restart leaves the old logs for the next snapshot to fold: still one snapshot, one log.
    apply_all([store], mixed_batches(seed=4, prefix="c")[1:])
    assert store.snapshot()
    assert len(log_files(tmp_path)) == 1 and (tmp_path / SNAPSHOT).exists()
    store.close()


def test_a_failed_snapshot_leaves_no_temporary_file_and_ingest_goes_on(tmp_path, monkeypatch):
    """A half-written snapshot.wal.tmp held the space the logs needed: the next batch found
    the disk full, and ingest was refused until a restart (an outside review, on a tmpfs)."""
    store = open_state(tmp_path)
    apply_all([store], mixed_batches(seed=7))
    real_reader = durable.LogReader

    def full_midway(path, parse=True):
        (tmp_path / (SNAPSHOT + ".tmp")).write_bytes(b"x" * 1000)  # what was written so far
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable, "LogReader", full_midway)
    with pytest.raises(OSError, match="No space left"):
        store.snapshot()
    assert not (tmp_path / (SNAPSHOT + ".tmp")).exists()
    monkeypatch.setattr(durable, "LogReader", real_reader)
    store.apply([Event("late", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s2")])
    assert store.ping() and store.snapshot()
    store.close()


def test_closing_the_store_mid_fold_abandons_the_fold_at_once_and_loses_nothing(tmp_path, monkeypatch):
    """A SIGTERM during a scheduled fold waited for all of it (about 1 s per 200k events
    folded: tens of seconds for a large history, past a service manager's stop timeout)."""
    batches = mixed_batches(seed=9, n_batches=60)
    store = open_state(tmp_path)
    apply_all([store], batches)
    before = state_of(store)
    slow = 0.03  # per batch, in each of the fold's two reads: about 4 s in all

    def slowly(part):
        def wrapped(*args, **kwargs):
            time.sleep(slow)
            return part(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(durable, "applied_part", slowly(durable.applied_part))
    monkeypatch.setattr(durable, "kept_part", slowly(durable.kept_part))
    folded = []
    fold = threading.Thread(target=lambda: folded.append(store.snapshot()))
    fold.start()
    time.sleep(0.5)  # judging the batches
    started = time.monotonic()
    store.close()
    closed_in = time.monotonic() - started
    fold.join(30)
    assert closed_in < 0.5 and folded == [False]
    assert not (tmp_path / SNAPSHOT).exists() and not (tmp_path / (SNAPSHOT + ".tmp")).exists()
    monkeypatch.undo()
    store = open_state(tmp_path)
    assert state_of(store) == before
    assert store.snapshot()  # the logs it kept fold next time
    store.close()
    store = open_state(tmp_path)
    assert state_of(store) == before
    store.close()


def test_a_snapshot_without_room_for_it_is_deferred_with_one_warning(tmp_path, monkeypatch, caplog):
    """A deferred snapshot started a new log first, each time: on a disk short of room the
    state directory filled with a log per --snapshot-seconds (a 2 MB tmpfs, in a review)."""
    store = open_state(tmp_path)
    apply_all([store], mixed_batches(seed=8))
    logs = log_files(tmp_path)
    monkeypatch.setattr(durable.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    with caplog.at_level(logging.WARNING, logger="feedrank.stores.durable"):
        assert not store.snapshot()
        store.apply([Event("more", EventKind.FOLLOW, NOW, user_id="dave", seller_id="s2")])
        assert not store.snapshot()
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "snapshot of" in caplog.records[0].getMessage() and "deferred" in caplog.records[0].getMessage()
    assert not (tmp_path / SNAPSHOT).exists() and not (tmp_path / (SNAPSHOT + ".tmp")).exists()
    assert log_files(tmp_path) == logs and store.ping()
    monkeypatch.undo()
    assert store.snapshot()
    store.close()


def test_snapshots_are_taken_on_schedule(tmp_path):
    batches = mixed_batches(seed=5)
    store = open_state(tmp_path, snapshot_seconds=0.05)
    apply_all([store], batches)
    deadline = time.monotonic() + 10
    while not ((tmp_path / SNAPSHOT).exists() and len(log_files(tmp_path)) == 1):
        assert time.monotonic() < deadline, "no snapshot within 10 s"
        time.sleep(0.02)
    before = state_of(store)
    store.close()
    store = open_state(tmp_path)
    assert state_of(store) == before
    store.close()


def test_a_crash_after_the_snapshot_but_before_deleting_its_logs_replays_each_batch_once(tmp_path):
    batches = mixed_batches(seed=6)
    store = open_state(tmp_path)
    apply_all([store], batches)
    kept = {path.name: path.read_bytes() for path in log_files(tmp_path)}
    assert store.snapshot()
    store.close()
    for name, data in kept.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / (SNAPSHOT + ".tmp")).write_bytes(b"a snapshot cut short")
    store = open_state(tmp_path)
    assert state_of(store) == state_of(reference(batches))
    store.close()
    assert not (tmp_path / (SNAPSHOT + ".tmp")).exists()


# -- SIGKILL -----------------------------------------------------------------------------------


def follow_batch(index: int, size: int = 5) -> list[Event]:
    """Batch ``index`` of the SIGKILL tests: one user follows ``size`` new sellers."""
    user = f"w{index % 97}"
    return [Event(f"k{index}-{j}", EventKind.FOLLOW, NOW, user_id=user, seller_id=f"k{index}-{j}") for j in range(size)]


def _child(data_dir: str, state_dir: str, first: int, threads: int) -> None:
    """Apply follow_batch(first), (first + 1)... from ``threads`` threads; print each index once acknowledged."""
    import itertools

    store = open_store("memory", data_dir, Durability(state_dir=state_dir, fsync="batch", snapshot_seconds=0.05), progress=False)
    print("ready", flush=True)
    counter, out = itertools.count(first), threading.Lock()

    def work() -> None:
        while True:
            index = next(counter)
            store.apply(follow_batch(index))
            with out:
                sys.stdout.write(f"{index}\n")
                sys.stdout.flush()

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _read_acks(process: subprocess.Popen, wanted: int) -> list[int]:
    assert process.stdout.readline().strip() == "ready"
    acks = []
    while len(acks) < wanted:
        line = process.stdout.readline()
        assert line.endswith("\n"), f"the child died: {process.stderr.read()}"
        acks.append(int(line))
    return acks


def test_sigkill_mid_ingest_loses_no_acknowledged_batch(tmp_path):
    """A child process ingests from 4 threads with snapshots every 50 ms; it is SIGKILLed
    at a random point, three times. Every batch it acknowledged is there afterwards, every
    batch is all or nothing, and a retried batch is a duplicate."""
    data_dir, state_dir = tmp_path / "data", tmp_path / "state"
    write_dataset(social_dataset(), str(data_dir))
    rnd = random.Random(7)
    acked: list[int] = []
    for round_ in range(3):
        first = round_ * 100_000
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.test_wal", "child", str(data_dir), str(state_dir), str(first), "4"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            acked += _read_acks(process, rnd.randrange(50, 400))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    store = open_durable_memory(social_dataset(), str(state_dir), snapshot_seconds=0)
    try:
        for index in acked:
            assert {e.seller_id for e in follow_batch(index)} <= set(views.read_user(store, f"w{index % 97}").follows), index
        for round_ in range(3):  # the batches in flight at the kill: wholly applied or not at all
            for index in range(round_ * 100_000, round_ * 100_000 + 1000):
                follows = set(views.read_user(store, f"w{index % 97}").follows)
                assert len({e.seller_id for e in follow_batch(index)} & follows) in (0, 5), index
        for index in acked[:: max(len(acked) // 50, 1)]:
            assert store.apply(follow_batch(index)).duplicates == 5
    finally:
        store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.feed_world import build_world

    return build_world(tmp_path_factory.mktemp("world"), users=150, sellers=20, items=600)


def _start_server(world, state_dir: Path, port_file: Path) -> tuple[subprocess.Popen, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port_file.unlink(missing_ok=True)
    log_file = (port_file.parent / "server.log").open("a")  # a pipe nobody reads would fill and block the server
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--data", str(world.data_dir), "--models", str(world.models_dir),
         "--state-dir", str(state_dir), "--snapshot-seconds", "1", "--port", "0", "--port-file", str(port_file)],
        cwd=REPO, env={**os.environ, "FEEDRANK_TOKEN_SECRET": "tests-token-secret-0123456789abcdef"},
        stdout=subprocess.DEVNULL, stderr=log_file,
    )  # fmt: skip
    log_file.close()
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"the server exited: {(port_file.parent / 'server.log').read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the server did not start in 120 s"
        if port_file.exists() and port_file.read_text().strip():
            target = f"127.0.0.1:{port_file.read_text().strip()}"
            with grpc.insecure_channel(target) as channel:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
                except grpc.RpcError:
                    status = None
            if status == health_pb2.HealthCheckResponse.SERVING:
                return process, target
        time.sleep(0.1)


def _ingest_request(index: int):
    from protos.feed.v1 import feed_pb2

    return feed_pb2.IngestRequest(events=[
        feed_pb2.Event(event_id=f"g{index}-{j}", follow=feed_pb2.UserSeller(user_id=f"u{index % 100:05d}", seller_id=f"g{index}-{j}"))
        for j in range(20)
    ])  # fmt: skip


def test_sigkill_of_a_real_server_mid_ingest_stream_loses_no_acknowledged_event(world, tmp_path):
    """``python -m serving --state-dir``: Ingest streams from 3 clients, SIGKILL, restart;
    every acknowledged batch is a duplicate when retried, and its follows are in the store."""
    import grpc

    from protos.feed.v1 import feed_pb2, feed_pb2_grpc

    state_dir, port_file = tmp_path / "state", tmp_path / "port"
    process, target = _start_server(world, state_dir, port_file)
    acked: list[int] = []
    lock = threading.Lock()

    def stream(first: int) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            for index in range(first, first + 100_000):
                try:
                    response = stub.Ingest(_ingest_request(index), timeout=10)
                except grpc.RpcError:
                    return  # the server is gone
                assert (response.applied, response.duplicates) == (20, 0)
                with lock:
                    acked.append(index)

    clients = [threading.Thread(target=stream, args=(c * 100_000,)) for c in range(3)]
    try:
        for client in clients:
            client.start()
        deadline = time.monotonic() + 60
        while len(acked) < 150 or not (state_dir / SNAPSHOT).exists():  # past a snapshot
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.5))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        for client in clients:
            client.join()
    assert len(acked) >= 150

    process, target = _start_server(world, state_dir, port_file)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            for index in acked:
                response = stub.Ingest(_ingest_request(index), timeout=10)
                assert (response.applied, response.duplicates) == (0, 20), index
            assert stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=10), timeout=10).items
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    store = open_store("memory", str(world.data_dir), Durability(state_dir=str(state_dir), snapshot_seconds=0), progress=False)
    try:
        for index in acked:
            follows = set(views.read_user(store, f"u{index % 100:05d}").follows)
            assert {f"g{index}-{j}" for j in range(20)} <= follows, index
    finally:
        store.close()


# -- the ingest benchmark (benchmarks/bench_wal.py) ----------------------------------------------


def test_the_ingest_benchmark_runs_at_a_tiny_scale(tmp_path, monkeypatch, capsys):
    from benchmarks.bench_wal import MODES, main

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    main(["--events", "40", "--batch", "10", "--threads", "2", "--repeat", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == list(MODES)
    assert all("events/s" in line and "(2 threads)" in line for line in lines)
    assert ("replay" in lines[0], "replay" in lines[1], "replay" in lines[2]) == (False, True, True)
    assert not list(tmp_path.iterdir())  # the log is removed afterwards


if __name__ == "__main__":
    if sys.argv[1] == "child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
