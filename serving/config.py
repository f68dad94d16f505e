"""Server configuration: one frozen dataclass, read from flags and environment in one place."""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass, field

from ranking.feed import SOURCE_NAMES, FeedSettings

TOKEN_SECRET_ENV = "FEEDRANK_TOKEN_SECRET"


@dataclass(frozen=True)
class ServerConfig:
    models_dir: str  # directory with CURRENT and versioned model artifacts
    store_url: str = "memory"  # memory | redis://HOST:PORT/DB | redis-cluster://HOST:PORT
    data_dir: str | None = None  # dataset directory the memory store loads
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    threads: int = 8  # request threads per process
    workers: int = 1  # server processes sharing the port (SO_REUSEPORT); >1 needs a shared store
    token_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    reload_seconds: float = 10.0  # how often to look for a new models/CURRENT; 0 disables
    metrics_port: int = 0  # Prometheus /metrics port (worker i uses port + i); 0 disables
    feed: FeedSettings = FeedSettings()
    arms_file: str | None = None  # A/B arms (TOML, serving/arms.py); None: every user gets CURRENT and `feed`


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions line by line, and prints indented lines (a file format) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            indent + line if line.startswith(" ") else super(HelpFormatter, self)._fill_text(line, width, indent)
            for line in text.splitlines()
        )


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--models", required=True, help="models directory written by `python -m training train`")
    group.add_argument("--data", help="dataset directory to load into the embedded memory store")
    group.add_argument(
        "--store",
        default="memory",
        help="online store: 'memory' (default; needs --data), redis://HOST:PORT/DB or redis-cluster://HOST:PORT",
    )
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    group.add_argument("--port", type=int, default=50051, help="port to bind; 0 picks a free one (default: %(default)s)")
    group.add_argument("--threads", type=int, default=8, help="request threads per process (default: %(default)s)")
    group.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port via SO_REUSEPORT; more than 1 needs --store redis (default: %(default)s)",
    )
    group.add_argument(
        "--reload-seconds",
        type=float,
        default=10.0,
        help="poll models/CURRENT this often and hot-swap a new model; 0 disables (default: %(default)s)",
    )
    group.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on this port (worker i of --workers uses PORT+i); 0 disables (default: %(default)s)",
    )
    group.add_argument(
        "--port-file", help="write the bound port to this file once the server is SERVING (for scripts and tests)"
    )
    feed = parser.add_argument_group("feed")
    defaults = FeedSettings()
    feed.add_argument("--max-per-seller", type=int, default=defaults.max_per_seller, help="seller cap per page (default: %(default)s)")
    feed.add_argument("--max-per-category", type=int, default=defaults.max_per_category, help="category cap per page; 0 = none (default: %(default)s)")
    feed.add_argument("--per-key-limit", type=int, default=defaults.per_key_limit, help="newest listings per followed seller and likes per friend to consider (default: %(default)s)")
    feed.add_argument("--trending-limit", type=int, default=defaults.trending_limit, help="trending items to consider (default: %(default)s)")
    feed.add_argument("--neighbours", type=int, default=defaults.neighbours, help="embedding neighbours to consider (default: %(default)s)")
    feed.add_argument("--knn-neighbours", type=int, default=defaults.knn_neighbours, help="item-kNN candidates to consider (default: %(default)s)")
    feed.add_argument("--fresh-window-seconds", type=float, default=defaults.fresh_window_seconds, help="a followed seller's listing or a friend's like this recent is promoted to the top of the page (default: %(default)s)")
    feed.add_argument("--max-fresh", type=int, default=defaults.max_fresh, help="promoted fresh items per page; 0 disables (default: %(default)s)")
    feed.add_argument("--fatigue-free-views", type=int, default=defaults.fatigue_free_views, help="views of an item without engagement before it starts to sink (default: %(default)s)")
    feed.add_argument("--fatigue-sink", type=float, default=defaults.fatigue_sink, help="score (log-odds) an item loses per view past the free ones; ln 2 halves its odds (default: %(default).4f)")
    feed.add_argument("--fatigue-hide-views", type=int, default=defaults.fatigue_hide_views, help="views without engagement after which an item rests out of the feed for 3 days from the last view (default: %(default)s)")
    feed.add_argument("--sources", default=",".join(SOURCE_NAMES), help="comma-separated candidate sources (default: %(default)s)")
    experiment = parser.add_argument_group(
        "A/B arms",
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
        "  max_per_category = 1      # any feed flag, - written _; the rest: the flags",
    )
    experiment.add_argument("--arms", metavar="FILE", help="A/B arms file (TOML, format above); default: no arms")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    secret = os.environ.get(TOKEN_SECRET_ENV)
    return ServerConfig(
        models_dir=args.models,
        store_url=args.store,
        data_dir=args.data,
        host=args.host,
        port=args.port,
        threads=args.threads,
        workers=args.workers,
        token_secret=secret.encode() if secret else secrets.token_bytes(32),
        reload_seconds=args.reload_seconds,
        metrics_port=args.metrics_port,
        feed=FeedSettings(
            max_per_seller=args.max_per_seller,
            max_per_category=args.max_per_category,
            per_key_limit=args.per_key_limit,
            trending_limit=args.trending_limit,
            neighbours=args.neighbours,
            knn_neighbours=args.knn_neighbours,
            fresh_window_seconds=args.fresh_window_seconds,
            max_fresh=args.max_fresh,
            fatigue_free_views=args.fatigue_free_views,
            fatigue_sink=args.fatigue_sink,
            fatigue_hide_views=args.fatigue_hide_views,
            sources=tuple(s for s in args.sources.split(",") if s),
        ),
        arms_file=args.arms,
    )
