"""The memory store made durable: a write-ahead log of acknowledged batches, replayed on start.

``DurableStore`` wraps a MemoryStore freshly loaded from a dataset. Its state directory:

    LOCK                       held (flock) by the one process using the directory
    snapshot.wal               the state of batches 1..N, folded out of older logs
    wal-<first seq>.log        logs of the batches after it, the newest one being written

Apply order: under one write lock, the batch is validated and applied in memory, then
its record is appended to the log (an ``os.write``); outside the lock the log is
fsynced ("batch": group commit, one fsync covers every batch written before it) and only
then is the batch acknowledged. A batch the store rejects is never logged; a crash
before the fsync loses a batch no client saw acknowledged, together with the memory
that held it. A batch of duplicates only is not logged (it changed nothing), but waits
for the log to be durable up to where it was applied, so its ack never gets ahead of
the original's.

A log is replayed through the very ``MemoryStore.apply`` that built the state the first
time (with the wall time each batch was applied at, so the dedupe TTL expires ids as it
did), so it rebuilds the same state whatever the store's internals become; an image of
those internals (pickled) would take ~10 s under the store lock for 100k items and break
with every change to them.

A snapshot is the older logs folded into one file of the same format, tied to the
dataset by its fingerprint: the events of batches 1..N that the state still shows, in
order, each in its batch (stores/compaction.py: retries and overwritten stock updates and
follow toggles are dropped), and in its header the event ids the store remembers after
batch N with their forget times (AppliedIds). Replay applies its events as they are
(``MemoryStore.replay_applied``: they were judged when they came), then takes those ids,
so the logs after it meet the same dedupe. A snapshot written before snapshots were
compacted (format version 1: the batches themselves) is replayed as a log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import inspect
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ranking.store import Activity, ItemColumns, UserState
from ranking.types import ItemCard
from ranking.vocab import Vocabulary
from stores.applied_ids import AppliedIds
from stores.base import ApplyResult, StoreUnavailable, no_replicas
from stores.compaction import KeptEvents, applied_part, kept_part
from stores.events import Event, EventValidationError
from stores.memory import MemoryStore
from stores.wal import (
    COMPACTED,
    Batch,
    LogReader,
    LogWriter,
    RawBatch,
    WalError,
    batch_record,
    encode_events,
    fsync_dir,
    header_record,
    truncate,
)

if TYPE_CHECKING:
    from training.dataset import Dataset

log = logging.getLogger(f"feedrank.{__name__}")

FSYNC_POLICIES = ("batch", "off")
SNAPSHOT = "snapshot.wal"
# Free space a snapshot leaves for the logs that ingest goes on writing meanwhile.
SNAPSHOT_HEADROOM = 64 * 2**20
_LOG_NAME = re.compile(r"^wal-(\d{16})\.log$")
# Store limits that are ingest policy, not state: a replayed batch passed them when it was
# acknowledged, and a lower limit set since must not refuse it.
_POLICY_LIMITS = ("max_friends", "max_follows")


# A scheduled snapshot waits until the logs since the last one hold at least this share of
# its bytes. Each fold rereads the whole snapshot to find what the logs overwrite, so a fold
# every period made its CPU grow with the history (1.0 s per 200k events, 2.5 s when this
# was chosen, against 0.07 s for the copy of the batches before compaction); this way a
# fold costs at most (1 + 1 / share) x the bytes logged since the last one: twice them.
# (At 1.0, a restart replays at most twice the snapshot, never more than the history the
# copies held.)
SCHEDULED_FOLD_SHARE = 1.0


def _total_bytes(paths: Iterable[str]) -> int:
    return sum(os.path.getsize(path) for path in paths)


def log_name(first_seq: int) -> str:
    return f"wal-{first_seq:016d}.log"


class ApplyClock:
    """The wall clock a MemoryStore reads while it applies a batch (its dedupe TTL).

    Pinned by DurableStore to the time that goes into the log record, and on replay to
    the logged time, so replay forgets event ids exactly as the first run did.
    """

    def __init__(self) -> None:
        self.pinned: float | None = None

    def __call__(self) -> float:
        pinned = self.pinned
        return time.time() if pinned is None else pinned


class DurableStore:
    """A FeedStore: reads go to the wrapped MemoryStore, each applied batch to the log first.

    ``store`` must hold exactly the dataset whose fingerprint is ``dataset_fingerprint``;
    opening replays the state directory over it (WalError if the directory was built
    over another dataset, or is corrupt beyond a torn tail). ``fsync``: "batch" or
    "off". ``snapshot_seconds`` <= 0: no scheduled snapshots (``snapshot()`` still works).
    ``clock``: the ApplyClock the store was built with, if any.
    """

    def __init__(
        self,
        store: MemoryStore,
        dataset_fingerprint: str,
        state_dir: str,
        fsync: str = "batch",
        snapshot_seconds: float = 300.0,
        clock: ApplyClock | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self._store = store
        self._fingerprint = dataset_fingerprint
        self.state_dir = os.path.abspath(state_dir)
        self.fsync = fsync
        self.snapshot_seconds = snapshot_seconds
        self._clock = clock or ApplyClock()
        self._write_lock = threading.Lock()  # apply + append: the log's order is the apply order
        self._sync_lock = threading.Lock()  # fsync, and swapping the log file
        self._snapshot_lock = threading.Lock()
        self._failed: str | None = None
        self._closed = False
        self._snapshot_deferred = False
        self._unwritten: bytes | None = None  # see _append_unwritten
        self._disk_full = False
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            self._lock_file = _lock_directory(self.state_dir)
        except FileExistsError:  # a file in the way
            raise WalError(f"--state-dir {self.state_dir}: {os.strerror(errno.ENOTDIR)}") from None
        except OSError as error:  # not a directory, not writable, a read-only file system
            raise WalError(f"--state-dir {self.state_dir}: {error.strerror or error}") from None
        try:
            started = time.monotonic()
            try:
                self._written, batches, events = self._recover()
            except OSError as error:  # a disk error, a file system remounted read-only: not a bare traceback
                raise WalError(f"--state-dir {self.state_dir}: recovery failed: {error}") from None
            if batches:
                log.info("replayed %d events (%d batches) from %s in %.1f s",
                         events, batches, self.state_dir, time.monotonic() - started)  # fmt: skip
            try:
                self._writer = self._open_log(self._written + 1)
            except OSError as error:  # a full disk, a directory made read-only
                raise WalError(f"--state-dir {self.state_dir}: cannot start a new log: {error.strerror or error}") from None
        except BaseException:
            self._lock_file.close()
            raise
        self._synced = self._written
        self._stop = threading.Event()
        self._snapshotter: threading.Thread | None = None
        if snapshot_seconds > 0:
            self._snapshotter = threading.Thread(target=self._snapshot_loop, name="wal-snapshot", daemon=True)
            self._snapshotter.start()

    # -- reads: the memory store answers -------------------------------------------------

    @property
    def items(self) -> Vocabulary:
        return self._store.items

    @property
    def sellers(self) -> Vocabulary:
        return self._store.sellers

    @property
    def categories(self) -> Vocabulary:
        return self._store.categories

    def read_user(self, user_id: str) -> UserState:
        return self._store.read_user(user_id)

    def read_activity(self, seller_ids: Sequence[str], friend_ids: Sequence[str], per_key_limit: int, trending_limit: int) -> Activity:
        return self._store.read_activity(seller_ids, friend_ids, per_key_limit, trending_limit)

    def hydrate(self, user_id: str, item_codes: np.ndarray) -> ItemColumns:
        return self._store.hydrate(user_id, item_codes)

    def read_cards(self, item_codes: np.ndarray) -> list[ItemCard]:
        return self._store.read_cards(item_codes)

    def __getattr__(self, name: str) -> Any:  # users, recent_likes_bound...: as the memory store
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._store, name)

    # -- writes ----------------------------------------------------------------------------

    def apply(self, events: Sequence[Event], min_replicas: int = 0) -> ApplyResult:
        """Apply a validated batch, log it, and return once the log is durable (see module doc).
        No replicas: ``min_replicas`` must be 0.

        Raises EventValidationError (nothing applied, nothing logged) as MemoryStore.apply
        does, and StoreUnavailable (not acknowledged) while the disk is full, until there
        is room again, and once the log cannot be written or fsynced for another reason:
        from then on every apply is refused and ``ping`` is False, until a restart replays
        the log.
        """
        no_replicas(min_replicas)
        encoded = encode_events(events)  # the costly part, outside the lock
        with self._write_lock:
            self._check_usable()
            self._append_unwritten()
            now = time.time()
            self._clock.pinned = now
            try:
                result = self._store.apply(events)
            finally:
                self._clock.pinned = None
            if result.applied:
                self._unwritten = batch_record(self._written + 1, now, encoded, self._store.dedupe_ttl)
                self._append_unwritten()
            target = self._written
        if self.fsync == "batch":
            self._sync_to(target)
        return result

    def _append_unwritten(self) -> None:
        """Log the batch applied last, whose record a full disk held back (if any).

        While the disk is full the batch stays applied in memory, unacknowledged, and every
        Ingest is refused before it applies anything; the first one after room is made logs
        the held record, in its place in the order, and goes on (a retry of the held batch
        finds its events applied). Any other write error fails the log for good.
        """
        if self._unwritten is None:
            return
        try:
            self._writer.append(self._unwritten)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._fail(f"writing {self._writer.path}: {error}")
            if not self._disk_full:
                log.error("write-ahead log in %s: %s; ingest is refused until there is room (reads go on)",
                          self.state_dir, error)  # fmt: skip
                self._disk_full = True
            raise StoreUnavailable(f"writing {self._writer.path}: {error.strerror}; ingest is refused until there is room") from None
        if self._disk_full:
            log.warning("write-ahead log in %s: there is room again; ingest goes on", self.state_dir)
            self._disk_full = False
        self._unwritten = None
        self._written += 1

    def _sync_to(self, seq: int) -> None:
        """Return once every batch up to ``seq`` is fsynced; one fsync serves every waiter."""
        with self._sync_lock:
            if self._synced >= seq:
                return
            self._check_usable()
            upto = self._written  # everything up to here is written to the current file
            try:
                self._writer.sync()
            except OSError as error:
                self._fail(f"fsync of {self._writer.path}: {error}")
            self._synced = upto

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        if self._failed is not None:
            raise StoreUnavailable(f"write-ahead log failed ({self._failed}); ingest is refused until a restart")

    def _fail(self, reason: str) -> None:
        # The batch is applied in memory but not logged; after a failed fsync the page
        # cache may have dropped what it held (retrying fsync can lie). Refuse all writes:
        # a restart replays what is on disk, which is every acknowledged batch.
        self._failed = reason
        log.error("write-ahead log in %s failed: %s; ingest is refused until a restart", self.state_dir, reason)
        raise StoreUnavailable(f"write-ahead log failed ({reason}); ingest is refused until a restart")

    def ping(self) -> bool:
        return self._failed is None and not self._closed and self._store.ping()

    def close(self) -> None:
        """Stop snapshots, sync and close the log, release the directory."""
        self._stop.set()
        if self._snapshotter is not None and self._snapshotter is not threading.current_thread():
            self._snapshotter.join()
        with self._snapshot_lock, self._write_lock, self._sync_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._failed is None:
                    self._writer.sync()
            except OSError as error:  # with --fsync batch every ack was synced already
                log.error("fsync of %s on close failed: %s", self._writer.path, error)
            finally:
                self._writer.close()
                self._lock_file.close()
        self._store.close()

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self, min_log_share: float = 0.0) -> bool:
        """Fold the logs written so far into the snapshot; False when there was nothing new,
        or when the logs hold less than ``min_log_share`` of the snapshot's bytes.

        The current log is closed and a new one started (a short pause of ingest); the
        snapshot is then written beside, without holding up reads or writes, made durable
        (temp file, fsync, rename, fsync of the directory), and only then are the logs it
        holds deleted.
        """
        with self._snapshot_lock:
            path = os.path.join(self.state_dir, SNAPSHOT)
            old_snapshot = [path] if os.path.exists(path) else []
            if old_snapshot and _total_bytes(log_path for _, log_path in self._logs()) < min_log_share * _total_bytes(old_snapshot):
                return False
            if not self._room_for_snapshot(old_snapshot + [log_path for _, log_path in self._logs()]):
                return False
            with self._write_lock:
                self._check_usable()
                through = self._written
                folded = [path for first, path in self._logs() if path != self._writer.path]
                if self._writer.records:
                    with self._sync_lock:
                        try:
                            self._writer.sync()
                        except OSError as error:
                            self._fail(f"fsync of {self._writer.path}: {error}")
                        old, self._writer = self._writer, self._open_log(through + 1)
                        self._synced = max(self._synced, through)
                    old.close()
                    folded.append(old.path)
                if not folded:
                    return False
            sources = old_snapshot + folded
            started = time.monotonic()
            try:
                self._write_snapshot(sources, through)
            except _FoldAbandoned:
                log.info("snapshot of %s abandoned: the store is closing (its logs are kept, and replayed on start)", self.state_dir)
                return False
            for path in folded:
                os.remove(path)
            fsync_dir(self.state_dir)
            log.info("snapshot of %s through batch %d in %.2f s", self.state_dir, through, time.monotonic() - started)
            return True

    def _room_for_snapshot(self, sources: list[str]) -> bool:
        """Whether the disk holds a new snapshot with SNAPSHOT_HEADROOM to spare.

        A snapshot holds at most what the old one and the logs hold, and they go only once
        it is written, so skipping one loses nothing, while a snapshot written into the last
        free space would refuse ingest until a restart. Logged once per
        shortage, not once per attempt.
        """
        needed = sum(os.path.getsize(source) for source in sources) + SNAPSHOT_HEADROOM
        free = shutil.disk_usage(self.state_dir).free
        if free >= needed:
            self._snapshot_deferred = False
            return True
        if not self._snapshot_deferred:
            log.warning("snapshot of %s deferred: it needs %.1f MB free, the disk has %.1f MB; the logs are kept "
                        "and ingest goes on until the disk is full", self.state_dir, needed / 1e6, free / 1e6)  # fmt: skip
            self._snapshot_deferred = True
        return False

    def _write_snapshot(self, sources: list[str], through: int) -> None:
        path = os.path.join(self.state_dir, SNAPSHOT)
        tmp = path + ".tmp"
        try:
            self._write_snapshot_file(tmp, sources, through)
        except BaseException:
            with contextlib.suppress(OSError):  # a half snapshot holds space the logs need
                os.remove(tmp)
            raise
        os.replace(tmp, path)
        fsync_dir(self.state_dir)

    def _write_snapshot_file(self, tmp: str, sources: list[str], through: int) -> None:
        # The sources are read twice, so that memory holds the remembered ids and a byte per
        # event, never the events kept (1.1 KB each as records: 220 MB for 200k): the first
        # read judges which events are kept and finds the ids remembered after batch
        # ``through``, the second copies the kept events.
        batches = _FoldSources(sources, through, self._store.dedupe_ttl, stopping=self._stop.is_set)
        applied, kept = batches.judge()
        written, position = 0, 0
        with open(tmp, "wb") as out:
            out.write(header_record("snapshot", self._fingerprint, version=COMPACTED, through_seq=through,
                                    encoded={"applied_ids": applied.to_json()}))  # fmt: skip
            for batch, size in zip(batches.raw(), kept.sizes):
                events = kept_part(batch.events, kept.flags[position : position + size])
                position += size
                if events is not None:
                    out.write(batch_record(batch.seq, batch.at, events, batch.dedupe_ttl))
                    written = batch.seq
            # Batch ``through`` applied an event, and nothing after it can overwrite that one.
            if written != through:
                raise WalError(f"snapshot of {self.state_dir}: it would end at batch {written}, not {through}")
            out.flush()
            os.fsync(out.fileno())

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.snapshot_seconds):
            try:
                self.snapshot(SCHEDULED_FOLD_SHARE)
            except StoreUnavailable:
                return
            except Exception:
                log.exception("snapshot of %s failed; the write-ahead log grows until one succeeds", self.state_dir)

    # -- recovery --------------------------------------------------------------------------

    def _logs(self) -> list[tuple[int, str]]:
        found = (_LOG_NAME.match(name) for name in os.listdir(self.state_dir))
        return sorted((int(m.group(1)), os.path.join(self.state_dir, m.group(0))) for m in found if m)

    def _open_log(self, first_seq: int) -> LogWriter:
        return LogWriter(os.path.join(self.state_dir, log_name(first_seq)), header_record("log", self._fingerprint, first_seq=first_seq))

    def _check_header(self, reader: LogReader) -> None:
        check_dataset(reader, self._fingerprint, self.state_dir)

    def _recover(self) -> tuple[int, int, int]:
        """Replay the snapshot and the logs; (last batch sequence number, batches and events replayed)."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.state_dir, SNAPSHOT + ".tmp"))  # a snapshot cut short
        last, batches, events = 0, 0, 0
        snapshot = os.path.join(self.state_dir, SNAPSHOT)
        with self._replaying():
            if os.path.exists(snapshot):
                with LogReader(snapshot) as reader:
                    if reader.header is None:
                        raise WalError(f"{snapshot}: no header: the file is damaged")
                    self._check_header(reader)
                    replay = self._replay_compacted if _compacted(reader) else self._replay
                    for batch, number in reader.batches():
                        last, events = replay(batch, last, f"{snapshot}: line {number}"), events + len(batch.events)
                        batches += 1
                    if reader.torn_at is not None:
                        raise WalError(f"{snapshot}: byte offset {reader.torn_at}: the snapshot is damaged at its end")
                    if reader.header.get("through_seq") != last:
                        raise WalError(f"{snapshot}: holds batches up to {last}, its header says {reader.header.get('through_seq')}")
                    if _compacted(reader):
                        self._store.restore_applied_ids(AppliedIds.from_record(reader.header["applied_ids"]))
                    if reader.unterminated:
                        _terminate(snapshot)
            torn: tuple[str, int, int] | None = None  # (log, where its damage starts, its good end)
            logs = [path for _, path in self._logs()]
            for at, path in enumerate(logs):
                records = 0
                with LogReader(path, later=logs[at + 1 :]) as reader:
                    if reader.header is not None:
                        self._check_header(reader)
                    for batch, number in reader.batches():
                        records += 1
                        if batch.seq <= last:  # already in the snapshot (a crash before this log was deleted)
                            continue
                        if torn is not None:
                            raise _damaged_before(torn, logs[at:])
                        last, events = self._replay(batch, last, f"{path}: line {number}"), events + len(batch.events)
                        batches += 1
                if not records:  # never written to, or its first write was cut short: it holds nothing
                    if reader.torn_at is not None:
                        _warn_torn(path, reader.torn_at)
                    os.remove(path)
                elif reader.torn_at is not None:
                    torn = (path, reader.torn_at, reader.end)
                elif reader.unterminated:
                    _terminate(path)
            if torn is not None:  # in the last log written: a crash cut its last write short
                path, torn_at, end = torn
                _warn_torn(path, torn_at)
                truncate(path, end)
        fsync_dir(self.state_dir)
        return last, batches, events

    def _replay(self, batch: Batch, last: int, where: str) -> int:
        if batch.seq != last + 1:
            raise WalError(f"{where}: batch {batch.seq} follows batch {last}: batches are missing")
        # Retries are judged as they were when the batch came: by its time and by the TTL
        # then in force, whatever --dedupe-ttl-seconds is now (a duplicate then, such as a
        # retried like after its unlike, must not apply now, nor the reverse).
        self._clock.pinned = batch.at
        ttl = self._store.dedupe_ttl
        if batch.dedupe_ttl is not None:
            self._store.dedupe_ttl = batch.dedupe_ttl
        try:
            self._store.apply(batch.events)
        except EventValidationError as error:
            raise WalError(f"{where}: the logged batch no longer applies: {error}") from error
        finally:
            self._clock.pinned = None
            self._store.dedupe_ttl = ttl
        return batch.seq

    def _replay_compacted(self, batch: Batch, last: int, where: str) -> int:
        """Apply the events a compacted snapshot kept of a batch, as they are."""
        if batch.seq <= last:
            raise WalError(f"{where}: batch {batch.seq} follows batch {last}: the snapshot is damaged")
        self._store.replay_applied(batch.events)
        return batch.seq

    @contextlib.contextmanager
    def _replaying(self) -> Iterator[None]:
        limits = {name: getattr(self._store, name) for name in _POLICY_LIMITS if hasattr(self._store, name)}
        for name in limits:
            setattr(self._store, name, 0)
        try:
            yield
        finally:
            for name, value in limits.items():
                setattr(self._store, name, value)


def _compacted(reader: LogReader) -> bool:
    return reader.header is not None and reader.header.get("version") == COMPACTED


class _FoldAbandoned(Exception):
    """The store is closing: a fold stops where it is, its temporary file removed and the
    logs it was folding kept (a fold of a long history takes seconds to minutes, and a
    SIGTERM waited for all of it)."""


class _FoldSources:
    """Batches 1..``through`` of ``sources`` (a snapshot, then logs, in order), with the
    dedupe TTL each was judged by (``default_ttl`` for a batch logged without one).
    ``stopping()`` true: reading raises _FoldAbandoned at the next batch."""

    def __init__(self, sources: list[str], through: int, default_ttl: float, stopping: Callable[[], bool] = lambda: False) -> None:
        self._sources = sources
        self._through = through
        self._default_ttl = default_ttl
        self._stopping = stopping

    def judge(self) -> tuple[AppliedIds, KeptEvents]:
        """(the ids remembered after batch ``through``, the events a fold keeps): a retry
        when its batch came is dropped; a compacted snapshot's events were judged when it
        was written."""
        applied, kept = AppliedIds(), KeptEvents()
        for batch, reader in self._batches(raw=False):
            if not _compacted(reader):
                kept.add(batch.records, applied_part(batch, applied, batch.dedupe_ttl))
                continue
            kept.add(batch.records, range(len(batch.records)))
            if batch.seq == reader.header["through_seq"]:
                applied = AppliedIds.from_record(reader.header["applied_ids"])
        return applied, kept

    def raw(self) -> Iterator[RawBatch]:
        """The batches, their events left as logged, in the order ``judge`` met them."""
        for batch, _ in self._batches(raw=True):
            yield batch

    def _batches(self, raw: bool) -> Iterator[tuple[Any, LogReader]]:
        """(batch, its file's reader): a RawBatch if ``raw``, else a RecordBatch."""
        expected = 1
        for source in self._sources:
            with LogReader(source, parse=not raw) as reader:
                read = reader.raw_batches if raw else reader.record_batches
                if _compacted(reader):
                    seq = 0
                    for batch, _ in read():
                        seq = batch.seq
                        self._check_stopping()
                        yield batch, reader
                    if reader.torn_at is not None or seq != reader.header["through_seq"]:
                        raise WalError(f"{source}: the snapshot is damaged at its end (from byte offset {reader.end})")
                    expected = seq + 1
                    continue
                for batch, line in read():
                    if batch.seq < expected:
                        continue
                    if batch.seq != expected:
                        raise WalError(f"{source}: line {line.number}: batch {batch.seq} where {expected} was expected")
                    self._check_stopping()
                    yield (batch if batch.dedupe_ttl is not None else dataclasses.replace(batch, dedupe_ttl=self._default_ttl)), reader
                    expected += 1
        if expected != self._through + 1:
            raise WalError(f"snapshot of {os.path.dirname(self._sources[0])}: batches end at {expected - 1}, expected {self._through}")


    def _check_stopping(self) -> None:
        if self._stopping():
            raise _FoldAbandoned


def _warn_torn(path: str, torn_at: int) -> None:
    log.warning("%s: a torn record at byte offset %d (%d bytes: a write cut short by a crash, never "
                "acknowledged) is cut off", path, torn_at, os.path.getsize(path) - torn_at)  # fmt: skip


def _terminate(path: str) -> None:
    """Put back the final newline of a file whose last record lacked only it, durably."""
    log.warning("%s: its last record lacked its final newline (the file lost its last byte, or a crash cut "
                "the write just short of it); the record is whole (length and checksum hold) and is kept, "
                "and the newline put back", path)  # fmt: skip
    with open(path, "ab") as file:
        file.write(b"\n")
        file.flush()
        os.fsync(file.fileno())


def _damaged_before(torn: tuple[str, int, int], later: list[str]) -> WalError:
    """A log damaged at its end though ``later`` logs (the first holds later batches) come
    after it: no crash tears a write that came before acknowledged ones, so the damage lost
    acknowledged batches."""
    path, torn_at, _ = torn
    return WalError(f"{path}: damaged from byte offset {torn_at}, but {later[0]} holds later batches, so acknowledged "
                    "batches were lost: this is not a crash's torn write. Nothing was changed on disk; restore the "
                    f"file from a backup (or, to start from what precedes the damage, cut the file there (truncate -s "
                    f"{torn_at} {path}) and move {', '.join(later)} aside)")


def check_not_in_use(state_dir: str) -> None:
    """WalError at once when another process keeps its events in ``state_dir``: before the
    dataset is read and the store built, which take minutes at scale."""
    if os.path.isfile(os.path.join(state_dir, "LOCK")):
        try:
            lock_file = _lock_directory(state_dir)
        except OSError as error:  # not ours to write, a read-only file system, a full disk
            raise WalError(f"--state-dir {state_dir}: {error.strerror or error}") from None
        lock_file.close()


def _lock_directory(state_dir: str):
    path = os.path.join(state_dir, "LOCK")
    lock_file = open(path, "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip()
        lock_file.close()
        raise WalError(f"--state-dir {state_dir} is in use by another process{f' (pid {holder})' if holder else ''}: "
                       "one server at a time keeps its events there") from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file


def open_durable_memory(
    dataset: Dataset,
    state_dir: str,
    fsync: str = "batch",
    snapshot_seconds: float = 300.0,
    progress: bool = False,
    readers: Collection[str] | None = None,
    **store_options: Any,
) -> DurableStore:
    """A MemoryStore loaded from ``dataset``, with the state directory replayed over it.

    The directory's dataset fingerprint is checked before the (slow) load.
    """
    fingerprint = dataset.fingerprint()
    _precheck(state_dir, fingerprint)
    clock = ApplyClock()
    if "clock" in inspect.signature(MemoryStore.__init__).parameters:
        store_options.setdefault("clock", clock)
    store = MemoryStore.from_dataset(dataset, progress=progress, readers=readers, **store_options)
    return DurableStore(store, fingerprint, state_dir, fsync, snapshot_seconds, clock)


def check_dataset(reader: LogReader, fingerprint: str, state_dir: str) -> None:
    """Raise WalError unless the file was written over the dataset with ``fingerprint``."""
    built_over = reader.header.get("dataset") if reader.header else None
    if built_over != fingerprint:
        raise WalError(
            f"{reader.path} holds events ingested over another dataset (fingerprint {str(built_over)[:12]}…, "
            f"the loaded one is {fingerprint[:12]}…): they would not replay to the same state. Start with the "
            f"dataset they were ingested over, or with a new --state-dir (moving {state_dir} away drops them)"
        )


def _precheck(state_dir: str, fingerprint: str) -> None:
    """Check the files' dataset before spending a minute loading the store."""
    if not os.path.isdir(state_dir):
        return
    for name in sorted(os.listdir(state_dir)):
        if name == SNAPSHOT or _LOG_NAME.match(name):
            with LogReader(os.path.join(state_dir, name), parse=False) as reader:
                if reader.header is not None:
                    check_dataset(reader, fingerprint, state_dir)
