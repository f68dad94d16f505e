"""A generated dataset, a trained model and a running gRPC server, for end-to-end tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.feed.v1 import feed_pb2, feed_pb2_grpc
from serving.config import ServerConfig
from serving.server import FeedServer
from training.artifact import publish
from training.dataset import Dataset, write_dataset
from training.generate import generate
from training.train import TrainParams, default_ranker_spec, train

TOKEN_SECRET = b"tests-token-secret-0123456789abcdef"
FAST_TRAINING = TrainParams(factors=16, iterations=6, show_progress=False)


@dataclass
class World:
    dataset: Dataset
    data_dir: Path
    models_dir: Path


def build_world(root: Path, users: int = 400, sellers: int = 40, items: int = 1200, seed: int = 3) -> World:
    dataset = generate(users=users, sellers=sellers, items=items, seed=seed)
    data_dir, models_dir = root / "data", root / "models"
    write_dataset(dataset, str(data_dir))
    model, info = train(dataset, FAST_TRAINING)
    publish(str(models_dir), model, {"params": {}, "data_fingerprint": dataset.fingerprint(), "metrics": {}, "ranker": default_ranker_spec()})
    return World(dataset, data_dir, models_dir)


@contextlib.contextmanager
def running_server(world: World, store_url: str = "memory", **overrides) -> Iterator[tuple[FeedServer, feed_pb2_grpc.FeedServiceStub]]:
    settings = dict(
        models_dir=str(world.models_dir),
        store_url=store_url,
        data_dir=str(world.data_dir),
        port=0,
        token_secret=TOKEN_SECRET,
        reload_seconds=0,
    )
    config = ServerConfig(**{**settings, **overrides})
    server = FeedServer(config)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield server, feed_pb2_grpc.FeedServiceStub(channel)
    finally:
        channel.close()
        server.stop(grace=0)


def all_pages(stub: feed_pb2_grpc.FeedServiceStub, user_id: str, limit: int, max_pages: int, **request) -> list[feed_pb2.GetFeedResponse]:
    pages, token = [], ""
    for _ in range(max_pages):
        response = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user_id, limit=limit, page_token=token, **request), timeout=10)
        pages.append(response)
        token = response.next_page_token
        if not token:
            break
    return pages
