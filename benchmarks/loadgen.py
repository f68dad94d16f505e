"""gRPC load generator for a running (or spawned) feed server.

    python -m benchmarks.loadgen --data DIR --models MODELS      # spawns a server
    python -m benchmarks.loadgen --data DIR --models MODELS --store redis://HOST:PORT/0 --feed-processes 3   # or --workers 3
    python -m benchmarks.loadgen --target 127.0.0.1:50051 --data DIR --duration 20 --json out.json

Three phases, one run, same server:
  1. empty RPC (grpc.health.v1.Health/Check) closed loop: the stack's ceiling;
  2. GetFeed closed loop at --concurrency: saturation throughput;
  3. GetFeed open loop at --load (default 0.5) x that throughput: latency at half load;
     or at a fixed --rate, to compare the tails of two servers at the same load. Poisson
     arrivals; each latency counts from the call's scheduled time, so a stalled server is
     not hidden by calls it delayed (no coordinated omission). The footer gives the
     generator's own lag (p99 of how late it started calls: a busy client falls behind),
     which those latencies include, and --json each open phase's send_lag_p99_ms.
With --ingest-rate, likes of random sampled users and items arrive through Ingest at that
rate during both GetFeed phases (one event per call), and their own row reports them: a
server that keeps copies of what it read (the Redis store's read cache) then shows what
writes cost it. With --ingest-batch N a last phase sends Ingest calls of N such likes in a
closed loop at --concurrency: the server's ingest capacity, in likes per second. --users sets how many distinct users the GetFeeds ask for.
With a server on this machine (spawned, or --server-pid), each phase also reports the
server's CPU time per call, read from /proc: on a shared machine it moves far less than
the throughputs do. With --store-pid (e.g. `--store-pid $(pgrep -f "redis-server.*:6379")`)
the store's CPU per call is reported too: a Redis server on the same cores does part of
every feed's work, which the server's figure leaves out.
Each GetFeed phase also reports the server's own p50 and p99, read from its latency
histogram (a spawned server's metrics endpoint, or --metrics for a --target): the time in
its handler, without the client, the network and gRPC's transport. On 2 shared cores the
client's figures were 2-6 ms above the server's (benchmarks/README.md, session 43).
Every call is counted once, as a success or as an error by status code; a phase whose
counts do not add up is a bug in this program and stops it. The exit status is 1 when
any phase had an error (--allow-errors reports them and exits 0).
Before the first phase every connection must be up within --timeout (else one line,
exit 1); a spawned server that exits, or does not answer within --start-timeout, fails the
run with its log's last lines, as does one that exits during the phases (no table). Ctrl-C or SIGTERM ends the run in one line, exit 130, and
stops a spawned server (and goload) first. Then a pre-flight asks GetFeed for 20 of the users to load:
a server that answers UNIMPLEMENTED (no FeedService), UNAUTHENTICATED or PERMISSION_DENIED
(give --token), or OK with every one of those feeds empty (a store empty or not loaded:
the targets would be "met" without ranking anything) stops the run in one line, exit 1.
Each GetFeed phase counts its OK replies without an item (the "empty" column). A server
with --tokens-file wants --token (or FEEDRANK_CLIENT_TOKEN), one with --tls-cert wants
--tls-ca. --json writes null for what was not measured.
The generator runs on the same machine as the server: on 2 cores it takes cycles from it,
so compare ratios within one run, not absolute figures across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import threading
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.go_client import (
    GoClient,
    GoClientUnavailable,
    GoLoadFailed,
    GoMethod,
    GoReport,
    build,
    write_requests,
)
from benchmarks.likes_file import liked_columns, likes_header
from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.client import TOKEN_VARIABLE, channel_credentials
from stores.redis import URL_SCHEMES
from training.artifact import CURRENT
from training.flag_types import bounded, deadline_seconds, output_file

# Design targets (memory store), printed with every table.
TARGET_FEED_TO_EMPTY = 0.2  # GetFeed closed-loop throughput / empty RPC closed-loop throughput, at least
TARGET_P99_HALF_LOAD_MS = 15.0  # GetFeed p99 in open loop at half the saturation rate, at most
# A spawned server on Redis (issue 7) shares the cores with redis-server.
REDIS_TARGET_FEED_TO_EMPTY = 0.15
REDIS_TARGET_P99_HALF_LOAD_MS = 20.0

# A call with its deadline in seconds; it returns True when its reply was an empty feed (no item).
Call = Callable[[float], Awaitable[bool | None]]


@dataclass
class Tally:
    """One phase's calls: each is started once and ends once, as a success or an error."""

    started: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, one per success
    errors: Counter[str] = field(default_factory=Counter)  # status code name -> count
    empty_feeds: int = 0  # successes whose reply was a feed without items
    send_lags: list[float] = field(default_factory=list)  # seconds each call started after its scheduled time (open loop)

    async def time(self, call: Call, timeout: float, since: float | None = None) -> None:
        """Run ``call``; latency counts from ``since`` (the scheduled time, whose lag it keeps) or from now."""
        self.started += 1
        started = time.perf_counter() if since is None else since
        if since is not None:
            self.send_lags.append(time.perf_counter() - since)
        try:
            empty = await call(timeout)
        except grpc.aio.AioRpcError as error:
            self.errors[error.code().name] += 1
        except Exception as error:  # a client-side failure is still a failed call, not a lost one
            self.errors[type(error).__name__] += 1
        else:
            self.latencies.append(time.perf_counter() - started)
            self.empty_feeds += bool(empty)


@dataclass
class PhaseResult:
    rpc: str
    mode: str
    concurrency: int
    target_qps: float
    elapsed_s: float
    calls: int
    successes: int
    errors: int
    errors_by_code: dict[str, int]
    qps: float  # successes / elapsed_s
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_cpu_ms: float = float("nan")  # server CPU (user + system, its process tree) per successful call; NaN: not measured
    store_cpu_ms: float = float("nan")  # the --store-pid processes' CPU per successful call; NaN: not measured
    server_p50_ms: float = float("nan")  # from the server's own latency histogram (--metrics); NaN: not read
    server_p99_ms: float = float("nan")
    # The server's quantile came out above the client's (interpolation in a coarse bucket) and was capped at it.
    server_p50_capped: bool = False
    server_p99_capped: bool = False
    # Successful GetFeeds that returned no item: a store partly loaded, or users it does not know. None: not a GetFeed phase.
    empty_feeds: int | None = None
    # Open loop: the p99 of how late the generator started its calls after their scheduled times (a busy client
    # falls behind); counted in the latencies, which run from the scheduled time. NaN: a closed loop.
    send_lag_p99_ms: float = float("nan")
    events_per_call: int = 1  # Ingest: the likes in each call's batch


def summarise(
    rpc: str, mode: str, concurrency: int, target: float, tally: Tally, elapsed: float,
    server_cpu_s: float = float("nan"), store_cpu_s: float = float("nan"),
) -> PhaseResult:
    """Percentiles over successful calls; raises if the phase's counts do not add up."""
    successes, errors = len(tally.latencies), sum(tally.errors.values())
    if tally.started != successes + errors:
        raise RuntimeError(f"{rpc} {mode}: {tally.started} calls but {successes} successes + {errors} errors")
    ms = np.array(tally.latencies) * 1e3 if tally.latencies else np.array([np.nan])
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    result = PhaseResult(rpc, mode, concurrency, target, elapsed, tally.started, successes, errors,
                         dict(sorted(tally.errors.items())), successes / elapsed, float(p50), float(p90), float(p99),
                         *(1e3 * cpu / successes if successes else float("nan") for cpu in (server_cpu_s, store_cpu_s)))  # fmt: skip
    if rpc == "GetFeed":
        result.empty_feeds = tally.empty_feeds
    if tally.send_lags:
        result.send_lag_p99_ms = float(np.percentile(np.array(tally.send_lags) * 1e3, 99))
    return result


FEED_LATENCY_BUCKETS = "feedrank_request_seconds_bucket"


def scrape_feed_latency(url: str) -> dict[float, float]:
    """The server's GetFeed latency histogram at ``url`` (Prometheus text): cumulative count per upper bound."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == FEED_LATENCY_BUCKETS and sample.labels.get("method") == "GetFeed"
    }


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """The q-quantile in ms of the calls observed between two scrapes, interpolated inside
    its bucket as Prometheus's histogram_quantile does; NaN without calls."""
    bounds = sorted(after)
    counts = [after[bound] - before.get(bound, 0.0) for bound in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower * 1e3  # past the last finite bound: all a histogram can say
            return 1e3 * (lower + (bound - lower) * (rank - below) / max(cumulative - below, 1e-12))
        lower, below = bound, cumulative
    return float("nan")


def capped_quantile(q: float, before: dict[float, float], after: dict[float, float], client_ms: float) -> tuple[float, bool]:
    """The server's q-quantile between two scrapes capped at the client's, and whether it was:
    a call's time in the handler is part of its round trip, so a higher figure is only
    interpolation inside a coarse bucket."""
    server_ms = histogram_quantile(q, before, after)
    return (client_ms, True) if server_ms > client_ms else (server_ms, False)  # NaN compares False


async def closed_loop(call: Call, concurrency: int, duration: float, timeout: float) -> tuple[Tally, float]:
    tally = Tally()
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            await tally.time(call, timeout)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally, time.perf_counter() - started


async def open_loop(call: Call, rate: float, duration: float, timeout: float, seed: int) -> tuple[Tally, float]:
    """Poisson arrivals at ``rate``/s drawn from ``seed`` (loadgen's --seed: runs with different
    seeds sample different arrivals); latency counts from the scheduled send time."""
    tally = Tally()
    rng = random.Random(seed)
    tasks = []
    started = time.perf_counter()
    next_at = started
    while next_at < started + duration:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(tally.time(call, timeout, since=next_at)))
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return tally, time.perf_counter() - started


@dataclass
class ServerCalls:
    """The calls the generator makes of one server, over ``channels`` used in turn."""

    channels: list[grpc.aio.Channel]
    empty: Call
    get_feed: Call
    ingest_likes: Callable[[int], Call]  # a call ingesting that many likes, each of a random user and item
    feed_of: Callable[[str, float], Awaitable[feed_pb2.GetFeedResponse]]  # one user's feed, with its deadline

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def server_calls(
    target: str, users: list[str], connections: int, limit: int, rng: random.Random, items: Sequence[str] = (),
    token: str | None = None, credentials: grpc.ChannelCredentials | None = None,
) -> ServerCalls:
    """Empty RPCs, GetFeeds of random ``users`` and their likes of random ``items``
    against ``target`` over ``connections`` channels: over TLS with ``credentials``
    (``channel_credentials``), and with ``token`` as the bearer token of every feed call
    (health, which the empty RPC calls, is open to all)."""
    # SO_REUSEPORT spreads connections, not calls, among --workers: one channel would load
    # one worker. A local subchannel pool keeps each channel on its own connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.secure_channel(target, credentials, options=options) if credentials
                else grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]  # fmt: skip
    healths = itertools.cycle([health_pb2_grpc.HealthStub(channel) for channel in channels])
    feeds = itertools.cycle([feed_pb2_grpc.FeedServiceStub(channel) for channel in channels])
    metadata = (("authorization", f"Bearer {token}"),) if token else None

    async def empty(timeout: float) -> None:
        await next(healths).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)

    async def feed_of(user: str, timeout: float) -> feed_pb2.GetFeedResponse:
        return await next(feeds).GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=limit), timeout=timeout, metadata=metadata)

    async def get_feed(timeout: float) -> bool:
        return not (await feed_of(rng.choice(users), timeout)).items

    run = f"loadgen-{os.getpid()}-{time.time_ns()}"
    serial = itertools.count()

    def ingest_likes(count: int) -> Call:
        async def ingest(timeout: float) -> None:
            events = [feed_pb2.Event(event_id=f"{run}-{next(serial)}", like=feed_pb2.UserItem(user_id=rng.choice(users), item_id=rng.choice(items)))
                      for _ in range(count)]  # fmt: skip
            await next(feeds).Ingest(feed_pb2.IngestRequest(events=events), timeout=timeout, metadata=metadata)

        return ingest

    return ServerCalls(channels, empty, get_feed, ingest_likes, feed_of)


class PythonPhases:
    """Phases run by this process's asyncio client (``server_calls``)."""

    def __init__(self, calls: ServerCalls, timeout: float, seed: int) -> None:
        self.by_rpc, self.timeout, self.seed = {"empty": calls.empty, "GetFeed": calls.get_feed}, timeout, seed

    def closed(self, rpc: str, concurrency: int, duration: float) -> Awaitable[tuple[Tally, float]]:
        return closed_loop(self.by_rpc[rpc], concurrency, duration, self.timeout)

    def open(self, rpc: str, rate: float, duration: float) -> Awaitable[tuple[Tally, float]]:
        return open_loop(self.by_rpc[rpc], rate, duration, self.timeout, self.seed)


class GoPhases:
    """The same phases run by goload, the compiled client (``--client go``, benchmarks/go_client.py)."""

    def __init__(self, binary: Path, target: str, users: Sequence[str], args: argparse.Namespace, workdir: Path) -> None:
        feed = feed_pb2.DESCRIPTOR.services_by_name["FeedService"]
        health = health_pb2.DESCRIPTOR.services_by_name["Health"]
        feeds = (feed_pb2.GetFeedRequest(user_id=user, limit=args.limit).SerializeToString() for user in users)
        items = feed_pb2.GetFeedResponse.DESCRIPTOR.fields_by_name["items"].number
        methods = {  # health is open to all: no token
            "empty": GoMethod(f"/{health.full_name}/Check", write_requests(workdir / "empty.requests", [health_pb2.HealthCheckRequest().SerializeToString()])),
            "GetFeed": GoMethod(f"/{feed.full_name}/GetFeed", write_requests(workdir / "feed.requests", feeds), args.token, items),
        }
        self.client = GoClient(binary, target, methods, args.channels, args.timeout, args.seed, args.tls_ca)

    async def closed(self, rpc: str, concurrency: int, duration: float) -> tuple[Tally, float]:
        return as_tally(await self.client.closed(rpc, concurrency, duration))

    async def open(self, rpc: str, rate: float, duration: float) -> tuple[Tally, float]:
        return as_tally(await self.client.open(rpc, rate, duration))


def as_tally(report: GoReport) -> tuple[Tally, float]:
    return Tally(report.started, list(report.latencies), Counter(report.errors), report.empty_feeds, list(report.send_lags)), report.elapsed


def add_spawn_arguments(group: argparse._ArgumentGroup) -> None:
    """--store, --workers, --threads and --feed-processes of spawned servers (``spawn_server`` reads them)."""
    group.add_argument("--store", default="memory", help="store URL for a spawned server (default: %(default)s)")
    group.add_argument("--workers", type=bounded(int, 1), default=1, help="--workers of a spawned server; >1 needs --store redis (default: %(default)s)")
    group.add_argument("--threads", type=bounded(int, 0), default=0, help="--threads of a spawned server (default: %(default)s, the server's own default for its store)")
    group.add_argument("--feed-processes", type=bounded(int, 0), default=None, help="--feed-processes of a spawned server, instead of --workers (default: the server's own: on Redis one more than the cores; on the memory store as many as the cores, and 0 above 256 MB of files)")
    group.add_argument("--start-timeout", type=bounded(float, above=0), default=120.0, help="seconds a spawned server may take to "
                       "answer (its store loaded, health SERVING); one that exits fails at once (default: %(default)s)")




def store_problem(url: str) -> str | None:
    """Why a spawned server could not use the store ``url``, or None: an unknown scheme, or a
    Redis that does not answer PING within 3 s (the server would wait for it, NOT_SERVING)."""
    if url == "memory":
        return None
    if not url.startswith(URL_SCHEMES):
        return "unknown store: use memory, redis://HOST:PORT/DB, rediss://, unix:// or redis-cluster://HOST:PORT"
    from stores.redis import connect, split_url

    try:
        client = connect(split_url(url)[0], socket_connect_timeout=3.0, socket_timeout=3.0)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as error:  # redis-py's errors, a bad URL's ValueError: all say the same here
        return f"no Redis answers there ({type(error).__name__}: {error})"
    return None


def check_store(parser: argparse.ArgumentParser, flag: str, url: str) -> None:
    """Exit through ``parser`` when ``store_problem`` finds one with ``url`` (given as ``flag``)."""
    problem = store_problem(url)
    if problem:
        parser.error(f"{flag} {url}: {problem}")


def check_models(parser: argparse.ArgumentParser, flag: str, path: str) -> None:
    """Exit through ``parser`` unless ``path`` holds a published model (its CURRENT pointer)."""
    if not os.path.isfile(os.path.join(path, CURRENT)):
        parser.error(f"{flag} {path}: no published model (no {CURRENT} there)")


def check_dataset(parser: argparse.ArgumentParser, flag: str, path: str) -> None:
    """Exit through ``parser`` unless ``path`` holds a likes.csv with user_id and item_id
    columns (the users asked for, and the items they like, are read from it)."""
    likes = os.path.join(path, "likes.csv")
    if not os.path.isfile(likes):
        what = "no such directory" if not os.path.isdir(path) else "no likes.csv there"
        parser.error(f"{flag} {path}: {what} (the users to ask for are read from its likes.csv)")
    header = likes_header(path)
    missing = [name for name in ("user_id", "item_id") if name not in header]
    if missing:
        parser.error(f"{flag} {path}: likes.csv has no {' or '.join(missing)} column (its header: {','.join(header)})")


def process_stats() -> dict[int, list[str]]:
    """The fields of /proc/PID/stat after the command name, of every live process (Linux; empty elsewhere)."""
    stats = {}
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return stats
    for entry in entries:
        try:
            stats[int(entry)] = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
    return stats


def process_tree(pid: int, stats: dict[int, list[str]]) -> set[int]:
    """``pid`` and its live descendants among ``stats`` (``process_stats``); empty when ``pid`` is not there."""
    if pid not in stats:
        return set()
    tree, frontier = {pid}, [pid]
    while frontier:
        children = [child for child, fields in stats.items() if int(fields[1]) in frontier and child not in tree]
        tree.update(children)
        frontier = children
    return tree


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants (Linux /proc; NaN elsewhere)."""
    stats = process_stats()
    tree = process_tree(pid, stats)
    if not tree:
        return float("nan")
    return sum(int(stats[p][11]) + int(stats[p][12]) for p in tree) / os.sysconf("SC_CLK_TCK")


def check_pids(parser: argparse.ArgumentParser, flag: str, pids: Sequence[int]) -> None:
    """Exit through ``parser`` when one of ``pids`` (given as ``flag``) is no process this
    program can read the CPU of: its figures would silently be NaN."""
    for pid in pids:
        if math.isnan(process_tree_cpu_seconds(pid)):
            parser.error(f"{flag} {pid}: no such process on this machine (or /proc cannot be read)")


def processes_cpu_seconds(pids: Sequence[int]) -> float:
    """``process_tree_cpu_seconds`` summed over ``pids``; NaN when there are none (not measured)."""
    return sum(process_tree_cpu_seconds(pid) for pid in pids) if pids else float("nan")


class TargetUnreachable(RuntimeError):
    """No connection to the target within --timeout, before any phase."""


async def wait_until_connected(calls: ServerCalls, target: str, timeout: float) -> None:
    """Every channel ready within ``timeout`` seconds, else TargetUnreachable: without a
    server, each phase would only count UNAVAILABLE."""
    try:
        # Not wait_for(gather(...)): cancelled (Ctrl-C), that leaves the gather's
        # CancelledError unretrieved, and asyncio logs it after the run's last line.
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(channel.channel_ready() for channel in calls.channels))
    except TimeoutError:
        raise TargetUnreachable(f"cannot connect to {target} within --timeout {timeout:g} s") from None


PREFLIGHT_USERS = 20  # feeds asked for before the load


class PreflightFailed(RuntimeError):
    """Before any phase, GetFeed showed a server the run cannot measure: no FeedService, a
    token refused, or a store that gave every user asked for an empty feed."""


def one_line(text: str) -> str:
    return " ".join(text.split())


async def preflight(calls: ServerCalls, target: str, users: Sequence[str], timeout: float, token: str | None) -> None:
    """GetFeed for the first PREFLIGHT_USERS of ``users`` (a random sample: the users the
    phases ask for), else PreflightFailed: a server that is no FeedService (UNIMPLEMENTED),
    refuses the token (UNAUTHENTICATED, PERMISSION_DENIED) or answers every one of them OK
    with an empty feed (an empty Redis does) would fill the table with errors or nan, or
    meet the targets without ranking anything. Other answers are left to the phases to count
    (a --limit the server refuses is a run that measures its refusals)."""
    outcomes = await asyncio.gather(*(calls.feed_of(user, timeout) for user in users[:PREFLIGHT_USERS]), return_exceptions=True)
    refusals = {outcome.code(): outcome for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)}
    if grpc.StatusCode.UNIMPLEMENTED in refusals:
        raise PreflightFailed(f"{target} answered GetFeed with UNIMPLEMENTED: not a feedrank FeedService (is --target the feed server's gRPC port?)")
    hints = {
        grpc.StatusCode.UNAUTHENTICATED: "the server does not know the token given" if token
        else f"give a token with the 'read' scope: --token (or {TOKEN_VARIABLE})",
        grpc.StatusCode.PERMISSION_DENIED: "give a token with the 'read' scope",
    }  # fmt: skip
    for code, hint in hints.items():
        if code in refusals:
            raise PreflightFailed(f"{target} refused GetFeed: {code.name} ({one_line(refusals[code].details() or '')}); {hint}")
    feeds = [outcome for outcome in outcomes if isinstance(outcome, feed_pb2.GetFeedResponse)]
    if feeds and not any(feed.items for feed in feeds):
        raise PreflightFailed(f"all {len(feeds)} feeds asked for before the load came back empty, users of --data's likes.csv: "
                              f"{target}'s store looks empty or not loaded (on Redis, load it with `python -m serving load "
                              "--data DIR --redis URL`), or loaded from another dataset")  # fmt: skip


async def run_phases(
    target: str,
    users_and_items: tuple[list[str], list[str]],
    args: argparse.Namespace,
    server_pid: int | None = None,
    store_pids: Sequence[int] = (),
    go_binary: Path | None = None,
    workdir: Path | None = None,
) -> list[PhaseResult]:
    """The three phases, by this process's client or by ``go_binary`` (goload, its request
    files in ``workdir``); with ``server_pid`` (a server on this machine) each also reports
    its server CPU per call, and with ``store_pids`` (e.g. redis-server) the store's. With
    ``args.ingest_rate``, a fourth row: the likes ingested during the GetFeed phases (always
    by this process's client)."""
    users, items = users_and_items
    token, tls_ca = getattr(args, "token", None), getattr(args, "tls_ca", None)
    calls = server_calls(target, users, args.channels, args.limit, random.Random(args.seed), items, token, channel_credentials(tls_ca))
    phases = PythonPhases(calls, args.timeout, args.seed) if go_binary is None else GoPhases(go_binary, target, users, args, workdir)

    def cpu() -> tuple[float, float]:
        return processes_cpu_seconds([server_pid] if server_pid else []), processes_cpu_seconds(store_pids)

    def histogram() -> dict[float, float] | None:
        """The server's latency histogram; None without --metrics, or from a server no longer answering (gone mid-run)."""
        if not args.metrics:
            return None
        try:
            return scrape_feed_latency(args.metrics)
        except OSError:  # URLError included
            return None

    async def phase(name: str, mode: str, concurrency: int, target_qps: float, run: Awaitable[tuple[Tally, float]]) -> PhaseResult:
        latency_before = histogram() if name == "GetFeed" else None
        server_before, store_before = cpu()
        tally, elapsed = await run
        server_after, store_after = cpu()
        result = summarise(name, mode, concurrency, target_qps, tally, elapsed, server_after - server_before, store_after - store_before)
        latency_after = histogram() if latency_before is not None else None
        if latency_after is not None:
            result.server_p50_ms, result.server_p50_capped = capped_quantile(0.5, latency_before, latency_after, result.p50_ms)
            result.server_p99_ms, result.server_p99_capped = capped_quantile(0.99, latency_before, latency_after, result.p99_ms)
        return result

    try:
        if go_binary is None or args.ingest_rate or args.ingest_batch:  # goload checks its own connections
            await wait_until_connected(calls, target, args.timeout)
        await preflight(calls, target, users, args.timeout, token)  # by this process's client whichever runs the phases
        for rpc in ("empty", "GetFeed"):  # warm up connections, caches and the allocator
            if args.warmup:
                await phases.closed(rpc, args.concurrency, args.warmup)
        results = [await phase("empty", "closed", args.concurrency, 0.0, phases.closed("empty", args.concurrency, args.duration))]
        ingest = None
        if args.ingest_rate:  # beside both GetFeed phases, and the pause between them
            ingest_started = time.perf_counter()
            # Arrivals of their own: drawn from --seed, the likes would arrive in step with the GetFeeds.
            ingest = asyncio.ensure_future(open_loop(calls.ingest_likes(1), args.ingest_rate, 2 * args.duration, args.timeout, args.seed + 1))
        results.append(await phase("GetFeed", "closed", args.concurrency, 0.0, phases.closed("GetFeed", args.concurrency, args.duration)))
        rate = args.rate or max(results[1].qps * args.load, 1.0)
        mode = f"open@{rate:.0f}/s" if args.rate else share_mode(args.load)
        results.append(await phase("GetFeed", mode, 0, rate, phases.open("GetFeed", rate, args.duration)))
        if ingest is not None:
            tally, _ = await ingest
            results.append(summarise("Ingest", f"open@{args.ingest_rate:.0f}/s", 0, args.ingest_rate, tally, time.perf_counter() - ingest_started))
        if args.ingest_batch:  # last: the likes it adds change the feeds
            batches = closed_loop(calls.ingest_likes(args.ingest_batch), args.concurrency, args.duration, args.timeout)
            results.append(await phase("Ingest", "closed", args.concurrency, 0.0, batches))
            results[-1].events_per_call = args.ingest_batch
        return results
    finally:
        await calls.close()


class ServerDidNotStart(RuntimeError):
    """A spawned server exited, or did not answer within --start-timeout; the message ends with its log's last lines."""


class SpawnedServerExited(RuntimeError):
    """The spawned server exited during the phases: their errors say only UNAVAILABLE; the message ends with its log's last lines."""


def log_tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def spawn_server(
    args: argparse.Namespace, workdir: Path, checkout: str | None = None, extra: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    """``python -m serving`` on a free port with the --store/--workers/--threads/--feed-processes asked for;
    from ``checkout``'s code when given (its directory and PYTHONPATH), with ``extra`` flags."""
    port_file, log = workdir / "port", workdir / "server.log"
    argv = [sys.executable, "-m", "serving", "--models", args.models, "--port", "0", "--port-file", str(port_file),
            "--store", args.store, "--workers", str(args.workers), "--threads", str(args.threads), *(extra or [])]  # fmt: skip
    if args.feed_processes is not None:
        argv += ["--feed-processes", str(args.feed_processes)]
    if args.data and args.store == "memory":
        argv += ["--data", args.data]
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)} if checkout else None
    timeout = getattr(args, "start_timeout", 120.0)
    deadline = time.monotonic() + timeout
    server = None
    try:
        with stops_deferred(), open(log, "w") as output:
            server = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, cwd=checkout, env=env)
        while not (port_file.exists() and port_file.read_text().strip()):
            status = server.poll()
            if status is not None or time.monotonic() > deadline:
                what = f"exited with status {status}" if status is not None else f"did not answer within --start-timeout {timeout:g} s"
                raise ServerDidNotStart(f"the spawned server ({checkout or '.'}) {what}; the last lines of its log:\n{log_tail(log)}")
            time.sleep(0.2)
    except BaseException:  # it did not start, or Ctrl-C or SIGTERM came first: the caller has no server to stop
        if server is not None:
            stop_server(server)
        raise
    return server, f"127.0.0.1:{port_file.read_text().strip()}"


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM inside is raised (as KeyboardInterrupt) at its end, not in the middle:
    raised inside ``subprocess.Popen`` after the fork, it left the child running with no
    Popen to stop it. In the main thread only, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _: received.append(signum)) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt


def free_port() -> int:
    """A port nothing listens on now, for the spawned server's metrics."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def interrupt_on_sigterm() -> None:
    """SIGTERM (a `kill PID`, a job runner stopping the run) is Ctrl-C: the ``finally`` that
    stops the spawned servers runs instead of the process vanishing and leaving them running.
    Inside ``asyncio.run`` Ctrl-C cancels the running phase, so every await unwinds with its
    tasks; a KeyboardInterrupt raised from a SIGTERM handler broke out of the event loop
    instead, and asyncio logged the abandoned tasks' CancelledErrors after the run's last line."""
    signal.signal(signal.SIGTERM, _as_ctrl_c)


def _as_ctrl_c(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def sample_users(args: argparse.Namespace) -> list[str]:
    return sample_users_and_items(args)[0]


def sample_users_and_items(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """--users users and the items they liked, from the first ROWS_READ rows of likes.csv (benchmarks/likes_file.py)."""
    rows = liked_columns(args.data, ("user_id", "item_id"))
    users = sorted({user for user, _ in rows})
    items = sorted({item for _, item in rows})
    wanted = len(users) if args.users == 0 else min(len(users), args.users)
    return random.Random(args.seed).sample(users, wanted), items


@dataclass
class Verdicts:
    """The footer's figures as shown (the ratio to 3 decimals, the p99 to 0.1 ms), each
    compared with its target as shown, so a line never reads "0.200 (target >= 0.2: MISSED)"."""

    feed_to_empty: float
    target_feed_to_empty: float  # at least
    feed_to_empty_met: bool
    p99_half_load_ms: float
    target_p99_half_load_ms: float  # at most
    p99_half_load_met: bool | None  # None: a fixed --rate, or a --load other than half, which the target is not set at


def verdicts(results: list[PhaseResult], on_redis: bool = False) -> Verdicts:
    """The targets' verdicts on the first three phases (Redis's targets for a spawned server on Redis)."""
    target_ratio, target_p99 = (
        (REDIS_TARGET_FEED_TO_EMPTY, REDIS_TARGET_P99_HALF_LOAD_MS) if on_redis else (TARGET_FEED_TO_EMPTY, TARGET_P99_HALF_LOAD_MS)
    )
    empty, feed, half = results[:3]
    ratio = round(feed.qps / empty.qps, 3) if empty.qps else float("nan")
    p99 = round(half.p99_ms, 1)
    # The target is set at half the saturation rate (as shown): a quarter load would meet it, a full one miss it, by the load alone.
    at_half = half.mode == share_mode(0.5)
    return Verdicts(ratio, target_ratio, ratio >= target_ratio, p99, target_p99, p99 <= target_p99 if at_half else None)


def share_mode(load: float) -> str:
    """The open loop's mode at ``load`` (--load) times the saturation rate, as the table shows it."""
    return f"open@{load:.0%}"


def json_safe(value: object) -> object:
    """``value`` with every NaN or infinity as None: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def report_json(results: list[PhaseResult], client: str, on_redis: bool = False) -> str:
    """--json's text: the client, the phases (as the table's rows) and the footer's ratio, targets and verdicts."""
    report = {"client": client, "phases": [asdict(r) for r in results], **asdict(verdicts(results, on_redis))}
    return json.dumps(json_safe(report), indent=2, allow_nan=False)


STEADY_P99_CALLS = 1000
"""Calls a p99 needs before it rests on ten of them rather than on one or two."""


def server_ms(value: float, capped: bool, width: int) -> str:
    """A server quantile for the table: "<=" before one capped at the client's."""
    return f"{'<=' if capped else ''}{value:.2f}".rjust(width)


def format_table(results: list[PhaseResult], on_redis: bool = False) -> str:
    """The phases' table, then the targets' verdicts (Redis's for a spawned server on Redis)."""
    with_store = any(r.store_cpu_ms == r.store_cpu_ms for r in results)  # measured (not NaN)
    with_server_latency = any(r.server_p99_ms == r.server_p99_ms for r in results)
    lines = [f"{'rpc':<8} {'mode':<9} {'conc':>5} {'target/s':>9} {'calls':>7} {'ok':>7} {'empty':>7} {'errors':>7} {'qps':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'srv cpu ms':>10}"
             + (f" {'store cpu ms':>12}" if with_store else "") + (f" {'srv p50 ms':>10} {'srv p99 ms':>10}" if with_server_latency else "")]  # fmt: skip
    for r in results:
        empty_feeds = "-" if r.empty_feeds is None else r.empty_feeds
        lines.append(f"{r.rpc:<8} {r.mode:<9} {r.concurrency:>5} {r.target_qps:>9.0f} {r.calls:>7} {r.successes:>7} {empty_feeds:>7} {r.errors:>7} "
                     f"{r.qps:>9.0f} {r.p50_ms:>8.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f} {r.server_cpu_ms:>10.3f}"
                     + (f" {r.store_cpu_ms:>12.3f}" if with_store else "")
                     + (f" {server_ms(r.server_p50_ms, r.server_p50_capped, 10)} {server_ms(r.server_p99_ms, r.server_p99_capped, 10)}"
                        if with_server_latency else ""))  # fmt: skip
    for r in results:
        if r.errors:
            lines.append(f"errors in {r.rpc} {r.mode}: " + ", ".join(f"{code} {n}" for code, n in r.errors_by_code.items()))
    for r in results:
        if r.empty_feeds:
            lines.append(f"empty feeds in {r.rpc} {r.mode}: {r.empty_feeds} of {r.successes} answered OK without an item "
                         "(a store partly loaded, or users it does not know)")  # fmt: skip
    empty, feed, half = results[:3]
    v = verdicts(results, on_redis)
    verdict = {True: "met", False: "MISSED"}
    lines.append(f"GetFeed / empty RPC throughput: {v.feed_to_empty:.3f} (target >= {v.target_feed_to_empty:g}: {verdict[v.feed_to_empty_met]})")
    if v.p99_half_load_met is not None:
        lines.append(f"GetFeed p99 at {half.mode}: {v.p99_half_load_ms:.1f} ms (target <= {v.target_p99_half_load_ms:g} ms: "
                     f"{verdict[v.p99_half_load_met]})")  # fmt: skip
    else:
        lines.append(f"GetFeed p99 at {half.mode}: {v.p99_half_load_ms:.1f} ms")
    if half.successes < STEADY_P99_CALLS:
        lines.append(f"the p99 at {half.mode} rests on {half.successes} calls: below {STEADY_P99_CALLS:,} it is set by fewer than "
                     "ten of the slowest and moves from run to run; run longer (--duration)")  # fmt: skip
    if half.send_lag_p99_ms == half.send_lag_p99_ms:  # measured (not NaN)
        lines.append(f"the generator's own lag at {half.mode}: p99 {half.send_lag_p99_ms:.1f} ms between a call's scheduled "
                     "time and its start; counted in the p99 above, so a p99 near it is the client's, not the server's")  # fmt: skip
    if half.server_p99_ms == half.server_p99_ms:  # read from the server's histogram (not NaN)
        shown = (f"<= {half.server_p99_ms:.1f} ms (capped at the client's: interpolation inside a coarse bucket gave more)"
                 if half.server_p99_capped else f"{half.server_p99_ms:.1f} ms")  # fmt: skip
        lines.append(f"the server's own p99 at {half.mode}: {shown}, from its latency histogram (the "
                     "time in its handler: the client, the network and gRPC's transport left out; coarse between bucket bounds)")  # fmt: skip
    if feed.server_cpu_ms == feed.server_cpu_ms:  # measured (not NaN)
        lines.append(f"server CPU per call: empty RPC {empty.server_cpu_ms:.3f} ms, GetFeed {feed.server_cpu_ms:.3f} ms; "
                     f"their ratio {empty.server_cpu_ms / feed.server_cpu_ms:.3f} is the throughput ratio a server that "
                     "had the cores to itself would reach (steadier than qps on a shared machine)")  # fmt: skip
    if with_store:
        empty_total, feed_total = empty.server_cpu_ms + empty.store_cpu_ms, feed.server_cpu_ms + feed.store_cpu_ms
        lines.append(f"server and store CPU per call: empty RPC {empty_total:.3f} ms, GetFeed {feed_total:.3f} ms; "
                     f"their ratio {empty_total / feed_total:.3f} counts the store's work on the same cores too")  # fmt: skip
    lines.extend(ingest_capacity(r) for r in results if r.rpc == "Ingest" and r.mode == "closed")
    return "\n".join(lines)


def ingest_capacity(ingest: PhaseResult) -> str:
    """The footer's line for the Ingest closed loop: likes per second, and CPU per like where measured."""
    line = f"Ingest capacity: {ingest.qps * ingest.events_per_call:,.0f} likes/s in batches of {ingest.events_per_call} at concurrency {ingest.concurrency}"
    cpu = [f"{name} {1e3 * ms / ingest.events_per_call:.1f} µs" for name, ms in (("server", ingest.server_cpu_ms), ("store", ingest.store_cpu_ms)) if ms == ms]
    return line + (f" (CPU per like: {', '.join(cpu)})" if cpu else "")


def main(argv: list[str] | None = None) -> int:
    """Run the three phases and print the table; returns the exit status (1 if any call failed)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("server")
    where.add_argument("--target", help="address of a running server; otherwise one is spawned from --models")
    where.add_argument("--models", help="models directory for a spawned server")
    where.add_argument("--data", help="dataset directory (required): the users to ask for, from its likes.csv, and a "
                       "spawned server's memory store; with --target, the dataset that server was loaded from")
    where.add_argument("--server-pid", type=int, help="pid of the --target server, when it runs on this machine: each phase "
                       "then reports the server's CPU per call (a spawned server's is always reported)")  # fmt: skip
    where.add_argument("--store-pid", type=int, action="append", default=[], metavar="PID",
                       help="pid of a store process on this machine, e.g. redis-server (repeat for several): each phase "
                       "then also reports the store's CPU per call, which the server's does not include")  # fmt: skip
    where.add_argument("--metrics", metavar="URL", help="the --target server's Prometheus endpoint, e.g. "
                       "http://127.0.0.1:9100/metrics: each GetFeed phase then also reports the server's own p50 and p99, from "
                       "its latency histogram (a spawned server's is read unless --workers > 1)")  # fmt: skip
    where.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE) or None, help="bearer token for a server with "
                       "--tokens-file, sent with every GetFeed and Ingest: the 'read' scope, and 'write' with --ingest-rate or --ingest-batch "
                       f"(the empty RPC, health, needs none); the variable {TOKEN_VARIABLE} keeps it out of the process list")  # fmt: skip
    where.add_argument("--tls-ca", metavar="FILE", help="speak TLS to a server with --tls-cert, trusting the CA certificates "
                       "in this PEM file (every phase, the empty RPC's too)")
    add_spawn_arguments(where)
    load = parser.add_argument_group("load")
    # 12: a multiple of 2, 3 and 4 workers. With 4, SO_REUSEPORT gave one of 3 workers two connections, and 3 workers
    # measured worst for it (benchmarks/README.md, "2026-12-03 (midday)").
    load.add_argument("--channels", type=bounded(int, 1), default=12, help="client connections, used in turn; spreads the load over --workers (default: %(default)s)")
    load.add_argument("--concurrency", type=bounded(int, 1), default=16, help="in-flight requests in closed loop (default: %(default)s)")
    load.add_argument("--duration", type=bounded(float, above=0), default=10.0, help="seconds per phase (default: %(default)s)")
    load.add_argument("--warmup", type=bounded(float, 0), default=2.0, help="warm-up seconds per RPC (default: %(default)s)")
    load.add_argument("--load", type=bounded(float, above=0), default=0.5, help="open-loop rate as a fraction of saturation (default: %(default)s)")
    load.add_argument("--rate", type=bounded(float, 0), default=0.0, help="open-loop rate in GetFeeds per second, instead of --load: the "
                      "same load for servers of different saturation (default: --load)")  # fmt: skip
    load.add_argument("--limit", type=int, default=20, help="items per GetFeed; not checked here, so a run can measure the server's refusals (default: %(default)s)")
    load.add_argument("--timeout", type=deadline_seconds, default=5.0, help="per-call deadline in seconds (default: %(default)s)")
    load.add_argument("--seed", type=int, default=0, help="seed of the user sample and of the open loop's arrivals (default: %(default)s)")
    load.add_argument("--users", type=bounded(int, 0), default=5000, help="distinct users the GetFeeds ask for, sampled from the "
                      "first 200,000 likes of --data; 0: all of those (default: %(default)s)")
    load.add_argument("--client", choices=("python", "go"), default="python", help="python: this process's asyncio "
                      "client; go: goload, a compiled client (benchmarks/go_client.py; `make goload` installs Go), which "
                      "takes far less of the cores the server runs on and does not decode the replies. --ingest-rate's "
                      "and --ingest-batch's likes are sent by the python client either way (default: %(default)s)")  # fmt: skip
    load.add_argument("--ingest-rate", type=bounded(float, 0), default=0.0, help="likes per second sent through Ingest (one per "
                      "call) during both GetFeed phases; 0: none (default: %(default)s)")
    load.add_argument("--ingest-batch", type=bounded(int, 0), default=0, help="a last phase: Ingest in a closed loop at "
                      "--concurrency, each call a batch of this many likes of random users and items; its line gives the "
                      "server's ingest capacity in likes per second, and its CPU per like; 0: no such phase (default: %(default)s)")  # fmt: skip
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=output_file, help="write the results here as JSON: the client, the phases (the table's "
                     "rows; null where not measured), the GetFeed / empty ratio, the targets and their verdicts")
    out.add_argument("--allow-errors", action="store_true", help="exit 0 even when some calls failed")
    args = parser.parse_args(argv)
    if not args.target and not args.models:
        parser.error("give --target, or --models (and --data) to spawn a server")
    if not args.data:
        parser.error("--data is required: the GetFeeds ask for users of its likes.csv, which must be the server's")
    check_dataset(parser, "--data", args.data)
    if not args.target:
        check_store(parser, "--store", args.store)
        for flag, given, why in (
            ("--tls-ca", args.tls_ca, "a spawned server speaks plaintext"),
            ("--server-pid", args.server_pid is not None, "without --target one is spawned, and its own pid is measured"),
            ("--metrics", args.metrics, "without --target one is spawned, and its own endpoint is read "
                                        "(with --workers > 1, none: each worker has its own)"),
        ):
            if given:
                parser.error(f"{flag} is for a --target server: {why}")
    try:
        channel_credentials(args.tls_ca)
    except ValueError as error:
        parser.error(str(error))
    check_pids(parser, "--server-pid", [args.server_pid] if args.server_pid is not None else [])
    check_pids(parser, "--store-pid", args.store_pid)
    if args.metrics:
        try:
            scrape_feed_latency(args.metrics)
        except (OSError, ValueError) as error:  # URLError is an OSError; a page that is not Prometheus text, ValueError
            parser.error(f"--metrics {args.metrics}: cannot read the server's metrics there ({error})")
    go_binary = None
    if args.client == "go":
        try:
            go_binary = build()
        except GoClientUnavailable as error:
            parser.error(str(error))
    server = None
    with tempfile.TemporaryDirectory(prefix="loadgen-") as workdir:
        try:
            if args.target:
                target, server_pid = args.target, args.server_pid
            elif args.workers == 1:  # with --workers each has its own endpoint, holding only its calls
                metrics_port = free_port()
                server, target = spawn_server(args, Path(workdir), extra=["--metrics-port", str(metrics_port)])
                server_pid = server.pid
                args.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            else:
                server, target = spawn_server(args, Path(workdir))
                server_pid = server.pid
            results = asyncio.run(run_phases(target, sample_users_and_items(args), args, server_pid, args.store_pid, go_binary, Path(workdir)))
            if server is not None and server.poll() is not None:
                raise SpawnedServerExited(f"the spawned server exited with status {server.returncode} during the run; "
                                          f"the last lines of its log:\n{log_tail(Path(workdir) / 'server.log')}")  # fmt: skip
        except (GoLoadFailed, TargetUnreachable, ServerDidNotStart, SpawnedServerExited, PreflightFailed) as error:
            parser.exit(1, f"{parser.prog}: {error}\n")
        except KeyboardInterrupt:
            parser.exit(130, f"{parser.prog}: interrupted; no report\n")
        finally:
            if server is not None:
                stop_server(server)
    on_redis = not args.target and args.store.startswith(URL_SCHEMES)
    print(format_table(results, on_redis))
    if args.json:
        Path(args.json).write_text(report_json(results, args.client, on_redis))
    failed = sum(r.errors for r in results)
    if failed and not args.allow_errors:
        print(f"{failed} calls failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    interrupt_on_sigterm()
    sys.exit(main())
