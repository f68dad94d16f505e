"""Server bootstrap: the only place that wires store, model, servicer, health and reflection."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from ranking.feed import FeedSettings
from serving.arms import describe, load_arms, load_pinned
from serving.config import ServerConfig
from serving.feed_service import FeedService
from serving.page_token import PageTokenCodec
from serving.servicer import FeedServicer
from serving.store_url import open_store
from stores import FeedStore
from training.artifact import current_version, load_current, load_version

log = logging.getLogger("feedrank.serving")
SERVICE_NAME = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name
SHUTDOWN_GRACE_SECONDS = 5.0


def limit_native_threads() -> None:
    """One faiss/BLAS thread per request thread: parallel searches otherwise fight for the cores."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(1)


class ModelWatcher(threading.Thread):
    """Polls models/CURRENT and the arms file; hot-swaps the service's models and arms when they change.

    Arms that follow CURRENT switch with it; a changed arms file is re-read and the
    versions it pins are loaded before the switch. A broken file or artifact is logged and
    the old state kept (a broken arms file is tried again once it changes again).
    """

    def __init__(
        self,
        service: FeedService,
        models_dir: str,
        every_seconds: float,
        arms_file: str | None = None,
        feed: FeedSettings = FeedSettings(),
        arms_signature: tuple[int, int, int] | None = None,
    ) -> None:
        """``arms_signature``: ``_signature(arms_file)`` taken before the service's arms were read."""
        super().__init__(name="model-watcher", daemon=True)
        self.service = service
        self.models_dir = models_dir
        self.every_seconds = every_seconds
        self.arms_file = arms_file
        self.feed = feed
        self.arms_signature = arms_signature
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_seconds):
            self.check()

    def check(self) -> None:
        """One poll: swap in whatever changed, all at once."""
        service = self.service
        current, arms, pinned = service.current_artifact, service.arms, service.pinned
        changed = False
        try:
            version = current_version(self.models_dir)
            if version != current.version:
                current = pinned.get(version) or load_version(os.path.join(self.models_dir, version))
                changed = True
        except Exception:  # a half-written or broken artifact must not kill serving
            log.exception("model reload failed; still serving %s", service.model_version)
        if self.arms_file:
            signature = _signature(self.arms_file)
            if signature != self.arms_signature:
                self.arms_signature = signature
                try:
                    arms = load_arms(self.arms_file, self.feed)
                    pinned = load_pinned(arms, self.models_dir, {**pinned, current.version: current})
                    changed = True
                except Exception:
                    log.exception("arms reload from %s failed; keeping arms %s", self.arms_file, describe(service.arms) if service.arms else "none")
                    arms, pinned = service.arms, service.pinned
        if not changed:
            return
        try:
            service.configure(current, arms, pinned)
        except Exception:
            log.exception("model or arms swap failed; still serving %s", service.model_version)
            return
        log.info("serving model %s; arms: %s", current.version, describe(arms) if arms else "none")


def _signature(path: str) -> tuple[int, int, int] | None:
    """Changes whenever the file is rewritten or replaced (None: it is missing)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class HealthMonitor(threading.Thread):
    """Keeps health SERVING only while the store answers."""

    def __init__(self, store: FeedStore, health_servicer: health.HealthServicer, every_seconds: float = 1.0) -> None:
        super().__init__(name="health-monitor", daemon=True)
        self.store = store
        self.health_servicer = health_servicer
        self.every_seconds = every_seconds
        self.stopped = threading.Event()

    def check(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self.store.ping() else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health_servicer.set(name, status)

    def run(self) -> None:
        while not self.stopped.wait(self.every_seconds):
            self.check()


class FeedServer:
    """A running server; ``stop()`` drains in-flight requests."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.health = health.HealthServicer(experimental_non_blocking=True)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="feed"),
            options=[("grpc.so_reuseport", 1)],
        )
        self.servicer = FeedServicer()
        feed_pb2_grpc.add_FeedServiceServicer_to_server(self.servicer, self.grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        self.port = self.grpc_server.add_insecure_port(f"{config.host}:{config.port}")
        if self.port == 0:
            raise OSError(f"could not bind {config.host}:{config.port}")
        self._threads: list[ModelWatcher | HealthMonitor] = []
        self.service: FeedService | None = None

    def start(self) -> None:
        """Start answering (health NOT_SERVING), load model and store, then turn SERVING."""
        limit_native_threads()
        self.grpc_server.start()
        artifact = load_current(self.config.models_dir)
        arms_file = self.config.arms_file
        arms_signature = _signature(arms_file) if arms_file else None  # before reading: a change after is seen
        arms = load_arms(arms_file, self.config.feed) if arms_file else None
        pinned = load_pinned(arms, self.config.models_dir, {artifact.version: artifact})
        store = open_store(self.config.store_url, self.config.data_dir)
        self.service = FeedService(
            store, artifact, PageTokenCodec(self.config.token_secret), self.config.feed, arms=arms, pinned=pinned
        )
        if self.config.metrics_port:
            self.service.metrics.serve_http(self.config.metrics_port, self.config.host)
        self.servicer.service = self.service
        # The loaded store and model are millions of long-lived objects: keep the cyclic
        # GC from walking them again and again while requests allocate candidates.
        gc.freeze()
        monitor = HealthMonitor(store, self.health)
        monitor.check()
        self._threads = [monitor]
        if self.config.reload_seconds > 0:
            self._threads.append(
                ModelWatcher(
                    self.service, self.config.models_dir, self.config.reload_seconds, arms_file, self.config.feed, arms_signature
                )
            )
        for thread in self._threads:
            thread.start()
        log.info("serving model %s on %s:%d", artifact.version, self.config.host, self.port)
        if arms is not None:
            log.info("A/B arms from %s: %s", arms_file, describe(arms))

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        for thread in self._threads:
            thread.stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        if self.service is not None:
            self.service.store.close()


def _write_atomically(path: str, text: str) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _serve_one(config: ServerConfig, ready_file: str | None) -> None:
    server = FeedServer(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    if ready_file:
        _write_atomically(ready_file, str(server.port))
    stop.wait()
    log.info("shutting down")
    server.stop()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def serve(config: ServerConfig, port_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and exit.

    With ``config.workers`` > 1, forks that many processes before any gRPC object exists
    (gRPC does not survive a fork); they share the port through SO_REUSEPORT and the
    kernel spreads connections among them. ``port_file`` is written once all are SERVING.
    """
    if config.workers <= 1:
        _serve_one(config, port_file)
        return
    if config.store_url == "memory":
        raise ValueError("--workers > 1 needs a shared store (--store redis://...): each process would "
                         "hold its own memory store and miss the events ingested by the others")
    if config.port == 0:
        config = replace(config, port=_free_port(config.host))
    children = []
    for index in range(config.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                worker_config = replace(config, metrics_port=config.metrics_port + index if config.metrics_port else 0)
                _serve_one(worker_config, f"{port_file}.{index}" if port_file else None)
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if port_file:
        ready = [Path(f"{port_file}.{i}") for i in range(config.workers)]
        while not all(p.exists() for p in ready) and not stop.wait(0.1):
            if any(os.waitpid(pid, os.WNOHANG)[0] for pid in children):
                stop.set()
        for path in ready:
            path.unlink(missing_ok=True)
        if not stop.is_set():
            _write_atomically(port_file, str(config.port))
    log.info("%d workers serving on %s:%d", config.workers, config.host, config.port)
    while not stop.wait(0.5):
        if any(os.waitpid(pid, os.WNOHANG)[0] for pid in children):
            log.error("a worker exited; stopping the others")
            break
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    failed = 0
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            failed |= os.waitpid(pid, 0)[1]
    if failed:
        raise SystemExit(1)
