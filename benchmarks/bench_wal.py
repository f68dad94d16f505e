"""What the write-ahead log of the durable memory store (stores/durable.py, stores/wal.py;
``--state-dir``) costs at ingest.

  python -m benchmarks.bench_wal [--events 20000] [--batch 100] [--threads 1] [--repeat 3]

A stream of ``--events`` events in batches of ``--batch`` (half likes, half views, on a
generated dataset of 2,000 users and 5,000 items) is applied straight to the store from
``--threads`` threads, three ways: no log (the plain memory store), the log with fsync
off, and the log with fsync batch (the server's default). Each line gives the best of
``--repeat`` runs: events/s and batches/s (wall clock), and CPU microseconds per event
(the process's, all threads); for the logged modes, how fast the log replays on a start.
The log is written under $TMPDIR (default /tmp) and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import threading
import time
from pathlib import Path

from stores.durable import DurableStore
from stores.events import Event, EventKind
from stores.memory import MemoryStore
from tests.builders import NOW
from training.flag_types import bounded

MODES = ("no log", "off", "batch")
"""No log, then the log with each --fsync mode measured."""


def bench(events: int = 20_000, batch: int = 100, threads: int = 1, repeat: int = 3) -> None:
    """Ingest of a stream of ``batch``-event like/view batches from ``threads`` threads:
    no log, fsync off, fsync batch. Best of ``repeat`` runs: events/s (wall) and CPU
    microseconds per event (the process's, all threads); then replay speed."""
    from training.generate import generate

    dataset = generate(users=2000, sellers=200, items=5000, seed=1)
    fingerprint = dataset.fingerprint()
    users, items = list(dataset.likes.src[:2000]), list(dataset.items.item_id[:2000])
    rnd = random.Random(0)
    stream = [
        [Event(f"b{k}-{j}", rnd.choice([EventKind.LIKE, EventKind.VIEW]), NOW, user_id=rnd.choice(users), item_id=rnd.choice(items))
         for j in range(batch)]
        for k in range(events // batch)
    ]  # fmt: skip
    events = sum(len(b) for b in stream)  # whole batches only
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"wal-bench-{os.getpid()}"
    try:
        for mode in MODES:
            rates, cpus, replays = [], [], []
            for _ in range(repeat):
                shutil.rmtree(root, ignore_errors=True)
                memory = MemoryStore.from_dataset(dataset)
                store = memory if mode == "no log" else DurableStore(memory, fingerprint, str(root), fsync=mode, snapshot_seconds=0)
                chunks = [stream[t::threads] for t in range(threads)]
                workers = [threading.Thread(target=lambda c: [store.apply(b) for b in c], args=(chunk,)) for chunk in chunks]
                wall, cpu = time.perf_counter(), time.process_time()
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
                rates.append(events / (time.perf_counter() - wall))
                cpus.append((time.process_time() - cpu) / events * 1e6)
                store.close()
                if mode != "no log":
                    memory = MemoryStore.from_dataset(dataset)
                    started = time.perf_counter()
                    DurableStore(memory, fingerprint, str(root), snapshot_seconds=0).close()
                    replays.append(events / (time.perf_counter() - started))
            replay = f"   replay {max(replays):,.0f} events/s" if replays else ""
            print(f"{mode:>7}: {max(rates):8,.0f} events/s {max(rates) / batch:6,.0f} batches/s {min(cpus):6,.0f} us CPU/event"
                  f"  ({threads} threads){replay}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_wal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=bounded(int, 1), default=20_000,
                        help="events applied per run, in whole batches (default: %(default)s)")
    parser.add_argument("--batch", type=bounded(int, 1), default=100,
                        help="events per batch, each one store.apply (and one log record) (default: %(default)s)")
    parser.add_argument("--threads", type=bounded(int, 1), default=1,
                        help="threads applying the batches, each its share of the stream (default: %(default)s)")
    parser.add_argument("--repeat", type=bounded(int, 1), default=3,
                        help="runs of each mode; the best is reported (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch > args.events:
        parser.error(f"--batch must be at most --events ({args.events}), got {args.batch}")
    bench(args.events, args.batch, args.threads, args.repeat)


if __name__ == "__main__":
    main()
