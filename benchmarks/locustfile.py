"""An independent load client: Locust (PyPI ``locust``) calling GetFeed or the health Check.

It shares no code with ``loadgen.py`` beyond the generated protos, so it checks
loadgen's numbers from outside. Locust is not a dependency of feedrank; install it in
its own environment, with the grpcio the project pins:

    python -m venv /tmp/locust && /tmp/locust/bin/pip install locust grpcio grpcio-health-checking protobuf
    PYTHONPATH=. /tmp/locust/bin/locust -f benchmarks/locustfile.py --headless --host 127.0.0.1:50051 \\
        --users 8 --spawn-rate 8 --run-time 20s --tags feed --data /tmp/b20/data

``--tags feed`` runs GetFeed (random users from DATA/likes.csv, limit 20), ``--tags empty``
the health Check. Every Locust user is a closed loop (no wait time), like loadgen's
closed-loop phases; Locust's table reports requests, failures, percentiles and req/s.
``--host`` and ``--data`` are required, checked before any user starts (one line, exit 1):
without them every user failed with a traceback, or asked for made-up ids u00000-u00999
that the server does not know. A server with ``--tokens-file`` wants ``--token`` (or the
variable FEEDRANK_CLIENT_TOKEN) with the 'read' scope, sent as 'authorization: Bearer TOKEN'.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists: gRPC must cooperate with gevent

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from locust import User, constant, events, tag, task  # noqa: E402

from benchmarks.likes_file import liked_columns, likes_header  # noqa: E402
from protos.feed.v1 import feed_pb2, feed_pb2_grpc  # noqa: E402

TIMEOUT_SECONDS = 5.0
USERS_SAMPLED = 5000
TOKEN_VARIABLE = "FEEDRANK_CLIENT_TOKEN"  # serving/client.py's, named here so this file needs no serving import


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:  # type: ignore[no-untyped-def]
    parser.add_argument("--data", default="", help="dataset directory whose likes.csv gives the user ids to ask for (required: the server's)")
    parser.add_argument("--limit", type=int, default=20, help="items per GetFeed")
    parser.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE, ""),
                        help=f"bearer token for a server with --tokens-file, 'read' scope (env {TOKEN_VARIABLE})")


def start_problem(host: str | None, data_dir: str) -> str | None:
    """Why no simulated user could run with this ``host`` (--host) and ``data_dir`` (--data), or None."""
    if not host:
        return "--host is required: the feed server's gRPC address, e.g. --host 127.0.0.1:50051"
    if not data_dir:
        return "--data is required: the dataset directory the server was loaded from, whose likes.csv gives the users to ask for"
    if not (Path(data_dir) / "likes.csv").is_file():
        return f"--data {data_dir}: {'no likes.csv there' if Path(data_dir).is_dir() else 'no such directory'}"
    if "user_id" not in likes_header(data_dir):
        return f"--data {data_dir}: likes.csv has no user_id column"
    return None


@events.init.add_listener
def _check_start(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """One line and exit 1 before any user starts, rather than a traceback per user."""
    if environment.parsed_options is None:  # run as a library: its caller set the environment up
        return
    problem = start_problem(environment.host, environment.parsed_options.data)
    if problem:
        sys.exit(f"benchmarks/locustfile.py: {problem}")


def call_metadata(token: str) -> tuple[tuple[str, str], ...] | None:
    """The metadata every call carries: the bearer token, when there is one."""
    return (("authorization", f"Bearer {token}"),) if token else None


@functools.cache
def _user_ids(data_dir: str) -> list[str]:
    """Read once for every simulated user: each read the whole likes.csv at its start."""
    users = sorted({user for (user,) in liked_columns(data_dir, ("user_id",))})
    return random.Random(0).sample(users, min(len(users), USERS_SAMPLED))


class FeedUser(User):
    """One channel per Locust user; each call is reported to Locust as a 'grpc' request."""

    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.channel = grpc.insecure_channel(self.host)
        self.feed = feed_pb2_grpc.FeedServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.user_ids = _user_ids(options.data)
        self.limit = options.limit
        self.metadata = call_metadata(options.token)

    def on_stop(self) -> None:
        self.channel.close()

    def _timed(self, name: str, call, request) -> None:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        response, error = None, None
        try:
            response = call(request, timeout=TIMEOUT_SECONDS, metadata=self.metadata)
        except grpc.RpcError as rpc_error:
            error = rpc_error
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1e3,
            response_length=response.ByteSize() if response is not None else 0,
            exception=error,
            context={},
        )

    @tag("feed")
    @task
    def get_feed(self) -> None:
        request = feed_pb2.GetFeedRequest(user_id=random.choice(self.user_ids), limit=self.limit)
        self._timed("GetFeed", self.feed.GetFeed, request)

    @tag("empty")
    @task
    def check(self) -> None:
        self._timed("Health/Check", self.health.Check, health_pb2.HealthCheckRequest(service=""))
