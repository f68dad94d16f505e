"""GetFeed latency, memory store vs Redis (standalone and a 3-master cluster), one run.

    python -m benchmarks.bench_feed_latency [--users 20000 --sellers 2000 --items 50000]
        [--requests 2000] [--no-cluster] [--redis redis://HOST:PORT/DB] [--json OUT]

One seeded synthetic dataset and one trained model; the same users are asked for a first
page (limit 20) through FeedService.get_feed (validation, the full pipeline, page token)
on each store, in one thread, after a warm-up. Unless --redis is given, the benchmark
starts its own redis-server processes on free ports (no persistence) and stops them.
Loading each Redis goes through the `python -m serving load` code, whose rate is printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ranking.feed import FeedSettings
from serving.feed_service import FeedService
from serving.load import load_into_redis
from serving.page_token import PageTokenCodec
from stores.memory import MemoryStore
from stores.redis import RedisStore
from training.artifact import load_current
from training.dataset import write_dataset
from training.flag_types import output_file
from training.generate import generate
from training.train import TrainParams, train_and_publish


def time_feeds(service: FeedService, users: list[str], warmup: int, now: float) -> np.ndarray:
    for user in users[:warmup]:
        service.get_feed(user, 20, "", [], now)
    latencies = np.empty(len(users))
    for n, user in enumerate(users):
        started = time.perf_counter()
        service.get_feed(user, 20, "", [], now)
        latencies[n] = time.perf_counter() - started
    return latencies * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_feed_latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("dataset")
    data.add_argument("--users", type=int, default=20_000, help="generated users (default: %(default)s)")
    data.add_argument("--sellers", type=int, default=2_000, help="generated sellers (default: %(default)s)")
    data.add_argument("--items", type=int, default=50_000, help="generated items (default: %(default)s)")
    data.add_argument("--seed", type=int, default=1, help="generator seed, and of the users asked (default: %(default)s)")
    data.add_argument("--no-engagements", dest="engagements", action="store_false",
                      help="generate no shares, views, clicks, carts or purchases (the data of figures before issue 9)")
    run = parser.add_argument_group("run")
    run.add_argument("--requests", type=int, default=2_000, help="timed GetFeed calls per store (default: %(default)s)")
    run.add_argument("--warmup", type=int, default=200, help="untimed calls first (default: %(default)s)")
    run.add_argument("--redis", help="use this Redis (it is flushed!) instead of starting one")
    run.add_argument("--no-cluster", action="store_true", help="skip the 3-master cluster")
    run.add_argument("--json", type=output_file, help="also write the results here")
    args = parser.parse_args(argv)

    from tests.redis_servers import (  # the test fixtures' process helpers
        RedisClusterServers,
        RedisServer,
    )

    rng = random.Random(args.seed)
    results, loads, servers = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        dataset = generate(users=args.users, sellers=args.sellers, items=args.items, seed=args.seed, engagements=args.engagements)
        write_dataset(dataset, str(root / "data"))
        train_and_publish(str(root / "data"), str(root / "models"), TrainParams(show_progress=False))
        artifact = load_current(str(root / "models"))
        print(f"dataset and model ready in {time.perf_counter() - started:.1f} s: {len(dataset.items)} items, "
              f"{len(dataset.likes)} likes, {len(dataset.follows)} follows, {len(dataset.friends)} friendships, "
              f"{len(dataset.engagements)} engagements", file=sys.stderr)  # fmt: skip
        users = rng.choices(dataset.user_ids(), k=args.requests)
        now = float(np.nanmax(dataset.likes.ts))
        codec = PageTokenCodec(b"bench-secret-0123456789")
        try:
            stores = [("memory", lambda: MemoryStore.from_dataset(dataset))]
            if args.redis:
                stores.append(("redis", lambda: args.redis))
            else:
                stores.append(("redis", lambda: servers.append(RedisServer(root / "redis").start()) or servers[-1].url))
            if not args.no_cluster:
                stores.append(("redis-cluster", lambda: servers.append(RedisClusterServers(root / "cluster").start()) or servers[-1].url))
            for name, make in stores:
                made = make()
                if isinstance(made, str):
                    store = RedisStore.from_url(made, socket_timeout=5.0)
                    if args.redis:
                        store.client.flushdb()
                    stats = load_into_redis(store.client, dataset)
                    loads.append({"store": name, "rows": stats.rows, "seconds": stats.seconds, "rows_per_s": stats.rows_per_second})
                else:
                    store = made
                service = FeedService(store, artifact, codec, FeedSettings())
                gc.freeze()  # as the server does once its store and model are loaded
                ms = time_feeds(service, users, args.warmup, now)
                p50, p90, p99 = np.percentile(ms, [50, 90, 99])
                results.append({"store": name, "requests": len(ms), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(ms.mean())})
                store.close()
        finally:
            for server in servers:
                server.stop()

    print(f"{'store':<14} {'requests':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for r in results:
        print(f"{r['store']:<14} {r['requests']:>8} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['mean_ms']:>8.2f}")
    for load in loads:
        print(f"load into {load['store']}: {load['rows']} rows in {load['seconds']:.2f} s = {load['rows_per_s']:,.0f} rows/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency": results, "load": loads}, indent=2, default=float))


if __name__ == "__main__":
    main()
