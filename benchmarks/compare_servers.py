"""Interleaved A/B of feed servers built from several checkouts, through gRPC.

    python -m benchmarks.compare_servers --data DIR --models DIR CHECKOUT[:SERVER FLAGS] CHECKOUT[:...] ...
        [--rounds 20] [--burst 3] [--concurrency 8] [--store URL]

One server per checkout (``python -m serving`` from that checkout's code, on a free port,
with the flags after the colon, e.g. ``.:--ef-search 64``) starts first; then the load
generator drives them in turns: each round gives every server a burst of closed-loop
empty RPCs and a burst of closed-loop GetFeeds (--burst seconds each), one server after
another. The servers waiting their turn are idle, so a burst of noise on a shared machine
hits neighbouring bursts of every server alike, and the per-round ratios are far steadier
than runs one after another (``compare_load.sh``).

Reported: per server, the median GetFeed and empty-RPC throughput and their ratio; per
later server, the median per-round GetFeed throughput ratio to the first (with its 10th
and 90th percentiles), and the calls that failed (any error fails the run unless
--allow-errors).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.loadgen import closed_loop, sample_users, spawn_server, stop_server
from protos.feed.v1 import feed_pb2, feed_pb2_grpc


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


async def drive(targets: list[str], users: list[str], args: argparse.Namespace) -> tuple[list[list[float]], list[list[float]], int]:
    """(empty qps per round, GetFeed qps per round) per target, and the failed calls."""
    # As in loadgen: SO_REUSEPORT spreads connections, not calls, among a server's
    # --workers, so each server gets --channels connections, used in turn.
    channels = [
        [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(args.channels)]
        for target in targets
    ]
    rng = random.Random(args.seed)
    failed = 0

    def calls(connections: list[grpc.aio.Channel]):
        healths = itertools.cycle([health_pb2_grpc.HealthStub(channel) for channel in connections])
        feeds = itertools.cycle([feed_pb2_grpc.FeedServiceStub(channel) for channel in connections])

        async def empty(timeout: float) -> None:
            await next(healths).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)

        async def get_feed(timeout: float) -> None:
            await next(feeds).GetFeed(feed_pb2.GetFeedRequest(user_id=rng.choice(users), limit=20), timeout=timeout)

        return empty, get_feed

    pairs = [calls(connections) for connections in channels]
    empty_qps: list[list[float]] = [[] for _ in targets]
    feed_qps: list[list[float]] = [[] for _ in targets]
    try:
        for empty, get_feed in pairs:  # warm up connections, caches and the allocator
            for call in (empty, get_feed):
                await closed_loop(call, args.concurrency, args.burst, args.timeout)
        for _ in range(args.rounds):
            for (empty, get_feed), empties, feeds in zip(pairs, empty_qps, feed_qps):
                for call, out in ((empty, empties), (get_feed, feeds)):
                    tally, elapsed = await closed_loop(call, args.concurrency, args.burst, args.timeout)
                    failed += sum(tally.errors.values())
                    out.append(len(tally.latencies) / elapsed)
    finally:
        for channel in itertools.chain.from_iterable(channels):
            await channel.close()
    return empty_qps, feed_qps, failed


def report(specs: list[str], empty_qps: list[list[float]], feed_qps: list[list[float]], failed: int) -> list[str]:
    lines = []
    for spec, empties, feeds in zip(specs, empty_qps, feed_qps):
        ratio = statistics.median(f / e for f, e in zip(feeds, empties))
        lines.append(f"{spec}: GetFeed {statistics.median(feeds):.0f}/s, empty {statistics.median(empties):.0f}/s, "
                     f"GetFeed / empty per round: median {ratio:.3f}")  # fmt: skip
    for spec, feeds in zip(specs[1:], feed_qps[1:]):
        ratios = [b / a for a, b in zip(feed_qps[0], feeds)]
        lines.append(f"{spec} / {specs[0]}: GetFeed per-round ratio median {statistics.median(ratios):.3f}, "
                     f"p10 {_percentile(ratios, 0.1):.3f}, p90 {_percentile(ratios, 0.9):.3f}")  # fmt: skip
    lines.append(f"failed calls: {failed}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("checkouts", nargs="*", metavar="CHECKOUT[:SERVER FLAGS]", help="two or more source trees; the first is the baseline")
    parser.add_argument("--data", required=True, help="dataset directory (the users; and the memory store's data)")
    parser.add_argument("--models", required=True, help="model directory every server serves")
    parser.add_argument("--store", default="memory", help="store URL of every server (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="--workers of every server; >1 needs a Redis --store (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="--threads of every server (default: %(default)s, the server's own default)")
    parser.add_argument("--rounds", type=int, default=20, help="turns of every server (default: %(default)s)")
    parser.add_argument("--burst", type=float, default=3.0, help="seconds of each closed-loop burst (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight per burst (default: %(default)s)")
    parser.add_argument("--channels", type=int, default=4, help="client connections per server, used in turn; spreads the load over --workers (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-call deadline in seconds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample (default: %(default)s)")
    parser.add_argument("--allow-errors", action="store_true", help="report failed calls and exit 0")
    args = parser.parse_args(argv)
    if len(args.checkouts) < 2:
        parser.error("give at least two checkouts (the first is the baseline)")
    if args.rounds < 1 or args.burst <= 0 or args.concurrency < 1 or args.channels < 1:
        parser.error("--rounds, --concurrency and --channels must be at least 1, --burst positive")
    for spec in args.checkouts:
        if not os.path.isdir(os.path.join(spec.partition(":")[0], "serving")):
            parser.error(f"{spec}: not a feedrank checkout (no serving/ directory)")

    servers = []
    with tempfile.TemporaryDirectory(prefix="compare-servers-") as scratch:
        try:
            for number, spec in enumerate(args.checkouts):
                checkout, _, flags = spec.partition(":")
                workdir = Path(scratch) / str(number)
                workdir.mkdir()
                servers.append(spawn_server(args, workdir, checkout, flags.split()))
            results = asyncio.run(drive([target for _, target in servers], sample_users(args), args))
        finally:
            for server, _ in servers:
                stop_server(server)
    print("\n".join(report(args.checkouts, *results)))
    return 1 if results[2] and not args.allow_errors else 0


if __name__ == "__main__":
    sys.exit(main())
