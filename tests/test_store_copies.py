"""Copies of the memory store in other processes (serving/feed_processes.py): a copy
taken from ``pickled_state`` and fed every later applied batch reads exactly as the
store it copies, even while other threads apply batches as the copy is taken."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading

import pytest

from stores.events import Event, EventKind
from stores.memory import MemoryStore
from tests.builders import NOW, social_dataset
from tests.conftest import REPO
from tests.test_wal import STORE_OPTIONS, apply_all, conflicting_batches, mixed_batches, open_state, reference, state_of
from training.dataset import write_dataset


@pytest.fixture(params=["memory", "durable"])
def primary(request, tmp_path):
    """The store a server holds: plain, or behind the write-ahead log (whose attribute
    lookups reach the memory store inside)."""
    if request.param == "memory":
        yield MemoryStore.from_dataset(social_dataset(), **STORE_OPTIONS)
        return
    store = open_state(tmp_path)
    yield store
    store.close()


def test_a_copy_taken_mid_stream_follows_every_later_batch_to_the_same_state(primary):
    batches = mixed_batches(seed=3)
    copies: list[MemoryStore] = []
    primary.publish_applied(lambda events: [copy.replay_applied(events) for copy in copies])
    apply_all([primary], batches[:15])
    copies.append(pickle.loads(primary.pickled_state()))
    assert state_of(copies[0]) == state_of(primary)
    apply_all([primary], batches[15:])
    assert state_of(copies[0]) == state_of(primary) == state_of(reference(batches))
    # A copy takes writes only from its primary: it keeps no event ids of its own to refuse.
    assert copies[0].dedupe_ttl == primary.dedupe_ttl


def test_a_copy_taken_while_threads_apply_misses_no_batch_and_doubles_none(primary):
    # The state depends on each batch being replayed once, in the order the primary applied it.
    pending: list[list[list[Event]]] = []  # per copy: the batches applied after its state was taken
    primary.publish_applied(lambda events: [backlog.append(events) for backlog in pending])

    def work(thread: int) -> None:
        for batch in conflicting_batches(thread, 40):
            primary.apply(batch)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    states = [primary.pickled_state(then=lambda: pending.append([])) for _ in range(5)]
    for thread in threads:
        thread.join()
    for state, backlog in zip(states, pending):
        copy = pickle.loads(state)
        for events in backlog:
            copy.replay_applied(events)
        assert state_of(copy) == state_of(primary)


def test_a_batch_that_changes_nothing_is_not_published(primary):
    published: list[list[Event]] = []
    primary.publish_applied(published.append)
    like = [Event("once", EventKind.LIKE, NOW, user_id="alice", item_id="i1")]
    primary.apply(like)
    primary.apply(like)  # a retry: a duplicate
    assert published == [like]


def test_the_copy_benchmark_reports_each_step(tmp_path):
    write_dataset(social_dataset(), str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_store_copy", "--data", str(tmp_path), "--no-progress"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    load, state, unpickled = result.stdout.splitlines()
    assert load.startswith("load: ") and state.startswith("state: ") and "under the store's lock" in state
    assert unpickled.startswith("unpickled (as a feed process does) in ")
