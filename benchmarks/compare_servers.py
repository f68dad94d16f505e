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

Reported: per server, the median GetFeed and empty-RPC throughput and their ratio, and
the server's CPU time per call of each (its process tree, from /proc); per later server,
the median per-round ratio to the first of the GetFeed throughput and of the CPU per
GetFeed (with their 10th and 90th percentiles); and the calls that failed (any error
fails the run unless --allow-errors). A server that exits during the run stops it: one
line naming its checkout, its log's last lines, exit 1. So does one that, before the
bursts, refuses GetFeed (a server with --tokens-file wants --token) or answers the first
users with empty feeds only (an empty store), as loadgen's pre-flight does. On a shared machine the CPU per call moves far less
than the throughput does. With --store-pid (a redis-server all the servers read), that
store's CPU per GetFeed too, and the ratio of server and store CPU together: a change that
moves work between the server and Redis shows there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.compare_pipeline import check_checkouts, ratio_lines, round_ratios
from benchmarks.loadgen import (
    PreflightFailed,
    ServerDidNotStart,
    add_spawn_arguments,
    check_dataset,
    check_pids,
    check_store,
    closed_loop,
    interrupt_on_sigterm,
    log_tail,
    preflight,
    process_tree_cpu_seconds,
    processes_cpu_seconds,
    sample_users,
    server_calls,
    spawn_server,
    stop_server,
)
from serving.client import TOKEN_VARIABLE
from training.flag_types import bounded, deadline_seconds


@dataclass
class Bursts:
    """One server's bursts, one value per round: throughput and server CPU ms per call (NaN: not measured)."""

    empty_qps: list[float] = field(default_factory=list)
    feed_qps: list[float] = field(default_factory=list)
    empty_cpu_ms: list[float] = field(default_factory=list)
    feed_cpu_ms: list[float] = field(default_factory=list)
    feed_store_cpu_ms: list[float] = field(default_factory=list)  # the --store-pid processes' CPU per GetFeed


class ServerRefused(RuntimeError):
    """Before the bursts, a server's GetFeeds showed a run that could not measure it (a token
    refused, an empty store); ``number`` is its checkout's place on the command line."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.number = number


class ServerExited(RuntimeError):
    """A server exited during the run; ``number`` is its checkout's place on the command line."""

    def __init__(self, number: int, status: int) -> None:
        super().__init__(f"the server exited with status {status} during the run")
        self.number = number


async def drive(targets: list[str], processes: list[subprocess.Popen], users: list[str], args: argparse.Namespace) -> tuple[list[Bursts], int]:
    """Each target's bursts (``processes``: its server, for the CPU per call; the
    ``args.store_pid`` processes' CPU per GetFeed too), and the failed calls; ServerExited
    when a server is gone after a burst (its rounds would only count UNAVAILABLE);
    ServerRefused when one refuses the feeds of the first users (loadgen's preflight)."""
    rng = random.Random(args.seed)
    servers = [server_calls(target, users, args.channels, 20, rng, token=args.token) for target in targets]
    bursts = [Bursts() for _ in targets]
    failed = 0
    try:
        # Every GetFeed refused gave a first server 0 GetFeeds/s, and the ratios to it a ZeroDivisionError after the rounds.
        for number, (calls, target) in enumerate(zip(servers, targets)):
            refusal = None
            try:
                await preflight(calls, target, users, args.timeout, args.token)
            except PreflightFailed as error:
                # Raised outside this block: the traceback would keep preflight's refused calls, and with them their
                # connections, alive until the server stops, and gRPC would log a GOAWAY line for each after ours.
                refusal = str(error)
            if refusal:
                raise ServerRefused(number, refusal)
        for calls in servers:  # warm up connections, caches and the allocator
            for call in (calls.empty, calls.get_feed):
                await closed_loop(call, args.concurrency, args.burst, args.timeout)
        for _ in range(args.rounds):
            for number, (calls, process, server) in enumerate(zip(servers, processes, bursts)):
                for call, qps, cpu_ms in ((calls.empty, server.empty_qps, server.empty_cpu_ms),
                                          (calls.get_feed, server.feed_qps, server.feed_cpu_ms)):  # fmt: skip
                    cpu_before, store_before = process_tree_cpu_seconds(process.pid), processes_cpu_seconds(args.store_pid)
                    tally, elapsed = await closed_loop(call, args.concurrency, args.burst, args.timeout)
                    cpu, store = process_tree_cpu_seconds(process.pid) - cpu_before, processes_cpu_seconds(args.store_pid) - store_before
                    if process.poll() is not None:
                        raise ServerExited(number, process.returncode)
                    failed += sum(tally.errors.values())
                    qps.append(len(tally.latencies) / elapsed)
                    per_call = 1e3 / len(tally.latencies) if tally.latencies else float("nan")
                    cpu_ms.append(cpu * per_call)
                    if call is calls.get_feed:
                        server.feed_store_cpu_ms.append(store * per_call)
    finally:
        for calls in servers:
            await calls.close()
    return bursts, failed


def report(specs: list[str], bursts: list[Bursts], failed: int) -> list[str]:
    with_store = any(value == value for server in bursts for value in server.feed_store_cpu_ms)  # measured (not NaN)
    lines = []
    for spec, server in zip(specs, bursts):
        ratios, _ = round_ratios(server.feed_qps, server.empty_qps)
        ratio = f"{statistics.median(ratios):.3f}" if ratios else "not measured (no empty RPC answered)"
        lines.append(f"{spec}: GetFeed {statistics.median(server.feed_qps):.0f}/s, empty {statistics.median(server.empty_qps):.0f}/s, "
                     f"GetFeed / empty per round: median {ratio}; server CPU per call: GetFeed "
                     f"{statistics.median(server.feed_cpu_ms):.3f} ms, empty {statistics.median(server.empty_cpu_ms):.3f} ms"
                     + (f"; store CPU per GetFeed {statistics.median(server.feed_store_cpu_ms):.3f} ms" if with_store else ""))  # fmt: skip
    both = [[a + b for a, b in zip(server.feed_cpu_ms, server.feed_store_cpu_ms)] for server in bursts]
    return [
        *lines,
        *ratio_lines(specs, [server.feed_qps for server in bursts], "GetFeed "),
        *ratio_lines(specs, [server.feed_cpu_ms for server in bursts], "server CPU per GetFeed "),
        *(ratio_lines(specs, both, "server and store CPU per GetFeed ") if with_store else []),
        f"failed calls: {failed}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("checkouts", nargs="*", metavar="CHECKOUT[:SERVER FLAGS]", help="two or more source trees; the first is the baseline")
    parser.add_argument("--data", required=True, help="dataset directory (the users; and the memory store's data)")
    parser.add_argument("--models", required=True, help="model directory every server serves")
    add_spawn_arguments(parser.add_argument_group("every server"))
    parser.add_argument("--store-pid", type=int, action="append", default=[], metavar="PID",
                        help="pid of a store process every server uses, e.g. redis-server (repeatable): its CPU per "
                        "GetFeed is reported too, and the ratio of server and store CPU")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=20, help="turns of every server (default: %(default)s)")
    parser.add_argument("--burst", type=float, default=3.0, help="seconds of each closed-loop burst (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight per burst (default: %(default)s)")
    parser.add_argument("--channels", type=int, default=12, help="client connections per server, used in turn; spreads the load over --workers (default: %(default)s; as loadgen's)")
    parser.add_argument("--timeout", type=deadline_seconds, default=5.0, help="per-call deadline in seconds (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the user sample (default: %(default)s)")
    parser.add_argument("--users", type=bounded(int, 0), default=5000, help="distinct users asked for, sampled from the first "
                        "200,000 likes of --data; 0: all of those (default: %(default)s)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE) or None, help="bearer token with the 'read' scope "
                        "for servers with --tokens-file, sent with every GetFeed (health needs none); the variable "
                        f"{TOKEN_VARIABLE} keeps it out of the process list")  # fmt: skip
    parser.add_argument("--allow-errors", action="store_true", help="report failed calls and exit 0")
    args = parser.parse_args(argv)
    check_checkouts(parser, args.checkouts, "serving")
    if args.rounds < 1 or args.burst <= 0 or args.concurrency < 1 or args.channels < 1:
        parser.error("--rounds, --concurrency and --channels must be at least 1, --burst positive")
    check_pids(parser, "--store-pid", args.store_pid)
    check_dataset(parser, "--data", args.data)
    check_store(parser, "--store", args.store)
    # Each server runs in its checkout's directory: paths relative to the caller's would be read from there.
    args.data, args.models = os.path.abspath(args.data), os.path.abspath(args.models)

    servers = []
    with tempfile.TemporaryDirectory(prefix="compare-servers-") as scratch:
        try:
            for number, spec in enumerate(args.checkouts):
                checkout, _, flags = spec.partition(":")
                workdir = Path(scratch) / str(number)
                workdir.mkdir()
                servers.append(spawn_server(args, workdir, checkout, flags.split()))
            bursts, failed = asyncio.run(drive([target for _, target in servers], [server for server, _ in servers], sample_users(args), args))
        except ServerDidNotStart as error:
            parser.exit(1, f"{parser.prog}: {spec}: {error}\n")
        except ServerRefused as error:
            parser.exit(1, f"{parser.prog}: {args.checkouts[error.number]}: {error}\n")
        except ServerExited as error:
            log = Path(scratch) / str(error.number) / "server.log"
            parser.exit(1, f"{parser.prog}: {args.checkouts[error.number]}: {error}; the last lines of its log:\n{log_tail(log)}\n")
        except KeyboardInterrupt:
            parser.exit(130, f"{parser.prog}: interrupted; no report\n")
        finally:
            for server, _ in servers:
                stop_server(server)
    print("\n".join(report(args.checkouts, bursts, failed)))
    return 1 if failed and not args.allow_errors else 0


if __name__ == "__main__":
    interrupt_on_sigterm()
    sys.exit(main())
