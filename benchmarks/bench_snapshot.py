"""What a durable memory store's snapshot holds and what a restart from it costs,
against the number of events ingested (``stores/durable.py``, ``stores/compaction.py``).

    python -m benchmarks.bench_snapshot [--sizes 10000,50000,200000] [--fold-every 10000 --fold-share 1]

Events come in batches of 100 on 50 items of a small generated catalogue, then one
snapshot is written; restart time is the process's CPU time (the machine is shared), best
of three. Two streams: "mixed" (stock changes, likes, unlikes, views) and "toggles" (stock
changes, follows and unfollows).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from pathlib import Path

from stores import durable
from stores.events import Event, EventKind
from stores.memory import MemoryStore
from training.generate import generate

START = 1_767_222_000.0  # 2025-12-31T23:00:00Z


def snapshot_events(state_dir: str) -> int:
    with durable.LogReader(os.path.join(state_dir, durable.SNAPSHOT)) as reader:
        return sum(len(batch.events) for batch, _ in reader.batches())


def bench(sizes: list[int], fold_every: int = 0, fold_share: float = durable.SCHEDULED_FOLD_SHARE) -> None:
    """Snapshot size and restart (replay) time against the number of events ingested, in
    batches of 100 on 50 items of a small catalogue, then one snapshot; restart time is
    the process's CPU time (the machine is shared), best of three. Two streams: "mixed",
    stock changes, likes, unlikes and views; "toggles", stock changes and (un)follows.
    With ``fold_every`` a scheduled snapshot (``fold_share``) is also tried after every that
    many events, and the CPU of all of them is reported."""
    dataset = generate(users=500, sellers=50, items=200, seed=1)
    fingerprint = dataset.fingerprint()
    users, items, sellers = sorted(set(dataset.likes.src))[:200], list(dataset.items.item_id[:50]), sorted(set(dataset.items.seller_id))[:20]
    streams = {"mixed": [EventKind.STOCK_UPDATE, EventKind.LIKE, EventKind.UNLIKE, EventKind.VIEW],
               "toggles": [EventKind.STOCK_UPDATE, EventKind.FOLLOW, EventKind.UNFOLLOW]}
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"snapshot-bench-{os.getpid()}"
    for name, kinds in streams.items():
        for size in sizes:
            rnd, folds, scheduled_seconds = random.Random(0), 0, 0.0
            shutil.rmtree(root, ignore_errors=True)
            store = durable.DurableStore(MemoryStore.from_dataset(dataset), fingerprint, str(root), fsync="off", snapshot_seconds=0)
            for start in range(0, size, 100):
                batch = []
                for n in range(start, start + 100):
                    kind, user, item, ts = rnd.choice(kinds), rnd.choice(users), rnd.choice(items), START + n * 0.01
                    if kind is EventKind.STOCK_UPDATE:
                        batch.append(Event(f"b{n}", kind, ts, item_id=item, stock=rnd.randrange(2)))
                    elif kind in (EventKind.FOLLOW, EventKind.UNFOLLOW):
                        batch.append(Event(f"b{n}", kind, ts, user_id=user, seller_id=rnd.choice(sellers)))
                    else:
                        batch.append(Event(f"b{n}", kind, ts, user_id=user, item_id=item))
                store.apply(batch)
                if fold_every and (start + 100) % fold_every == 0:
                    started = time.process_time()
                    folds += store.snapshot(fold_share)
                    scheduled_seconds += time.process_time() - started
            started = time.process_time()
            store.snapshot()
            snapshot_seconds = time.process_time() - started
            store.close()
            restarts = []
            for _ in range(3):
                memory = MemoryStore.from_dataset(dataset)
                started = time.process_time()
                durable.DurableStore(memory, fingerprint, str(root), snapshot_seconds=0).close()
                restarts.append(time.process_time() - started)
            print(f"{name:>7} {size:>9,} events: snapshot {os.path.getsize(root / durable.SNAPSHOT) / 1e6:7.2f} MB "
                  f"({snapshot_events(str(root)):>7,} events) written in {snapshot_seconds:5.2f} s, "
                  f"restart {min(restarts):5.2f} s CPU"
                  + (f"; {folds} scheduled folds (every {fold_every:,} events, share {fold_share:g}) took {scheduled_seconds:5.2f} s"
                     if fold_every else ""), flush=True)
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_snapshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,200000",
                        help="events ingested before the snapshot, comma-separated multiples of 100 (default: %(default)s)")
    parser.add_argument("--fold-every", type=int, default=0, metavar="EVENTS",
                        help="also try a scheduled snapshot after every EVENTS events (a multiple of 100), and report "
                             "their CPU; 0: none (default: %(default)s)")
    parser.add_argument("--fold-share", type=float, default=durable.SCHEDULED_FOLD_SHARE,
                        help="the scheduled snapshots' share: fold once the logs hold this share of the snapshot's "
                             "bytes; 0 folds every time (default: %(default)s, the server's)")
    args = parser.parse_args(argv)
    if args.fold_every < 0 or args.fold_every % 100:
        parser.error(f"--fold-every: a multiple of 100 (the batch size), got {args.fold_every}")
    if args.fold_share < 0:
        parser.error(f"--fold-share: at least 0, got {args.fold_share}")
    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated whole numbers, got {args.sizes!r}")
    if any(size < 100 or size % 100 for size in sizes):
        parser.error(f"--sizes: each a multiple of 100 (the batch size), got {args.sizes!r}")
    bench(sizes, args.fold_every, args.fold_share)


if __name__ == "__main__":
    main()
