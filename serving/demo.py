"""``python -m serving demo``: generate data, train, serve, print a feed, stop.

Everything runs locally with the embedded memory store; nothing else is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.client import fetch_pages, format_feed
from training.dataset import load_dataset
from training.flag_types import bounded


def run_step(title: str, argv: list[str]) -> None:
    """Run one step; a step that fails ends the demo in one line (its own error is above it)."""
    print(f"\n==> {title}\n$ python {' '.join(argv)}", flush=True)
    code = subprocess.run([sys.executable, *argv], check=False).returncode
    if code:
        sys.exit(f"error: the step '{title}' failed (exit code {code})")


def wait_until_serving(port_file: Path, process: subprocess.Popen, log_file: Path, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode}; the end of {log_file}:\n{_tail(log_file)}")
        if time.monotonic() > deadline:
            raise SystemExit(f"server did not start in {timeout:.0f} s; the end of {log_file}:\n{_tail(log_file)}")
        time.sleep(0.1)
    target = f"127.0.0.1:{port_file.read_text().strip()}"
    with grpc.insecure_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise SystemExit(f"server health is {response.status}")
    return target


def _tail(log_file: Path, lines: int = 20) -> str:
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


def pick_sample_user(data_dir: Path) -> tuple[str, str, str]:
    """A typical user with follows and friends: (user, a friend, a seller they follow)."""
    dataset = load_dataset(str(data_dir))
    followed: dict[str, list[str]] = {}
    for user_id, seller_id in zip(dataset.follows.src, dataset.follows.dst):
        followed.setdefault(user_id, []).append(seller_id)
    friends: dict[str, list[str]] = {}
    for a, b in zip(dataset.friends.src, dataset.friends.dst):
        friends.setdefault(a, []).append(b)
        friends.setdefault(b, []).append(a)
    social = sorted(set(followed) & set(friends), key=lambda u: (len(friends[u]), u))
    user = social[len(social) // 2]
    return user, sorted(friends[user])[0], sorted(followed[user])[0]


def find_ranks(stub, user: str, item_ids: set[str]) -> dict[str, int]:
    """Where each item sits in the user's feed (first 5 pages of 20)."""
    ranks: dict[str, int] = {}
    rank = 0
    for response in fetch_pages(stub, user, 20, 5, timeout=5):
        for item in response.items:
            rank += 1
            if item.item_id in item_ids:
                ranks[item.item_id] = rank
    return ranks


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="demo-out",
                        help="where the data (data/), the models (models/), the server's log (server.log) "
                        "and its port file (server.port) go (default: %(default)s)")
    parser.add_argument("--users", type=bounded(int, 2), default=3000, help="synthetic users (default: %(default)s)")
    parser.add_argument("--sellers", type=bounded(int, 1), default=300, help="synthetic sellers, at most --users (default: %(default)s)")
    parser.add_argument("--items", type=bounded(int, 1), default=8000, help="synthetic items (default: %(default)s)")
    parser.add_argument("--seed", type=bounded(int, 0), default=7, help="generator seed (default: %(default)s)")
    parser.add_argument("--http-port", type=bounded(int, 0, 65535), default=0,
                        help="also serve the feed explorer on this port and keep the server running until Ctrl-C or SIGTERM (default: off)")
    args = parser.parse_args(argv)
    if args.sellers > args.users:  # checked here, not after the generator's step
        parser.error(f"--sellers must be at most --users ({args.users}), got {args.sellers}")
    # SIGTERM (a process manager, `timeout`) ends the demo as Ctrl-C does: through the
    # finally below, which stops the server (it was left running).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    workdir = Path(args.workdir)
    data_dir, models_dir, port_file, log_file = workdir / "data", workdir / "models", workdir / "server.port", workdir / "server.log"
    now = int(time.time())
    run_step("Generate a synthetic social-commerce dataset", [
        "-m", "training", "generate", "--out", str(data_dir), "--users", str(args.users),
        "--sellers", str(args.sellers), "--items", str(args.items), "--seed", str(args.seed), "--end-time", str(now),
    ])
    run_step("Train embeddings, build the index, evaluate and publish", [
        "-m", "training", "train", "--data", str(data_dir), "--out", str(models_dir),
    ])
    port_file.unlink(missing_ok=True)
    server_argv = ["-m", "serving", "--data", str(data_dir), "--models", str(models_dir), "--port", "0", "--port-file", str(port_file)]
    if args.http_port:
        server_argv += ["--http-port", str(args.http_port)]
    # The server's log (its warnings, then a line per call) goes to a file, so that the
    # feeds printed below stay readable.
    print(f"\n==> Start the gRPC server (its log: {log_file})\n$ python {' '.join(server_argv)}", flush=True)
    env = dict(os.environ, FEEDRANK_TOKEN_SECRET=os.environ.get("FEEDRANK_TOKEN_SECRET", "demo-secret-not-for-production"))
    with open(log_file, "wb") as log:
        server = subprocess.Popen([sys.executable, *server_argv], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        target = wait_until_serving(port_file, server, log_file)
        user, friend, seller = pick_sample_user(data_dir)
        with grpc.insecure_channel(target) as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            print(f"\n==> GetFeed for {user} (2 pages of 8)\n")
            print(format_feed(user, fetch_pages(stub, user, 8, 2, timeout=5)))
            print(
                f"\n==> Ingest: {seller}, a seller {user} follows, lists 'demo-new-listing'; "
                f"{user}'s friend {friend} likes 'demo-gift' from a new shop and shares 'demo-shared' with {user}\n"
            )
            stub.Ingest(feed_pb2.IngestRequest(events=[
                feed_pb2.Event(event_id="demo-1", item_upsert=feed_pb2.ItemUpsert(
                    item_id="demo-new-listing", seller_id=seller, stock=3, title="Linen apron", price=24.0, currency="EUR",
                    ship_days=1, image_url="https://img.example.com/items/demo-new-listing.jpg", category="home")),
                feed_pb2.Event(event_id="demo-2", item_upsert=feed_pb2.ItemUpsert(
                    item_id="demo-gift", seller_id="demo-shop", stock=3, title="Ceramic vase", price=39.5, currency="EUR",
                    ship_days=3, image_url="https://img.example.com/items/demo-gift.jpg", category="home")),
                feed_pb2.Event(event_id="demo-3", like=feed_pb2.UserItem(user_id=friend, item_id="demo-gift")),
                feed_pb2.Event(event_id="demo-4", item_upsert=feed_pb2.ItemUpsert(
                    item_id="demo-shared", seller_id="demo-shop", stock=5, title="Wool throw", price=59.0, currency="EUR",
                    ship_days=2, image_url="https://img.example.com/items/demo-shared.jpg", category="home")),
                feed_pb2.Event(event_id="demo-5", share=feed_pb2.Share(user_id=friend, item_id="demo-shared", friend_id=user)),
            ]), timeout=5)
            print(format_feed(user, fetch_pages(stub, user, 8, 1, timeout=5)))
            ranks = find_ranks(stub, user, {"demo-new-listing", "demo-gift", "demo-shared"})
            for item_id in ("demo-new-listing", "demo-gift", "demo-shared"):
                where = f"at rank {ranks[item_id]}" if item_id in ranks else "not in the first 100 items"
                print(f"{item_id}: {where} of the very next feed")
            print(f"\n==> Ingest: {seller} goes on vacation until further notice\n")
            stub.Ingest(feed_pb2.IngestRequest(events=[
                feed_pb2.Event(event_id="demo-6", seller_vacation=feed_pb2.SellerVacation(seller_id=seller)),
            ]), timeout=5)
            away = find_ranks(stub, user, {"demo-new-listing"})
            print("demo-new-listing: " + (f"still at rank {away['demo-new-listing']}" if away else "gone from the feed while its seller is away"))
        if args.http_port:
            print(f"\n==> Feed explorer: http://127.0.0.1:{args.http_port}/?user={user}  (Ctrl-C stops the server; its log: {log_file})", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        print(f"\n==> Server stopped (exit code {code})")
