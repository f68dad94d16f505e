"""The write-ahead log of the durable memory store: framed, checksummed records of event batches.

A log file and a snapshot share one format: text lines, each a framed record

    <crc32 of payload, 8 hex digits> <payload length in bytes> <payload>\\n

whose payload is compact ASCII JSON (so it never holds a newline). The first record is
the file's header: ``{"format": "feedrank-wal", "version": 1, "kind": "log" | "snapshot",
"dataset": <fingerprint>, ...}``. Every other record is one acknowledged batch,
``{"seq": N, "at": <wall time it was applied>, "dedupe_ttl": <the store's then>, "events":
[Event.to_record(), ...]}`` (records written before ``dedupe_ttl`` was logged lack it);
sequence numbers run 1, 2, 3... across files without a gap. A compacted snapshot (version
2) holds only the events of each batch that the state still shows, so batches may be
missing from it; its header holds the applied event ids (see stores/durable.py).

A record is checked by its length and checksum, then decoded. A bad record that is not
whole (it lacks its final newline) followed by nothing but more bad bytes is a torn tail
(a write cut short by a crash: never acknowledged) and is cut off with a warning, unless
all it lacks is that newline (its length and checksum hold): then it is kept; a whole
batch record that fails its checksum, or a bad record followed by a good one, is damage
to what may have been acknowledged: an error naming the file, line and byte offset.
"""

from __future__ import annotations

import json
import logging
import contextlib
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from stores.events import Event

log = logging.getLogger(f"feedrank.{__name__}")

FORMAT = "feedrank-wal"
VERSION = 1  # a log; a snapshot of the batches themselves (written before snapshots were compacted)
COMPACTED = 2  # a snapshot of the events the state still shows (stores/compaction.py)
READABLE = (VERSION, COMPACTED)


class WalError(ValueError):
    """A state directory that cannot be replayed as it is (corrupt, or built over another dataset)."""


@dataclass(frozen=True)
class Batch:
    """One logged batch: its sequence number, when it was applied (wall time), its events,
    and the dedupe TTL the store judged its retries by (None: not logged)."""

    seq: int
    at: float
    events: list[Event]
    dedupe_ttl: float | None = None


@dataclass(frozen=True)
class RecordBatch:
    """One logged batch with its events left as their records (``Event.to_record()``):
    what folding logs into a snapshot reads and writes, without decoding an Event."""

    seq: int
    at: float
    records: list[dict[str, str]]
    dedupe_ttl: float | None = None

    def record(self) -> bytes:
        encoded = json.dumps(self.records, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        return batch_record(self.seq, self.at, encoded, self.dedupe_ttl)


@dataclass(frozen=True)
class RawBatch:
    """One logged batch with its events left as the JSON array it was logged with: what
    a fold copies events out of, without decoding them."""

    seq: int
    at: float
    events: bytes
    dedupe_ttl: float | None = None


def frame(payload: dict[str, Any]) -> bytes:
    """One record line: checksum, length and the compact JSON payload."""
    return _framed(_compact(payload))


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _framed(data: bytes) -> bytes:
    return b"%08x %d %s\n" % (zlib.crc32(data), len(data), data)


def encode_events(events: Sequence[Event]) -> bytes:
    """The JSON array of the events' records, encoded once, outside any lock."""
    return json.dumps([event.to_record() for event in events], separators=(",", ":"), ensure_ascii=True).encode("ascii")


def batch_record(seq: int, at: float, encoded_events: bytes, dedupe_ttl: float | None = None) -> bytes:
    """A batch record; the payload starts with its sequence number (``_unframe`` reads it without parsing the rest)."""
    ttl = b"" if dedupe_ttl is None else b'"dedupe_ttl":%s,' % json.dumps(float(dedupe_ttl)).encode()
    data = b'{"seq":%d,"at":%s,%s"events":%s}' % (seq, json.dumps(float(at)).encode(), ttl, encoded_events)
    return _framed(data)


def header_record(kind: str, dataset: str, version: int = VERSION, encoded: dict[str, bytes] | None = None, **fields: Any) -> bytes:
    """A header; ``encoded``: fields given as compact ASCII JSON already, after the others."""
    data = _compact({"format": FORMAT, "version": version, "kind": kind, "dataset": dataset, **fields})
    if encoded:
        data = data[:-1] + b"".join(b",%s:%s" % (_compact(name), value) for name, value in encoded.items()) + b"}"
    return _framed(data)


_SEQ_PREFIX = b'{"seq":'
_EVENTS_KEY = b'"events":'
_HEADER_PREFIX = b'{"format":'
_APPLIED_IDS_FIELD = b',"applied_ids":'


def _unframe(line: bytes, parse: bool = True) -> dict[str, Any] | None:
    """The payload of a well-formed line, or None (torn, garbled or failing its checksum).

    ``parse`` False: a batch record's payload is not decoded, only its sequence number
    read (``{"seq": N}``): enough to copy it into a snapshot; a header is decoded less a
    compacted snapshot's applied ids, its last field (megabytes, 0.1 s per 100k ids).
    """
    if not line.endswith(b"\n"):
        return None
    parts = line[:-1].split(b" ", 2)
    if len(parts) != 3:
        return None
    crc, length, data = parts
    try:
        if int(length) != len(data) or int(crc, 16) != zlib.crc32(data):
            return None
        if not parse and data.startswith(_SEQ_PREFIX):
            return {"seq": int(data[len(_SEQ_PREFIX) : data.index(b",", len(_SEQ_PREFIX))])}
        if not parse and data.startswith(_HEADER_PREFIX) and (ids := data.find(_APPLIED_IDS_FIELD)) >= 0:
            data = data[:ids] + b"}"
        payload = json.loads(data)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


@dataclass
class _Line:
    number: int  # 1-based
    offset: int  # of its first byte
    raw: bytes
    payload: dict[str, Any]


class LogReader:
    """Reads one log or snapshot file record by record, checking each.

    ``header`` is read on construction (None for a file cut short before its header was
    whole). Iterating yields the batch records; at the end, ``torn_at`` is the byte offset
    of a torn tail (None when the file ends cleanly) and ``end`` the offset after the last
    good record. ``later``: the logs written after this one, which the advice on damage names.
    """

    def __init__(self, path: str, parse: bool = True, later: Sequence[str] = ()) -> None:
        self.path = path
        self._parse = parse
        self._later = list(later)
        try:
            self._file: BinaryIO = open(path, "rb")
        except OSError as error:  # not ours to read, a disk error (not: gone, which the caller may expect)
            if isinstance(error, FileNotFoundError):
                raise
            raise WalError(f"{path}: cannot be opened: {error.strerror or error}") from None
        self._number = 0
        self._offset = 0
        self.end = 0
        self.torn_at: int | None = None
        self.unterminated = False  # the file's last record is whole but for its final newline
        self.header: dict[str, Any] | None = None
        first = self._next()
        if first is not None:
            if first.payload.get("format") != FORMAT:
                raise WalError(f"{path}:1: not a feedrank write-ahead log (no header)")
            if first.payload.get("version") not in READABLE:
                raise WalError(f"{path}:1: format version {first.payload.get('version')!r}, this server reads "
                               f"{' and '.join(map(str, READABLE))}")  # fmt: skip
            self.header = first.payload

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _next(self) -> _Line | None:
        """The next good line; None at a clean end or a torn tail (``torn_at`` set)."""
        raw = self._readline()
        if not raw:
            return None
        self._number += 1
        offset, self._offset = self._offset, self._offset + len(raw)
        payload = _unframe(raw, self._parse)
        if payload is None and not raw.endswith(b"\n") and (whole := _unframe(raw + b"\n", self._parse)) is not None:
            # The file's last line (readline stops short of a newline only at the end) with
            # its length and checksum whole: the file lost its final byte, or a crash cut
            # the write just short of it. Either way the record was written whole, so it may
            # have been acknowledged: kept (a batch never acknowledged that applies is met
            # by the client's retry as duplicates), where cutting it off could lose an ack.
            payload, raw = whole, raw + b"\n"
            self.unterminated = True
        if payload is None:
            self._check_tail(offset, raw)
            self.torn_at = offset
            return None
        self.end = self._offset
        return _Line(self._number, offset, raw, payload)

    def _readline(self) -> bytes:
        """The next line; WalError naming the file and where when the disk fails to read it."""
        try:
            return self._file.readline()
        except OSError as error:
            raise WalError(f"{self.path}: byte offset {self._offset}: cannot be read: {error.strerror or error}") from None

    def _check_tail(self, bad_offset: int, bad: bytes) -> None:
        """Raise WalError unless the bad line at ``bad_offset`` and all after it are a torn tail.

        A write cut short leaves a prefix of its record: no final newline (or, from pages
        never written, NULs). A batch record that reaches its newline was written whole, so
        it may have been acknowledged: a bit flip, or a lost newline that joined two records.
        """
        number = self._number
        if bad.endswith(b"\n") and (_SEQ_PREFIX in bad or b',"events":[' in bad):  # one flip spares one of them
            raise WalError(f"{self.path}: line {number} (byte offset {bad_offset}) is corrupt: a whole record that "
                           f"fails its checksum, not a torn write. {self._damage_advice(bad_offset)}")  # fmt: skip
        for raw in iter(self._readline, b""):
            if _unframe(raw, parse=False) is not None:
                raise WalError(f"{self.path}: line {number} (byte offset {bad_offset}) is corrupt, and good records "
                               f"follow it: not a torn tail. {self._damage_advice(bad_offset)}")  # fmt: skip

    def _damage_advice(self, offset: int) -> str:
        if self.header is not None and self.header.get("kind") == "snapshot":  # the logs after it need all of it
            return "Nothing was changed on disk. Restore the state directory from a backup"
        # The later logs start where this one ended: kept, they would not replay after the cut.
        move_later = f", move {', '.join(self._later)} aside," if self._later else ""
        return (f"Nothing was changed on disk. Restore the state directory from a backup, or, to drop this record "
                f"and every later one, cut the file there (truncate -s {offset} {self.path}){move_later} and start again")

    def lines(self) -> Iterator[_Line]:
        """The good batch lines (read with ``parse`` False, only their ``seq`` is decoded: for copying)."""
        if self.header is None:
            return
        while (line := self._next()) is not None:
            if not isinstance(line.payload.get("seq"), int):
                raise WalError(f"{self.path}: line {line.number} (byte offset {line.offset}): a record without a sequence number")
            yield line

    def batches(self) -> Iterator[tuple[Batch, int]]:
        """(batch, line number) of each record, decoded into Events."""
        for batch, line in self.record_batches():
            try:
                events = [Event.from_record(record) for record in batch.records]
            except (KeyError, TypeError, ValueError) as error:
                raise _undecodable(self.path, line, error) from error
            yield Batch(batch.seq, batch.at, events, batch.dedupe_ttl), line.number

    def record_batches(self) -> Iterator[tuple[RecordBatch, _Line]]:
        """(batch, its line) of each record, its events left as records."""
        for line in self.lines():
            try:
                records = line.payload["events"]
                if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
                    raise TypeError("events is not a list of records")
                ttl = line.payload.get("dedupe_ttl")
                batch = RecordBatch(line.payload["seq"], float(line.payload.get("at", 0.0)), records, None if ttl is None else float(ttl))
            except (KeyError, TypeError, ValueError) as error:
                raise _undecodable(self.path, line, error) from error
            yield batch, line

    def raw_batches(self) -> Iterator[tuple[RawBatch, _Line]]:
        """(batch, its line) of each record, its events left undecoded; the record must be
        laid out as ``batch_record`` writes every one (its events last, after numbers only)."""
        for line in self.lines():
            data = line.raw[: -1].split(b" ", 2)[2]
            start = data.find(_EVENTS_KEY) + len(_EVENTS_KEY)
            try:
                head = json.loads(data[:start] + b"0}")
                ttl = head.get("dedupe_ttl")
                batch = RawBatch(head["seq"], float(head.get("at", 0.0)), data[start:-1], None if ttl is None else float(ttl))
            except (KeyError, TypeError, ValueError) as error:
                raise _undecodable(self.path, line, error) from error
            yield batch, line


def _undecodable(path: str, line: _Line, error: Exception) -> WalError:
    return WalError(f"{path}: line {line.number} (byte offset {line.offset}): cannot decode its events: {error}")


def fsync_dir(path: str) -> None:
    """Make renames, creations and deletions in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate(path: str, size: int) -> None:
    """Cut ``path`` to ``size`` bytes, durably."""
    with open(path, "r+b") as file:
        file.truncate(size)
        file.flush()
        os.fsync(file.fileno())


class LogWriter:
    """Appends records to one log file with unbuffered writes (one ``os.write`` per record)."""

    def __init__(self, path: str, header: bytes) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self.records = 0
        self.size = len(header)
        try:
            self.write(header)
            os.fsync(self.fd)
            fsync_dir(os.path.dirname(path) or ".")
        except BaseException:
            os.close(self.fd)
            with contextlib.suppress(OSError):  # ours alone (O_EXCL), and holds no record
                os.remove(path)
            raise

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def append(self, record: bytes) -> None:
        """Append ``record`` whole, or raise OSError with the file as it was before (a write
        cut short by a full disk is cut off again), so that it can be appended again later."""
        try:
            self.write(record)
        except OSError:
            os.ftruncate(self.fd, self.size)
            raise
        self.size += len(record)
        self.records += 1

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
