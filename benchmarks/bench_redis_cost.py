"""What one feed costs on a Redis store: client CPU, Redis CPU and Redis script time.

    python -m benchmarks.bench_redis_cost --data DIR --models DIR --redis redis://HOST:PORT/DB
        [--requests 1500] [--warmup 100] [--seed 0]

The Redis must already hold DIR's dataset (`python -m serving load --data DIR --redis URL`);
it is only read, and refused (exit 1) when the first 20 feeds asked for all come back empty. First pages (limit 20) of users drawn from the dataset go through
FeedService.get_feed in this one thread. Reported per feed: wall time and CPU time of
this process, Redis's own CPU (INFO cpu, so a remote server counts too; anything else
it serves in the meantime counts as well) and the time Redis spent in the feed's script
calls (INFO commandstats). Run two checkouts against Redis servers loaded by their own
loader, alternating, to compare them: the machine is shared.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from ranking.feed import FeedSettings
from serving.feed_service import FeedService
from serving.load import connect_checked, exit_on_redis_errors
from serving.native_threads import limit_native_threads
from serving.page_token import PageTokenCodec
from stores.redis import RedisStore
from training.artifact import Artifact, load_current
from training.dataset import Dataset, DatasetError, load_dataset


PROBED_FEEDS = 20  # untimed, before the warm-up: one with an item shows the Redis holds the dataset


def redis_cpu_seconds(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def script_seconds(client) -> float:
    stats = client.info("commandstats")
    return sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_redis_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--data", required=True, help="the dataset directory the Redis was loaded from")
    parser.add_argument("--models", required=True, help="the model directory (its current version is served)")
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB holding the loaded dataset (read only)")
    parser.add_argument("--requests", type=int, default=1_500, help="timed feeds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed feeds first (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample (default: %(default)s)")
    args = parser.parse_args(argv)

    limit_native_threads()  # one faiss/BLAS thread, as in the server
    client, _ = connect_checked(args.redis)  # one line, not a traceback, when the URL is wrong or Redis is down
    client.close()
    try:
        dataset = load_dataset(args.data)
    except DatasetError as error:
        parser.error(f"--data {args.data}: {error}")
    try:
        artifact = load_current(args.models)
    except (OSError, ValueError) as error:  # no CURRENT, or a version that does not read
        parser.error(f"--models {args.models}: {error}")
    with exit_on_redis_errors(args.redis):
        measure(args, dataset, artifact)


def measure(args: argparse.Namespace, dataset: Dataset, artifact: Artifact) -> None:
    store = RedisStore.from_url(args.redis)
    service = FeedService(store, artifact, PageTokenCodec(b"bench-secret-0123456789"), FeedSettings())
    users = random.Random(args.seed).choices(dataset.user_ids(), k=args.warmup + args.requests)
    now = float(np.nanmax(dataset.likes.ts))
    probed = users[:PROBED_FEEDS]
    if not any(service.get_feed(user, 20, "", [], now).items for user in probed):  # else the figures are an empty feed's
        raise SystemExit(f"python -m benchmarks.bench_redis_cost: the first {len(probed)} feeds came back empty, users of "
                         f"--data: the Redis at {args.redis} looks empty or loaded from another dataset (load it with "
                         f"`python -m serving load --data {args.data} --redis URL`)")  # fmt: skip
    for user in users[: args.warmup]:
        service.get_feed(user, 20, "", [], now)

    client, n = store.client, args.requests
    redis_before, scripts_before = redis_cpu_seconds(client), script_seconds(client)
    wall, cpu = time.perf_counter(), time.process_time()
    for user in users[args.warmup :]:
        service.get_feed(user, 20, "", [], now)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    redis_cpu, scripts = redis_cpu_seconds(client) - redis_before, script_seconds(client) - scripts_before
    print(f"per feed over {n} feeds: client wall {wall / n * 1e3:.2f} ms, client CPU {cpu / n * 1e3:.2f} ms, "
          f"Redis CPU {redis_cpu / n * 1e3:.2f} ms, Redis scripts {scripts / n * 1e3:.2f} ms")  # fmt: skip
    store.close()


if __name__ == "__main__":
    main()
