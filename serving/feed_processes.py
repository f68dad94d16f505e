"""GetFeeds built in child processes, so one connection can keep every core busy.

With ``--workers`` the kernel hands whole connections to processes (SO_REUSEPORT): a
client with one channel, as most gRPC clients and load tools have (ghz's default), reaches
one process and its one GIL, and got half the GetFeeds per second of twelve channels on
2 cores (benchmarks/README.md, "one connection"). With ``--feed-processes N`` one server
process answers every connection and each GetFeed is built by whichever of N child
processes is free; everything else (health, Ingest, metrics, the access log) stays in
the server process. Each child opens its own store connection and loads the model, and
watches for new models as the server does. It needs a networked store: a memory store
would be a copy per process, blind to the events the others ingest.

A child answers with the serialized response or the refusal it mapped its error to
(``refusal_of``, which logs outages and bugs in the child), and the candidates and
removals the feed counted, which the server adds to its metrics. A child that dies fails
the calls it held with UNAVAILABLE (a retry is safe: a GetFeed changes nothing), and the
pool is replaced.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import grpc

from protos.feed.v1 import feed_pb2
from serving import logs
from serving.config import ServerConfig
from serving.feed_service import FeedService
from serving.native_threads import limit_native_threads
from serving.service_setup import open_service, start_model_watcher
from serving.servicer import (
    RETRY_DELAY_SECONDS,
    Refusal,
    Refused,
    feed_page,
    page_response,
    refusal_of,
)

log = logging.getLogger("feedrank.serving")

READY_TIMEOUT_SECONDS = 600.0
"""How long the server waits for its feed processes to load the model and reach the store."""
PARENT_CHECK_SECONDS = 1.0
PROCESS_LOST = Refusal(grpc.StatusCode.UNAVAILABLE, "a feed process exited; retry", retry_after=RETRY_DELAY_SECONDS)


# -- in the child --------------------------------------------------------------------

_service: FeedService | None = None


def _start_child(config: ServerConfig) -> None:
    """Initializer of a child: the server's own service, built as the server builds it."""
    global _service
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops the children
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    logs.configure(config.log_format, config.log_level)
    logs.set_worker(config.worker_index)
    limit_native_threads()
    service, arms_signature = open_service(config)
    gc.freeze()  # as the server does: the model is long-lived objects the cyclic GC need not walk
    if config.reload_seconds > 0:
        start_model_watcher(service, config, arms_signature)
    _service = service


def _exit_with_parent(parent: int, every_seconds: float = PARENT_CHECK_SECONDS) -> None:
    """Exit once the server process is gone. A server killed outright (SIGKILL, the OOM
    killer) cannot stop its children, and they would wait for work forever: the pool's
    queue has writers in every child, so its pipe never closes."""
    while os.getppid() == parent:
        time.sleep(every_seconds)
    os._exit(0)


def _ready() -> int:
    time.sleep(0.05)  # long enough for the server's other readiness tasks to reach the other children
    return os.getpid()


def _build_feed(request_bytes: bytes, now: float, request_id: str | None) -> tuple[bytes | None, Any, dict, dict]:
    """(response, None, gathered, removed), or (None, refusal, {}, {}) when the feed failed."""
    logs.enter_call(request_id)
    try:
        page = feed_page(_service, feed_pb2.GetFeedRequest.FromString(request_bytes), now)
    except Exception as error:  # noqa: BLE001 (refusal_of logs a bug with its traceback, here in the child)
        return None, refusal_of(error, "GetFeed"), {}, {}
    return page_response(page).SerializeToString(), None, dict(page.gathered_by_source), dict(page.removed_by_filter)


# -- in the server -------------------------------------------------------------------


class FeedProcesses:
    """``processes`` children that build GetFeeds for this server (module docstring)."""

    def __init__(self, config: ServerConfig, processes: int) -> None:
        if config.store_url == "memory":
            raise ValueError("feed processes need a shared store (redis://...): each would hold its own memory store "
                             "and miss the events ingested by the server")
        self.config = config
        self.processes = processes
        self._context = multiprocessing.get_context("spawn")  # gRPC's threads do not survive a fork
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self.started_pids: list[int] = []  # the children start() waited for
        self._closed = False

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=self._context, initializer=_start_child, initargs=(self.config,))

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> list[int]:
        """Start every child and wait until each has its model and store; their pids.

        A child that cannot start (a store it cannot reach, a model it cannot load) raises
        here, with the child's own error logged by it.
        """
        pool, pids = self._pool, set()
        deadline = time.monotonic() + timeout
        # The pool starts a process for each task that finds none idle; a child answers once
        # its initializer is done. Ask until every child has answered.
        while len(pids) < self.processes:
            waiting = [pool.submit(_ready) for _ in range(self.processes - len(pids))]
            try:
                pids.update(future.result(max(deadline - time.monotonic(), 0.0)) for future in waiting)
            except BrokenProcessPool:
                raise RuntimeError("a feed process failed to start (--feed-processes): see its error above") from None
            except TimeoutError:
                raise RuntimeError(f"the feed processes were not ready after {timeout:.0f} s (--feed-processes)") from None
        self.started_pids = sorted(pids)
        return self.started_pids

    async def get_feed_response(self, service: FeedService, request: feed_pb2.GetFeedRequest, now: float) -> feed_pb2.GetFeedResponse:
        """``servicer.get_feed_response``, built by a child; its refusal raised as Refused."""
        pool = self._pool
        try:
            future = pool.submit(_build_feed, request.SerializeToString(), now, logs.current_request_id())
            payload, refusal, gathered, removed = await asyncio.wrap_future(future)
        except RuntimeError as error:  # BrokenProcessPool is one; so is submitting to a pool another call replaced
            if not isinstance(error, BrokenProcessPool) and "after shutdown" not in str(error):
                raise
            self._replace(pool)
            raise Refused(PROCESS_LOST) from None
        if refusal is not None:
            raise Refused(refusal)
        service.metrics.observe_feed(gathered, removed)
        return feed_pb2.GetFeedResponse.FromString(payload)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken or self._closed:
                return  # another call replaced it already, or the server is stopping
            log.error("a feed process exited; starting %d new ones", self.processes)
            self._pool = self._new_pool()
        broken.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

