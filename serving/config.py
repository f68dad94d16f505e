"""Server configuration: one frozen dataclass, read from flags, environment and a TOML file in one place.

Every server flag ``--some-flag`` can also be set by the environment variable
``FEEDRANK_SOME_FLAG`` or by the key ``some_flag`` of a TOML file given with ``--config``
(or ``FEEDRANK_CONFIG``). Precedence: flag > environment > file > default. An empty
variable counts as unset. A bad value names its source: the flag, the variable, or the
file, key and line. Besides the flags: ``FEEDRANK_TOKEN_SECRET`` (page-token key) and
``FEEDRANK_TOKENS`` (bearer tokens, serving/auth.py).

To add a flag: one ``Flag`` in ``FLAGS``, a ``ServerConfig`` field, and a line in
``resolve_config``.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import math
import os
import re
import threading
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ranking.feed import POOL_SETTINGS, SOURCE_NAMES, FeedSettings, parse_source_names
from serving import auth
from serving.logs import LOG_FORMATS, LOG_LEVELS
from serving.page_token import DEFAULT_MAX_SERVED, DEFAULT_TOKEN_TTL_SECONDS, MAX_SERVED, MIN_SECRET_BYTES
from serving.store_url import FSYNC_POLICIES, Durability
from stores.events import DEFAULT_MAX_CLOCK_SKEW
from stores.base import LONGEST_DEDUPE_TTL
from stores.memory import DEFAULT_DEDUPE_TTL, DEFAULT_MAX_FOLLOWS, DEFAULT_MAX_FRIENDS

ENV_PREFIX = "FEEDRANK_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
TOKEN_SECRET_ENV = "FEEDRANK_TOKEN_SECRET"
PREVIOUS_SECRETS_ENV = "FEEDRANK_TOKEN_SECRET_PREVIOUS"
TOKENS_ENV = "FEEDRANK_TOKENS"
CONFIG_ENV = "FEEDRANK_CONFIG"
CLIENT_TOKEN_ENV = "FEEDRANK_CLIENT_TOKEN"  # `python -m serving feed`'s (serving/client.py), often set beside the server's
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_RPCS = 64
DEFAULT_MAX_OPEN_STREAMS = 1000
MEMORY_FEED_THREADS = 0
"""Feed threads per process with the memory store when --threads is 0: none, each feed is
built on the server's event loop. On 2 cores that served 1.25x the GetFeeds of the sync
server's 2 threads (404-475 against 327-373 per second, 20k users / 50k items), with the
same tail within noise (benchmarks/README.md, "python -m serving on grpc.aio", 2026-12-02)."""
REDIS_FEED_THREADS = 8
"""Feed threads per process with Redis when --threads is 0: requests wait on round trips."""
LONGEST_WAIT_SECONDS = threading.TIMEOUT_MAX
"""The most a setting that a thread waits for (--reload-seconds...) may be: a longer Event.wait
raises OverflowError, which killed the thread while the server ran on (9.2e9 s on Linux)."""


@dataclass(frozen=True)
class ServerConfig:
    models_dir: str  # directory with CURRENT and versioned model artifacts
    store_url: str = "memory"  # memory | redis://HOST:PORT/DB | redis-cluster://HOST:PORT[,HOST:PORT...]
    data_dir: str | None = None  # dataset directory the memory store loads
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    threads: int = 0  # threads running FeedService RPCs per process; 0: feed_threads picks (0 there: the event loop)
    workers: int = 1  # server processes sharing the port (SO_REUSEPORT); >1 needs a shared store
    feed_processes: int = 0  # child processes building the GetFeeds of one server process
    # Page-token key; None: a random one per start (tokens do not survive a restart, and the server warns).
    token_secret: bytes | None = field(default=None, repr=False)
    reload_seconds: float = 10.0  # how often to look for a new models/CURRENT; 0 disables
    metrics_port: int = 0  # Prometheus /metrics port (worker i uses port + i); 0 disables
    metrics_host: str = ""  # the address /metrics binds; "": --host's
    http_port: int = 0  # the feed explorer and HTTP/JSON API (serving/web; worker i uses port + i); 0 disables
    progress: bool = True  # a progress bar while the memory store loads (only on a terminal)
    drop_unknown_items: bool = False  # drop likes of items missing from items.csv instead of refusing the dataset
    feed: FeedSettings = FeedSettings()
    # Pool settings (ranking.feed.POOL_SETTINGS) that each model serves with its own
    # manifest's values: those the operator did not set (resolve_config). The default, none:
    # a config built in code serves its ``feed`` as it is.
    model_pools: tuple[str, ...] = ()
    arms_file: str | None = None  # A/B arms (TOML, serving/arms.py); None: every user gets CURRENT and `feed`
    port_file: str | None = None  # written with the bound port once health is SERVING
    # Auth and transport (serving/auth.py). No tokens and no tokens file: every client may call everything.
    tokens: tuple[auth.Token, ...] = ()  # FEEDRANK_TOKENS' (or given in code): the same for the server's life
    tokens_file: str | None = None  # more tokens, re-read when the file changes (serving/credentials.py)
    credentials_reload_seconds: float = 10.0  # how often to look for a changed tokens file or TLS file; 0 disables
    tls_cert: str | None = None  # PEM server certificate (chain); with tls_key, serve TLS only
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM CA bundle: require client certificates it signed (mTLS)
    # Logs (serving/logs.py).
    log_format: str = "text"
    log_level: str = "info"
    # Limits.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # largest request message
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS  # FeedService RPCs in flight per process; 0: no limit
    max_open_streams: int = DEFAULT_MAX_OPEN_STREAMS  # health Watch and reflection streams open per process; 0: no limit
    # Durability of the memory store (the write-ahead log: serving/store_url.py).
    durability: Durability = Durability()
    # Page tokens (serving/page_token.py): secrets still accepted during a rotation, lifetime, depth.
    previous_token_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    token_ttl_seconds: float = DEFAULT_TOKEN_TTL_SECONDS
    max_feed_depth: int = DEFAULT_MAX_SERVED
    max_clock_skew_seconds: float = DEFAULT_MAX_CLOCK_SKEW  # ingested times may be at most this far ahead
    # Store limits: graph degrees at ingest, how long applied event ids are remembered.
    max_friends: int = DEFAULT_MAX_FRIENDS
    max_follows: int = DEFAULT_MAX_FOLLOWS
    dedupe_ttl_seconds: float = DEFAULT_DEDUPE_TTL
    worker_index: int = 0  # which of --workers this process is (set by serve())

    @property
    def feed_threads(self) -> int:
        """``threads``, or when it is 0 the measured default for the store (0: the event loop builds the feeds)."""
        if self.threads:
            return self.threads
        return MEMORY_FEED_THREADS if self.store_url == "memory" else REDIS_FEED_THREADS


MEMORY_COPY_MAX_BYTES = 256 * 1024 * 1024
"""With the memory store, feed processes are the default only while the files it loads (the
dataset, and a --state-dir's snapshot and log) total at most this: each child holds a copy of
the store (0.3 GB in memory for 20k users / 50k items, whose files are 56 MB), and taking it
holds the store's lock (0.7 s there, 14 s at 1M users)."""


def default_feed_processes(store_url: str, workers: int, data_dir: str | None = None, state_dir: str | None = None) -> int:
    """--feed-processes when it is not set, with one worker: on Redis one more than the
    cores, since a feed waits on its store's round trips part of the time; on the memory
    store, whose feeds never wait, as many as the cores, and only while its files are small
    enough to copy into each child (``MEMORY_COPY_MAX_BYTES``), else none. On 2 cores,
    20k users / 50k items, 3 feed processes served 1.4-1.65x the GetFeeds of feeds built on
    the server's loop, which uses one core, and on the memory store 2 served as many as 3
    with a lower p99 at half load, for one copy less (benchmarks/README.md, "2026-12-05
    (session 43)")."""
    if workers > 1:
        return 0
    cores = len(os.sched_getaffinity(0))
    if store_url != "memory":
        return cores + 1
    return cores if bytes_under(data_dir, state_dir) <= MEMORY_COPY_MAX_BYTES else 0


def bytes_under(*directories: str | None) -> int:
    """Total size of the files under ``directories`` (missing ones count 0)."""
    total = 0
    for directory in directories:
        for root, _, names in os.walk(directory) if directory else ():
            for name in names:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:  # removed meanwhile
                    pass
    return total


class ConfigError(ValueError):
    """A bad setting; the message names where it came from (flag, variable, or file:line key)."""


@dataclass(frozen=True)
class Flag:
    """One server setting: ``--flag``, ``FEEDRANK_FLAG`` and the TOML key ``dest``
    (a bool also has ``--no-flag``; its variable takes 1/0, true/false, yes/no, on/off)."""

    dest: str
    kind: type  # int, float, str or bool
    default: Any
    help: str
    group: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    listed: bool = False  # comma-separated names: a TOML array of strings says the same, as in an arms file

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    def from_text(self, text: str) -> Any:
        """The value of a flag or variable; ValueError says what was expected."""
        if self.kind is int:
            try:
                value: Any = int(text.strip())
            except ValueError:
                raise ValueError(f"expected an integer, got {text!r}") from None
        elif self.kind is float:
            try:
                value = float(text.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {text!r}") from None
            if math.isinf(value):  # named as written (Infinity, 1e999)
                raise ValueError(f"expected a finite number, got {text!r}")
        elif self.kind is bool:
            word = text.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}, got {text!r}")
            value = word in _TRUE
        else:
            value = text
        return self.check(value)

    def from_toml(self, value: Any) -> Any:
        if self.listed and isinstance(value, list):
            if not all(isinstance(name, str) for name in value):
                raise ValueError(f"expected a string or an array of strings, got {value!r}")
            value = ",".join(value) or "none"
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or (isinstance(value, bool) and self.kind is not bool):
            expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[self.kind]
            expected += " or an array of strings" if self.listed else ""
            raise ValueError(f"expected {expected}, got {value!r}")
        return self.check(value)

    def check(self, value: Any) -> Any:
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        if self.kind is float and value != value:  # NaN
            raise ValueError("expected a number, got nan")
        if self.kind is float and math.isinf(value):  # a TOML inf: a wait of inf seconds overflows, math.ceil raises
            raise ValueError(f"expected a finite number, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be >= {self.minimum:g}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be <= {self.maximum:g}, got {value!r}")
        if self.kind is str and not value:
            raise ValueError("must not be empty")
        return value

    def argparse_type(self) -> Any:
        def convert(text: str) -> Any:
            try:
                return self.from_text(text)
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error)) from None

        convert.__name__ = self.kind.__name__
        return convert


_FEED = FeedSettings()
GROUPS = {
    "server": (
        "Every flag can also be set by the environment variable named after it (--max-per-seller: "
        "FEEDRANK_MAX_PER_SELLER) or by a key of the --config TOML file (max_per_seller = 3); precedence: "
        "flag > environment > file > default, and an empty variable counts as unset. FEEDRANK_TOKEN_SECRET "
        "signs page tokens: give every server process the same one (without it, a random key per start); "
        "FEEDRANK_TOKEN_SECRET_PREVIOUS, comma-separated, holds older secrets still accepted while one is rotated."
    ),
    "auth and TLS": (
        "Bearer tokens (--tokens-file and/or the FEEDRANK_TOKENS variable, same format, entries separated by "
        "newlines or ';'); clients send the metadata 'authorization: Bearer TOKEN'. 'read' allows GetFeed, "
        "'write' allows Ingest; health and reflection stay open. Without tokens any client may call everything "
        "(the server warns). The tokens file is re-read when it changes; FEEDRANK_TOKENS is read at start only. Tokens file:\n"
        "  # TOKEN (16+ chars)               SCOPES      [NAME for the access log]\n"
        "  3f9c0d2e6b1a4c8e9f7d5b3a1c2e4f60  read        feed-web\n"
        "  a1b2c3d4e5f60718293a4b5c6d7e8f90  read,write  ingest-worker"
    ),
    "logs": "Log lines go to stderr: JSON (one object per line) or text. Each RPC adds one access line "
    "(request_id from x-request-id metadata or new, method, code, latency_ms, model_version, arm with A/B arms, worker, pid).",
    "limits": None,
    "durability": "The memory store's write-ahead log and snapshots (not for Redis, which keeps its own).",
    "feed": "The candidate pool flags (--sources, --fallback-sources, --neighbours, --knn-neighbours, "
    "--trending-limit, --per-key-limit) default to the values the served model's manifest records, the "
    "pools its ranker was fitted on (each A/B arm's model: its own, unless the arm's [arm.feed] sets them); "
    "the defaults shown are for a model that records none. A pool flag given wins, with a warning where it "
    "differs from the model's.",
    "A/B arms": (
        "--arms FILE splits users into arms by a salted hash of the user id; each arm serves its own "
        "model version and feed settings, and GetFeed responses and metrics name the arm. The file is "
        "TOML (re-read when it changes, every --reload-seconds; a broken file is logged and the old arms kept):\n"
        '  salt = "exp-2026-12"      # changing it reshuffles users\n'
        "  [[arm]]\n"
        '  name = "control"\n'
        "  share = 0.5               # shares are positive and sum to 1\n"
        "  [[arm]]\n"
        '  name = "cat-cap"\n'
        "  share = 0.5\n"
        '  model = "VERSION"         # under --models; "current" (the default): follow CURRENT\n'
        "  [arm.feed]\n"
        "  max_per_category = 1      # any feed flag, - written _; the rest: the flags\n"
        "An arm's model is served on the candidate pools its manifest records, as the main model is, "
        "except those the flags or its [arm.feed] set."
    ),
}

FLAGS: tuple[Flag, ...] = (
    Flag("models", str, None, "models directory written by `python -m training train` (required)", "server", metavar="DIR"),
    Flag("data", str, None, "dataset directory to load into the embedded memory store (required with it; unused with Redis)", "server", metavar="DIR"),
    Flag("store", str, "memory", "online store: 'memory' (needs --data), redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS), unix:///PATH/TO/redis.sock?db=DB or redis-cluster://HOST:PORT[,HOST:PORT...] (several nodes: any one of them answering is enough to start)", "server", metavar="URL"),
    Flag("host", str, "127.0.0.1", "address to bind", "server"),
    Flag("port", int, 50051, "port to bind; 0 picks a free one. A port already in use is refused (sharing is only for --workers)", "server", minimum=0, maximum=65535),
    Flag("threads", int, 0, f"threads building feeds and applying events per process, beside the event loop that answers health checks and refusals at once; 0: the measured default for the store: none with the memory store (its feeds are ~1.5 ms of CPU and are built on the event loop, the fastest measured; a health check then waits for the few feeds ahead of it on the loop, 16 ms at most under a flood in benchmarks/bench_health_flood.py; Ingest runs on 2 threads of its own, as it may wait on the write-ahead log's fsync), {REDIS_FEED_THREADS} with Redis (feeds wait on round trips)", "server", minimum=0),
    Flag("workers", int, 1, "server processes sharing the port via SO_REUSEPORT; more than 1 needs --store redis. The kernel spreads connections, not calls: a client with one channel reaches one process (see --feed-processes)", "server", minimum=1),
    Flag("feed_processes", int, None, "child processes that build the GetFeeds of this one server process, each with its own store connection and model, so that one client connection can use every core (with --workers a client with one channel reaches one process). With the memory store each child holds a copy of the server's store, which follows every Ingest before the child's next feed: N more copies of the store's memory, and a start that waits for them. Instead of --workers; 0: feeds are built in the server process. Default, with one worker: on Redis one more than the cores (on 2 cores, 3 served 2.4x the GetFeeds of --workers 3 over one channel, 384 against 162 a second: benchmarks/README.md); with the memory store as many as the cores (its feeds never wait on a store; on 2 cores, 3 served 1.4-1.65x the GetFeeds of 0, and 2 as many as 3 with a lower p99), and only while the files it loads (--data, --state-dir) total at most 256 MB, else 0 (each child holds 0.3 GB for 20k users / 50k items, whose files are 56 MB; at 1M users a copy takes 14 s and 2.8 GB: use Redis)", "server", minimum=0, metavar="N"),
    Flag("reload_seconds", float, 10.0, "poll models/CURRENT and the --arms file this often and hot-swap what changed; 0 disables both", "server", minimum=0, maximum=LONGEST_WAIT_SECONDS),
    Flag("metrics_port", int, 0, "serve Prometheus metrics on this port (worker i of --workers uses PORT+i); 0 disables. Plain HTTP with no token, even with TLS and --tokens-file: bind it to a private address with --metrics-host", "server", minimum=0, maximum=65535),
    Flag("metrics_host", str, "", "address the metrics port binds; default: --host's. The metrics name the model versions, request counts and the certificate's expiry: on a server whose --host is public, give a private address (127.0.0.1, an internal interface)", "server"),
    Flag("http_port", int, 0, "serve the feed explorer (web page) and the HTTP/JSON API on this port (worker i of --workers uses PORT+i); 0 disables", "server", minimum=0, maximum=65535),
    Flag("progress", bool, True, "a progress bar while the memory store loads (never when stderr is not a terminal)", "server"),
    Flag("drop_unknown_items", bool, False, "drop the likes and engagements of items missing from items.csv, with a warning that counts them (off: such a row is an error)", "server"),
    Flag("port_file", str, None, "write the bound port to this file once health is SERVING (with --workers: once every worker is); for scripts and tests; default: none written", "server", metavar="FILE"),
    Flag("tokens_file", str, None, "bearer tokens with scopes (format above); re-read when it changes (every --credentials-reload-seconds): a token removed is refused from the next call on, and a file that fails to load is logged and the tokens in force kept; default: none (FEEDRANK_TOKENS alone, if set)", "auth and TLS", metavar="FILE"),
    Flag("credentials_reload_seconds", float, 10.0, "poll the --tokens-file and the --tls-* files this often and put what changed in force; 0 disables", "auth and TLS", minimum=0, maximum=LONGEST_WAIT_SECONDS),
    Flag("tls_cert", str, None, "PEM certificate (chain) of the server: serve TLS only (needs --tls-key). It, the key and the client CA are re-read when one changes (every --credentials-reload-seconds; replace them together, as a Kubernetes Secret volume does): new connections on both ports get the new ones, open ones keep theirs; a pair that does not match, or an expired certificate, is logged and the one in force kept. Its expiry is logged (a warning within 14 days; expired: the server does not start); default: none (plain text on both ports)", "auth and TLS", metavar="FILE"),
    Flag("tls_key", str, None, "PEM private key of --tls-cert (required with it)", "auth and TLS", metavar="FILE"),
    Flag("tls_client_ca", str, None, "PEM CA certificates: require a client certificate signed by one (mutual TLS, on the gRPC and --http-port ports; needs --tls-cert); default: none (no client certificate asked for)", "auth and TLS", metavar="FILE"),
    Flag("log_format", str, "text", "log line format", "logs", choices=LOG_FORMATS),
    Flag("log_level", str, "info", "lowest level logged (access lines are info)", "logs", choices=LOG_LEVELS),
    Flag("max_message_bytes", int, DEFAULT_MAX_MESSAGE_BYTES, "largest request message; a larger one gets RESOURCE_EXHAUSTED (responses are bounded by the API itself)", "limits", minimum=1024),
    Flag("max_concurrent_rpcs", int, DEFAULT_MAX_CONCURRENT_RPCS, "FeedService RPCs in flight (accepted and not yet answered) per process; more are refused at once with RESOURCE_EXHAUSTED; 0: no limit. With feeds built on the event loop (--threads 0 and the memory store) the server accepts calls only as fast as it answers them, so the excess waits in gRPC's queue instead (and a call whose deadline passed is refused without work)", "limits", minimum=0),
    Flag("max_open_streams", int, DEFAULT_MAX_OPEN_STREAMS, "health Watch and reflection streams open at once per process (they need no token and stay open until the client closes them, about 18 KB each); more are refused at once with RESOURCE_EXHAUSTED, logged once a minute; 0: no limit", "limits", minimum=0),
    Flag("token_ttl_seconds", float, DEFAULT_TOKEN_TTL_SECONDS, "a page token expires this long after it was issued; 0: never", "limits", minimum=0),
    Flag("max_feed_depth", int, DEFAULT_MAX_SERVED, f"items a user can page through in one feed; a token past it gets OUT_OF_RANGE (at most {MAX_SERVED})", "limits", minimum=1, maximum=MAX_SERVED),
    Flag("max_clock_skew_seconds", float, DEFAULT_MAX_CLOCK_SKEW, "an ingested time (ts, created_at) this far past the server's clock is refused", "limits", minimum=0),
    Flag("max_friends", int, DEFAULT_MAX_FRIENDS, "friends a user may have; a friend event past it is refused (memory and Redis; on Redis a batch over write_chunk events is checked once, before its chunks, so a concurrent batch can pass it); 0: no cap", "limits", minimum=0),
    Flag("max_follows", int, DEFAULT_MAX_FOLLOWS, "sellers a user may follow; a follow past it is refused; 0: no cap", "limits", minimum=0),
    Flag("dedupe_ttl_seconds", float, DEFAULT_DEDUPE_TTL, "how long an applied event id is remembered (a retry within it is a duplicate); 0: forever", "limits", minimum=0, maximum=LONGEST_DEDUPE_TTL),
    Flag("max_follows_read", int, _FEED.max_follows_read, "followed sellers whose listings one feed reads (the most recently liked first)", "feed", minimum=1),
    Flag("max_friends_read", int, _FEED.max_friends_read, "friends whose likes one feed reads (those who shared with the user first)", "feed", minimum=1),
    Flag("state_dir", str, None, "keep the memory store's acknowledged events here (write-ahead log and snapshots) and replay them on start; default: events are lost on restart", "durability", metavar="DIR"),
    Flag("fsync", str, "batch", "'batch': fsync the log before each Ingest is acknowledged; 'off': leave it to the OS (a crash of the machine may lose recent acks)", "durability", choices=FSYNC_POLICIES),
    Flag("snapshot_seconds", float, 300.0, "how often to try folding the write-ahead logs into the snapshot, which waits until they hold as many bytes as the last snapshot; 0: never", "durability", minimum=0, maximum=LONGEST_WAIT_SECONDS),
    Flag("max_per_seller", int, _FEED.max_per_seller, "seller cap per page", "feed", minimum=1),
    Flag("max_per_category", int, _FEED.max_per_category, "category cap per page; 0 = none", "feed", minimum=0),
    Flag("per_key_limit", int, _FEED.per_key_limit, "newest listings per followed seller and likes per friend a first page reads (a deeper page reads more: ranking.pipeline.per_key_read)", "feed", minimum=1),
    Flag("trending_limit", int, _FEED.trending_limit, "trending items to consider", "feed", minimum=0),
    Flag("neighbours", int, _FEED.neighbours, "embedding neighbours to consider", "feed", minimum=0),
    Flag("knn_neighbours", int, _FEED.knn_neighbours, "item-kNN candidates to consider", "feed", minimum=0),
    Flag("ef_search", int, _FEED.ef_search, "HNSW search breadth of the embedding-neighbour search (hnsw-* indexes); 0: the model's own", "feed", minimum=0),
    Flag("fresh_window_seconds", float, _FEED.fresh_window_seconds, "a followed seller's listing, a friend's like or a friend's share this recent is promoted to the top of the page", "feed", minimum=0),
    Flag("max_fresh", int, _FEED.max_fresh, "promoted fresh items per page; 0 disables", "feed", minimum=0),
    Flag("fatigue_free_views", int, _FEED.fatigue_free_views, "views of an item without engagement before it starts to sink", "feed", minimum=0),
    Flag("fatigue_sink", float, _FEED.fatigue_sink, "score (log-odds) an item loses per view past the free ones; ln 2 halves its odds", "feed", minimum=0),
    Flag("fatigue_hide_views", int, _FEED.fatigue_hide_views, "views without engagement after which an item rests out of the feed for 3 days from the last view", "feed", minimum=1),
    Flag("sources", str, ",".join(SOURCE_NAMES), "comma-separated candidate sources", "feed", listed=True),
    Flag("fallback_sources", str, ",".join(_FEED.fallback_sources), "of those, the ones that run only when the others gathered fewer than 2 x (served + limit) candidates or a short page (the cold-start fallback); 'none': every source always runs", "feed", listed=True),
    Flag("arms", str, None, "A/B arms file (TOML, format above); default: no arms", "A/B arms", metavar="FILE"),
)
FLAGS_BY_DEST = {f.dest: f for f in FLAGS}


def _check_store_url(url: str, given_by: str) -> None:
    from serving.store_url import redacted
    from stores.redis import URL_SCHEMES, split_url

    if not url.startswith(URL_SCHEMES):
        raise ConfigError(f"{given_by}: unknown store {redacted(url)!r}: use memory, redis://HOST:PORT/DB, "
                          "rediss://HOST:PORT/DB, unix:///PATH?db=DB or redis-cluster://HOST:PORT[,HOST:PORT...]")
    try:
        split_url(url)  # the URL and every query option, so that none fails in a connection later
    except ValueError as error:
        raise ConfigError(f"{given_by} {redacted(url)}: {error}") from None


def _source_names(text: str, given_by: str) -> tuple[str, ...]:
    try:
        return parse_source_names(text)
    except ValueError as error:
        raise ConfigError(f"{given_by}: {error}") from None


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions line by line, and prints indented lines (a file format) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            indent + line if line.startswith(" ") else super(HelpFormatter, self)._fill_text(line, width, indent)
            for line in text.splitlines()
        )


def _help(flag: Flag) -> str:
    if flag.default is None or flag.default == "":  # the help says what happens without it
        default = ""
    elif isinstance(flag.default, bool):
        default = f"default: {'on' if flag.default else 'off'}; "
    elif isinstance(flag.default, float):
        default = f"default: {flag.default:g}; "
    else:
        default = f"default: {flag.default}; "
    return f"{flag.help} ({default}env {flag.env})".replace("%", "%%")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The server flags; every default is None here: ``config_from_args`` fills them in."""
    groups = {name: parser.add_argument_group(name, description) for name, description in GROUPS.items()}
    groups["server"].add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file of settings: any flag's name with _ for - as a key (port = 50051, max_per_seller = 2); "
        f"a relative path in it is relative to the file; a flag or variable overrides it (default: none; env {CONFIG_ENV})",
    )
    for flag in FLAGS:
        if flag.kind is bool:
            groups[flag.group].add_argument(
                flag.flag, dest=flag.dest, action=argparse.BooleanOptionalAction, default=None, help=_help(flag)
            )
            continue
        groups[flag.group].add_argument(
            flag.flag, dest=flag.dest, type=flag.argparse_type(), default=None, help=_help(flag),
            metavar=flag.metavar or ("{" + ",".join(flag.choices) + "}" if flag.choices else flag.dest.upper()),
        )
    parser.set_defaults(_config_parser=parser)


def _toml_line(text: str, key: str) -> int | None:
    # key = ..., "key" = ..., key.sub = ..., or a table of that name ([key], [[key]], [key.sub]),
    # as a file laid out in sections ([server]) has: its unknown key was named without a line.
    name = rf"(?:{re.escape(key)}|[\"']{re.escape(key)}[\"'])"
    pattern = re.compile(rf"^\s*{name}\s*[=.]|^\s*\[\[?\s*{name}\s*[\].]")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


_TOML_ERROR_PLACE = re.compile(r"(.*) \(at line (\d+), column (\d+)\)$")


def toml_syntax_error(path: str, error: tomllib.TOMLDecodeError) -> str:
    """``FILE:LINE:COLUMN: not valid TOML: WHAT``, the place as editors and compilers write
    it (tomllib of Python 3.11 gives it only inside its message); ``FILE: ...`` when the
    error is at the end of the document."""
    place = _TOML_ERROR_PLACE.match(str(error))
    if place is None:
        return f"{path}: not valid TOML: {error}"
    what, line, column = place.groups()
    return f"{path}:{line}:{column}: not valid TOML: {what}"


PATH_METAVARS = ("DIR", "FILE")  # the flags that name a file or directory


def read_config_file(path: str) -> dict[str, tuple[Any, str]]:
    """The flag values of a TOML config file, each checked and with where it is (FILE:LINE),
    so that a later check of a value names its line too; ConfigError names the file, key and line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror or error}") from None
    text = raw.decode("utf-8", "replace")
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(toml_syntax_error(path, error)) from None
    values: dict[str, tuple[Any, str]] = {}
    for key, value in table.items():
        line = _toml_line(text, key)
        where = f"{path}:{line}" if line else path
        dest = key.replace("-", "_")
        flag = FLAGS_BY_DEST.get(dest)
        if flag is None:
            close = difflib.get_close_matches(dest, FLAGS_BY_DEST, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}; keys are the flag names with _ for -")
        try:
            values[dest] = flag.from_toml(value), where
        except ValueError as error:
            raise ConfigError(f"{where}: key '{key}': {error}") from None
        if flag.metavar in PATH_METAVARS and values[dest][0] is not None:
            # Relative to the file, not to wherever the server is started (a service
            # manager's working directory is often /): the file and its paths move together.
            values[dest] = os.path.join(os.path.dirname(os.path.abspath(path)), values[dest][0]), where
    return values


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
                     flags: Sequence[Flag] = FLAGS) -> tuple[dict[str, Any], dict[str, str]]:
    """Each flag's value by precedence flag > environment > config file > default, and where
    it came from; of ``flags`` only (the tools that share some of the server's settings)."""
    environ = os.environ if environ is None else environ
    config_path = getattr(args, "config", None) or environ.get(CONFIG_ENV) or None
    from_file = read_config_file(config_path) if config_path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for flag in flags:
        given = getattr(args, flag.dest, None)
        if given is not None:
            values[flag.dest], sources[flag.dest] = given, flag.flag
        elif environ.get(flag.env, "") != "" and not is_service_link(flag.env, environ[flag.env]):
            try:
                values[flag.dest], sources[flag.dest] = flag.from_text(environ[flag.env]), flag.env
            except ValueError as error:
                raise ConfigError(f"{flag.env}: {error}") from None
        elif flag.dest in from_file:
            value, where = from_file[flag.dest]
            values[flag.dest], sources[flag.dest] = value, f"{where}: key '{flag.dest}'"
        else:
            values[flag.dest], sources[flag.dest] = flag.default, flag.flag
    return values, sources


# Kubernetes gives each pod variables for every Service of its namespace, named after the
# Service: one named "feedrank" brings FEEDRANK_PORT=tcp://10.0.0.7:50051,
# FEEDRANK_SERVICE_HOST, FEEDRANK_PORT_50051_TCP_ADDR..., one named "feedrank-metrics"
# FEEDRANK_METRICS_PORT=tcp://... They are addresses, not settings.
_SERVICE_LINK_NAME = re.compile(rf"{ENV_PREFIX}(\w+_)?(SERVICE_(HOST|PORT\w*)|PORT_\d+_(TCP|UDP|SCTP)\w*)")
_SERVICE_LINK_ADDRESS = re.compile(r"(tcp|udp|sctp)://")


def is_service_link(name: str, value: str) -> bool:
    """Whether the variable ``name`` is one Kubernetes set for a Service, not a setting."""
    return bool(_SERVICE_LINK_NAME.fullmatch(name)) or (name.endswith("_PORT") and bool(_SERVICE_LINK_ADDRESS.match(value)))


def unknown_variable_warnings(environ: Mapping[str, str]) -> list[str]:
    """One warning for each FEEDRANK_ variable that is no setting, such as a misspelt flag's,
    which would otherwise be ignored without a word. Not an error, as an unknown key of the
    config file is: an environment may carry the variables of other tools and tests."""
    known = {flag.env for flag in FLAGS} | {TOKEN_SECRET_ENV, PREVIOUS_SECRETS_ENV, TOKENS_ENV, CONFIG_ENV, CLIENT_TOKEN_ENV}
    warnings = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known and not is_service_link(name, environ[name]):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(f"{name} is not a setting{hint}: it is ignored")
    return warnings


def read_tokens(tokens_file: str | None, environ: Mapping[str, str]) -> tuple[auth.Token, ...]:
    """The tokens of FEEDRANK_TOKENS; those of ``tokens_file`` are checked with them, so
    that a bad file fails before any worker forks, but the server reads the file itself."""
    inline = environ.get(TOKENS_ENV, "")
    tokens = auth.parse_tokens(inline, TOKENS_ENV, separators="\n;") if inline.strip() else []
    if inline.strip() and not tokens:
        raise auth.TokenError(f"{TOKENS_ENV} is set but lists no token")
    if tokens_file:
        auth.merge_tokens(auth.read_tokens_file(tokens_file), tokens)
    return tuple(tokens)


PORT_SETTINGS = ("port", "metrics_port", "http_port")
LAST_PORT = 65535


def _check_ports_apart(v: Mapping[str, Any], source: Mapping[str, str]) -> None:
    """ConfigError when two of the ports would be the same (worker i of --workers takes
    metrics and HTTP PORT+i): the second bind failed, after the start's load, as
    "Address already in use", which sent an operator looking for another process. Or when a
    worker's port would be past the last: its bind failed after the load, with a traceback."""
    spans = {dest: range(v[dest], v[dest] + (1 if dest == "port" else v["workers"])) for dest in PORT_SETTINGS if v[dest]}
    for dest, span in spans.items():
        if span[-1] > LAST_PORT:
            raise ConfigError(f"{source[dest]} {v[dest]} (to {span[-1]} with --workers): past {LAST_PORT}, the last port")
    for first, second in itertools.combinations(spans, 2):
        if set(spans[first]) & set(spans[second]):
            shown = [f"{source[dest]} {v[dest]}" + (f" (to {spans[dest][-1]} with --workers)" if len(spans[dest]) > 1 else "")
                     for dest in (first, second)]
            raise ConfigError(f"{shown[0]} and {shown[1]}: the same port twice; give each its own")


def resolve_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The server config of parsed flags, the environment and the config file; ConfigError if bad.

    The resolved values are also written back into ``args`` (``args.port_file`` etc.).
    """
    environ = os.environ if environ is None else environ
    v, source = resolve_settings(args, environ)
    # Given (a flag, a variable, the file), even as the default's value: fallback sources
    # must then be among the sources, and a pool setting wins over the model's own.
    given = {dest for dest in v if getattr(args, dest, None) is not None or source[dest] != FLAGS_BY_DEST[dest].flag}
    fallback_given = "fallback_sources" in given
    for dest, value in v.items():
        setattr(args, dest, value)
    if not v["models"]:
        raise ConfigError(f"--models is required (or {FLAGS_BY_DEST['models'].env}, or 'models' in the --config file)")
    for dest in ("tls_key", "tls_client_ca"):
        if v[dest] and not v["tls_cert"]:
            raise ConfigError(f"{source[dest]} needs --tls-cert")
    if bool(v["tls_cert"]) != bool(v["tls_key"]):
        raise ConfigError("--tls-cert and --tls-key go together")
    if v["feed_processes"] is None:
        v["feed_processes"] = args.feed_processes = default_feed_processes(v["store"], v["workers"], v["data"], v["state_dir"])
    if v["feed_processes"] and v["workers"] > 1:
        raise ConfigError(f"{source['feed_processes']} and {source['workers']}: choose one (feed processes serve every "
                          "connection of one server process; workers each take their own connections)")
    if v["workers"] > 1 and v["store"] == "memory":  # serve() refuses it too, for a config built in code
        raise ConfigError(f"{source['workers']} > 1 needs a shared store (--store redis://...): each process would "
                          "hold its own memory store and miss the events ingested by the others")
    _check_ports_apart(v, source)
    if v["store"] != "memory":
        _check_store_url(v["store"], source["store"])
    if v["state_dir"] and v["store"] != "memory":
        raise ConfigError(f"{source['state_dir']} is for the memory store; Redis keeps its own state")
    sources, fallback_sources = (_source_names(v[dest], source[dest]) for dest in ("sources", "fallback_sources"))
    stray = [name for name in fallback_sources if name not in sources]
    if stray and fallback_given:  # the default falls back only on what is among the sources
        raise ConfigError(f"{source['fallback_sources']}: {', '.join(stray)} is not among the sources ({', '.join(sources)}): "
                          "a fallback source is one of the sources, run only when the others gather too few candidates")
    try:
        tokens = read_tokens(v["tokens_file"], environ)
    except auth.TokenError as error:
        raise ConfigError(str(error)) from None
    # Stripped as each previous secret is, so that rotating a secret with a trailing newline
    # (a mounted secret file) into the previous list keeps its tokens valid.
    secret = environ.get(TOKEN_SECRET_ENV, "").strip() or None
    previous = tuple(p.strip().encode() for p in environ.get(PREVIOUS_SECRETS_ENV, "").split(",") if p.strip())
    for name, keys in ((TOKEN_SECRET_ENV, [secret.encode()] if secret else []), (PREVIOUS_SECRETS_ENV, previous)):
        if any(len(key) < MIN_SECRET_BYTES for key in keys):  # named here: the codec cannot say which variable
            raise ConfigError(f"{name}: page token secrets must be at least {MIN_SECRET_BYTES} bytes")
    return ServerConfig(
        models_dir=v["models"],
        store_url=v["store"],
        data_dir=v["data"],
        host=v["host"],
        port=v["port"],
        threads=v["threads"],
        workers=v["workers"],
        feed_processes=v["feed_processes"],
        token_secret=secret.encode() if secret else None,
        reload_seconds=v["reload_seconds"],
        metrics_port=v["metrics_port"],
        metrics_host=v["metrics_host"],
        http_port=v["http_port"],
        progress=v["progress"],
        drop_unknown_items=v["drop_unknown_items"],
        feed=FeedSettings(
            max_per_seller=v["max_per_seller"],
            max_per_category=v["max_per_category"],
            per_key_limit=v["per_key_limit"],
            trending_limit=v["trending_limit"],
            neighbours=v["neighbours"],
            knn_neighbours=v["knn_neighbours"],
            ef_search=v["ef_search"],
            fresh_window_seconds=v["fresh_window_seconds"],
            max_fresh=v["max_fresh"],
            fatigue_free_views=v["fatigue_free_views"],
            fatigue_sink=v["fatigue_sink"],
            fatigue_hide_views=v["fatigue_hide_views"],
            max_follows_read=v["max_follows_read"],
            max_friends_read=v["max_friends_read"],
            sources=sources,
            fallback_sources=fallback_sources,
        ),
        model_pools=tuple(name for name in POOL_SETTINGS if name not in given),
        arms_file=v["arms"],
        port_file=v["port_file"],
        tokens=tokens,
        tokens_file=v["tokens_file"],
        credentials_reload_seconds=v["credentials_reload_seconds"],
        tls_cert=v["tls_cert"],
        tls_key=v["tls_key"],
        tls_client_ca=v["tls_client_ca"],
        log_format=v["log_format"],
        log_level=v["log_level"],
        max_message_bytes=v["max_message_bytes"],
        max_concurrent_rpcs=v["max_concurrent_rpcs"],
        max_open_streams=v["max_open_streams"],
        durability=Durability(v["state_dir"], v["fsync"], v["snapshot_seconds"]),
        previous_token_secrets=previous,
        token_ttl_seconds=v["token_ttl_seconds"],
        max_feed_depth=v["max_feed_depth"],
        max_clock_skew_seconds=v["max_clock_skew_seconds"],
        max_friends=v["max_friends"],
        max_follows=v["max_follows"],
        dedupe_ttl_seconds=v["dedupe_ttl_seconds"],
    )


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """``resolve_config``; a bad setting exits with one usage error line when the parser is known."""
    try:
        return resolve_config(args, environ)
    except ConfigError as error:
        parser = getattr(args, "_config_parser", None)
        if parser is None:
            raise
        parser.error(str(error))
        raise  # pragma: no cover (parser.error exits)
