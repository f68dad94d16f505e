"""The FeedService a server config describes, and the thread that keeps its models fresh:
the same for the server process and for its feed processes (serving/feed_processes.py)."""

from __future__ import annotations

import functools
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ranking.feed import FeedSettings
from serving import logs
from serving.arms import Arms, describe, load_arms, load_named_version, load_pinned
from serving.config import ServerConfig
from serving.feed_service import FeedService
from serving.metrics import FeedMetrics
from serving.page_token import PageTokenCodec
from serving.store_url import check_state_dir_free, open_store, password_missing, redacted
from serving.watched_files import Signature, file_signature
from stores import FeedStore
from training.artifact import Artifact, current_version, load_version

log = logging.getLogger("feedrank.serving")
model_log = logging.getLogger(logs.MODEL_LOGGER)
MAX_RELOAD_BACKOFF_SECONDS = 600.0


@dataclass(frozen=True)
class Models:
    """What a service serves from the models directory: the CURRENT model, the arms and the
    versions they pin, and the arms file's signature, taken before it was read (for
    ``start_model_watcher``)."""

    current: Artifact
    arms: Arms | None
    pinned: dict[str, Artifact]
    arms_signature: Signature


def load_models(config: ServerConfig) -> Models:
    """The models ``config`` serves: the arms file and the versions it pins first, then
    the CURRENT model (the pinned one, when CURRENT names it)."""
    arms_file = config.arms_file
    arms_signature = file_signature(arms_file) if arms_file else None  # before reading: a change after is seen
    arms = load_arms(arms_file, config.feed) if arms_file else None
    pinned = load_pinned(arms, config.models_dir)
    version = current_version(config.models_dir)
    current = pinned.get(version) or load_version(os.path.join(config.models_dir, version))
    return Models(current, arms, pinned, arms_signature)


def open_service(config: ServerConfig, store: FeedStore | None = None, metrics: FeedMetrics | None = None,
                 models: Models | None = None) -> tuple[FeedService, Signature]:
    """The FeedService ``config`` describes, with its store open (or ``store``, already open)
    and its models loaded (or ``models``, already loaded), reporting to ``metrics`` (default:
    new ones); and the arms file's signature, taken before it was read (for ``start_model_watcher``).
    A state directory another server holds is refused first, before the models load."""
    if store is None:
        check_state_dir_free(config.durability)
    models = models or load_models(config)
    if store is None:
        store = open_store(config.store_url, config.data_dir, durability=config.durability, limits=store_limits(config))
    codec = PageTokenCodec(
        config.token_secret, config.previous_token_secrets, ttl_seconds=config.token_ttl_seconds, max_served=config.max_feed_depth
    )
    service = FeedService(
        store, models.current, codec, config.feed, arms=models.arms, pinned=models.pinned,
        max_clock_skew=config.max_clock_skew_seconds, load_version=functools.partial(load_named_version, config.models_dir),
        metrics=metrics, model_pools=config.model_pools,
    )
    return service, models.arms_signature


def store_limits(config: ServerConfig) -> dict[str, int]:
    """The ingest limits a store enforces itself. The dedupe TTL is whole seconds (Redis's
    EXPIRE), rounded up: 0.5 truncated to 0 meant "remember forever"."""
    return {"max_friends": config.max_friends, "max_follows": config.max_follows, "dedupe_ttl": math.ceil(config.dedupe_ttl_seconds)}


def check_store(store: FeedStore, url: str) -> None:
    """ValueError naming --store when Redis answers but refuses this server for good (a DB
    index out of range, a wrong password, a missing permission to read, write or run scripts,
    a TLS certificate that does not verify). A Redis that is down is no error here: the server starts NOT_SERVING and
    comes up with it. Logs a warning when
    a primary may evict feed state (stores.redis.eviction_warning): as Sidekiq does, the
    server still starts, for a managed Redis may not let its operator change the policy
    (the health monitor's pings read it again every minute: RedisStore.ping)."""
    from redis.exceptions import AuthenticationError, AuthorizationError, ClusterError, RedisClusterException, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from stores.base import StoreForbidden
    from stores.redis import NOT_A_CLUSTER, NOT_A_CLUSTER_CAUSES, RedisStore, is_outage

    if not isinstance(store, RedisStore):
        return
    try:
        store.client.ping()
        store.check_access()
        warning = store.read_eviction_policy()
    except ClusterError:  # a cluster failing over: down for now
        return
    except StoreForbidden as error:
        raise ValueError(f"--store {redacted(url)}: {error}") from None
    except (ResponseError, AuthenticationError, AuthorizationError) as error:
        if isinstance(error, ResponseError) and is_outage(error):  # BUSY in a script, MASTERDOWN...: down for now
            return
        raise ValueError(f"--store {redacted(url)}: {password_missing(url, error) or error}") from None
    except RedisClusterException as error:
        if NOT_A_CLUSTER in str(error):
            raise ValueError(f"--store {redacted(url)}: {NOT_A_CLUSTER}: {NOT_A_CLUSTER_CAUSES}") from None
        return  # no seed answers: down for now
    except RedisConnectionError as error:
        if isinstance(error.__cause__, ssl.SSLCertVerificationError):  # the CA given (or not) never will verify it
            raise ValueError(f"--store {redacted(url)}: TLS: certificate verify failed: {error.__cause__.verify_message}: "
                             "give the CA that signed Redis's certificate with ?ssl_ca_certs=PATH") from None
        return
    except Exception:  # noqa: BLE001 (down or unreachable: the health monitor reports it)
        return
    if warning:
        log.warning("--store %s: %s", redacted(url), warning)


def warm_store(store: FeedStore) -> None:
    """Before a process builds its first feed: a Redis store copies every item's columns,
    then the cards of the most liked items and, when they fit, every seller's listings and
    user's recent likes, into the process's copy of its reads (RedisStore.warm), and copies
    them again whenever the copy is dropped. A Redis that does not answer is logged and
    left to the feeds, which fill the copy as they read."""
    from stores import StoreUnavailable
    from stores.redis import WARM_MAX_ITEMS, RedisStore, warm_summary

    if not isinstance(store, RedisStore):
        return
    started = time.perf_counter()
    try:
        copied, cards, timelines = store.warm()
    except StoreUnavailable as error:
        log.warning("could not copy the items' columns, cards and timelines from Redis before the first feed (%s): feeds will read them", error)
        return
    if copied is None:
        log.info("Redis holds more items than a process copies at start (%d): feeds will read them", WARM_MAX_ITEMS)
    elif copied:
        log.info("copied %s from Redis in %.1f s", warm_summary(copied, cards, timelines), time.perf_counter() - started)


def start_model_watcher(service: FeedService, config: ServerConfig, arms_signature: Signature) -> ModelWatcher:
    watcher = ModelWatcher(service, config.models_dir, config.reload_seconds, config.arms_file, config.feed, arms_signature)
    watcher.start()
    return watcher


class ModelWatcher(threading.Thread):
    """Polls models/CURRENT and the arms file; hot-swaps the service's models and arms when they change.

    Arms that follow CURRENT switch with it; a changed arms file is re-read and the
    versions it pins are loaded before the switch. A broken file or artifact is logged and
    the old state kept. A broken artifact is logged as one line naming the version and
    tried again after a backoff that doubles (2, 4, 8... polls, at most
    MAX_RELOAD_BACKOFF_SECONDS), not on every poll; a new CURRENT is tried at once. A broken
    arms file is tried again once it changes, or after the same backoff (what failed, a
    pinned version not published yet, may be fixed without the file changing).
    """

    def __init__(
        self,
        service: FeedService,
        models_dir: str,
        every_seconds: float,
        arms_file: str | None = None,
        feed: FeedSettings = FeedSettings(),
        arms_signature: Signature = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``arms_signature``: ``file_signature(arms_file)`` taken before the service's arms were read."""
        super().__init__(name="model-watcher", daemon=True)
        self.service = service
        self.models_dir = models_dir
        self.every_seconds = every_seconds
        self.arms_file = arms_file
        self.feed = feed
        self.arms_signature = arms_signature
        self.clock = clock
        self.stopped = threading.Event()
        self.failed_version: str | None = None  # the version (or "CURRENT") that failed last
        self.failures = 0  # its consecutive failures
        self.retry_at = 0.0
        self.arms_failures = 0  # consecutive failed reloads of the arms file
        self.arms_retry_at = 0.0

    def run(self) -> None:
        while not self.stopped.wait(self.every_seconds):
            self.check()

    def _new_model(self, served: str, pinned: dict) -> Any:
        """The artifact CURRENT names if it is new and loads (None otherwise); ``served``:
        the directory name of the version served (CURRENT names a directory, which may have
        been copied under a name other than the version its manifest records)."""
        if self.failed_version == "CURRENT" and self.clock() < self.retry_at:
            return None
        try:
            version = current_version(self.models_dir)
        except Exception as error:  # noqa: BLE001 (CURRENT missing or unreadable: keep serving)
            self._failed("CURRENT", error)
            return None
        if version == served:
            self.failed_version, self.failures = None, 0
            return None
        if version == self.failed_version and self.clock() < self.retry_at:
            return None
        try:
            artifact = pinned.get(version) or load_version(os.path.join(self.models_dir, version))
        except Exception as error:  # noqa: BLE001 (a half-written or broken artifact must not kill serving)
            self._failed(version, error)
            return None
        if self.failed_version is not None:
            model_log.info("model %s loaded after %d failed reload attempts", version, self.failures)
        self.failed_version, self.failures = None, 0
        return artifact

    def _backoff(self, failures: int) -> float:
        """Seconds before the next try after ``failures`` in a row: 2, 4, 8... polls, at most MAX_RELOAD_BACKOFF_SECONDS."""
        return min(max(self.every_seconds, 1.0) * 2**failures, max(MAX_RELOAD_BACKOFF_SECONDS, self.every_seconds))

    def _failed(self, version: str, error: BaseException) -> None:
        if version != self.failed_version:
            self.failed_version, self.failures = version, 0
        self.failures += 1
        self.service.metrics.model_reload_failures.inc()
        delay = self._backoff(self.failures)
        self.retry_at = self.clock() + delay
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        model_log.error(
            "model reload failed: version %s: %s; still serving %s; next try in %.0f s",
            version, reason, self.service.model_version, delay,
            extra={"fields": {"version": version, "attempt": self.failures, "retry_in_s": delay}},
        )
        model_log.debug("model reload failure of %s", version, exc_info=error)

    def check(self) -> None:
        """One poll: swap in whatever changed, all at once."""
        service = self.service
        current, arms, pinned = service.current_artifact, service.arms, service.pinned
        changed = False
        artifact = self._new_model(os.path.basename(current.path), dict(pinned))
        if artifact is not None:
            current, changed = artifact, True
        if self.arms_file:
            signature = file_signature(self.arms_file)
            # A file that failed is tried again after a backoff too: what failed may be
            # fixed without the file changing (a pinned version published later).
            retry = self.arms_failures and self.clock() >= self.arms_retry_at
            if signature != self.arms_signature or retry:
                self.arms_signature = signature
                try:
                    arms = load_arms(self.arms_file, self.feed)
                    pinned = load_pinned(arms, self.models_dir, {**pinned, current.version: current})
                    changed, self.arms_failures = True, 0
                except Exception as error:
                    self.arms_failures += 1
                    service.metrics.arms_reload_failures.inc()
                    delay = self._backoff(self.arms_failures)
                    self.arms_retry_at = self.clock() + delay
                    # A bad file (its TOML, a key, a missing version) is one line, as at start;
                    # anything else keeps its traceback.
                    report = model_log.error if isinstance(error, (OSError, ValueError)) else model_log.exception
                    report("arms reload from %s failed: %s; keeping arms %s; next try in %.0f s", self.arms_file, error,
                           describe(service.arms) if service.arms else "none", delay)
                    arms, pinned = service.arms, service.pinned
        if not changed:
            return
        try:
            service.configure(current, arms, pinned)
        except Exception:
            model_log.exception("model or arms swap failed; still serving %s", service.model_version)
            return
        model_log.info("serving model %s; arms: %s", current.version, describe(arms) if arms else "none")

