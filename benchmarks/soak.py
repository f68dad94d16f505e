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
  rss       the server process's resident memory, sampled every second (MB): first, last,
            max, and the slope of a line fitted to the second half (MB/min; flat is ~0)
  lost      acknowledged likes missing from Redis afterwards (target 0)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.load import load_into_redis
from stores.redis import connect
from stores.redis_keys import Keys
from training.dataset import write_dataset
from training.generate import generate
from training.train import TrainParams, train_and_publish

REPO = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def start_server(root: Path, redis_url: str) -> tuple[subprocess.Popen, str]:
    port_file = root / "server.port"
    env = dict(os.environ, FEEDRANK_TOKEN_SECRET="soak-secret-0123456789abcdef")
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--store", redis_url, "--models", str(root / "models"), "--port", "0",
         "--port-file", str(port_file), "--reload-seconds", "0"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not start:\n" + (root / "server.log").read_text()[-2000:])
        time.sleep(0.1)
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the load (default: %(default)s)")
    parser.add_argument("--outage-seconds", type=float, default=3.0, help="how long Redis stays down (default: %(default)s)")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    from tests.redis_servers import RedisServer  # the test fixtures' process helpers

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        root = Path(tmp)
        dataset = generate(users=args.users, sellers=max(args.users // 20, 1), items=args.items, seed=9)
        write_dataset(dataset, str(root / "data"))
        train_and_publish(str(root / "data"), str(root / "models"), TrainParams(show_progress=False, iterations=5))
        redis_server = RedisServer(root / "redis", appendonly=True).start()
        server = None
        try:
            client = connect(redis_server.url, socket_timeout=30.0)
            load_into_redis(client, dataset)
            client.close()
            server, target = start_server(root, redis_server.url)
            report = soak(args, target, server.pid, redis_server, dataset)
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
            redis_server.stop()
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
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
    while time.monotonic() - started < args.seconds:
        rss.append((time.monotonic() - started, rss_mb(server_pid)))
        if not killed and time.monotonic() - started >= args.seconds / 2:
            redis_server.kill()
            killed = True
            time.sleep(args.outage_seconds)
            redis_server.start()
            restarted_at = time.monotonic()
            continue
        time.sleep(1.0)
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
    times = np.array([t for t, _ in rss])
    mbs = np.array([m for _, m in rss])
    half = times >= times[-1] / 2 if len(times) else np.zeros(0, bool)
    slope = float(np.polyfit(times[half] / 60.0, mbs[half], 1)[0]) if half.sum() >= 3 else float("nan")
    return {
        "seconds": args.seconds,
        "answers": dict(Counter(f"{rpc} {code}" for _, rpc, code in answers)),
        "first_error_messages": first_details,
        "recovery_seconds": recovery,
        "errors_after_recovery": dict(late_errors),
        "rss_mb": {"first": round(float(mbs[0]), 1), "last": round(float(mbs[-1]), 1), "max": round(float(mbs.max()), 1),
                   "second_half_slope_mb_per_min": round(slope, 2), "samples": [[round(t, 1), round(m, 1)] for t, m in rss]},
        "acked_events": len(acked),
        "acked_events_missing": lost,
    }  # fmt: skip


if __name__ == "__main__":
    main()
