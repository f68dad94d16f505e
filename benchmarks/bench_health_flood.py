"""Health Check latency while the server is flooded with feeds, per GIL switch interval and --threads.

  python -m benchmarks.bench_health_flood [--floods 3] [--intervals 0.001] [--threads 0,2,0,2]
      [--max-concurrent-rpcs 64]

With --intervals 0.005,0.001 it compares Python's default switch interval (5 ms) with the server's (1 ms).

One in-process server (memory store) on a generated world of 2,000 users and 8,000
items; each flood is 200 concurrent GetFeeds of limit 100, while one client checks
health every 10 ms. With --threads 0 (the memory store's default) the feeds are built on
the event loop that also answers health; with N > 0 on N threads. Reported per setting
(runs interleaved): median, p90 and max Check latency, Checks over 100 ms, GetFeeds
refused by the concurrency limit, and the floods' wall time (throughput).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving import native_threads
from serving import server as server_module
from serving.config import ServerConfig
from tests.feed_world import build_world


def flood(world, interval: float, floods: int, threads: int, max_concurrent_rpcs: int) -> str:
    native_threads.GIL_SWITCH_INTERVAL = interval  # read by limit_native_threads at start
    server = server_module.FeedServer(
        ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0, token_secret=b"x" * 32, reload_seconds=0,
                     threads=threads, max_concurrent_rpcs=max_concurrent_rpcs)
    )
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub, health = feed_pb2_grpc.FeedServiceStub(channel), health_pb2_grpc.HealthStub(channel)
    health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    users = world.dataset.user_ids()
    latencies: list[float] = []
    refused = 0
    started = time.perf_counter()
    for _ in range(floods):
        calls = [stub.GetFeed.future(feed_pb2.GetFeedRequest(user_id=users[i % len(users)], limit=100), timeout=30) for i in range(200)]
        while any(not call.done() for call in calls):
            t0 = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.01)
        refused += sum(call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for call in calls)
    wall = time.perf_counter() - started
    server.stop(grace=0)
    channel.close()
    latencies.sort()
    return (
        f"threads {threads}, switch interval {interval * 1e3:.0f} ms: {len(latencies)} checks, median {statistics.median(latencies) * 1e3:.1f} ms, "
        f"p90 {latencies[int(0.9 * len(latencies))] * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms, "
        f"{sum(t >= 0.1 for t in latencies)} over 100 ms; {refused} of {200 * floods} GetFeeds refused; floods took {wall:.2f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_health_flood", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--floods", type=int, default=3, help="floods of 200 GetFeeds per setting (default: %(default)s)")
    parser.add_argument("--intervals", default="0.001", help="GIL switch intervals in seconds, run in this order (default: %(default)s)")
    parser.add_argument("--threads", default="0,2,0,2", help="--threads of the server, run in this order for each interval (default: %(default)s)")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=64, help="the server's limit (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-health-") as root:
        world = build_world(Path(root), users=2000, sellers=100, items=8000)
        for interval in (float(x) for x in args.intervals.split(",")):
            for threads in (int(x) for x in args.threads.split(",")):
                print(flood(world, interval, args.floods, threads, args.max_concurrent_rpcs), flush=True)
    sys.setswitchinterval(0.005)


if __name__ == "__main__":
    main()
