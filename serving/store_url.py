"""``--store`` URLs: memory (loaded from ``--data``), redis://, rediss://, unix://, redis-cluster://."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from stores import FeedStore

FSYNC_POLICIES = ("batch", "off")


@dataclass(frozen=True)
class Durability:
    """How the embedded memory store keeps acknowledged events across restarts.

    ``state_dir`` None: it does not (every ingested event is lost on restart). ``fsync``
    "batch" syncs the write-ahead log before each ack; "off" leaves it to the OS.
    ``snapshot_seconds``: how often the log is compacted into a snapshot (<= 0: never).
    The store is stores.durable.DurableStore; README "Durability of the memory store".
    """

    state_dir: str | None = None
    fsync: str = "batch"
    snapshot_seconds: float = 300.0


def open_store(
    url: str,
    data_dir: str | None = None,
    durability: Durability = Durability(),
    progress: bool = True,
    limits: Mapping[str, float] = {},
) -> FeedStore:
    """'memory' loads ``data_dir`` (and with ``durability.state_dir`` replays the events
    acknowledged before, raising stores.wal.WalError, a ValueError, when it cannot);
    redis:// and redis-cluster:// connect to Redis. ``progress`` draws the load's bar.
    ``limits`` (max_friends, max_follows, dedupe_ttl) go to either store; on Redis an
    option the URL's query sets wins."""
    if durability.state_dir is not None and url != "memory":
        raise ValueError("--state-dir is for the memory store; Redis keeps its own state")
    if durability.fsync not in FSYNC_POLICIES:
        raise ValueError(f"--fsync must be one of {', '.join(FSYNC_POLICIES)}, got {durability.fsync!r}")
    if url == "memory":
        if not data_dir:
            raise ValueError("--data is required with the memory store")
        from stores.memory import MemoryStore
        from training.dataset import load_dataset

        check_state_dir_free(durability)
        dataset = load_dataset(data_dir)
        if durability.state_dir is None:
            return MemoryStore.from_dataset(dataset, progress=progress, **limits)
        from stores.durable import open_durable_memory

        return open_durable_memory(
            dataset, durability.state_dir, durability.fsync, durability.snapshot_seconds, progress=progress, **limits
        )
    if url.startswith(("redis://", "rediss://", "redis-cluster://", "unix://")):
        from stores.redis import RedisStore

        try:
            return RedisStore.from_url(url, options=limits)
        except ValueError as error:
            raise ValueError(f"--store {redacted(url)}: {error}") from None
    raise ValueError(f"unknown store {url!r}: use memory, redis://HOST:PORT/DB or redis-cluster://HOST:PORT[,HOST:PORT...]")


def check_state_dir_free(durability: Durability) -> None:
    """stores.wal.WalError at once when another process keeps its events in
    ``durability.state_dir``: before anything slow (the dataset, a model) is loaded."""
    if durability.state_dir is not None:
        from stores.durable import check_not_in_use

        check_not_in_use(durability.state_dir)


SECRET_OPTIONS = frozenset({"password", "ssl_password"})
"""Store URL query options redis-py takes as secrets: shown as *** like the URL's own password."""


def redacted(url: str) -> str:
    """The URL without its passwords (the one before the host and ``password=`` /
    ``ssl_password=`` options), for messages. Done on the text, not by urlsplit, whose
    ``port`` raises on the very URLs an error message is about (a port out of range)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    from stores.redis import password_end

    host_start = password_end(rest) + 1
    netloc_end = min((i for i in (rest.find("/", host_start), rest.find("?", host_start)) if i >= 0), default=len(rest))
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    path, question, query = tail.partition("?")
    if question:
        query = "&".join(_redacted_option(option) for option in query.split("&"))
    return f"{scheme}://{netloc}{path}{question}{query}"


def _redacted_option(option: str) -> str:
    name, equals, _ = option.partition("=")
    return f"{name}=***" if equals and name in SECRET_OPTIONS else option


_NO_AUTH_SIGNS = ("NOAUTH", "must be called with the client already authenticated")  # Redis 6+'s HELLO, and AUTH's


def password_missing(url: str, error: BaseException) -> str | None:
    """What to do when Redis asks for a password the URL does not give: redis-py's words
    (about HELLO, a command the operator never ran) said neither; None for any other error."""
    if not any(sign in str(error) for sign in _NO_AUTH_SIGNS) or redacted(url) != url:
        return None
    return "Redis requires a password and this URL gives none: redis://[USER]:PASSWORD@HOST:PORT/DB (or ?password=...)"

