"""GetFeeds built in child processes, so one connection can keep every core busy.

With ``--workers`` the kernel hands whole connections to processes (SO_REUSEPORT): a
client with one channel, as most gRPC clients and load tools have (ghz's default), reaches
one process and its one GIL, and got half the GetFeeds per second of twelve channels on
2 cores (benchmarks/README.md, "one connection"). With ``--feed-processes N`` one server
process answers every connection and each GetFeed is built by whichever of N child
processes is free; everything else (health, Ingest, metrics, the access log) stays in
the server process. Each child opens its own store connection and loads the model, and
watches for new models as the server does.

With the memory store each child holds a copy of the server's store, which stays the one
that Ingest writes to (and logs, with a state directory). A child loads its models, then
starts from the store's pickled state, and every batch applied after that state was taken goes down its pipe
ahead of the next feed it builds (and at once while it is idle): a feed asked for after
an Ingest was acknowledged sees its events, in every child. Taking that state holds the
store's lock (0.7 s for 20k users and 50k items, 14 s for 1M: use Redis at that scale),
so the children start behind the server's load and a child that replaces a dead one
pauses Ingest as long (a child that cannot load its models fails before: no pause). Events are written to a child only while it is idle, from the
event loop: a child that is still applying a large batch holds up the loop until its
pipe has room again (a batch is at most --max-message-bytes).

Each child has a pipe of its own to the server's event loop, and builds one feed at a
time. A call goes to the child that has been idle for the shortest time; when none is
idle, to the child longest at its call, as the next it builds (``CALLS_PER_CHILD``),
unless events wait for that child; else it waits in one queue in the server. A child
whose store failed its last feed (UNAVAILABLE) takes no call while another's last feed
did not fail, but a probe a second (``FAILING_PROBE_SECONDS``). A call
whose caller went away (cancelled, or past its deadline) is dropped from that queue, and
one that a busy child gets to after its deadline is refused unbuilt. A child
answers with the serialized response or the refusal it mapped its error to
(``refusal_of``, which logs outages and bugs in the child), and the candidates and
removals the feed counted, which the server adds to its metrics. A child that dies fails
the calls it held with UNAVAILABLE (a retry is safe: a GetFeed changes nothing), and a
new child takes its place. A child exits when its pipe closes, so also when the server is
killed outright.

Direct pipes rather than a ``ProcessPoolExecutor``: its queue feeder and result threads
cost the server 100-175 µs of CPU and 230-500 µs of latency per call, against 20-34 µs
and 54-127 µs (an empty task, concurrency 1, benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import multiprocessing
import pickle
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import grpc

from protos.feed.v1 import feed_pb2
from serving import logs
from serving.config import ServerConfig
from serving.feed_service import FeedService
from serving.metrics import FeedMetrics
from serving.native_threads import limit_native_threads
from serving.store_url import redacted
from serving.service_setup import load_models, open_service, start_model_watcher, warm_store
from serving.servicer import EXPIRED, RETRY_DELAY_SECONDS, Refusal, Refused, feed_page, get_feed_response, page_response, refusal_of

log = logging.getLogger("feedrank.serving")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals that drain the server (serving/server.py's StopSignals); its children ignore them."""
CALLS_PER_CHILD = 2
"""GetFeeds a child may hold at once: the one it builds, and the next, written while it builds
the first when no child is idle, so that it starts the next at once, its caches warm,
without waiting for the server's loop (benchmarks/README.md: at 16 calls in flight on 2
cores, in turns, 3-7 % more GetFeeds per second on the memory store and 9 % on Redis;
three per child lost 3 %)."""
FAILING_PROBE_SECONDS = 1.0
"""A child whose last feed its store failed (UNAVAILABLE) gets no call while another child's
last feed did not fail, but one every this many seconds, to see whether it works again. A
child that fails fast is idle soonest: with the idle child taking the next call it drew most
calls (574 of 761 on a Redis Cluster whose node it had started from was gone, while the
other child served them). INTERNAL is not counted: a bug that one request meets would take
a child out for every other."""
STUCK_SECONDS = 30.0
"""A child that holds a call this long without answering is killed, and another takes its
place: a feed takes milliseconds, and a child stopped (SIGSTOP), deadlocked or swapped out
held its calls until each client's deadline, and for ever those of a client without one.
Its calls fail UNAVAILABLE, which a client may retry, as when a child dies."""
READY_TIMEOUT_SECONDS = 600.0
"""How long the server waits for a feed process to load the model and reach the store."""
RESTART_DELAY_SECONDS = 5.0
MAX_RESTART_DELAY_SECONDS = 300.0
"""How long the server waits before trying again to start a feed process that failed to
start: 5 s, doubled at each failure in a row up to 300 s. What fails stays failed until
an operator acts (a model or arms file broken, a pinned version retired), and each try
costs a Python start, about a second of CPU."""
PROCESS_LOST = Refusal(grpc.StatusCode.UNAVAILABLE, "a feed process exited; retry", retry_after=RETRY_DELAY_SECONDS)
_LOADED = b"loaded"  # the child has its models and waits for the store's state
_READY = b"ready"
_FAILED = b"failed:"  # then why, in one line
# The first byte of each message to a child: what follows.
_STATE, _EVENTS, _FEED = b"S", b"E", b"F"


# -- in the child --------------------------------------------------------------------


def _child_main(config: ServerConfig, pipe: Connection) -> None:
    """A feed process: the server's own service, built as the server builds it, then one
    feed per request on ``pipe`` until the pipe closes."""
    # Ctrl-C, a SIGTERM sent to the whole process group (timeout(1), a service manager) and
    # a SIGHUP reach the server too, which drains its calls, then closes the pipes: the children's cue.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    logs.configure(config.log_format, config.log_level)
    logs.report_fatal_signals()
    logs.set_worker(config.worker_index)
    logs.set_feed_process()
    logging.getLogger(logs.MODEL_LOGGER).setLevel(logging.ERROR)  # the server logs each swap and drift once for all
    limit_native_threads()
    try:
        # The models first: a child that cannot load them (a pinned version deleted since
        # the server started) fails before the server takes its store's state for it,
        # which holds up Ingest.
        models = load_models(config)
        pipe.send_bytes(_LOADED)
        store = pickle.loads(_body(pipe.recv_bytes(), _STATE)) if config.store_url == "memory" else None
        service, arms_signature = open_service(config, store, models=models)
        warm_store(service.store)
    except (EOFError, OSError) as error:
        _report_failure(pipe, error)  # the server went away before sending the store, or a file it reads is missing
        raise SystemExit(1) from None
    except Exception as error:  # noqa: BLE001 (the server reports it in one line; the traceback is for --log-level debug)
        log.debug("a feed process could not start", exc_info=error)
        _report_failure(pipe, error)
        raise SystemExit(1) from None
    gc.freeze()  # as the server does: the model is long-lived objects the cyclic GC need not walk
    if config.reload_seconds > 0:
        start_model_watcher(service, config, arms_signature)
    pipe.send_bytes(_READY)
    while True:
        try:
            message = pipe.recv_bytes()
        except (EOFError, OSError):  # the server closed the pipe, or is gone
            return
        if message[:1] == _EVENTS:
            service.store.replay_applied(pickle.loads(_body(message, _EVENTS)))
            continue
        pipe.send_bytes(pickle.dumps(_build_feed(service, *pickle.loads(_body(message, _FEED))), pickle.HIGHEST_PROTOCOL))


def _report_failure(pipe: Connection, error: BaseException) -> None:
    reason = " ".join(str(error).split()) or type(error).__name__
    try:
        pipe.send_bytes(_FAILED + reason.encode())
    except OSError:  # the server is gone
        pass


def _body(message: bytes, kind: bytes) -> memoryview:
    if message[:1] != kind:
        raise ValueError(f"feed process: expected a {kind!r} message, got {message[:1]!r}")
    return memoryview(message)[1:]


def _build_feed(service: FeedService, request_bytes: bytes, now: float, deadline: float | None,
                request_id: str | None) -> tuple[bytes | None, Any, dict, dict]:
    """(response, None, gathered, removed), or (None, refusal, {}, {}) when the feed failed
    or its ``deadline`` (``time.time()``) passed before the child got to it."""
    if deadline is not None and time.time() >= deadline:  # it waited behind another call, and nobody waits for it now
        return None, EXPIRED, {}, {}
    logs.enter_call(request_id)
    try:
        page = feed_page(service, feed_pb2.GetFeedRequest.FromString(request_bytes), now)
    except Exception as error:  # noqa: BLE001 (refusal_of logs a bug with its traceback, here in the child)
        return None, refusal_of(error, "GetFeed"), {}, {}
    return page_response(page).SerializeToString(), None, dict(page.gathered_by_source), dict(page.removed_by_filter)


# -- in the server -------------------------------------------------------------------


@dataclass(eq=False)
class _Child:
    process: Any  # multiprocessing's SpawnProcess
    pipe: Connection
    calls: collections.deque[asyncio.Future] = field(default_factory=collections.deque)  # sent to it, oldest first
    busy_since: float = 0.0  # loop time at which it started the oldest of its calls
    backlog: collections.deque[bytes] = field(default_factory=collections.deque)  # events not sent yet (memory store)
    failed_at: float = 0.0  # loop time of its last feed its store failed (or of its last probe since); 0: none


class FeedProcessError(RuntimeError):
    """A feed process could not start (one line, for the operator)."""


class FeedProcesses:
    """``processes`` children that build GetFeeds for this server (module docstring).

    ``start`` runs on any thread; the calls, the replies and the replacement of a dead
    child are handled on ``loop``, the server's event loop, without locks.
    """

    def __init__(self, config: ServerConfig, processes: int, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.processes = processes
        self.loop = loop
        self._context = multiprocessing.get_context("spawn")  # gRPC's threads do not survive a fork
        self._children: list[_Child] = []
        self._idle: collections.deque[_Child] = collections.deque()
        self._queued: collections.deque[tuple[bytes, asyncio.Future]] = collections.deque()
        self._closed = threading.Event()
        self._primary: Any = None  # the server's memory store, which the children copy
        self._followers: tuple[_Child, ...] = ()  # children that get its applied events (replaced whole: read unlocked)
        self._followers_lock = threading.Lock()  # for replacing them: a child starts to follow while another is dropped
        self._exits: Any = None  # the metrics' counter of children that died
        self._orphaned = False  # every child died: the server builds the feeds until one is back

    @property
    def pids(self) -> list[int]:
        return sorted(child.process.pid for child in self._children)

    def start(self, store: Any = None, metrics: FeedMetrics | None = None, timeout: float = READY_TIMEOUT_SECONDS) -> list[int]:
        """Start every child and wait until each has its model and store; their pids.
        ``store``: the server's own, which the children copy when it is the memory store;
        ``metrics``: where to report the children alive, the calls waiting and the exits.

        A child that cannot start (a store that refuses it, a model it cannot load) raises
        FeedProcessError with its reason as soon as it exits; anything raised here (a
        signal's exception too) stops the children first.
        """
        if self.config.store_url == "memory":
            if store is None:
                raise ValueError("feed processes on the memory store copy the server's store: pass it to start")
            self._primary = store
            store.publish_applied(self._publish)
        if metrics is not None:
            metrics.track_feed_processes(lambda: len(self._children), lambda: len(self._queued))
            self._exits = metrics.feed_process_exits
        children: list[_Child] = []
        try:
            for _ in range(self.processes):
                children.append(self._spawn())
            self._wait_ready(children, timeout, _LOADED)
            self._send_state(children)
            self._wait_ready(children, timeout)
        except BaseException:
            for child in children:
                self._unfollow(child)
                self._stop(child, timeout=0)  # not ready: nothing to finish
            raise
        asyncio.run_coroutine_threadsafe(self._adopt_all(children), self.loop).result()
        return self.pids

    def _spawn(self) -> _Child:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=_child_main, args=(self.config, theirs), name="feed-process", daemon=True)
        process.start()
        theirs.close()  # the child holds its end alone: the pipe closes when either side goes
        return _Child(process, ours)

    def _send_state(self, children: list[_Child]) -> None:
        """With the memory store: the store's state to each child, which from then on
        follows every batch applied."""
        if self._primary is None:
            return
        state = _STATE + self._primary.pickled_state(then=lambda: self._follow(children))
        for child in children:
            try:
                child.pipe.send_bytes(state)
            except OSError:
                raise FeedProcessError(self._failure(child, "exited before it had the store")) from None

    def _follow(self, children: list[_Child]) -> None:
        with self._followers_lock:
            self._followers = (*self._followers, *children)

    def _unfollow(self, child: _Child) -> None:
        with self._followers_lock:
            self._followers = tuple(follower for follower in self._followers if follower is not child)

    def _publish(self, events: list) -> None:
        """Under the memory store's lock, on the thread that applied ``events``: queue them
        for every child, in order, and have the loop send them."""
        followers = self._followers
        if not followers:
            return
        message = _EVENTS + pickle.dumps(events, pickle.HIGHEST_PROTOCOL)
        for child in followers:
            child.backlog.append(message)
        try:
            self.loop.call_soon_threadsafe(self._dispatch)
        except RuntimeError:  # the loop is closed: the server is stopping
            pass

    def _wait_ready(self, children: list[_Child], timeout: float, ready: bytes = _READY) -> None:
        """Until every child has sent ``ready``; FeedProcessError as soon as one fails or exits."""
        deadline = time.monotonic() + timeout
        waiting = {child.pipe: child for child in children}
        while waiting:
            answered = wait(list(waiting), max(deadline - time.monotonic(), 0.0))
            if not answered:
                child = next(iter(waiting.values()))
                raise FeedProcessError(f"a feed process (pid {child.process.pid}) was not ready within {timeout:.0f} s (--feed-processes)")
            for pipe in answered:
                child = waiting.pop(pipe)
                try:
                    message = pipe.recv_bytes()
                except (EOFError, OSError):
                    raise FeedProcessError(self._failure(child, "exited while starting")) from None
                if message != ready:
                    raise FeedProcessError(self._failure(child, message.removeprefix(_FAILED).decode(errors="replace")))

    def _failure(self, child: _Child, reason: str) -> str:
        """The one line for a child that could not start, with its own reason when it sent one."""
        with contextlib.suppress(EOFError, OSError):
            if child.pipe.poll():
                message = child.pipe.recv_bytes()
                if message.startswith(_FAILED):
                    reason = message.removeprefix(_FAILED).decode(errors="replace")
        store = f" (--store {redacted(self.config.store_url)})" if self.config.store_url != "memory" else ""
        return f"a feed process (pid {child.process.pid}) could not start: {reason}{store}"

    async def _adopt_all(self, children: list[_Child]) -> None:
        for child in children:
            self._adopt(child)
        self._watch_for_stuck()

    def _watch_for_stuck(self) -> None:
        """Every quarter of STUCK_SECONDS, on the loop: kill a child whose oldest call is older
        than STUCK_SECONDS (its pipe's end then fails its calls and starts another, ``_lost``)."""
        if self._closed.is_set():
            return
        now = self.loop.time()
        for child in self._children:
            if child.calls and now - child.busy_since > STUCK_SECONDS and child.process.is_alive():
                log.error("a feed process (pid %d) has held a call for %.0f s without answering (stopped, or stuck): "
                          "killing it; another takes its place", child.process.pid, now - child.busy_since)
                child.process.kill()
        self.loop.call_later(STUCK_SECONDS / 4, self._watch_for_stuck)

    def _adopt(self, child: _Child) -> None:
        if self._closed.is_set():
            self._stop(child)
            return
        if self._orphaned:
            self._orphaned = False
            log.info("a feed process is alive again (pid %d): it builds the GetFeeds", child.process.pid)
        self._children.append(child)
        self.loop.add_reader(child.pipe.fileno(), self._on_reply, child)
        self._idle.append(child)
        self._dispatch()

    async def get_feed_response(self, service: FeedService, request: feed_pb2.GetFeedRequest, now: float,
                                deadline: float | None = None) -> feed_pb2.GetFeedResponse:
        """``servicer.get_feed_response``, built by a child; its refusal raised as Refused.
        A call that waited in the server is dropped if its caller went away meanwhile; one
        written to a busy child, if its ``deadline`` (``time.time()``, None: none) passed
        before the child got to it (EXPIRED).

        While no child is alive (one that cannot start again: a model or arms file broken
        on disk since the server loaded its own, a pinned version deleted), the server
        builds the feed itself, on its event loop, from the same service: slower, not down.
        """
        if not self._children:
            return get_feed_response(service, request, now)
        answer = self.loop.create_future()
        work = (request.SerializeToString(), now, deadline, logs.current_request_id())
        self._queued.append((_FEED + pickle.dumps(work, pickle.HIGHEST_PROTOCOL), answer))
        self._dispatch()
        payload, refusal, gathered, removed = await answer
        if refusal is not None:
            raise Refused(refusal)
        service.metrics.observe_feed(gathered, removed)
        return feed_pb2.GetFeedResponse.FromString(payload)

    def _dispatch(self) -> None:
        """Hand the waiting calls to idle children; first, any events a child has not had.

        Events are written only to an idle child: it is reading its pipe, so a write cannot
        fill the pipe of a child that is itself waiting to write its reply. A busy child is
        written at most one more call (a few hundred bytes, far below a pipe's capacity),
        and only when it has no events waiting: its call must see every event applied
        before the call arrived."""
        if self._followers:  # only the memory store's children have events to send
            for child in list(self._idle):
                self._send_backlog(child)
        while self._queued:
            work, answer = self._queued[0]
            if answer.done():  # its caller went away while it waited
                self._queued.popleft()
                continue
            child = self._next_child()
            if child is None:
                return
            self._queued.popleft()
            if not child.calls:
                child.busy_since = self.loop.time()
            child.calls.append(answer)
            self._send(child, work)

    def _next_child(self) -> _Child | None:
        """The child for the next call: the idle one idle for the shortest time, else the busy
        one likeliest to finish first that may take another call now; None if none may.
        While another child's last feed did not fail, a child whose last feed failed is left
        out but for a probe every FAILING_PROBE_SECONDS."""
        usable = self._usable()
        child = next((child for child in self._idle if usable(child)), None)
        if child is not None:
            self._idle.remove(child)
        else:
            candidates = [child for child in self._children
                          if len(child.calls) < CALLS_PER_CHILD and not child.backlog and usable(child)]
            child = min(candidates, key=lambda child: child.busy_since, default=None)
        if child is not None and child.failed_at:
            child.failed_at = self.loop.time()  # a probe: the next one a period from now
        return child

    def _usable(self) -> Callable[[_Child], bool]:
        if all(child.failed_at for child in self._children):  # the store is down for every child: each answers
            return lambda child: True
        probe_before = self.loop.time() - FAILING_PROBE_SECONDS
        return lambda child: child.failed_at <= probe_before

    def _send_backlog(self, child: _Child) -> None:
        backlog = child.backlog
        while backlog and self._send(child, backlog.popleft()):
            pass

    def _send(self, child: _Child, message: bytes) -> bool:
        try:
            child.pipe.send_bytes(message)
        except OSError:
            self._lost(child)
            return False
        return True

    def _on_reply(self, child: _Child) -> None:
        try:
            reply = pickle.loads(child.pipe.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError):
            self._lost(child)
            return
        refusal = reply[1]
        child.failed_at = self.loop.time() if refusal is not None and refusal.code == grpc.StatusCode.UNAVAILABLE else 0.0
        answer = child.calls.popleft() if child.calls else None
        if child.calls:
            child.busy_since = self.loop.time()
        else:
            # The child idle for the shortest time takes the next call: its caches are warm
            # and its core awake. On the memory store at 200 GetFeeds per second that cost
            # 8-13 % less CPU per call than the child idle longest (benchmarks/README.md).
            self._idle.appendleft(child)
        if answer is not None and not answer.done():
            answer.set_result(reply)
        self._dispatch()

    def _lost(self, child: _Child) -> None:
        """A child died: fail its call, and start another in its place."""
        if child not in self._children:  # seen already (a failed write, then its reader's EOF)
            return
        self._unfollow(child)
        if self._exits is not None:
            self._exits.inc()
        self.loop.remove_reader(child.pipe.fileno())
        self._children.remove(child)
        if child in self._idle:
            self._idle.remove(child)
        for call in child.calls:
            if not call.done():
                call.set_exception(Refused(PROCESS_LOST))
        child.pipe.close()
        if not self._children:  # nobody left to build the calls that wait: they retry, and new ones are built here
            self._orphaned = True
            log.warning("no feed process is alive: the server process builds the GetFeeds until one is back")
            while self._queued:
                _, answer = self._queued.popleft()
                if not answer.done():
                    answer.set_exception(Refused(PROCESS_LOST))
        else:
            # The calls that wait may go to a child left out so far (its store failed while
            # the dead one's worked). Soon, not now: this may run inside _dispatch itself.
            self.loop.call_soon(self._dispatch)
        if not self._closed.is_set():
            threading.Thread(target=self._replace, args=(child,), name="feed-process-start", daemon=True).start()

    def _replace(self, lost: _Child) -> None:
        """On a thread of its own: reap ``lost``, then start a child in its place (trying until one starts)."""
        self._stop(lost)
        log.error("a feed process (pid %d) exited with code %s; starting another", lost.process.pid, lost.process.exitcode)
        started = time.monotonic()
        failures = 0
        while not self._closed.is_set():
            child = self._spawn()
            try:
                self._wait_ready([child], READY_TIMEOUT_SECONDS, _LOADED)
                self._send_state([child])
                self._wait_ready([child], READY_TIMEOUT_SECONDS)
            except FeedProcessError as error:
                self._unfollow(child)
                self._stop(child)
                delay = min(RESTART_DELAY_SECONDS * 2**failures, MAX_RESTART_DELAY_SECONDS)
                failures += 1
                log.error("%s; trying again in %.0f s", error, delay)
                self._closed.wait(delay)
                continue
            try:
                self.loop.call_soon_threadsafe(self._adopt, child)
            except RuntimeError:  # the server stopped meanwhile, and its loop is closed
                self._stop(child)
                return
            log.info("a feed process (pid %d) took the place of pid %d in %.1f s",
                     child.process.pid, lost.process.pid, time.monotonic() - started)
            return

    @staticmethod
    def _stop(child: _Child, timeout: float = 5.0) -> None:
        child.pipe.close()  # the child's cue to exit
        if timeout:
            child.process.join(timeout)
        if child.process.is_alive():
            child.process.kill()
            child.process.join()

    def shutdown(self) -> None:
        """Stop every child (call once the server takes no more calls)."""
        self._closed.set()
        with self._followers_lock:
            self._followers = ()
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._detach_all(), self.loop).result()
        for child in self._children:  # every child's cue at once: they exit side by side, not one after the other
            child.pipe.close()
        for child in self._children:
            self._stop(child)
        self._children.clear()

    async def _detach_all(self) -> None:
        for child in self._children:
            self.loop.remove_reader(child.pipe.fileno())
