"""``python -m serving repack``: rebuild every item's packed value in a live Redis.

  python -m serving repack --redis URL [--batch 1000] [--no-progress]

A feed reads each candidate's hydration fields from one packed value per item, which
every write of the item refreshes (stores/redis.py). After an upgrade that changed its
layout, a Redis written by the older version has none in the new layout: its feeds
still work, packing each item on the fly, but cost more Redis CPU until each item's next
write. This command packs them all now, from the items' own fields, without reloading
the dataset (which would undo the events applied since): each batch is one script, and
each item is repacked atomically, so feeds and ingests may run meanwhile. Running it
again is harmless.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from serving.load import connect_checked, exit_on_interrupt, exit_on_redis_errors
from stores.redis import RedisStore

DEFAULT_BATCH = 1_000
REPACK_INTERRUPTED = ("repack interrupted part-way: the items done are repacked, the others are read field by field "
                      "until their next write; run it again to finish")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving repack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB, rediss://HOST:PORT/DB, unix://PATH or redis-cluster://HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="items per script call (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none either when stderr is not a terminal)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    client, _ = connect_checked(args.redis)  # one line, not a traceback, when the URL is wrong or Redis is down
    client.close()
    started, items = time.perf_counter(), 0
    with exit_on_redis_errors(args.redis), exit_on_interrupt(args.redis, REPACK_INTERRUPTED):
        store = RedisStore.from_url(args.redis)
        try:
            with tqdm(unit="items", desc="repack", disable=not sys.stderr.isatty() or args.no_progress, file=sys.stderr) as bar:
                for ids in store.item_id_batches(args.batch):
                    items += store.repack_items(ids)
                    bar.update(len(ids))
        finally:
            store.close()
    print(f"repacked {items} items in {time.perf_counter() - started:.2f} s")
