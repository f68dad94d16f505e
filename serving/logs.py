"""Logging of the server: JSON lines or text, and one access line per RPC.

``configure(format, level)`` sets up the root logger once per process (``--log-format``,
``--log-level``). A JSON line holds ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
``msg``, ``pid``, ``worker``, the record's fields and, inside an RPC, its ``request_id``;
a traceback goes into ``exc``, so every record stays one line.

Access lines (logger ``feedrank.access``, INFO for FeedService calls and unknown methods, DEBUG for health
and reflection) carry ``request_id`` (the client's ``x-request-id`` metadata, else a new
one, also sent back in the trailing metadata), ``method``, ``code``, ``latency_ms``,
``model_version`` (and ``arm``, a GetFeed's A/B arm, when arms are configured), ``worker``,
``pid``, ``peer`` and ``client`` (the bearer token's name; never the token). The lines of
calls refused without a valid token are rate-limited (``TOKENLESS_LINES_PER_SECOND``).
"""

from __future__ import annotations

import asyncio
import contextvars
import faulthandler
import functools
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

try:  # grpc's private module: a grpc that moves it must not stop the server from starting
    from grpc._cython.cygrpc import ExecuteBatchError as _ExecuteBatchError
except ImportError:
    _ExecuteBatchError = None

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
ACCESS_LOGGER = "feedrank.access"
MODEL_LOGGER = "feedrank.serving.models"
"""What is served and why: model and arms swaps, the pools a model is served on. A feed
process logs only its errors here: the server logs the rest once for them all."""
UNKNOWN_METHOD = "unknown"
"""The ``method`` that metrics count calls to methods the server lacks under: their names,
chosen by the client, would make a series each."""
MAX_REQUEST_ID_CHARS = 128
TOKENLESS_REFUSALS = frozenset({"UNAUTHENTICATED", "UNIMPLEMENTED"})
"""The codes of calls refused without a valid token: no or an unknown token, or a method the
server lacks (refused before any token is checked). Anyone who reaches the port can make
them. PERMISSION_DENIED is not among them: it needs a valid token, so its client is one of
ours, named in the line, and each line helps fix its scopes."""
TOKENLESS_LINES_PER_SECOND = 5
"""Access lines written per second for each code of ``TOKENLESS_REFUSALS`` (and lines of each
kind of ``LimitedLines``, such as the HTTP port's failed TLS handshakes); the others are
counted in one summary line per second (and every call in the metrics). One client looping
unauthenticated calls had the server write 3,500 lines (1 MB) a second, burying the lines an
operator needs; five a second still show at once a misconfigured client's peer and request
ids, for about 2 KB of log a second."""
SUMMARY_SECONDS = 1.0
"""How often a summary of the access lines not written is due, while some were not."""
MAX_PEERS_COUNTED = 1000
"""Distinct client hosts a summary counts at most (beyond: "1000+"), so that a flood from
many addresses holds little memory."""
DEADLINE_SLACK_SECONDS = 0.1
"""A call cancelled this close to its deadline was cancelled by the client's deadline: the
server's deadline comes a little later than the client's (the grpc-timeout header is rounded
up, and it took time to arrive), so the client's cancel often arrives first."""

# The RPC being served on this thread: request id, and what the interceptors learned.
_CALL: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("feedrank_call", default=None)
_access_log = logging.getLogger(ACCESS_LOGGER)
_worker = 0
_in_feed_process = False


def set_worker(index: int) -> None:
    """The worker index every record of this process carries (``--workers``: 0..N-1)."""
    global _worker
    _worker = index


def set_feed_process(is_one: bool = True) -> None:
    """Mark every record of this process as a feed process's (``feed_process``: its pid in
    text, true in JSON): each child logs what it meets on its own, such as a model version
    that fails to load, and without the mark N children's lines read as N attempts."""
    global _in_feed_process
    _in_feed_process = is_one


def worker() -> int:
    return _worker


def mark_call(**facts: Any) -> None:
    """Note facts about the RPC being served (``client``, ``rejected``) for its access line."""
    call = _CALL.get()
    if call is not None:
        call.update(facts)


def enter_call(request_id: str | None) -> None:
    """The records of this thread carry ``request_id`` from now on: a feed process builds
    the feed of a call its server received (serving/feed_processes.py)."""
    _CALL.set({"request_id": request_id, "client": None, "rejected": False} if request_id else None)


def current_request_id() -> str | None:
    call = _CALL.get()
    return call["request_id"] if call else None


class _Context(logging.Filter):
    """Adds pid, worker and the current RPC's request id to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = _worker
        record.feed_process = _in_feed_process
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
            "worker": getattr(record, "worker", _worker),
        }
        if getattr(record, "feed_process", False):
            line["feed_process"] = True
        if getattr(record, "request_id", None):
            line["request_id"] = record.request_id
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = dict(getattr(record, "fields", None) or {})
        if getattr(record, "feed_process", False):
            fields.setdefault("feed_process", record.process)
        if getattr(record, "request_id", None) and "request_id" not in fields:
            fields["request_id"] = record.request_id
        if fields:
            extra = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
            head, newline, rest = text.partition("\n")  # keep a traceback below the line
            text = f"{head} {extra}{newline}{rest}"
        return text


_NEEDS_QUOTES = re.compile(r'[\s"=]')


def _text_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


def report_fatal_signals() -> None:
    """Have a process killed by SIGSEGV, SIGBUS, SIGFPE, SIGABRT or SIGILL write its Python
    stacks to stderr, raw: a memory-mapped model file cut short under a server kills it with
    SIGBUS, and it died without a line."""
    faulthandler.enable()


_UNSENT_ANSWER = re.compile(r"ExecuteBatchError raised in core by servicer method \[(?P<method>.*)\]")


class _UnsentAnswers(logging.Filter):
    """grpc.aio logs an ERROR with a traceback ("ExecuteBatchError raised in core by servicer
    method [M]") when it could not send a handler's answer because the call had already ended
    in gRPC's core, its deadline passed (or the client gone), before grpc.aio noticed: with
    deadlines of 2-5 ms, 24 GetFeeds in 53,630. The client has its status, and the access log
    and metrics counted the call, so it is a DEBUG line of ours, with how many so far."""

    def __init__(self) -> None:
        super().__init__()
        self.unsent = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        found = _UNSENT_ANSWER.fullmatch(record.getMessage())
        if not _is_execute_batch_error(error) or not str(error).startswith('Failed "execute_batch"') or not found:
            return True
        self.unsent += 1  # grpc.aio logs on the event loop's one thread
        logging.getLogger("feedrank.serving").debug(
            "%s: answer not sent: the call had already ended (deadline passed or client gone)", found["method"],
            extra={"fields": {"unsent_answers": self.unsent}})
        return False


_unsent_answers = _UnsentAnswers()


def _is_execute_batch_error(error: BaseException | None) -> bool:
    """Whether ``error`` is grpc's ExecuteBatchError: by its class when grpc still has it in
    grpc._cython.cygrpc, else by its class's name."""
    if error is None:
        return False
    if _ExecuteBatchError is not None and isinstance(error, _ExecuteBatchError):
        return True
    return any(cls.__name__ == "ExecuteBatchError" for cls in type(error).__mro__)


def configure(log_format: str = "text", level: str = "info", stream: Any = None) -> logging.Handler:
    """Route every log record of the process to ``stream`` (stderr) in ``log_format``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_Context())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("grpc._cython.cygrpc").addFilter(_unsent_answers)
    logging.captureWarnings(True)
    return handler


def expired(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call's deadline has passed (never, without one)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status the client of a call that gRPC cancelled sees: DEADLINE_EXCEEDED when its
    deadline had (nearly) passed, else CANCELLED (the client cancelled or went away)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining < DEADLINE_SLACK_SECONDS:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class LineBudget:
    """At most ``lines`` log lines per ``every_seconds``, counting the ones it refuses.

    A window begins with the first line admitted after the last window ended: a burst is
    written up to ``lines``, the rest of its window only counted. ``clock`` gives monotonic
    seconds (``time.monotonic``, as it is when the budget is made). Not thread-safe: its
    user holds whatever lock it needs.
    """

    def __init__(self, lines: int = 1, every_seconds: float = 10.0, clock: Callable[[], float] | None = None) -> None:
        self.lines = lines
        self.every_seconds = every_seconds
        self.clock = clock or time.monotonic
        self.window_started = -float("inf")
        self.suppressed = 0
        self.latest_suppressed = 0.0
        self._admitted = 0

    def admit(self) -> bool:
        """Whether a line may be written now; if not, it is counted in ``suppressed``."""
        now = self.clock()
        if now - self.window_started >= self.every_seconds:
            self.window_started, self._admitted = now, 0
        if self._admitted < self.lines:
            self._admitted += 1
            return True
        self.suppressed += 1
        self.latest_suppressed = now
        return False

    def take_suppressed(self) -> int:
        """The lines refused since the last take, and start counting anew."""
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


class _Peers:
    """Who made the calls of one status code whose access lines were not written since the
    last summary: the first peer, and the distinct hosts."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.hosts: set[str] = set()

    def add(self, peer: str) -> None:
        if len(self.hosts) < MAX_PEERS_COUNTED:
            self.hosts.add(_host(peer))

    def count(self) -> int | str:
        return f"{MAX_PEERS_COUNTED}+" if len(self.hosts) >= MAX_PEERS_COUNTED else len(self.hosts)


def _host(peer: str) -> str:
    """``peer`` without its port (``ipv4:10.0.0.7:5123`` → ``ipv4:10.0.0.7``): a client with many
    connections is one host."""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


def peer_name(host: str, port: int | str) -> str:
    """A client's address as gRPC names a peer (``ipv4:10.0.0.7:5123``, ``ipv6:[::1]:5123``), for
    the lines of the HTTP server: their summaries count its hosts as the gRPC ones."""
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class LimitedLines:
    """Log lines that anyone who reaches a port can have written, one per call or connection:
    at most ``TOKENLESS_LINES_PER_SECOND`` a second of each kind are written (``admit``), the
    others counted, in one summary line per kind ``SUMMARY_SECONDS`` after the first not
    written, and by ``report_suppressed()`` at a server's stop. A subclass writes the summary
    (``summarise``).

    Thread-safe (the HTTP server answers on several threads). A summary is written by a
    timer thread: the HTTP threads have no event loop, and left to the next limited line,
    the last second of a flood would be told only when another came, maybe hours later.
    ``clock`` gives monotonic seconds (``time.monotonic`` when the first line of a kind is
    limited).
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._budgets: dict[str, LineBudget] = {}
        self._peers: dict[str, _Peers] = {}  # by kind, of the lines not written since the last summary
        self._summary_due: threading.Timer | None = None

    def admit(self, kind: str, peer: str) -> bool:
        """Whether a line of ``kind`` about ``peer`` is written; if not, it is counted for the next summary."""
        with self._lock:
            budget = self._budgets.get(kind)
            if budget is None:
                budget = self._budgets[kind] = LineBudget(TOKENLESS_LINES_PER_SECOND, 1.0, self.clock)
            if budget.admit():
                return True
            peers = self._peers.get(kind)
            if peers is None:
                peers = self._peers[kind] = _Peers(peer)
            peers.add(peer)
            if self._summary_due is None:
                self._summary_due = threading.Timer(SUMMARY_SECONDS, self.report_suppressed)
                self._summary_due.daemon = True
                self._summary_due.start()
        return False

    def report_suppressed(self) -> None:
        """One summary line per kind of the lines not written since the last."""
        with self._lock:
            if self._summary_due is not None:
                self._summary_due.cancel()
                self._summary_due = None
            by_kind, self._peers = self._peers, {}
            counts = {kind: self._budgets[kind].take_suppressed() for kind in by_kind}
        for kind, peers in by_kind.items():
            self.summarise(kind, counts[kind], peers.first, {"suppressed": counts[kind], "first_peer": peers.first,
                                                             "peers": peers.count(), "worker": _worker, "pid": os.getpid()})

    def summarise(self, kind: str, suppressed: int, first_peer: str, fields: dict[str, Any]) -> None:
        """Write the summary of the ``suppressed`` lines of ``kind`` not written; ``fields``
        (``suppressed``, ``first_peer``, ``peers``: distinct hosts, ``worker``, ``pid``) go on it."""
        raise NotImplementedError


class TokenlessLines(LimitedLines):
    """The access lines of calls refused without a valid token (``codes``: ``TOKENLESS_REFUSALS``
    by default), of gRPC or the HTTP API, limited per code; the lines of other codes are all
    written and take no lock."""

    def __init__(self, clock: Callable[[], float] | None = None, codes: frozenset[str] = TOKENLESS_REFUSALS) -> None:
        super().__init__(clock)
        self.codes = codes
        self.log = logging.getLogger(ACCESS_LOGGER)

    def admit(self, code: str, peer: str) -> bool:
        return code not in self.codes or super().admit(code, peer)

    def summarise(self, code: str, suppressed: int, first_peer: str, fields: dict[str, Any]) -> None:
        self.log.info("%d access lines of %s calls not written (rate-limited), the first from %s",
                      suppressed, code, first_peer, extra={"fields": {"code": code, **fields}})


def request_id_of(metadata: Any) -> str:
    """The caller's x-request-id (cleaned, bounded), else a new one. Cleaned to printable
    ASCII, which is all gRPC sends back in metadata (and keeps a log line one line)."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            cleaned = "".join(c for c in value[:MAX_REQUEST_ID_CHARS] if c.isascii() and c.isprintable())
            if cleaned:
                return cleaned
    return uuid.uuid4().hex


class AccessLog(grpc.aio.ServerInterceptor):
    """One access line per unary RPC of a grpc.aio server, whatever answered it (the servicer, an
    interceptor, or this one: a call to a method the server lacks is UNIMPLEMENTED, logged at
    INFO and counted as ``UNKNOWN_METHOD``).

    ``served_by(request)`` is the model version and A/B arm that serve ``request`` (None:
    not read), for a call without a response (a GetFeed's response names its own).
    ``on_rejected(method, code, seconds)`` is told of calls refused by an interceptor
    (auth, limits) before reaching the servicer, which counts the others.

    The lines of calls refused without a valid token go through ``tokenless``
    (``TokenlessLines``; ``clock`` times them), whose ``report_suppressed()`` a server calls
    at its stop.
    """

    def __init__(
        self,
        served_by: Callable[[Any], tuple[str, str]],
        on_rejected: Callable[[str, str, float], None] | None = None,
        feed_prefix: str = "/feedrank.",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.served_by = served_by
        self.on_rejected = on_rejected
        self.feed_prefix = feed_prefix
        self.log = logging.getLogger(ACCESS_LOGGER)
        self.tokenless = TokenlessLines(clock)

    async def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            # gRPC's own UNIMPLEMENTED would leave no trace here; answered here, it is logged and counted.
            answer = self._logged(_unimplemented(method), handler_call_details, logging.INFO, UNKNOWN_METHOD)
            return grpc.stream_unary_rpc_method_handler(answer)  # a stream, so that no request is read first
        if handler.request_streaming or handler.response_streaming:
            return handler  # streams (health Watch, reflection) are long-lived: not logged
        feed = method.startswith(self.feed_prefix)
        level = logging.INFO if feed else logging.DEBUG
        if not self.log.isEnabledFor(level) and (self.on_rejected is None or not feed):
            return handler  # nothing to log or count
        return handler._replace(unary_unary=self._logged(handler.unary_unary, handler_call_details, level))

    def _logged(self, behavior: Callable, handler_call_details: grpc.HandlerCallDetails, level: int,
                metric_method: str | None = None) -> Callable:
        """``behavior`` writing the call's access line at ``level`` and counting it, if refused, as
        ``metric_method`` (None: the method's own name)."""
        method = handler_call_details.method
        request_id = request_id_of(handler_call_details.invocation_metadata)

        @functools.wraps(behavior)
        async def logged(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = {"request_id": request_id, "client": None, "rejected": False}
            token = _CALL.set(call)
            # Set first: a refusal adds its error details after it (servicer.refuse).
            context.set_trailing_metadata((("x-request-id", request_id),))
            peer = _peer(context)  # now: a cancelled call's context no longer knows it
            started = time.perf_counter()
            response = None
            code = None
            try:
                response = await behavior(request, context)
                return response
            except asyncio.CancelledError:
                code = cancelled_code(context)
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                seconds = time.perf_counter() - started
                _CALL.reset(token)
                code_name = (context.code() or code or grpc.StatusCode.OK).name
                rejected = call["rejected"]
                if rejected and self.on_rejected is not None:
                    self.on_rejected(metric_method or method.rsplit("/", 1)[-1], code_name, seconds)
                if self.log.isEnabledFor(level) and (not rejected or self.tokenless.admit(code_name, peer)):
                    self.write(level, method, code_name, seconds, request, response, call, peer)

        return logged

    def write(self, level: int, method: str, code: str, seconds: float, request: Any, response: Any, call: dict, peer: str) -> None:
        """The call's access line (``write_access_line``), naming the model that served it by ``served_by``."""
        write_access_line(level, method, code, seconds, request, response, call, peer, self.served_by)


def write_access_line(level: int, method: str, code: str, seconds: float, request: Any, response: Any, call: dict,
                      peer: str, served_by: Callable[[Any], tuple[str, str]], http_request: str = "") -> None:
    """One access line, of an RPC or an HTTP API call: ``call`` holds its request_id and client,
    ``peer`` names the client's address as gRPC does, ``served_by(request)`` the model version and
    arm when ``response`` names none. ``http_request`` (the HTTP method and path of a call to
    a path no route takes, the client's text) goes on the line escaped, as ``method`` does."""
    version = getattr(response, "model_version", "")
    arm = getattr(response, "arm", "")
    if not version:
        version, arm = served_by(request)
    method = _printable(method)
    name = method.rsplit("/", 1)[-1]
    latency_ms = round(seconds * 1000, 3)
    _access_log.log(
        level,
        "%s %s %.1f ms",
        name,
        code,
        latency_ms,
        extra={
            "request_id": call["request_id"],
            "fields": {
                "method": method,
                "code": code,
                "latency_ms": latency_ms,
                "model_version": version,
                **({"arm": arm} if arm else {}),
                "worker": _worker,
                "pid": os.getpid(),
                "peer": peer,
                "client": call["client"],
                **({"http_request": _printable(http_request)} if http_request else {}),
            },
        },
    )


def _printable(text: str) -> str:
    """``text`` with its unprintable characters escaped (``\\n``, ``\\x1b``): the method of a
    call to an unknown method is the client's, and a newline in it began a forged line of the
    text log, a terminal escape in it reached whoever read the log in a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _unimplemented(method: str) -> Callable:
    """The behaviour of a call to ``method``, which the server does not serve."""

    async def unimplemented(requests: Any, context: grpc.aio.ServicerContext) -> None:
        mark_call(rejected=True)
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details(f"unknown method {method}")

    return unimplemented


def _peer(context: grpc.aio.ServicerContext) -> str:
    try:
        return context.peer()
    except Exception:  # noqa: BLE001
        return ""
