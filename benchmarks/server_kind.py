"""A bare GetFeed server of each kind, to measure the gRPC stack under the feed with loadgen.

  python -m benchmarks.server_kind --models DIR --data DIR --port-file F --kind sync|aio-inline|aio-pool [--threads 2]
  python -m benchmarks.loadgen --target 127.0.0.1:$(cat F) --data DIR --duration 15 --concurrency 8

FeedService and the health check, with no interceptors (auth, access log, limits) and no
HTTP side, over a memory store of DATA: the same FeedService and response building as
`python -m serving` (its FeedServicer for the aio kinds), so the difference between kinds
is the gRPC server's own.
``sync`` is grpc.server with a ``--threads`` pool (what `python -m serving` ran before
it moved to grpc.aio); ``aio-inline`` builds each feed on the asyncio loop (what it runs
with the memory store); ``aio-pool`` awaits it in a ``--threads`` executor (with Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import os
import signal
import sys
import time

import grpc
from grpc import aio
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health, health_pb2_grpc

from protos.feed.v1 import feed_pb2_grpc
from ranking.feed import FeedSettings
from serving.feed_service import FeedService
from serving.page_token import PageTokenCodec
from serving.native_threads import limit_native_threads, one_faiss_thread
from serving.servicer import FeedServicer, add_feed_service, get_feed_response
from stores.memory import MemoryStore
from training.artifact import load_current
from training.dataset import load_dataset

KINDS = ("sync", "aio-inline", "aio-pool")


def build_service(models: str, data: str) -> FeedService:
    limit_native_threads()
    service = FeedService(MemoryStore.from_dataset(load_dataset(data)), load_current(models), PageTokenCodec(b"k" * 32), FeedSettings())
    gc.freeze()  # as the server does after loading
    return service


def serve_sync(service: FeedService, threads: int, port_file: str) -> None:
    class Feed(feed_pb2_grpc.FeedServiceServicer):
        def GetFeed(self, request, context):
            return get_feed_response(service, request, time.time())

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(threads, initializer=one_faiss_thread))
    feed_pb2_grpc.add_FeedServiceServicer_to_server(Feed(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    _announce(server.add_insecure_port("127.0.0.1:0"), port_file, server.start)
    server.wait_for_termination()


async def serve_aio(service: FeedService, pool: concurrent.futures.Executor | None, port_file: str) -> None:
    server = aio.server()
    add_feed_service(FeedServicer(service, feed_pool=pool, ingest_pool=pool), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_async.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _announce(port, port_file, lambda: None)
    await server.wait_for_termination()


def _announce(port: int, port_file: str, start) -> None:
    start()
    with open(port_file, "w") as handle:
        handle.write(str(port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_kind", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="models directory (CURRENT is served)")
    parser.add_argument("--data", required=True, help="dataset directory for the memory store")
    parser.add_argument("--port-file", required=True, help="written with the port once serving")
    parser.add_argument("--kind", choices=KINDS, default="sync", help="server kind (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="pool threads of sync and aio-pool (default: %(default)s)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as Ctrl-C: the port file goes with the server
    service = build_service(args.models, args.data)
    try:
        if args.kind == "sync":
            serve_sync(service, args.threads, args.port_file)
        else:
            pool = concurrent.futures.ThreadPoolExecutor(args.threads, initializer=one_faiss_thread) if args.kind == "aio-pool" else None
            asyncio.run(serve_aio(service, pool, args.port_file))
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(args.port_file)


if __name__ == "__main__":
    main()
