"""A/B arms: the assignment of users to arms, the arms file, and arms served over real gRPC."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from protos.feed.v1 import feed_pb2
from ranking.feed import POOL_SETTINGS, FeedSettings
from serving.arms import BUCKETS, ArmsConfigError, bucket_of, load_arms, load_pinned, parse_arms, published_versions
from serving.client import format_feed
from serving.feed_service import InvalidRequest
from serving.server import FeedServer
from tests.conftest import REPO, json_lines
from tests.feed_world import FAST_TRAINING, World, all_pages, build_world, running_server
from training.artifact import publish, set_current
from training.train import TrainParams, default_ranker_spec, train

THREE_ARMS = """
salt = "exp-2026-12"
[[arm]]
name = "control"
share = 0.5
[[arm]]
name = "cat-cap"
share = 0.3
[arm.feed]
max_per_category = 1
[[arm]]
name = "small"
share = 0.2
model = "current"
"""


PINNED_BUCKETS = [5481, 2775, 6083]  # bucket_of("exp-2026-12", ·) of "u00001", "u00002", ""


def synthetic_users(n: int = 10_000) -> list[str]:
    return [f"user-{i:05d}" for i in range(n)]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- assignment and the file format (no server) ---


def test_a_user_keeps_their_arm_across_reads_and_processes():
    first, again = parse_arms(THREE_ARMS), parse_arms(THREE_ARMS)
    users = synthetic_users(2_000)
    assert [first.assign(u).name for u in users] == [again.assign(u).name for u in users]
    assert [first.assign(u).name for u in users] == [first.assign(u).name for u in users]
    # The hash is keyed BLAKE2b, not Python's per-process salted hash(): these values
    # hold in every process and release; changing them reshuffles every running experiment.
    assert [bucket_of("exp-2026-12", u) for u in ("u00001", "u00002", "")] == PINNED_BUCKETS
    code = "from serving.arms import bucket_of; print(bucket_of('exp-2026-12', 'u00001'))"
    other_process = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert int(other_process.stdout) == bucket_of("exp-2026-12", "u00001")


def test_arms_split_users_in_their_shares_and_the_salt_reshuffles_them():
    arms = parse_arms(THREE_ARMS)
    assert [(a.buckets.start, a.buckets.stop) for a in arms.arms] == [(0, 5_000), (5_000, 8_000), (8_000, BUCKETS)]
    users = synthetic_users()
    counts = Counter(arms.assign(u).name for u in users)
    for arm in arms.arms:
        assert counts[arm.name] / len(users) == pytest.approx(arm.share, abs=0.02), counts
    reshuffled = parse_arms(THREE_ARMS.replace("exp-2026-12", "exp-2027-01"))
    moved = sum(arms.assign(u).name != reshuffled.assign(u).name for u in users) / len(users)
    # Independent splits: a user changes arm with probability 1 - (0.5² + 0.3² + 0.2²) = 0.62.
    assert moved == pytest.approx(0.62, abs=0.03)


def test_an_arm_takes_the_servers_flags_for_the_feed_settings_it_does_not_name():
    base = FeedSettings(max_per_seller=3, neighbours=7)
    arms = parse_arms(THREE_ARMS, "arms.toml", base)
    control, cat_cap, small = arms.arms
    assert control.settings == base and control.model is None and small.model is None
    assert cat_cap.settings == FeedSettings(max_per_seller=3, neighbours=7, max_per_category=1)
    assert parse_arms("", "arms.toml").arms == ()  # no arms: the experiment is off


ONE_ARM = 'salt = "s"\n[[arm]]\nname = "a"\nshare = 1.0\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('salt = "s"\nshares = 1\n', "arms.toml: line 2: unknown key 'shares' at the top level"),
        (ONE_ARM + 'modle = "v1"\n', "arms.toml: line 5: unknown key 'modle' in arm 1 ('a')"),
        (ONE_ARM + "[arm.feed]\nmax_per_sellr = 1\n", "arms.toml: line 6: unknown key 'max_per_sellr' in the feed settings of arm 1 ('a')"),
        (ONE_ARM + "[arm.feed]\nmax_per_seller = 0\n", "arms.toml: line 6: arm 1 ('a'): feed: max_per_seller: must be >= 1"),
        (ONE_ARM + '[arm.feed]\nsources = ["nope"]\n', "arms.toml: line 6: arm 1 ('a'): feed: sources: unknown ['nope']"),
        # as --fallback-sources refuses it: friend_likes would never run, and trending always
        (ONE_ARM + '[arm.feed]\nsources = ["trending", "followed_sellers"]\nfallback_sources = ["friend_likes"]\n',
         "arms.toml: line 7: arm 1 ('a'): feed: fallback_sources: friend_likes is not among the sources (trending, followed_sellers)"),
        (ONE_ARM + '[arm.feed]\nneighbours = "5"\n', "arms.toml: line 6: arm 1 ('a'): feed: neighbours: must be a non-negative integer"),
        # what the server's flag refuses, an arm refuses too (0 would have removed a cap, or failed the swap later)
        (ONE_ARM + "[arm.feed]\nper_key_limit = 0\n", "arms.toml: line 6: arm 1 ('a'): feed: per_key_limit: must be >= 1 (as --per-key-limit), got 0"),
        (ONE_ARM + "[arm.feed]\nmax_follows_read = 0\n", "arms.toml: line 6: arm 1 ('a'): feed: max_follows_read: must be >= 1"),
        (ONE_ARM + "[arm.feed]\nfatigue_hide_views = 0\n", "arms.toml: line 6: arm 1 ('a'): feed: fatigue_hide_views: must be >= 1"),
        ('salt = "s"\n[[arm]\n', "arms.toml:2:6: not valid TOML: Expected ']]' at the end of an array declaration"),
        ('[[arm]]\nname = "a"\nshare = 1.0\n', "arms.toml: 'salt' must be a non-empty string"),
        (ONE_ARM.replace("1.0", "0.6") + '[[arm]]\nname = "a"\nshare = 0.4\n', "arms.toml: line 6: arm 2 ('a'): the name 'a' is used by another arm"),
        (ONE_ARM.replace('"a"', '""'), "arms.toml: line 3: arm 1: 'name' must be a non-empty string"),
        (ONE_ARM.replace("1.0", "0.7") + '[[arm]]\nname = "b"\nshare = 0.2\n', "arms.toml: the arms' shares sum to 0.9; they must sum to 1"),
        (ONE_ARM + '[[arm]]\nname = "b"\nshare = 0\n', "arms.toml: line 7: arm 2 ('b'): 'share' must be a positive number, got 0"),
        (ONE_ARM + 'model = "../elsewhere"\n', "arms.toml: line 5: arm 1 ('a'): 'model' must be a version directory name"),
        # a key an arm lacks is on its [[arm]] line, not on the next arm's line that sets it (line 5, line 6 before)
        ('salt = "s"\n[[arm]]\nshare = 0.5\n[[arm]]\nname = "b"\nshare = 0.5\n', "arms.toml: line 2: arm 1: 'name' must be a non-empty string"),
        ('salt = "s"\n[[arm]]\nname = "a"\n[[arm]]\nname = "b"\nshare = 0.5\n', "arms.toml: line 2: arm 1 ('a'): 'share' is missing: each arm takes a positive share"),
    ],
)
def test_a_bad_arms_file_is_an_error_naming_the_file_line_and_key(text, message):
    with pytest.raises(ArmsConfigError) as error:
        parse_arms(text, "arms.toml")
    assert str(error.value).startswith(message), str(error.value)


def test_shares_within_the_tolerance_are_accepted():
    arms = parse_arms('salt = "s"\n' + "".join(f'[[arm]]\nname = "a{i}"\nshare = 0.1\n' for i in range(10)))
    assert len(arms.arms) == 10 and arms.arms[-1].buckets.stop == BUCKETS


# --- served over gRPC ---


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """A world whose models directory holds two versions, CURRENT pointing at the older."""
    world = build_world(tmp_path_factory.mktemp("arms-world"))
    world.old = (world.models_dir / "CURRENT").read_text().strip()
    model, _ = train(world.dataset, TrainParams(factors=8, iterations=3, show_progress=False))
    world.new = Path(publish(str(world.models_dir), model, {"params": {}, "metrics": {}, "ranker": default_ranker_spec()})).name
    set_current(str(world.models_dir), world.old)
    return world


def arms_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arms.toml"
    path.write_text(text)
    return path


def split(treatment_model: str, treatment_feed: str = "max_per_seller = 1") -> str:
    return f"""
salt = "grpc-test"
[[arm]]
name = "control"
share = 0.5
[[arm]]
name = "treatment"
share = 0.5
model = "{treatment_model}"
[arm.feed]
{treatment_feed}
"""


def seller_repeats(page: feed_pb2.GetFeedResponse) -> int:
    return max(Counter(item.seller_id for item in page.items).values(), default=0)


def test_the_response_names_the_arm_whose_model_and_feed_settings_built_it(world, tmp_path):
    path = arms_file(tmp_path, split(world.new))
    arms = load_arms(str(path))
    users = world.dataset.user_ids()[:120]
    repeats: dict[str, int] = Counter()
    requests: dict[str, int] = Counter()
    with running_server(world, arms_file=str(path)) as (server, stub):
        for user in users:
            pages = all_pages(stub, user, 20, 3)
            arm = arms.assign(user).name
            requests[arm] += len(pages)
            ids = [item.item_id for page in pages for item in page.items]
            assert len(ids) == len(set(ids)), user  # page tokens work within an arm
            for page in pages:
                assert page.arm == arm, user
                assert page.model_version == (world.new if arm == "treatment" else world.old), user
                repeats[arm] = max(repeats[arm], seller_repeats(page))
        registry = server.service.metrics.registry
        for arm in ("control", "treatment"):
            assert registry.get_sample_value("feedrank_arm_requests_total", {"arm": arm, "code": "OK"}) == requests[arm]
            assert registry.get_sample_value("feedrank_arm_request_seconds_count", {"arm": arm}) == requests[arm]
        assert registry.get_sample_value("feedrank_arm_model_info", {"arm": "treatment", "version": world.new}) == 1
        assert registry.get_sample_value("feedrank_arm_model_info", {"arm": "control", "version": world.old}) == 1
        assert registry.get_sample_value("feedrank_model_info", {"version": world.old}) == 1
        total = sum(requests.values())
        assert registry.get_sample_value("feedrank_requests_total", {"method": "GetFeed", "code": "OK"}) == total
    assert 30 < requests["control"] and 30 < requests["treatment"]
    assert repeats["treatment"] == 1  # max_per_seller = 1 holds on every page of the arm ...
    assert repeats["control"] == 2  # ... while the default (the server's cap of 2) does repeat sellers


def test_without_arms_the_response_names_no_arm(world):
    with running_server(world) as (server, stub):
        page = stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=5)
        assert (page.arm, page.model_version) == ("", world.old)
        assert server.service.metrics.registry.get_sample_value("feedrank_arm_requests_total", {"arm": "", "code": "OK"}) == 1


def test_a_missing_model_version_fails_at_startup_naming_it(world, tmp_path):
    from serving.config import ServerConfig

    path = arms_file(tmp_path, split("20991231T000000Z-nope00"))
    with pytest.raises(ArmsConfigError, match=f"^{re.escape(str(path))}: line 9: arm 'treatment': no model version '20991231T000000Z-nope00'"):
        load_pinned(load_arms(str(path)), str(world.models_dir))
    server = FeedServer(ServerConfig(models_dir=str(world.models_dir), data_dir=str(world.data_dir), port=0, arms_file=str(path)))
    try:
        with pytest.raises(ArmsConfigError, match="20991231T000000Z-nope00"):
            server.start()
    finally:
        server.stop(grace=0)
    # The command line says so before starting anything; --help explains the flag.
    argv = [sys.executable, "-m", "serving", "--models", str(world.models_dir), "--data", str(world.data_dir), "--arms", str(path)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--arms: " in result.stderr and "20991231T000000Z-nope00" in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "serving", "--help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "--arms FILE" in help_text and "[[arm]]" in help_text and "[arm.feed]" in help_text


def wait_for(stub, user: str, expected: tuple[str, str], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        page = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=5), timeout=5)
        if (page.arm, page.model_version) == expected:
            return
        assert time.monotonic() < deadline, f"{user} still gets {(page.arm, page.model_version)}, not {expected}"
        time.sleep(0.05)


def test_arms_models_and_the_arms_file_are_hot_reloaded(world, tmp_path, caplog):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(world.models_dir, models)
    path = arms_file(tmp_path, split(world.old, "max_per_seller = 2"))
    arms = load_arms(str(path))
    users = world.dataset.user_ids()
    control = next(u for u in users if arms.assign(u).name == "control")
    treatment = next(u for u in users if arms.assign(u).name == "treatment")
    copy = World(world.dataset, world.data_dir, models)
    with running_server(copy, arms_file=str(path), reload_seconds=0.05) as (server, stub):
        wait_for(stub, control, ("control", world.old))
        wait_for(stub, treatment, ("treatment", world.old))
        # The operator points the arm at another version: no restart.
        write_atomically(path, split(world.new))
        wait_for(stub, treatment, ("treatment", world.new))
        wait_for(stub, control, ("control", world.old))
        assert seller_repeats(stub.GetFeed(feed_pb2.GetFeedRequest(user_id=treatment, limit=20), timeout=5)) == 1
        # A broken file is logged and the arms in force are kept.
        with caplog.at_level(logging.ERROR, logger="feedrank.serving"):
            write_atomically(path, split("20991231T000000Z-nope00"))
            deadline = time.monotonic() + 10
            while not any("arms reload" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the broken arms file was not reported"
                time.sleep(0.05)
        assert "20991231T000000Z-nope00" in caplog.text
        # ... and counted, for alerts, as a model that fails to load is (it was only logged).
        assert server.service.metrics.registry.get_sample_value("feedrank_arms_reload_failures_total") >= 1
        wait_for(stub, treatment, ("treatment", world.new), seconds=0)
        # The pinned version published afterwards is picked up without the file changing
        # (the failed reload is retried after its backoff, 2 s here).
        shutil.copytree(models / world.old, models / "20991231T000000Z-nope00")
        wait_for(stub, treatment, ("treatment", world.old))
        # An arm that follows CURRENT switches with it, like the default model.
        write_atomically(path, split("current"))
        wait_for(stub, treatment, ("treatment", world.old))
        model, _ = train(world.dataset, FAST_TRAINING)
        newest = Path(publish(str(models), model, {"params": {}, "metrics": {}, "ranker": default_ranker_spec()})).name
        wait_for(stub, treatment, ("treatment", newest))
        wait_for(stub, control, ("control", newest))
        # With no arms left in the file the experiment is off.
        write_atomically(path, 'salt = "grpc-test"\n')
        wait_for(stub, treatment, ("", newest))


def test_a_feed_can_be_built_as_another_arm_or_model_version_would(world, tmp_path):
    arms = load_arms(str(arms_file(tmp_path, split(world.new))))
    user = next(u for u in world.dataset.user_ids() if arms.assign(u).name == "control")
    with running_server(world, arms_file=str(arms_file(tmp_path, split(world.new)))) as (server, stub):
        service = server.service
        as_treatment = service.get_feed(user, 20, "", [], time.time(), arm="treatment")
        assert (as_treatment.arm, as_treatment.model_version) == ("treatment", world.new)
        assert max(Counter(item.seller_id for item in as_treatment.items).values()) == 1  # the arm's settings
        newer = service.get_feed(user, 20, "", [], time.time(), version=world.new)
        assert (newer.arm, newer.model_version) == ("", world.new)
        own = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=20), timeout=5)
        assert (own.arm, own.model_version) == ("control", world.old)  # the user's own arm is untouched
        for kwargs, field in (({"arm": "nope"}, "arm"), ({"version": "20990101T000000Z-000000"}, "version"),
                              ({"version": "../models/" + world.old}, "version"), ({"arm": "control", "version": world.old}, "version")):
            with pytest.raises(InvalidRequest) as raised:
                service.get_feed(user, 5, "", [], time.time(), **kwargs)
            assert raised.value.field == field, kwargs


def test_user_context_names_likes_friends_follows_and_hides(world):
    with running_server(world) as (server, stub):
        user = world.dataset.user_ids()[0]
        liked = stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=3), timeout=5).items
        stub.Ingest(feed_pb2.IngestRequest(events=[
            feed_pb2.Event(event_id="ctx-1", like=feed_pb2.UserItem(user_id=user, item_id=liked[0].item_id)),
            feed_pb2.Event(event_id="ctx-2", not_interested_item=feed_pb2.UserItem(user_id=user, item_id=liked[1].item_id)),
        ]), timeout=5)
        context = server.service.user_context(user)
        assert context.recent_likes[0][0] == liked[0].item_id
        assert context.hidden_items == [liked[1].item_id]
        pairs = list(zip(world.dataset.friends.src, world.dataset.friends.dst))
        assert context.friends == tuple(sorted({b for a, b in pairs if a == user} | {a for a, b in pairs if b == user}))


def test_a_model_served_on_other_candidate_pools_than_it_was_trained_on_is_warned_about(world, caplog):
    """A model trained with tuned pools (train --params) was served with the server's
    defaults in silence (an outside review): its ranker then saw pools unlike its own."""
    import dataclasses

    from serving.feed_service import FeedService, pool_settings_drift
    from stores.memory import MemoryStore
    from training.artifact import load_current

    artifact = load_current(str(world.models_dir))
    assert pool_settings_drift(artifact.manifest, FeedSettings()) == []  # trained and served with the defaults
    trained = {**dataclasses.asdict(FeedSettings()), "sources": list(FeedSettings().sources)}  # as train writes it
    assert pool_settings_drift({**artifact.manifest, "feed": trained}, FeedSettings()) == []
    tuned = dict(trained, neighbours=30, sources=["embedding_neighbours", "item_knn"])
    tuned_artifact = dataclasses.replace(artifact, manifest={**artifact.manifest, "feed": tuned})
    assert pool_settings_drift(tuned_artifact.manifest, FeedSettings()) == [
        f"--sources: model embedding_neighbours,item_knn, served {','.join(FeedSettings().sources)}",
        "--neighbours: model 30, served 150",
    ]
    as_trained = FeedSettings(neighbours=30, sources=("embedding_neighbours", "item_knn"))
    assert pool_settings_drift(tuned_artifact.manifest, as_trained) == []
    store = MemoryStore.from_dataset(world.dataset)
    with caplog.at_level(logging.WARNING, logger="feedrank.serving"):
        FeedService(store, tuned_artifact, None, FeedSettings())
        FeedService(store, tuned_artifact, None, as_trained)
    (warning,) = [r.getMessage() for r in caplog.records if "other candidate pools" in r.getMessage()]
    assert warning.startswith(f"model {artifact.version} was trained and evaluated on other candidate pools") and "--neighbours: model 30, served 150" in warning
    # Pools the operator did not set are the model's own: served as tuned, without a warning.
    from ranking.feed import POOL_SETTINGS

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="feedrank.serving"):
        adopting = FeedService(store, tuned_artifact, None, FeedSettings(), model_pools=POOL_SETTINGS)
        partly = FeedService(store, tuned_artifact, None, FeedSettings(neighbours=40), model_pools=("sources",))
    assert adopting.settings_for(tuned_artifact) == dataclasses.replace(FeedSettings(), neighbours=30, sources=("embedding_neighbours", "item_knn"))
    assert adopting._pipeline.config.sources and {s.name for s in adopting._pipeline.config.sources} <= {"embedding_neighbours", "item_knn"}
    assert partly.settings_for(tuned_artifact).neighbours == 40  # given: the operator's
    (warning,) = [r.getMessage() for r in caplog.records if "other candidate pools" in r.getMessage()]
    assert "--neighbours: model 30, served 40" in warning and "--sources" not in warning


def test_pool_flags_not_given_are_the_models(world):
    from ranking.feed import POOL_SETTINGS
    from serving.config import resolve_config
    from tests.test_config_logs import parse

    assert resolve_config(parse("--models", "m"), {}).model_pools == POOL_SETTINGS
    given = resolve_config(parse("--models", "m", "--neighbours", "150"), {"FEEDRANK_SOURCES": "item_knn,trending"})
    assert given.model_pools == tuple(n for n in POOL_SETTINGS if n not in ("neighbours", "sources"))


def test_an_arm_serves_its_models_candidate_pools_unless_its_feed_or_the_flags_set_them(world, tmp_path, caplog):
    """An arm pinned to a tuned model was served on the server's pools (and its [arm.feed]),
    not on the model's own as the same model served as CURRENT is (an outside review)."""
    import shutil

    from ranking.feed import SOURCE_NAMES

    models = tmp_path / "models"
    shutil.copytree(world.models_dir, models)
    model, _ = train(world.dataset, FAST_TRAINING)
    tuned_feed = {"sources": ["followed_sellers", "trending"], "neighbours": 30}
    manifest = {"params": {}, "metrics": {}, "ranker": default_ranker_spec(), "feed": tuned_feed}
    tuned = Path(publish(str(models), model, manifest)).name
    set_current(str(models), world.old)
    all_sources = ", ".join(f'"{name}"' for name in SOURCE_NAMES)
    path = arms_file(tmp_path, f"""
salt = "pools"
[[arm]]
name = "tuned"
share = 0.5
model = "{tuned}"
[[arm]]
name = "wide"
share = 0.5
model = "{tuned}"
[arm.feed]
sources = [{all_sources}]
""")
    gathered: dict[str, set[str]] = {"tuned": set(), "wide": set()}
    with caplog.at_level(logging.WARNING, logger="feedrank.serving"):
        with running_server(World(world.dataset, world.data_dir, models), arms_file=str(path), model_pools=POOL_SETTINGS) as (server, _):
            service = server.service
            for user in world.dataset.user_ids()[:40]:
                for arm in gathered:
                    page = service.get_feed(user, 20, "", [], time.time(), arm=arm)
                    assert page.model_version == tuned
                    gathered[arm] |= {source for source, count in page.gathered_by_source.items() if count}
    assert gathered["tuned"] and gathered["tuned"] <= {"followed_sellers", "trending"}
    assert "embedding_neighbours" in gathered["wide"]
    (warning,) = [r.getMessage() for r in caplog.records if "other candidate pools" in r.getMessage()]
    assert f"model {tuned} (arm wide)" in warning and "--sources: model followed_sellers,trending" in warning
    assert "--neighbours" not in warning and "the arm's [arm.feed]" in warning
    # The sources its [arm.feed] sets, or the server's flags set, win; the rest are the model's.
    from serving.feed_service import FeedService

    tuned_arm, wide_arm = service.arms.arms
    artifact = service.pinned[tuned]
    assert service.settings_for(artifact, tuned_arm) == FeedSettings(sources=("followed_sellers", "trending"), neighbours=30)
    assert service.settings_for(artifact, wide_arm) == FeedSettings(neighbours=30)
    flags_set_sources = FeedService(service.store, artifact, None, FeedSettings(), arms=service.arms, pinned=service.pinned,
                                    model_pools=tuple(name for name in POOL_SETTINGS if name != "sources"))
    assert flags_set_sources.settings_for(artifact, tuned_arm) == FeedSettings(neighbours=30)


def test_a_model_recording_pools_this_server_cannot_serve_is_refused_as_it_loads(world, tmp_path, caplog):
    """A model whose manifest's pools name a source this server does not know (a newer
    trainer's) loaded, then failed every swap: a traceback at every poll, no backoff, no
    reload-failure count; and at start an error that did not name the model (an outside review)."""
    import shutil

    from serving.config import ServerConfig

    models = tmp_path / "models"
    shutil.copytree(world.models_dir, models)
    model, _ = train(world.dataset, FAST_TRAINING)
    manifest = {"params": {}, "metrics": {}, "ranker": default_ranker_spec(), "feed": {"sources": ["item_knn", "seller_collections"]}}
    newer = Path(publish(str(models), model, manifest)).name
    set_current(str(models), world.old)
    with caplog.at_level(logging.INFO, logger="feedrank.serving"):
        with running_server(World(world.dataset, world.data_dir, models), reload_seconds=0.05, model_pools=POOL_SETTINGS) as (server, stub):
            set_current(str(models), newer)
            time.sleep(3)
            assert stub.GetFeed(feed_pb2.GetFeedRequest(user_id="u00001", limit=5), timeout=5).model_version == world.old
            assert server.service.metrics.registry.get_sample_value("feedrank_model_reload_failures_total") in (1, 2)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert 1 <= len(errors) <= 2 and not any(r.exc_info for r in errors)  # backed off (2 s, then 4 s), one line each
    assert f"version {newer}:" in errors[0].getMessage() and "feed.sources: candidate sources this server does not know: seller_collections" in errors[0].getMessage()
    server = FeedServer(ServerConfig(models_dir=str(models), data_dir=str(world.data_dir), port=0))
    try:
        with pytest.raises(ValueError, match=f"model version {models / newer}: manifest.json feed.sources: .*seller_collections"):
            server.start()
    finally:
        server.stop(grace=0)


def test_the_access_line_names_the_arm_and_its_model_also_for_a_failed_feed(world, tmp_path, log_stream):
    """A GetFeed refused for a user of an arm pinned to another version was logged under
    CURRENT's version, and no access line named the arm (an outside review)."""
    import http.client

    from serving import logs
    from tests.redis_servers import free_port

    path = arms_file(tmp_path, split(world.new))
    user = next(u for u in world.dataset.user_ids() if load_arms(str(path)).assign(u).name == "treatment")
    with running_server(world, arms_file=str(path), http_port=free_port()) as (server, stub):
        stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=5), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=0), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.Ingest(feed_pb2.IngestRequest(), timeout=5)
        connection = http.client.HTTPConnection("127.0.0.1", server.http.port, timeout=10)
        connection.request("GET", f"/v1/users/{user}/feed?page_size=0")
        assert connection.getresponse().status == 400
    access = [line for line in json_lines(log_stream) if line["logger"] == logs.ACCESS_LOGGER]
    assert [(a["code"], a["model_version"], a.get("arm")) for a in access] == [
        ("OK", world.new, "treatment"),
        ("INVALID_ARGUMENT", world.new, "treatment"),
        ("INVALID_ARGUMENT", world.old, None),  # Ingest: CURRENT, no arm
        ("INVALID_ARGUMENT", world.new, "treatment"),  # over HTTP
    ]


def test_a_version_copied_under_another_name_is_loaded_once(world, tmp_path, caplog):
    """CURRENT naming a version directory copied under another name (a stable name to roll
    back to) was compared with the version its manifest records: never equal, so the model
    was loaded again and swapped in at every poll, for good (an outside review)."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(world.models_dir, models)
    shutil.copytree(models / world.old, models / "stable")
    set_current(str(models), "stable")
    caplog.set_level(logging.INFO, logger="feedrank.serving")

    def swaps() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving model ") and "; arms" in r.getMessage()]

    with running_server(World(world.dataset, world.data_dir, models), reload_seconds=0.05) as (_, stub):
        time.sleep(1.5)
        assert swaps() == []
        set_current(str(models), world.new)
        wait_for(stub, "u00001", ("", world.new))
        set_current(str(models), "stable")
        wait_for(stub, "u00001", ("", world.old))
        time.sleep(1)
        assert len(swaps()) == 2


def test_a_version_named_by_hand_sorts_by_its_manifest_time_or_as_the_oldest(world, tmp_path):
    """A directory copied in by hand as "my-test" sorted as the newest version (names were
    sorted as text, and letters sort after digits): first in the explorer's lists."""
    import json
    import shutil

    models = tmp_path / "models"
    shutil.copytree(world.models_dir, models)

    def copy_of_old(name: str, created_at: str | None) -> None:
        shutil.copytree(models / world.old, models / name)
        manifest = json.loads((models / name / "manifest.json").read_text())
        manifest.pop("created_at")
        (models / name / "manifest.json").write_text(json.dumps({**manifest, **({"created_at": created_at} if created_at else {})}))

    old_created = json.loads((models / world.old / "manifest.json").read_text())["created_at"]
    copy_of_old("stable", old_created)  # as old as the old one; its name carries no milliseconds to place it within the second
    copy_of_old("my-test", None)
    copy_of_old("from-2099", "2099-01-01T00:00:00Z")  # what the manifest records wins over the name
    assert published_versions(str(models)) == ["from-2099", world.new, world.old, "stable", "my-test"]


def test_a_printed_feed_names_the_arm_that_built_it():
    # `serving feed` against a server with arms printed the model only: which arm a user is
    # in was not to be seen from the command line.
    armed = feed_pb2.GetFeedResponse(model_version="v2", arm="cat-cap")
    assert format_feed("u1", [armed]).splitlines()[0] == "Feed for u1 (model v2, A/B arm cat-cap)"
    assert format_feed("u1", [feed_pb2.GetFeedResponse(model_version="v1")]).splitlines()[0] == "Feed for u1 (model v1)"
