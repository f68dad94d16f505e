"""gRPC load generator for a running (or spawned) feed server.

    python -m benchmarks.loadgen --data DIR --models MODELS      # spawns a server
    python -m benchmarks.loadgen --target 127.0.0.1:50051 --duration 20 --json out.json

Three phases, one run, same server:
  1. empty RPC (grpc.health.v1.Health/Check) closed loop: the stack's ceiling;
  2. GetFeed closed loop at --concurrency: saturation throughput;
  3. GetFeed open loop at --load (default 0.5) x that throughput: latency at half load.
Design targets: GetFeed throughput >= half the empty RPC's; p99 <= 10 ms at half load.
The generator runs on the same machine as the server: on 2 cores it takes cycles from it,
so compare ratios within one run, not absolute figures across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc


@dataclass
class PhaseResult:
    rpc: str
    mode: str
    concurrency: int
    target_qps: float
    qps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    calls: int


def summarise(rpc: str, mode: str, concurrency: int, target: float, latencies: list[float], errors: int, elapsed: float) -> PhaseResult:
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return PhaseResult(rpc, mode, concurrency, target, len(latencies) / elapsed, float(p50), float(p90), float(p99), errors, len(latencies) + errors)


async def closed_loop(call, concurrency: int, duration: float, timeout: float) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call(timeout)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


async def open_loop(call, rate: float, duration: float, timeout: float) -> tuple[list[float], int, float]:
    """Poisson arrivals at ``rate``/s; latency counts from the scheduled send time."""
    latencies: list[float] = []
    errors = 0
    rng = random.Random(7)
    tasks = []

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            await call(timeout)
            latencies.append(time.perf_counter() - scheduled)
        except grpc.aio.AioRpcError:
            errors += 1

    started = time.perf_counter()
    next_at = started
    while next_at < started + duration:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(next_at)))
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return latencies, errors, time.perf_counter() - started


async def run_phases(target: str, users: list[str], args: argparse.Namespace) -> list[PhaseResult]:
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        feed = feed_pb2_grpc.FeedServiceStub(channel)
        rng = random.Random(args.seed)

        async def empty(timeout: float) -> None:
            await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)

        async def get_feed(timeout: float) -> None:
            await feed.GetFeed(feed_pb2.GetFeedRequest(user_id=rng.choice(users), limit=args.limit), timeout=timeout)

        for call in (empty, get_feed):  # warm up connections, caches and the allocator
            await closed_loop(call, args.concurrency, args.warmup, args.timeout)
        results = []
        for name, call in (("empty", empty), ("GetFeed", get_feed)):
            latencies, errors, elapsed = await closed_loop(call, args.concurrency, args.duration, args.timeout)
            results.append(summarise(name, "closed", args.concurrency, 0.0, latencies, errors, elapsed))
        rate = max(results[1].qps * args.load, 1.0)
        latencies, errors, elapsed = await open_loop(get_feed, rate, args.duration, args.timeout)
        results.append(summarise("GetFeed", f"open@{args.load:.0%}", 0, rate, latencies, errors, elapsed))
        return results


def spawn_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port_file = Path(tempfile.mkdtemp()) / "port"
    argv = [sys.executable, "-m", "serving", "--models", args.models, "--port", "0", "--port-file", str(port_file), "--store", args.store]
    if args.data:
        argv += ["--data", args.data]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not port_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the spawned server did not start")
        time.sleep(0.2)
    return server, f"127.0.0.1:{port_file.read_text()}"


def sample_users(args: argparse.Namespace) -> list[str]:
    if not args.data:
        return [f"u{i:05d}" for i in range(1000)]
    with open(os.path.join(args.data, "likes.csv")) as handle:
        next(handle)
        users = sorted({line.split(",", 1)[0] for line, _ in zip(handle, range(200_000))})
    return random.Random(args.seed).sample(users, min(len(users), 5000))


def format_table(results: list[PhaseResult]) -> str:
    lines = [f"{'rpc':<8} {'mode':<9} {'conc':>5} {'target/s':>9} {'qps':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7}"]
    for r in results:
        lines.append(f"{r.rpc:<8} {r.mode:<9} {r.concurrency:>5} {r.target_qps:>9.0f} {r.qps:>9.0f} {r.p50_ms:>8.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>7}")
    empty, feed = results[0], results[1]
    lines.append(f"GetFeed / empty RPC throughput: {feed.qps / empty.qps:.2f} (target >= 0.5)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("server")
    where.add_argument("--target", help="address of a running server; otherwise one is spawned from --models")
    where.add_argument("--models", help="models directory for a spawned server")
    where.add_argument("--data", help="dataset directory: the spawned memory store, and the users to ask for")
    where.add_argument("--store", default="memory", help="store URL for a spawned server (default: %(default)s)")
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int, default=16, help="in-flight requests in closed loop (default: %(default)s)")
    load.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default: %(default)s)")
    load.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per RPC (default: %(default)s)")
    load.add_argument("--load", type=float, default=0.5, help="open-loop rate as a fraction of saturation (default: %(default)s)")
    load.add_argument("--limit", type=int, default=20, help="items per GetFeed (default: %(default)s)")
    load.add_argument("--timeout", type=float, default=5.0, help="per-call deadline in seconds (default: %(default)s)")
    load.add_argument("--seed", type=int, default=0, help="seed for the user sample (default: %(default)s)")
    parser.add_argument("--json", help="write results as JSON here")
    args = parser.parse_args(argv)
    if not args.target and not args.models:
        parser.error("give --target, or --models (and --data) to spawn a server")
    server = None
    try:
        if args.target:
            target = args.target
        else:
            server, target = spawn_server(args)
        results = asyncio.run(run_phases(target, sample_users(args), args))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
