"""A Redis Cluster primary dies under load: what clients see, how long it takes, what is lost.

  python -m benchmarks.bench_failover [--users 2000] [--seconds-after 20] [--min-replicas 0]

Starts 3 primaries with one replica each (real redis-server processes, node timeout
``--node-timeout-ms``), loads a generated dataset, and runs two kinds of client threads
against one FeedService on the cluster:

  readers  GetFeed for a fixed set of users at a fixed "now": every answer must be the
           feed those users had before the kill, or StoreUnavailable (a wrong feed, e.g.
           items silently missing because their slot's node is gone, is counted as such);
  writers  Ingest batches of follows by their own users (they change no reader's feed);
           each acknowledged event is remembered.

After ``--seconds-before`` it SIGKILLs the primary that owns the most slots, keeps the
load on for ``--seconds-after``, and reports: answers by outcome per second, the recovery
time (kill to the first success after the last failure), and the acknowledged follows
missing afterwards (counted once every slot answers again, the failover done: null when
that takes over 30 s, or 10 node timeouts). ``--min-replicas N`` asks Ingest to wait for N replicas per write
(Redis WAIT), which is what bounds the loss of acknowledged writes; the shard that lost
its primary has no replica left after the failover, so with N >= 1 the writes to it are
refused, UNAVAILABLE, until a replica is added back (at once when the store sees the
promoted primary without one, after WAIT's timeout until then), while reads recover. The
primary killed, the one with the most slots (5461-10922 on a new cluster), holds the
log's slot, which every batch writes to: every write is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from redis.exceptions import RedisError

from ranking.feed import FeedSettings
from serving.feed_service import FeedService
from serving.load import load_into_redis
from serving.page_token import PageTokenCodec
from stores.base import StoreUnavailable, TooFewReplicas
from stores.events import Event, EventKind
from stores.redis import RedisStore
from training.artifact import load_current
from training.dataset import write_dataset
from training.flag_types import output_file
from training.generate import generate
from training.train import TrainParams, train_and_publish


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_failover", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2_000, help="generated users (sellers: one per 20 users; default: %(default)s)")
    parser.add_argument("--items", type=int, default=5_000, help="generated items (default: %(default)s)")
    parser.add_argument("--readers", type=int, default=2, help="reader threads (default: %(default)s)")
    parser.add_argument("--writers", type=int, default=2, help="writer threads (default: %(default)s)")
    parser.add_argument("--seconds-before", type=float, default=3.0, help="seconds of load before the kill (default: %(default)s)")
    parser.add_argument("--seconds-after", type=float, default=20.0, help="seconds of load after the kill (default: %(default)s)")
    parser.add_argument("--node-timeout-ms", type=int, default=2000, help="cluster-node-timeout (default: %(default)s)")
    parser.add_argument("--min-replicas", type=int, default=0, help="replicas each Ingest waits for (Redis WAIT; default: %(default)s)")
    parser.add_argument("--json", type=output_file, help="also write the report here")
    args = parser.parse_args(argv)
    from tests.redis_servers import RedisClusterServers  # the test fixtures' process helpers

    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        root = Path(tmp)
        dataset = generate(users=args.users, sellers=max(args.users // 20, 1), items=args.items, seed=5, engagements=False)
        write_dataset(dataset, str(root / "data"))
        with contextlib.redirect_stdout(sys.stderr):  # the model's path, which training prints: stdout is the report's JSON
            train_and_publish(str(root / "data"), str(root / "models"), TrainParams(show_progress=False, iterations=5))
        artifact = load_current(str(root / "models"))
        cluster = RedisClusterServers(root / "cluster", masters=3, replicas=1, node_timeout_ms=args.node_timeout_ms).start()
        try:
            report = run(args, cluster, dataset, artifact)
        finally:
            cluster.stop()
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def run(args: argparse.Namespace, cluster, dataset, artifact) -> dict:
    store = RedisStore.from_url(cluster.url, socket_timeout=1.0)
    load_into_redis(store.client, dataset)
    service = FeedService(store, artifact, PageTokenCodec(b"bench-failover-secret"), FeedSettings())
    now = float(np.nanmax(dataset.likes.ts))
    readers = random.Random(1).sample(dataset.user_ids(), 50)
    expected = {user: [i.item_id for i in service.get_feed(user, 20, "", [], now).items] for user in readers}
    sellers = sorted(set(dataset.items.seller_id))

    stop = threading.Event()
    outcomes: list[tuple[float, str, str]] = []  # (time, kind, outcome)
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()

    def record(kind: str, outcome: str) -> None:
        with lock:
            outcomes.append((time.monotonic(), kind, outcome))

    def reader(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            user = rng.choice(readers)
            try:
                got = [i.item_id for i in service.get_feed(user, 20, "", [], now).items]
                record("GetFeed", "ok" if got == expected[user] else "WRONG FEED")
            except StoreUnavailable:
                record("GetFeed", "UNAVAILABLE")
                time.sleep(0.01)

    def writer(n: int) -> None:
        count = 0
        while not stop.is_set():
            batch = [
                Event(f"fo-{n}-{count}-{k}", EventKind.FOLLOW, time.time(), user_id=f"writer-{n}-{count}-{k}", seller_id=sellers[(count + k) % len(sellers)])
                for k in range(10)
            ]
            count += 1
            try:
                service.ingest(batch, min_replicas=args.min_replicas) if args.min_replicas else service.ingest(batch)
                record("Ingest", "ok")
                with lock:
                    acked.extend((e.user_id, e.seller_id) for e in batch)
            except (StoreUnavailable, TooFewReplicas):  # TooFewReplicas: a shard's replica promoted, none left to wait for
                record("Ingest", "UNAVAILABLE")
                time.sleep(0.01)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(args.readers)]
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(args.writers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(args.seconds_before)
    victim = max(cluster.primaries(), key=lambda node: _slots(node))
    killed_at = time.monotonic()
    victim.kill()
    print(f"killed primary :{victim.port} at {killed_at - started:.1f} s", file=sys.stderr)
    cluster.nodes.remove(victim)  # the cluster carries on without it
    time.sleep(args.seconds_after)
    stop.set()
    for thread in threads:
        thread.join()

    def recovery(kinds: tuple[str, ...]) -> float | None:
        """Kill to the first success after the last failure, of these RPCs."""
        failures = [t for t, kind, outcome in outcomes if kind in kinds and outcome != "ok" and t >= killed_at]
        last_failure = max(failures, default=killed_at)
        first_ok = min((t for t, kind, outcome in outcomes if kind in kinds and outcome == "ok" and t > last_failure), default=None)
        return None if first_ok is None else round(first_ok - killed_at, 2)

    store.close()
    missing = _missing_follows(cluster.url, acked, timeout=max(30.0, 10 * args.node_timeout_ms / 1e3))
    return {
        "min_replicas": args.min_replicas,
        "node_timeout_ms": args.node_timeout_ms,
        "outcomes": dict(Counter(f"{kind} {outcome}" for _, kind, outcome in outcomes)),
        "recovery_seconds": recovery(("GetFeed", "Ingest")),
        "recovery_seconds_by_rpc": {kind: recovery((kind,)) for kind in ("GetFeed", "Ingest")},
        "acked_events": len(acked),
        "acked_events_missing": missing,
        "per_second_after_kill": per_second(outcomes, killed_at),
    }


def per_second(outcomes: list[tuple[float, str, str]], killed_at: float) -> dict[str, dict[str, int]]:
    """The (time, kind, outcome) answers counted per whole second since the kill, from the
    second before it ("-1") on: second N holds the answers from N to N + 1 s after the kill."""
    by_second: dict[int, Counter] = {}
    for t, kind, outcome in outcomes:
        # floor, not int(): int() rounds toward zero, so "0" also held the second before the kill (twice the answers, the OKs before the kill among them)
        by_second.setdefault(math.floor(t - killed_at), Counter())[f"{kind} {outcome}"] += 1
    return {str(s): dict(c) for s, c in sorted(by_second.items()) if s >= -1}


def _slots(node) -> int:
    with node.client(socket_timeout=2.0) as client:
        me = next(n for n in client.cluster("nodes").values() if "myself" in n["flags"])
        return sum(b - a + 1 for a, b in ((int(s[0]), int(s[-1])) for s in me.get("slots", [])))


def _missing_follows(url: str, acked: list[tuple[str, str]], timeout: float) -> int | None:
    """Acknowledged follows the cluster does not hold, once every slot answers again: a
    failover still under way when the load stops (--seconds-after shorter than it) leaves
    the dead primary's slots refusing the reads for a while. None: not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _count_missing_follows(url, acked)
        except RedisError as error:
            if time.monotonic() > deadline:
                print(f"acknowledged follows not counted: the cluster still refused reads {timeout:g} s after the load ({error})",
                      file=sys.stderr)  # fmt: skip
                return None
            time.sleep(0.2)


def _count_missing_follows(url: str, acked: list[tuple[str, str]]) -> int:
    """Acknowledged follows the cluster does not hold, read by a new client (a fresh slot map)."""
    store = RedisStore.from_url(url, socket_timeout=2.0)
    try:
        missing = 0
        for start in range(0, len(acked), 500):
            pipe = store.client.pipeline()
            for user, seller in acked[start : start + 500]:
                pipe.sismember(store.keys.follows(user), seller)
            missing += sum(not found for found in pipe.execute())
        return missing
    finally:
        store.close()


if __name__ == "__main__":
    main()
