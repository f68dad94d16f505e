"""Soak: a real server on Redis under mixed GetFeed and Ingest, with a Redis restart halfway.

  python -m benchmarks.soak [--seconds 600] [--users 2000] [--json OUT]

Starts redis-server (AOF, fsync on every write, so an acknowledged write survives a
restart), loads a generated dataset, starts `python -m serving --store redis://...` as
its own process and drives it over gRPC from reader threads (GetFeed of random users,
following next pages) and writer threads (Ingest batches of likes, each event id unique,
every acknowledged one remembered). At half time Redis is SIGKILLed and started again on
the same port after ``--outage-seconds``. Reports:

  errors    answers by gRPC status, per RPC
  recovery  seconds from Redis coming back to the first OK of both RPCs; errors after that
            are counted apart (a timeout under load is not the outage)
  rss       the resident memory of the server's process tree (its feed processes hold the
            Redis read cache; pages shared between them count in each), sampled every second
            (MB): first, last, max, and the slope of a line fitted to the second half
            (MB/min; flat is ~0). Printed as a summary; --json keeps every sample.
  lost      acknowledged likes missing from Redis afterwards (target 0; any makes the exit status 1)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from benchmarks.loadgen import interrupt_on_sigterm, json_safe, process_stats, process_tree, stop_server, stops_deferred
from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.load import load_into_redis
from stores.redis import connect
from stores.redis_keys import Keys
from training.dataset import write_dataset
from training.flag_types import bounded, output_file
from training.generate import generate
from training.train import TrainParams, train_and_publish

REPO = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    """``pid``'s resident memory in MB; NaN when it has exited (or is a zombie, which has none)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    """The resident memory in MB of ``pid`` and its live descendants; NaN when ``pid`` is gone."""
    sizes = [rss_mb(member) for member in process_tree(pid, process_stats())]
    sizes = [size for size in sizes if size == size]  # a member that exited meanwhile
    return sum(sizes) if sizes else float("nan")


def rss_summary(samples: list[tuple[float, float]]) -> dict:
    """First, last and max of the (seconds, MB) ``samples``, the slope over their second half
    in MB/min (None under 3 samples there), and the samples themselves."""
    times = np.array([t for t, _ in samples])
    mbs = np.array([m for _, m in samples])
    half = times >= times[-1] / 2 if len(times) else np.zeros(0, bool)
    slope = float(np.polyfit(times[half] / 60.0, mbs[half], 1)[0]) if half.sum() >= 3 else float("nan")
    return json_safe({
        "first": round(float(mbs[0]), 1) if len(mbs) else None, "last": round(float(mbs[-1]), 1) if len(mbs) else None,
        "max": round(float(np.nanmax(mbs)), 1) if len(mbs) and not np.isnan(mbs).all() else None,
        "second_half_slope_mb_per_min": round(slope, 2), "samples": [[round(t, 1), round(m, 1)] for t, m in samples],
    })  # fmt: skip


def summary(report: dict) -> dict:
    """``report`` without the RSS samples (thousands in a long run), their count instead."""
    rss = {key: value for key, value in report["rss_mb"].items() if key != "samples"}
    return {**report, "rss_mb": {**rss, "sample_count": len(report["rss_mb"]["samples"])}}


def start_server(root: Path, redis_url: str) -> tuple[subprocess.Popen, str]:
    port_file = root / "server.port"
    env = dict(os.environ, FEEDRANK_TOKEN_SECRET="soak-secret-0123456789abcdef")
    deadline = time.monotonic() + 120
    process = None
    try:
        with stops_deferred(), open(root / "server.log", "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "serving", "--store", redis_url, "--models", str(root / "models"), "--port", "0",
                 "--port-file", str(port_file), "--reload-seconds", "0"],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + (root / "server.log").read_text()[-2000:])
            time.sleep(0.1)
    except BaseException:  # it did not start, or Ctrl-C or SIGTERM came first: the caller has no server to stop
        if process is not None:
            stop_server(process)
        raise
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=bounded(float, above=0), default=600.0, help="length of the load (default: %(default)s)")
    parser.add_argument("--outage-seconds", type=bounded(float, 0), default=3.0, help="how long Redis stays down (default: %(default)s)")
    parser.add_argument("--users", type=bounded(int, 1), default=2_000, help="users of the generated dataset; its sellers "
                        "are a twentieth of them (default: %(default)s)")
    parser.add_argument("--items", type=bounded(int, 1), default=5_000, help="items of the generated dataset (default: %(default)s)")
    parser.add_argument("--readers", type=bounded(int, 1), default=3, help="threads sending GetFeeds of random users, "
                        "following next pages (default: %(default)s)")
    parser.add_argument("--writers", type=bounded(int, 1), default=1, help="threads sending Ingest batches of 20 likes "
                        "(default: %(default)s)")
    parser.add_argument("--json", type=output_file, help="also write the report here, with every RSS sample")
    args = parser.parse_args(argv)
    from tests.redis_servers import RedisServer  # the test fixtures' process helpers

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        root = Path(tmp)
        dataset = generate(users=args.users, sellers=max(args.users // 20, 1), items=args.items, seed=9)
        write_dataset(dataset, str(root / "data"))
        with contextlib.redirect_stdout(sys.stderr):  # the model's path, which training prints: stdout is the report's JSON
            train_and_publish(str(root / "data"), str(root / "models"), TrainParams(show_progress=False, iterations=5))
        redis_server = RedisServer(root / "redis", appendonly=True)
        server = None
        try:
            redis_server.start()
            client = connect(redis_server.url, socket_timeout=30.0)
            load_into_redis(client, dataset)
            client.close()
            server, target = start_server(root, redis_server.url)
            report = soak(args, target, server.pid, redis_server, dataset)
        except KeyboardInterrupt:
            parser.exit(130, f"{parser.prog}: interrupted; no report\n")
        finally:
            if server is not None:
                stop_server(server)
            redis_server.stop()
    print(json.dumps(summary(report), indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, allow_nan=False))
    if report["acked_events_missing"]:  # the soak's one hard target: a script or CI sees it in the status
        parser.exit(1, f"{parser.prog}: {report['acked_events_missing']} of {report['acked_events']} acknowledged likes "
                       "are missing from Redis (target 0)\n")
    return report


def soak(args: argparse.Namespace, target: str, server_pid: int, redis_server, dataset) -> dict:
    users = dataset.user_ids()
    items = [i for i, stock in zip(dataset.items.item_id, dataset.items.stock.tolist()) if stock > 0]
    stop = threading.Event()
    lock = threading.Lock()
    answers: list[tuple[float, str, str]] = []  # (time, rpc, status)
    acked: list[tuple[str, str]] = []
    first_details: dict[str, str] = {}  # one message per status that is not OK, to read what went wrong

    def record(rpc: str, code: grpc.StatusCode, error: grpc.RpcError | None = None) -> None:
        with lock:
            answers.append((time.monotonic(), rpc, code.name))
            if error is not None:
                first_details.setdefault(f"{rpc} {code.name}", error.details())

    def reader(n: int) -> None:
        rng = random.Random(n)
        with grpc.insecure_channel(target) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            while not stop.is_set():
                token, user = "", rng.choice(users)
                for _ in range(rng.randint(1, 3)):
                    try:
                        page = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=20, page_token=token), timeout=5)
                        record("GetFeed", grpc.StatusCode.OK)
                        token = page.next_page_token
                    except grpc.RpcError as error:
                        record("GetFeed", error.code(), error)
                        time.sleep(0.05)
                        break
                    if not token:
                        break

    def writer(n: int) -> None:
        rng = random.Random(100 + n)
        count = 0
        with grpc.insecure_channel(target) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            while not stop.is_set():
                batch = [(f"soak-{n}-{count}-{k}", rng.choice(items)) for k in range(20)]
                count += 1
                events = [feed_pb2.Event(event_id=f"e-{user}", like=feed_pb2.UserItem(user_id=user, item_id=item)) for user, item in batch]
                try:
                    stub.Ingest(feed_pb2.IngestRequest(events=events), timeout=5)
                    record("Ingest", grpc.StatusCode.OK)
                    with lock:
                        acked.extend(batch)
                except grpc.RpcError as error:
                    record("Ingest", error.code(), error)
                    time.sleep(0.05)

    rss: list[tuple[float, float]] = []
    threads = [threading.Thread(target=reader, args=(n,)) for n in range(args.readers)]
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(args.writers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    restarted_at = None
    killed = False
    try:
        while time.monotonic() - started < args.seconds:
            rss.append((time.monotonic() - started, tree_rss_mb(server_pid)))
            if not killed and time.monotonic() - started >= args.seconds / 2:
                redis_server.kill()
                killed = True
                time.sleep(args.outage_seconds)
                redis_server.start()
                restarted_at = time.monotonic()
                continue
            time.sleep(1.0)
    finally:  # on Ctrl-C too: the threads call until told to stop, and would keep the process alive
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    recovery, late_errors = None, Counter()
    if restarted_at is not None:
        firsts = [min((t for t, rpc, code in answers if rpc == name and code == "OK" and t > restarted_at), default=None) for name in ("GetFeed", "Ingest")]
        if None not in firsts:
            recovered_at = max(firsts)
            recovery = round(recovered_at - restarted_at, 2)
            late_errors = Counter(f"{rpc} {code}" for t, rpc, code in answers if code != "OK" and t > recovered_at)
    client = connect(redis_server.url, socket_timeout=30.0)
    keys = Keys()
    lost = 0
    for start in range(0, len(acked), 1000):
        pipe = client.pipeline(transaction=False)
        for user, item in acked[start : start + 1000]:
            pipe.hexists(keys.liked(user), item)
        lost += sum(not found for found in pipe.execute())
    client.close()
    return {
        "seconds": args.seconds,
        "answers": dict(Counter(f"{rpc} {code}" for _, rpc, code in answers)),
        "first_error_messages": first_details,
        "recovery_seconds": recovery,
        "errors_after_recovery": dict(late_errors),
        "rss_mb": rss_summary(rss),
        "acked_events": len(acked),
        "acked_events_missing": lost,
    }  # fmt: skip


if __name__ == "__main__":
    interrupt_on_sigterm()
    main()
