"""Server bootstrap: the only place that wires store, model, servicer, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import ipaddress
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_async
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from protos.feed.v1 import feed_pb2
from serving import logs
from serving.arms import describe
from serving.auth import AuthInterceptor, is_open_method, rejecting
from serving.config import ServerConfig, unknown_variable_warnings
from serving.credentials import CredentialSource, CredentialsWatcher, TlsFilesSource, TokensFileSource
from serving.feed_processes import STOP_SIGNALS, FeedProcesses
from serving.feed_service import FeedService
from serving.metrics import FeedMetrics
from serving.service_setup import ModelWatcher, check_store, open_service, start_model_watcher, warm_store
from serving.native_threads import limit_native_threads, one_faiss_thread
from serving.servicer import (
    RETRY_DELAY_SECONDS, FeedServicer, RateLimitedLog, Refusal, add_feed_service, served_by, status_trailers,
)
from serving.web import HttpServer, create_app
from serving.wire import add_lenient, register
from serving.web.common import WebContext
from serving.store_url import redacted
from stores import FeedStore

log = logging.getLogger("feedrank.serving")
T = TypeVar("T")
SERVICE_NAME = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name
HEALTH_NAMES = ("", SERVICE_NAME)  # the server as a whole, and the FeedService
SHUTDOWN_GRACE_SECONDS = 5.0
KEEPALIVE_MIN_PING_SECONDS = 5.0
"""The shortest interval between a client's keepalive pings that the server accepts while no
data flows, with or without calls in flight; more often, and the third ping too early gets
the connection a GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings"). gRPC's defaults, 2 hours
without a call in flight and 5 minutes with one, closed the idle connections of clients
that ping every 10-60 s to keep them open through load balancers and NATs; grpc-go and
grpc-java clients ping at most every 10 s."""
MAX_METADATA_BYTES = 16 * 1024
"""The largest request metadata (headers) accepted; larger is RESOURCE_EXHAUSTED. gRPC core's
own limits, 8 KiB "soft" and 16 KiB hard, refused what lies between at random."""
MAX_PENDING_CALLS = 10_000
"""Calls gRPC core holds until the event loop takes them (it takes one per turn). Past its
default, 1000, core cancelled calls at random and all past 3000: the client saw CANCELLED,
which it does not retry and which reads as its own doing, and neither the access log nor
the metrics saw the call. Taken, a call past --max-concurrent-rpcs is refused at once with
RESOURCE_EXHAUSTED, and counted. A burst of 10,000 GetFeeds on one connection added
125 MiB to the server's RSS at its peak."""
# Ingest threads when feeds are built on the event loop: an Ingest may wait on the
# write-ahead log's fsync, and two of them in flight share one (group commit).
INGEST_THREADS = 2
NO_SECRET_WARNING = (
    "FEEDRANK_TOKEN_SECRET is not set: page tokens are signed with a random key, so they stop working "
    "when this server restarts and other server processes reject them"
)


class HealthMonitor(threading.Thread):
    """Keeps health SERVING only while the store answers; logs an outage once when it starts
    (with its reason) and once when it ends. (With no feed process alive the server builds
    the feeds itself, serving/feed_processes.py: slower, not down.)

    ``publish(status)`` sets a ``HealthCheckResponse`` status for the server and FeedService.
    """

    def __init__(
        self,
        store: FeedStore,
        publish: Callable[[int], None],
        every_seconds: float = 1.0,
        serving: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        store_name: str = "",
    ) -> None:
        super().__init__(name="health-monitor", daemon=True)
        self.store_name = f"store {store_name}" if store_name else "store"  # for the log lines
        self.store = store
        self.publish = publish
        self.every_seconds = every_seconds
        self.serving = serving if serving is not None else threading.Event()  # set while SERVING
        self.clock = clock
        self.down_since: float | None = None
        self.down_what = ""  # what was down first, since down_since
        self.stopped = threading.Event()

    def _down(self) -> tuple[str, str] | None:
        """What keeps the server from building feeds and why, for the log; None if nothing."""
        try:
            if not self.store.ping():
                return self.store_name, getattr(self.store, "ping_failure", "")
        except Exception as error:  # noqa: BLE001 (a store that cannot even be asked is down)
            return self.store_name, f"{type(error).__name__}: {error}"
        return None

    def check(self) -> None:
        down = self._down()
        self.publish(health_pb2.HealthCheckResponse.SERVING if down is None else health_pb2.HealthCheckResponse.NOT_SERVING)
        if down is None:
            if self.down_since is not None:
                log.warning("%s answers again after %.1f s: health SERVING", self.down_what, self.clock() - self.down_since)
                self.down_since = None
            self.serving.set()
        else:
            self.serving.clear()
            if self.down_since is None:
                (self.down_what, why), self.down_since = down, self.clock()
                log.error("%s unavailable%s: health NOT_SERVING until it answers again", self.down_what, f" ({why})" if why else "")

    def run(self) -> None:
        while not self.stopped.wait(self.every_seconds):
            self.check()


class HealthServicer(health_async.HealthServicer):
    """gRPC's asyncio health service, which lacks ``List`` (of every service's status): gRPC
    answered it UNIMPLEMENTED and logged an error with a NotImplementedError's traceback."""

    async def List(self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext) -> health_pb2.HealthListResponse:
        statuses = {name: await self.Check(health_pb2.HealthCheckRequest(service=name), context) for name in HEALTH_NAMES}
        return health_pb2.HealthListResponse(statuses=statuses)


class ReflectionPool:
    """The default descriptor pool, as the reflection service reads it, which also finds the
    file that defines a method (``feedrank.feed.v1.FeedService.GetFeed``), as ``grpcurl
    describe SERVICE.METHOD`` asks: Python's pool indexes no methods (grpc/grpc#34743)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self.pool = pool

    def FindFileContainingSymbol(self, name: str) -> FileDescriptor:
        try:
            return self.pool.FindFileContainingSymbol(name)
        except KeyError:
            service_name, _, method = name.rpartition(".")
            service = self.pool.FindServiceByName(service_name)
            if method not in service.methods_by_name:
                raise
            return service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
"""Reflection as grpcurl and other clients ask for it first; grpcio-reflection serves only
v1alpha, whose messages v1 repeats field for field under another package. Without it each
such client's first call was UNIMPLEMENTED (an access line, counted as an unknown method)."""


def add_reflection_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Add grpc/reflection/v1/reflection.proto to ``pool``, once: v1alpha's, renamed as upstream's v1."""
    name = "grpc/reflection/v1/reflection.proto"  # as grpc's own protos name it
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = name, "grpc.reflection.v1"
    proto.options.ClearField("deprecated")
    proto.options.java_package, proto.options.go_package = "io.grpc.reflection.v1", "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.")
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
        method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    pool.Add(proto)


class BindError(OSError):
    """The server cannot have its address (one line, for the operator)."""


def start_error(error: BaseException) -> str:
    """The one line for an error that stops the start. An OSError from a file the server reads
    (not ours to read, a directory in its place, EIO) names the path, without the "[Errno N]"."""
    if isinstance(error, OSError) and error.strerror:
        where = "" if error.filename is None else str(error.filename)
        where += "" if error.filename2 is None else f" -> {error.filename2}"  # a rename's two paths
        return f"{where}: {error.strerror}" if where else error.strerror
    return str(error)


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def ensure_port_free(host: str, port: int) -> None:
    """BindError unless ``host:port`` can be bound by a server that does not share it (no SO_REUSEPORT)."""
    where = grpc_address(host, port)
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise BindError(f"cannot serve on {where}: unknown host ({error.strerror})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: a closed server's TIME_WAIT is no conflict
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise BindError(
                        f"cannot serve on {where}: the port is already in use (another feedrank server or another "
                        f"program); stop it or choose another --port (only the processes of one --workers server share a port)"
                    ) from None
                if error.errno == errno.EACCES:
                    raise BindError(f"cannot serve on {where}: permission denied (ports below 1024 need privileges)") from None
                if error.errno == errno.EADDRNOTAVAIL and len(addresses) == 1:
                    raise BindError(f"cannot serve on {where}: {host} is not an address of this machine") from None


class InFlightCalls(grpc.aio.ServerInterceptor):
    """Counts the calls in flight that ``counts`` picks (the FeedService calls): accepted
    and not yet answered. The count rises in the call's own task when the server accepts
    it, before its request is read, and drops when that task ends, however it ends.
    ``refusal`` may turn a call away first (``refused`` is told of it). Everything here
    runs on the event loop: no lock."""

    def __init__(self) -> None:
        self.in_flight = 0

    def counts(self, handler: grpc.RpcMethodHandler, method: str) -> bool:
        return not is_open_method(method)

    def refusal(self) -> Refusal | None:
        return None

    def refused(self, method: str) -> None:
        """A call of ``method`` was turned away (the access log counts a unary call itself)."""

    async def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not self.counts(handler, handler_call_details.method):
            return handler
        refusal = self.refusal()
        if refusal is not None:
            self.refused(handler_call_details.method)
            return rejecting(handler, refusal.code, refusal.message, status_trailers(refusal))
        self.in_flight += 1
        asyncio.current_task().add_done_callback(self._done)
        return handler

    def _done(self, _: asyncio.Task) -> None:
        self.in_flight -= 1


class ConcurrencyLimit(InFlightCalls):
    """Refuses a FeedService call at once with RESOURCE_EXHAUSTED while ``limit`` calls are in
    flight, whether waiting for the feed threads or running. With feeds built on the loop
    itself the server accepts calls only as fast as it answers them, so there the backlog
    waits in gRPC's queue, where this does not see it (README, "Limits").
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.message = f"server busy: {limit} requests in flight (--max-concurrent-rpcs); retry with backoff"
        self.retry_after: float | None = RETRY_DELAY_SECONDS

    def refusal(self) -> Refusal | None:
        if self.in_flight < self.limit:
            return None
        return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, self.message, retry_after=self.retry_after)


_log_refused_stream = RateLimitedLog("a new stream refused", every_seconds=60.0)


class OpenStreamLimit(ConcurrencyLimit):
    """Refuses a new stream at once with RESOURCE_EXHAUSTED while ``limit`` are open.

    The server's streams are health Watch and reflection, which need no token and stay
    open until the client closes them: each holds about 18 KB, and one client opened
    50,000 on one connection (+900 MB) with nothing logged (benchmarks/README.md). gRPC
    has no per-connection stream cap we can use (README, "Limits"), so this counts them
    per process. The access log does not see streams: ``on_refused(method)`` is told of
    each refusal.
    """

    def __init__(self, limit: int, on_refused: Callable[[str], None] | None = None) -> None:
        super().__init__(limit)
        self.on_refused = on_refused
        self.message = (f"too many open streams: {limit} health Watch and reflection streams at once on this server "
                        f"(--max-open-streams); close one, or poll grpc.health.v1.Health/Check instead")
        self.retry_after = None  # a retry finds the same streams open until the client closes one

    def counts(self, handler: grpc.RpcMethodHandler, method: str) -> bool:
        return handler.request_streaming or handler.response_streaming

    def refused(self, method: str) -> None:
        if self.on_refused is not None:
            self.on_refused(method)


class Drain(InFlightCalls):
    """Once ``begin`` was called, refuses new FeedService calls at once with UNAVAILABLE, so
    that a client retries elsewhere, and waits for those in flight.

    gRPC's own stop cancels (CANCELLED, not retried by clients) every call that reached it
    and was not yet handed to the application, which under load is a few at any instant;
    refusing here first hands them over, answered, before gRPC stops. gRPC's queue is not
    visible from here: it is empty once no call has come for QUIET_SECONDS. Under steady
    traffic no such pause comes, and clients that keep their connection to this server
    would be refused for the whole grace: once no call is in flight, STEADY_SECONDS more
    are enough for the loop to refuse whatever gRPC had queued, and gRPC's stop then tells
    those clients to connect elsewhere (GOAWAY).
    """

    REFUSAL = Refusal(grpc.StatusCode.UNAVAILABLE, "server shutting down; retry", retry_after=RETRY_DELAY_SECONDS)
    QUIET_SECONDS = 0.1
    STEADY_SECONDS = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.draining = False
        self.last_call = 0.0  # loop time

    def refusal(self) -> Refusal | None:
        self.last_call = asyncio.get_running_loop().time()
        return self.REFUSAL if self.draining else None

    async def begin(self, grace: float, poll_seconds: float = 0.01) -> None:
        """Refuse new calls, and wait up to ``grace`` seconds for those in flight to finish
        and for gRPC's queue to empty."""
        self.draining = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + grace
        # Quiet for QUIET_SECONDS from the drain's start at least, even with no call for long:
        # the health Watches' NOT_SERVING, queued as the drain began, must be written before
        # gRPC's stop cancels their streams (a CI run saw a Watch end UNAVAILABLE without it).
        idle_since = None
        while (now := loop.time()) < deadline:
            if not self.in_flight:
                idle_since = now if idle_since is None else idle_since
                if now - max(self.last_call, started) >= self.QUIET_SECONDS or now - idle_since >= self.STEADY_SECONDS:
                    return
            await asyncio.sleep(poll_seconds)


class EventLoopThread:
    """An asyncio event loop running on a thread of its own, for a grpc.aio server behind a blocking API."""

    def __init__(self, name: str = "grpc-loop", initializer: Callable[[], None] = one_faiss_thread) -> None:
        self.loop = asyncio.new_event_loop()
        self.initializer = initializer
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.initializer()
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class FeedServer:
    """A running server; ``stop()`` drains in-flight requests.

    A grpc.aio server on an event loop thread of its own (``EventLoopThread``): health,
    reflection, the interceptors and, with ``feed_threads`` 0, the feeds themselves run
    there (Ingest then runs on INGEST_THREADS threads); with ``feed_threads`` > 0 feeds
    and Ingest run on that many threads and the loop stays free for health checks and
    refusals. The methods of this class block as before.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.ephemeral_secret = config.token_secret is None
        if self.ephemeral_secret:
            config = replace(config, token_secret=secrets.token_bytes(32))
        self.config = config
        self.tls = TlsFilesSource(config.tls_cert, config.tls_key, config.tls_client_ca) if config.tls_cert else None
        tokens_file = TokensFileSource(config.tokens_file, config.tokens) if config.tokens_file else None
        self.credential_sources: list[CredentialSource] = [source for source in (tokens_file, self.tls) if source is not None]
        credentials = self.tls.grpc.credentials if self.tls is not None else None
        shared_port = config.workers > 1  # serve() checked the port before forking the workers
        if config.port and not shared_port:
            ensure_port_free(config.host, config.port)
        self.serving = threading.Event()  # set while health is SERVING
        self.feed_pool = futures.ThreadPoolExecutor(
            config.feed_threads, thread_name_prefix="feed", initializer=one_faiss_thread
        ) if config.feed_threads else None
        self.ingest_pool = self.feed_pool or futures.ThreadPoolExecutor(INGEST_THREADS, thread_name_prefix="ingest")
        self.events = EventLoopThread()
        self.feed_processes = FeedProcesses(config, config.feed_processes, self.events.loop) if config.feed_processes else None
        # The service's, from before it loads: a loading server is scraped, and counts its refusals.
        self.metrics = FeedMetrics()
        self.servicer = FeedServicer(
            metrics=self.metrics, feed_pool=self.feed_pool, ingest_pool=self.ingest_pool,
            build_feed=self.feed_processes.get_feed_response if self.feed_processes is not None else None,
        )
        auth = tokens_file.interceptor if tokens_file else AuthInterceptor(config.tokens) if config.tokens else None
        address = grpc_address(config.host, config.port)
        try:
            self.port = self.events.run(self._build(config, auth, credentials, address, shared_port))
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            self._release()
            raise BindError(f"cannot serve on {address}: gRPC could not bind it (in use, or not an address of this machine)")
        self._threads: list[ModelWatcher | HealthMonitor | CredentialsWatcher] = []
        self.service: FeedService | None = None
        if self.tls is not None:
            tls = self.tls
            self.metrics.track_certificate_expiry(lambda: tls.current.seconds_left())
        if self.stream_limit is not None:
            stream_limit = self.stream_limit
            self.metrics.track_open_streams(lambda: stream_limit.in_flight)
        self._stop_metrics: Callable[[], None] | None = None
        self.http: HttpServer | None = None
        self._http_started = False
        try:
            if config.metrics_port:
                self._stop_metrics = self._metrics_server()
            if config.http_port:
                self.http = self._http_server(auth)
                if self.tls is not None:
                    self.tls.on_context.append(self.http.use_ssl_context)
        except BindError:
            if self._stop_metrics is not None:
                self._stop_metrics()
            self.events.run(self.grpc_server.stop(None))
            self._release()
            # Left to the interpreter's exit, the stopped server's gRPC objects print
            # "Error in sys.excepthook" after the error line.
            del self.grpc_server
            raise

    async def _build(self, config: ServerConfig, auth: AuthInterceptor | None, credentials: grpc.ServerCredentials | None,
                     address: str, shared_port: bool) -> int:
        """Create the server on the loop (grpc.aio binds it to the loop it is made on); its port."""
        self.health = HealthServicer()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Outermost first: the access log (sees every answer), the drain, auth, then the limit.
        self.drain = Drain()
        self.access_log = logs.AccessLog(self._served_by, self._count_refused)
        interceptors: list[grpc.aio.ServerInterceptor] = [self.access_log, self.drain]
        if auth is not None:
            interceptors.append(auth)
        self.concurrency_limit = ConcurrencyLimit(config.max_concurrent_rpcs) if config.max_concurrent_rpcs else None
        if self.concurrency_limit is not None:
            interceptors.append(self.concurrency_limit)
        self.stream_limit = OpenStreamLimit(config.max_open_streams, self._refused_stream) if config.max_open_streams else None
        if self.stream_limit is not None:
            interceptors.append(self.stream_limit)
        self.grpc_server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.so_reuseport", 1 if shared_port else 0),
                ("grpc.max_receive_message_length", config.max_message_bytes),
                # No send limit: a response over it reached the client as RESOURCE_EXHAUSTED
                # while the access log and metrics said OK. The API bounds responses itself.
                ("grpc.max_send_message_length", -1),
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
                ("grpc.keepalive_permit_without_calls", 1),  # on a server: accept pings on a connection without calls
                ("grpc.http2.min_ping_interval_without_data_ms", int(KEEPALIVE_MIN_PING_SECONDS * 1000)),
            ],
        )
        add_feed_service(self.servicer, self.grpc_server)
        add_lenient(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.grpc_server)
        pool = descriptor_pool.Default()
        add_reflection_v1_file(pool)
        reflected = (SERVICE_NAME, health.SERVICE_NAME, REFLECTION_V1, reflection.SERVICE_NAME)
        services = add_lenient(reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                               reflection_async.ReflectionServicer(reflected, pool=ReflectionPool(pool)), self.grpc_server)
        register(self.grpc_server, REFLECTION_V1, services[reflection.SERVICE_NAME])
        if credentials is not None:
            return self.grpc_server.add_secure_port(address, credentials)
        return self.grpc_server.add_insecure_port(address)

    async def _set_health(self, status: int) -> None:
        for name in HEALTH_NAMES:
            await self.health.set(name, status)

    def _publish_health(self, status: int) -> None:
        self.events.run(self._set_health(status))

    def _http_server(self, auth: AuthInterceptor | None) -> HttpServer:
        config = self.config
        context = WebContext(lambda: self.servicer.service, auth, config.models_dir, config.max_message_bytes)
        try:
            tls = (config.tls_cert, config.tls_key, self.tls.current.context) if self.tls is not None else None
            return HttpServer(create_app(context), config.host, config.http_port, tls)
        except OSError as error:
            raise BindError(f"cannot serve HTTP on {config.host}:{config.http_port}: {error.strerror or error} "
                            "(--http-port)") from None

    def _metrics_server(self) -> Callable[[], None]:
        config = self.config
        host = config.metrics_host or config.host
        try:
            return self.metrics.serve_http(config.metrics_port, host)
        except OSError as error:
            raise BindError(f"cannot serve metrics on {host}:{config.metrics_port}: {error.strerror or error} "
                            "(--metrics-port, --metrics-host)") from None

    def _served_by(self, request: Any) -> tuple[str, str]:
        return served_by(self.servicer.service, request)

    def _refused_stream(self, method: str) -> None:
        _log_refused_stream(method, self.stream_limit.message)
        self._count_refused(method.rsplit("/", 1)[-1], grpc.StatusCode.RESOURCE_EXHAUSTED.name, 0.0)

    def _count_refused(self, method: str, code: str, seconds: float) -> None:
        """Metrics of a call an interceptor refused (the servicer counts the rest)."""
        self.metrics.observe_request(method, code, seconds)

    def _warn_about_openness(self) -> None:
        config = self.config
        if not config.tokens and not config.tokens_file:
            log.warning("auth is off: no bearer tokens (--tokens-file, FEEDRANK_TOKENS), so any client can read "
                        "every feed and ingest events for anyone")
        elif not config.tls_cert and not _is_loopback(config.host):
            log.warning("bearer tokens without TLS on %s: they cross the network in clear text; set --tls-cert and --tls-key", config.host)
        if self.ephemeral_secret:
            log.warning(NO_SECRET_WARNING)

    def start(self) -> None:
        """Start answering (health NOT_SERVING), load model and store, then turn SERVING."""
        limit_native_threads()
        self.events.run(self.grpc_server.start())
        if self.http is not None:
            self.http.start()
            self._http_started = True
        self._warn_about_openness()
        config = self.config
        self.service, arms_signature = open_service(config, metrics=self.metrics)
        check_store(self.service.store, config.store_url)  # before the feed processes, which would each fail on it
        if self.feed_processes is not None:
            pids = self.feed_processes.start(self.service.store, self.service.metrics)
            log.info("%d feed processes ready (pids %s)", len(pids), ", ".join(map(str, pids)))
        else:
            warm_store(self.service.store)
        self.servicer.service = self.service
        # The loaded store and model are millions of long-lived objects: keep the cyclic
        # GC from walking them again and again while requests allocate candidates.
        gc.freeze()
        monitor = HealthMonitor(self.service.store, self._publish_health, serving=self.serving, store_name=redacted(config.store_url))
        monitor.check()
        monitor.start()
        self._threads = [monitor]
        if self.credential_sources and config.credentials_reload_seconds > 0:
            self._threads.append(self._start_credentials_watcher())
        if config.reload_seconds > 0:
            self._threads.append(start_model_watcher(self.service, config, arms_signature))
        log.info("serving model %s on %s:%d%s", self.service.model_version, config.host, self.port,
                 " (TLS" + (", client certificates required)" if config.tls_client_ca else ")") if config.tls_cert else "")
        if self.http is not None:
            scheme = "https" if config.tls_cert else "http"
            log.info("feed explorer and HTTP/JSON API on %s://%s/", scheme, grpc_address(config.host, self.http.port))
        if config.metrics_port:
            log.info("Prometheus metrics on http://%s/metrics", grpc_address(config.metrics_host or config.host, config.metrics_port))
        if self.service.arms is not None:
            log.info("A/B arms from %s: %s", config.arms_file, describe(self.service.arms))

    def _start_credentials_watcher(self) -> CredentialsWatcher:
        failures = self.metrics.credentials_reload_failures
        watcher = CredentialsWatcher(self.credential_sources, self.config.credentials_reload_seconds, lambda name: failures.labels(name).inc())
        watcher.start()
        return watcher

    def _release(self) -> None:
        for pool in {self.feed_pool, self.ingest_pool} - {None}:
            pool.shutdown(wait=False, cancel_futures=True)
        if self.feed_processes is not None:
            self.feed_processes.shutdown()
        self.events.close()

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Drain, then stop everything ``start`` started, however far it got; the feed
        processes only once gRPC has answered every call it accepted."""
        for thread in self._threads:
            thread.stopped.set()
        self.serving.clear()
        self.events.run(self._drain(grace))
        if self.http is not None:
            self.http.stop() if self._http_started else self.http.server.stop()
        if self._stop_metrics is not None:
            self._stop_metrics()
        self._release()
        if self.service is not None:
            self.service.store.close()

    async def _drain(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.drain.begin(grace)
        # The FeedService calls are answered (or the grace is spent). What gRPC still runs is
        # health and reflection, among them health Watches, which never end by themselves:
        # a grace here held every stop for all of it while a client watched.
        await self.grpc_server.stop(0)
        self.access_log.tokenless.report_suppressed()  # the last second's, whose summary was not yet due


def _write_atomically(path: str, text: str) -> None:
    """Write a port file (ValueError naming --port-file when it cannot be, its temporary file removed)."""
    tmp = Path(path + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ValueError(f"--port-file {path}: {error.strerror or error}") from None


def check_port_file(path: str) -> None:
    """ValueError naming --port-file when ``path`` is no file the server could write: at
    once, not after the store and model have loaded (which take minutes at scale)."""
    if os.path.isdir(path):
        raise ValueError(f"--port-file {path}: is a directory")
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ValueError(f"--port-file {path}: no directory {directory}")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"--port-file {path}: the directory {directory} is not writable")


class StartInterrupted(BaseException):
    """SIGTERM or SIGINT while the server was starting (a BaseException, as KeyboardInterrupt
    is, so that no ``except Exception`` of the loading code swallows it)."""


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP (the terminal the server ran in closed), as an event the
    main thread polls: each drains the server.

    The handler only appends to a list: an ``Event.set`` in a handler takes the event's
    lock, and a second signal landing while the first handler held it deadlocked the
    server (a ``timeout`` and a ``pkill`` one after the other did it). Inside
    ``interrupting()`` it also raises StartInterrupted in the main thread, once: loading
    takes seconds to minutes and has no point at which it could poll.
    """

    POLL_SECONDS = 0.1

    def __init__(self) -> None:
        self._received: list[int] = []
        self._interrupt = False
        for signum in STOP_SIGNALS:
            # A SIGHUP already ignored (nohup) stays ignored: the server is meant to outlive its terminal.
            if not (signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN):
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, _: Any) -> None:
        self._received.append(signum)
        if self._interrupt:
            self._interrupt = False
            raise StartInterrupted(signum)

    @contextlib.contextmanager
    def interrupting(self) -> Any:
        """A signal inside raises StartInterrupted (at once if one came before)."""
        if self._received:
            raise StartInterrupted(self._received[0])
        self._interrupt = True
        try:
            yield
        finally:
            self._interrupt = False

    def set(self) -> None:
        """Stop as if signalled."""
        self._received.append(0)

    def is_set(self) -> bool:
        return bool(self._received)

    def wait(self, timeout: float | None = None) -> bool:
        """True once a signal came; False when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._received:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL_SECONDS if deadline is None else min(self.POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
        return True


def write_port_file_when_serving(server: Any, path: str, stop: threading.Event | StopSignals) -> None:
    """Write ``server.port`` to ``path`` once ``server.serving`` is set (never if ``stop`` comes first)."""
    if not server.serving.is_set():
        log.info("waiting for health SERVING before writing %s", path)
    while not server.serving.wait(0.1):
        if stop.is_set():
            return
    _write_atomically(path, str(server.port))


def _serve_one(config: ServerConfig, ready_file: str | None) -> None:
    """Serve until a signal; whatever ends the start or the serving (a signal, an error)
    stops what had started, feed processes included, and removes ``ready_file``."""
    stop = StopSignals()
    # A worker is forked with the stop signals blocked (_serve_workers): one sent since is
    # pending, and reaches the handler just installed. Serving alone they are not blocked.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    server = None
    try:
        with stop.interrupting():
            server = FeedServer(config)
            server.start()
        if ready_file:
            write_port_file_when_serving(server, ready_file, stop)
        stop.wait()
        log.info("shutting down")
    except StartInterrupted:
        log.info("stopped while starting")
    finally:
        if server is not None:
            server.stop()
        if ready_file:
            Path(ready_file).unlink(missing_ok=True)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host.strip("[]"), 0))
        return probe.getsockname()[1]


def serve(config: ServerConfig, port_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and exit.

    Sets up logging (``config.log_format``, ``config.log_level``). A port already in use
    exits with one line (SystemExit). With ``config.workers`` > 1, forks that many processes
    before any gRPC object exists (gRPC does not survive a fork); they share the port
    through SO_REUSEPORT and the kernel spreads connections among them. ``port_file``
    (default ``config.port_file``) is written once the server (all workers) is SERVING.
    """
    logs.configure(config.log_format, config.log_level)
    logs.report_fatal_signals()
    for warning in unknown_variable_warnings(os.environ):
        log.warning(warning)
    port_file = port_file or config.port_file
    if port_file:
        check_port_file(port_file)
    if config.workers <= 1:
        _serve_one(config, port_file)
    else:
        _serve_workers(config, port_file)


def _serve_workers(config: ServerConfig, port_file: str | None) -> None:
    if config.store_url == "memory":
        raise ValueError("--workers > 1 needs a shared store (--store redis://...): each process would "
                         "hold its own memory store and miss the events ingested by the others")
    if config.port == 0:
        config = replace(config, port=_free_port(config.host))
    else:
        ensure_port_free(config.host, config.port)  # the workers share it with each other only
    if config.token_secret is None:  # one key for all workers: a page token works on any of them
        log.warning(NO_SECRET_WARNING)
        config = replace(config, token_secret=secrets.token_bytes(32))
    children = _Workers()
    # The stop signals are blocked from before the first fork until the parent's handlers are
    # installed: a SIGTERM in between killed the parent (SIGINT: a KeyboardInterrupt) and left
    # the workers serving. Blocked, it waits, and then stops the workers. Each worker inherits
    # the mask and unblocks once its own handlers are in (_serve_one). A fork that fails stops
    # the workers already forked.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        stop = StopSignals()
        _fork_workers(config, port_file, children)
    except BaseException:
        children.stop()
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if port_file:
        ready = [Path(f"{port_file}.{i}") for i in range(config.workers)]
        while not all(p.exists() for p in ready) and not stop.wait(0.1):
            if children.any_exited():
                stop.set()
        for path in ready:
            path.unlink(missing_ok=True)
        if not stop.is_set():
            _write_atomically(port_file, str(config.port))
    try:
        _watch_workers(config, children, stop)
    finally:
        if port_file:
            Path(port_file).unlink(missing_ok=True)


def _fork_workers(config: ServerConfig, port_file: str | None, children: _Workers) -> None:
    """Fork ``config.workers`` workers into ``children``; each serves, then exits (never returns)."""
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                logs.set_worker(index)
                worker_config = replace(
                    config, worker_index=index, metrics_port=config.metrics_port + index if config.metrics_port else 0,
                    http_port=config.http_port + index if config.http_port else 0,
                )
                _serve_one(worker_config, f"{port_file}.{index}" if port_file else None)
            except (OSError, ValueError) as error:  # one line, as serve() gives (BindError is an OSError)
                log.error("worker %d: %s", index, start_error(error))
                code = 1
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        children.pids.append(pid)


class _Workers:
    """The forked workers, and the wait status of each that has exited: waitpid reaps a
    child once, and a status not kept then is lost (a worker that failed to start read as
    a clean exit of the server)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.statuses: dict[int, int] = {}

    def any_exited(self) -> bool:
        for pid in self.pids:
            if pid not in self.statuses:
                exited, status = os.waitpid(pid, os.WNOHANG)
                if exited:
                    self.statuses[pid] = status
        return bool(self.statuses)

    def stop(self) -> bool:
        """SIGTERM those still running and wait for all; whether any failed."""
        running = [pid for pid in self.pids if pid not in self.statuses]
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in running:
            with contextlib.suppress(ChildProcessError):
                self.statuses[pid] = os.waitpid(pid, 0)[1]
        return any(self.statuses.values())


def _watch_workers(config: ServerConfig, children: _Workers, stop: StopSignals) -> None:
    """Until a signal or a worker's exit; then stop the workers (exit 1 if one failed)."""
    log.info("%d workers serving on %s:%d", config.workers, config.host, config.port)
    while not stop.wait(0.5):
        if children.any_exited():
            log.error("a worker exited; stopping the others")
            break
    if children.stop():
        raise SystemExit(1)
