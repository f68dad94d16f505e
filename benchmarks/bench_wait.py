"""What Ingest's min_replicas (Redis WAIT) costs: batch latency with 0 and 1 replicas confirming.

  python -m benchmarks.bench_wait [--batches 500] [--size 20]

Standalone Redis with one replica, and a Redis Cluster of 3 primaries with one replica
each (real redis-server processes). Each batch is ``--size`` likes by new users, applied
through RedisStore.apply one after the other; reported: p50/p99 ms per batch and batches/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from stores.events import Event, EventKind
from stores.redis import RedisStore
from tests.builders import NOW, social_dataset


def time_batches(store: RedisStore, batches: int, size: int, min_replicas: int, tag: str) -> dict:
    latencies = np.empty(batches)
    for b in range(batches):
        events = [Event(f"{tag}-{b}-{k}", EventKind.LIKE, NOW, user_id=f"{tag}-{b}-{k}", item_id="i1") for k in range(size)]
        started = time.perf_counter()
        store.apply(events, min_replicas=min_replicas)
        latencies[b] = time.perf_counter() - started
    p50, p99 = np.percentile(latencies * 1e3, [50, 99])
    return {"min_replicas": min_replicas, "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "batches_per_s": round(batches / latencies.sum(), 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_wait", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=500, help="timed batches per run; each store runs min_replicas 0, 1, 0, 1 (default: %(default)s)")
    parser.add_argument("--size", type=int, default=20, help="likes per batch (default: %(default)s)")
    args = parser.parse_args(argv)
    from serving.load import load_into_redis
    from tests.redis_servers import RedisClusterServers, RedisServer

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-wait-") as tmp:
        root = Path(tmp)
        primary = RedisServer(root / "primary").start()
        replica = RedisServer(root / "replica", extra=["--replicaof", "127.0.0.1", str(primary.port)]).start()
        cluster = RedisClusterServers(root / "cluster", masters=3, replicas=1).start()
        try:
            with replica.client() as client:
                while client.info("replication").get("master_link_status") != "up":
                    time.sleep(0.05)
            for name, url in (("redis + 1 replica", primary.url), ("cluster 3 + 3", cluster.url)):
                store = RedisStore.from_url(url, socket_timeout=5.0)
                load_into_redis(store.client, social_dataset())
                for min_replicas in (0, 1, 0, 1):  # interleaved: the machine is noisy
                    row = time_batches(store, args.batches, args.size, min_replicas, f"{name[:5]}{min_replicas}{len(results)}")
                    results.append({"store": name, **row})
                store.close()
        finally:
            cluster.stop()
            replica.stop()
            primary.stop()
    print(f"{'store':<20} {'min_replicas':>12} {'p50 ms':>8} {'p99 ms':>8} {'batches/s':>10}")
    for r in results:
        print(f"{r['store']:<20} {r['min_replicas']:>12} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['batches_per_s']:>10.1f}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
