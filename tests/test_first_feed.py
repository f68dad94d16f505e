"""A server's first feeds compile nothing: every compiled kernel a feed runs is compiled
(or loaded from numba's cache) while the service loads, before it reports ready.

Without a warm cache (a fresh install, a new container) a kernel first met by a feed
cost that feed 0.4-0.7 s. Run in a fresh process, so that no earlier test has compiled
the kernels already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import STORE_KINDS, make_redis_store
from tests.feed_world import build_world

ROOT = Path(__file__).resolve().parent.parent

_PROBE = r"""
import json, sys, time
import numba.core.registry
from protos.feed.v1 import feed_pb2
from serving.config import ServerConfig
from serving.service_setup import open_service, warm_store
from serving.servicer import feed_page
from stores.events import Event, EventKind

def compiled():
    # Every numba dispatcher of this project's modules, with the signatures it holds.
    kernels = {}
    for name, module in list(sys.modules.items()):
        if not name.split(".")[0] in ("ranking", "embeddings", "stores", "serving"):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher):
                kernels[f"{name}.{attr}"] = sorted(str(s) for s in value.signatures)
    return kernels

models_dir, data_dir, store_url, users = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
config = ServerConfig(models_dir=models_dir, store_url=store_url, data_dir=data_dir if store_url == "memory" else None, port=0,
                      token_secret=b"tests-token-secret-0123456789abcdef", reload_seconds=0)
service, _ = open_service(config)
warm_store(service.store)
before = compiled()
now = time.time()
def feeds(users, **request):
    for user in users:
        token = ""
        for _ in range(3):
            page = feed_page(service, feed_pb2.GetFeedRequest(user_id=user, limit=10, page_token=token, **request), now)
            token = page.next_page_token
            if not token:
                break
        yield page
served = [item.item_id for page in feeds(users) for item in page.items]
# Then what a client does next: events, and feeds narrowed by the shopper's filters.
service.ingest([Event(f"probe-{i}", EventKind.LIKE, now, user_id=user, item_id=item) for i, (user, item) in enumerate(zip(users, served[::3]))], now)
list(feeds(users[:10], exclude_item_ids=served[:5], min_price=1.0, max_price=100.0, max_ship_days=5, exclude_categories=["c01"]))
for user in users[:5]:  # the explorer's explained pages
    service.get_feed(user, 10, "", (), now, explain=True)
after = compiled()
print(json.dumps({"kernels": len(after), "first_met_by_a_feed": {
    name: sorted(set(signatures) - set(before.get(name, []))) for name, signatures in after.items()
    if set(signatures) - set(before.get(name, []))
}}))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("first-feed"), users=200, sellers=20, items=600)


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_the_first_feeds_meet_no_kernel_the_service_did_not_compile_while_loading(world, kind, request):
    store_url = "memory"
    if kind != "memory":
        store_url = request.getfixturevalue("redis_url" if kind == "redis" else "redis_cluster_url")
        make_redis_store(store_url, world.dataset).close()
    users = sorted(set(world.dataset.likes.src))[:40] + ["someone-new"]
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(world.models_dir), str(world.data_dir), store_url, json.dumps(users)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["kernels"] >= 5, report  # the probe found the kernels
    assert report["first_met_by_a_feed"] == {}, report
