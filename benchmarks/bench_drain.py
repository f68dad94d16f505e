"""A server's stop under steady traffic: how long SIGTERM takes, and what the callers saw.

  python -m benchmarks.bench_drain --data DIR --models DIR [--store URL] [--callers 8] [--runs 3] [-- SERVER ARGS...]

Each run spawns ``python -m serving`` on a free port (as loadgen does), lets --callers threads (one channel
each, as clients that keep their connection) call GetFeed back to back with a 10 ms pause,
sends SIGTERM after --warmup seconds and times the exit. The callers go on for half a
second after it. Their answers after the SIGTERM are counted by kind: OK, refused (the
drain's UNAVAILABLE "server shutting down"), no server (any other UNAVAILABLE: the port was
closed), CANCELLED (which clients do not retry) and any other code. Arguments after ``--``
go to the server (e.g. ``-- --feed-processes 0``).
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from benchmarks.loadgen import check_dataset, check_models, check_store, sample_users, spawn_server, stop_server
from protos.feed.v1 import feed_pb2, feed_pb2_grpc

KINDS = ("OK", "refused", "no server", "CANCELLED", "other")


def _kind(error: grpc.RpcError | None) -> str:
    if error is None:
        return "OK"
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return "refused" if "shutting down" in (error.details() or "") else "no server"
    return "CANCELLED" if error.code() == grpc.StatusCode.CANCELLED else "other"


def one_stop(args: argparse.Namespace, users: list[str], scratch: Path) -> tuple[float, int, collections.Counter]:
    """Exit seconds after SIGTERM, the server's exit status, and the answers after it by kind."""
    (scratch / "port").unlink(missing_ok=True)
    server, target = spawn_server(args, scratch, extra=["--no-progress", "--log-level", "warning", *args.server_args])
    try:
        after: collections.Counter = collections.Counter()
        signalled = threading.Event()
        finished = threading.Event()
        lock = threading.Lock()

        def call(offset: int) -> None:
            with grpc.insecure_channel(target) as channel:
                stub = feed_pb2_grpc.FeedServiceStub(channel)
                n = offset
                while not finished.is_set():
                    error = None
                    try:
                        stub.GetFeed(feed_pb2.GetFeedRequest(user_id=users[n % len(users)], limit=20), timeout=3)
                    except grpc.RpcError as failed:
                        error = failed
                    if signalled.is_set():
                        with lock:
                            after[_kind(error)] += 1
                    n += 1
                    time.sleep(0.01)

        callers = [threading.Thread(target=call, args=(i * 997,)) for i in range(args.callers)]
        for caller in callers:
            caller.start()
        time.sleep(args.warmup)
        signalled.set()
        sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        exit_seconds = time.monotonic() - sent
        time.sleep(0.5)
        finished.set()
        for caller in callers:
            caller.join()
        return exit_seconds, server.returncode, after
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    server_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, server_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_drain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset directory: the server's and the users to ask for")
    parser.add_argument("--models", required=True, help="models directory for the server")
    parser.add_argument("--store", default="memory", help="the server's --store, e.g. redis://HOST:PORT/0 loaded with --data (default: %(default)s)")
    parser.add_argument("--callers", type=int, default=8, help="caller threads, one channel each (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="stops measured, one server each (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of traffic before the SIGTERM (default: %(default)s)")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds the server may take to start (default: %(default)s)")
    args = parser.parse_args(argv)
    check_dataset(parser, "--data", args.data)
    check_models(parser, "--models", args.models)
    check_store(parser, "--store", args.store)
    # What loadgen's spawn_server and sample_users read: the server's own defaults.
    args.server_args, args.workers, args.threads, args.feed_processes = server_args, 1, 0, None
    args.users, args.seed = 5000, 0
    users = sample_users(args)
    print(f"{'run':>3} {'exit s':>7} {'rc':>3} " + " ".join(f"{kind:>10}" for kind in KINDS))
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(1, args.runs + 1):
            seconds, returncode, after = one_stop(args, users, Path(scratch))
            print(f"{run:>3} {seconds:>7.2f} {returncode:>3} " + " ".join(f"{after[kind]:>10}" for kind in KINDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
