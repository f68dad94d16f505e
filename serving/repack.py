"""``python -m serving repack``: rebuild every item's packed value and every seller's
listings in a live Redis.

  python -m serving repack --redis URL [--batch 1000] [--no-progress]

A feed reads each candidate's hydration fields from one packed value per item, which
every write of the item refreshes (stores/redis.py). After an upgrade that changed its
layout, a Redis written by the older version has none in the new layout: its feeds
still work, packing each item on the fly, but cost more Redis CPU until each item's next
write. This command packs them all now, from the items' own fields, without reloading
the dataset (which would undo the events applied since): each batch is one script, and
each item is repacked atomically, so feeds and ingests may run meanwhile.

It then rebuilds each seller's listings set from its items' seller, listing time and
stock: its newest in-stock items, as many as the store keeps (twice the URL's
``listings``, default 1000: use the servers' URL). A Redis written before the sets held
in-stock items only has sold-out items in them, which hide older in-stock ones, and
lacks in-stock items trimmed then. Each seller's set changes atomically; an item an
ingest changes meanwhile is read again and its seller rebuilt again. A cluster with a
primary that came back empty is refused (its items would read as gone): load it first.

Running it again is harmless.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping

from tqdm import tqdm

from serving.load import connect_checked, exit_on_interrupt, exit_on_redis_errors
from stores.redis import RedisStore, listings_kept
from training.flag_types import bounded

DEFAULT_BATCH = 1_000
REPACK_INTERRUPTED = ("repack interrupted part-way: the items done are repacked, the others are read field by field "
                      "until their next write; the sellers' listings not rebuilt yet are as they were; run it again to finish")


def seller_batches(candidates: Mapping[str, list[str]], batch: int) -> Iterator[dict[str, list[str]]]:
    """``candidates`` (seller -> items) in parts of about ``batch`` items (a seller with
    none counting one), each seller whole."""
    part: dict[str, list[str]] = {}
    size = 0
    for seller, items in candidates.items():
        if part and size + max(len(items), 1) > batch:
            yield part
            part, size = {}, 0
        part[seller] = items
        size += max(len(items), 1)
    if part:
        yield part


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving repack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB, rediss://HOST:PORT/DB, unix://PATH or redis-cluster://HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--batch", type=bounded(int, 1), default=DEFAULT_BATCH, help="items per script call (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none either when stderr is not a terminal)")
    args = parser.parse_args(argv)
    client, _ = connect_checked(args.redis)  # one line, not a traceback, when the URL is wrong or Redis is down
    client.close()
    started, items = time.perf_counter(), 0
    changed = removed = added = 0
    unsettled: list[str] = []
    quiet = not sys.stderr.isatty() or args.no_progress
    with exit_on_redis_errors(args.redis), exit_on_interrupt(args.redis, REPACK_INTERRUPTED):
        store = RedisStore.from_url(args.redis)
        try:
            # A primary that came back empty: its items would be unlisted from every seller's set.
            store.check_every_primary_holds_data()
            in_stock: dict[str, list[str]] = defaultdict(list)
            with tqdm(unit="items", desc="repack", disable=quiet, file=sys.stderr) as bar:
                for ids in store.item_id_batches(args.batch):
                    for item_id, seller_id in zip(ids, store.repack_items(ids)):
                        if seller_id is not None:
                            in_stock[seller_id].append(item_id)
                    items += len(ids)
                    bar.update(len(ids))
            for seller_id in store.listed_seller_ids(args.batch):  # also those with nothing in stock
                in_stock.setdefault(seller_id, [])
            with tqdm(total=len(in_stock), unit="sellers", desc="listings", disable=quiet, file=sys.stderr) as bar:
                for part in seller_batches(in_stock, args.batch):
                    relisted = store.rebuild_listings(part, args.batch)
                    changed, removed, added = changed + relisted.changed, removed + relisted.removed, added + relisted.added
                    unsettled += relisted.unsettled
                    bar.update(len(part))
            kept = listings_kept(store.listings_bound)
        finally:
            store.close()
    print(f"repacked {items} items; rebuilt {len(in_stock)} sellers' listings (the newest {kept} in stock each): "
          f"{changed} changed, {removed} listings removed (sold out, gone or past {kept}), {added} added, "
          f"in {time.perf_counter() - started:.2f} s")
    if unsettled:
        print(f"{len(unsettled)} sellers' items kept changing while their listings were rebuilt (e.g. {unsettled[0]}): "
              "those sets may still be off; run it again")
