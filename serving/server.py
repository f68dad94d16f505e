"""Server bootstrap: the only place that wires store, model, servicer, health and reflection."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.config import ServerConfig
from serving.feed_service import FeedService
from serving.page_token import PageTokenCodec
from serving.servicer import FeedServicer
from serving.stores import FeedStore, open_store
from training.artifact import load_current

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
    """Polls models/CURRENT and hot-swaps the service's artifact when it changes."""

    def __init__(self, service: FeedService, models_dir: str, every_seconds: float) -> None:
        super().__init__(name="model-watcher", daemon=True)
        self.service = service
        self.models_dir = models_dir
        self.every_seconds = every_seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        current = Path(self.models_dir) / "CURRENT"
        while not self.stopped.wait(self.every_seconds):
            try:
                version = current.read_text().strip()
                if version != self.service.model_version:
                    self.service.swap_artifact(load_current(self.models_dir))
                    log.info("switched to model %s", version)
            except Exception:  # a half-written or broken artifact must not kill serving
                log.exception("model reload failed; still serving %s", self.service.model_version)


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
        store = open_store(self.config.store_url, self.config.data_dir)
        self.service = FeedService(store, artifact, PageTokenCodec(self.config.token_secret), self.config.feed)
        self.servicer.service = self.service
        monitor = HealthMonitor(store, self.health)
        monitor.check()
        self._threads = [monitor]
        if self.config.reload_seconds > 0:
            self._threads.append(ModelWatcher(self.service, self.config.models_dir, self.config.reload_seconds))
        for thread in self._threads:
            thread.start()
        log.info("serving model %s on %s:%d", artifact.version, self.config.host, self.port)

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        for thread in self._threads:
            thread.stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        if self.service is not None:
            self.service.store.close()


def serve(config: ServerConfig, port_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and exit."""
    server = FeedServer(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    if port_file:
        tmp = Path(port_file + ".tmp")
        tmp.write_text(str(server.port))
        tmp.replace(port_file)
    stop.wait()
    log.info("shutting down")
    server.stop()
