"""training.splits: sizes, disjointness, determinism, time ordering."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ranking.feed import FeedSettings, build_feed_pipeline
from ranking.ranker import LinearRanker
from stores.memory import MemoryStore
from tests.builders import make_dataset
from training.dataset import Dataset, Edges
from training.generate import generate
from training.splits import evaluation_time, random_split, time_split


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate(users=500, sellers=40, items=1000, likes_per_user=10, seed=11)


def pairs(edges: Edges) -> list[tuple[str, str, float]]:
    return list(zip(edges.src, edges.dst, edges.ts.tolist()))


def test_random_split_partitions_likes(ds: Dataset) -> None:
    train, test = random_split(ds, 0.2, seed=1)
    n = len(ds.likes)
    assert len(test) == round(0.2 * n) and len(train.likes) + len(test) == n
    assert sorted(pairs(train.likes) + pairs(test)) == sorted(pairs(ds.likes))
    keys = set(zip(train.likes.src, train.likes.dst))
    assert not keys & set(zip(test.src, test.dst))
    assert train.items is ds.items and train.follows is ds.follows
    assert train.friends is ds.friends


def test_random_split_is_seeded(ds: Dataset) -> None:
    a, b, c = (random_split(ds, 0.1, seed=s)[1] for s in (5, 5, 6))
    assert pairs(a) == pairs(b) and pairs(a) != pairs(c)


def test_validation_split_of_train(ds: Dataset) -> None:
    train, test = random_split(ds, 0.2, seed=1)
    fit, valid = random_split(train, 0.25, seed=2)
    assert len(fit.likes) + len(valid) + len(test) == len(ds.likes)
    assert not set(pairs(valid)) & set(pairs(test))


def test_time_split_holds_out_the_latest(ds: Dataset) -> None:
    train, test, split_time = time_split(ds, 0.2)
    assert len(train.likes) + len(test) == len(ds.likes)
    assert abs(len(test) - 0.2 * len(ds.likes)) <= 0.01 * len(ds.likes)  # ties at split_time
    assert (train.likes.ts < split_time).all() and (test.ts >= split_time).all()
    assert sorted(pairs(train.likes) + pairs(test)) == sorted(pairs(ds.likes))


def test_time_split_ties_go_to_test() -> None:
    base = generate(users=50, sellers=5, items=50, seed=0)
    ts = np.array([1.0, 2.0, 3.0, 3.0, 4.0] + [0.0] * (len(base.likes) - 5))
    tied = base.with_likes(Edges(base.likes.src, base.likes.dst, ts))
    n_test = len(ts) - int(np.sum(ts < 3.0))
    _, test, split_time = time_split(tied, 3 / len(ts))
    assert split_time == 3.0 and len(test) == n_test == 3


def test_time_split_needs_ts(ds: Dataset) -> None:
    ts = ds.likes.ts.copy()
    ts[3] = np.nan
    with pytest.raises(ValueError, match="ts"):
        time_split(ds.with_likes(Edges(ds.likes.src, ds.likes.dst, ts)), 0.2)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction(ds: Dataset, fraction: float) -> None:
    with pytest.raises(ValueError):
        random_split(ds, fraction, seed=0)
    with pytest.raises(ValueError):
        time_split(ds, fraction)


def test_per_user_split_holds_out_a_fifth_of_every_user(ds: Dataset) -> None:
    from collections import Counter

    from training.splits import per_user_split

    train, test = per_user_split(ds, 0.2, seed=3)
    assert sorted(pairs(train.likes) + pairs(test)) == sorted(pairs(ds.likes))
    total, held = Counter(ds.likes.src), Counter(test.src)
    assert all(held[user] == int(np.floor(0.2 * n + 0.5)) for user, n in total.items())
    assert set(test.src) <= set(train.likes.src)  # every test user keeps a history
    again, _ = per_user_split(ds, 0.2, seed=3)
    other, _ = per_user_split(ds, 0.2, seed=4)
    assert pairs(again.likes) == pairs(train.likes) and pairs(other.likes) != pairs(train.likes)


@pytest.mark.parametrize("spec", ["time:0.2", "user:0.2:1", "random:0.2:1"])
def test_validation_mirrors_the_test_split_and_never_holds_a_test_like(ds: Dataset, spec: str) -> None:
    from training.splits import SplitSpec, split_for_evaluation, validation_split

    split = SplitSpec.parse(spec)
    train, test, _ = split_for_evaluation(ds, split)
    fit_part, held, now = validation_split(train, 0.1, seed=1, kind=split.kind)
    test_pairs = set(zip(test.src, test.dst))
    assert not test_pairs & set(zip(held.src, held.dst))
    assert not test_pairs & set(zip(fit_part.likes.src, fit_part.likes.dst))
    assert len(held) + len(fit_part.likes) == len(train.likes)
    if split.kind == "time":
        assert np.nanmax(fit_part.likes.ts) < np.nanmin(held.ts) <= np.nanmin(test.ts)
        assert now == np.nanmin(held.ts)
    if split.kind == "user":
        assert set(held.src) <= set(fit_part.likes.src)


def test_default_split_is_per_user_without_times() -> None:
    from training.splits import default_split

    untimed = generate(users=50, sellers=5, items=100, seed=2)
    untimed = untimed.with_likes(Edges(untimed.likes.src, untimed.likes.dst, np.full(len(untimed.likes), np.nan)))
    assert default_split(untimed).kind == "user"
    assert default_split(generate(users=50, sellers=5, items=100, seed=2)).kind == "time"


def test_likes_tied_at_one_time_are_split_per_user_by_default_and_a_time_split_of_them_is_refused() -> None:
    # Regression: every like at one time (an export stamped with its own time) made the
    # default split a time split whose ties held out every like, so train and evaluate
    # printed a table of zeros from a model trained on nothing, and tune failed its first trial.
    from training.arguments import check_time_split
    from training.splits import SplitSpec, default_split, validation_split

    base = generate(users=50, sellers=5, items=100, seed=2)
    tied = base.with_likes(Edges(base.likes.src, base.likes.dst, np.full(len(base.likes), 1_764_000_000.0)))
    assert default_split(tied) == SplitSpec("user", 0.2, 0)
    fit_part, held, _ = validation_split(tied, 0.2, seed=0, kind="time")
    assert 0 < len(held) < 0.3 * len(tied.likes) and len(fit_part.likes) == len(tied.likes) - len(held)
    with pytest.raises(ValueError) as refused:
        check_time_split(tied, SplitSpec.parse("time:0.2"), "--split")
    assert str(refused.value) == (
        f"--split time:0.2: {len(tied.likes)} of {len(tied.likes)} likes are at or after its split time "
        "2025-11-24T16:00:00Z (ties), so it would hold out 100% of them, not the latest 20%; "
        "use --split user:0.2 or random:0.2"
    )
    check_time_split(base, SplitSpec.parse("time:0.2"), "--split")


@pytest.mark.parametrize("text", ["user", "user:x", "time:0.2:3", "week:0.2", "user:1.5"])
def test_split_spec_errors_say_what_was_expected(text: str) -> None:
    """The flag's name comes from argparse (tests/test_train.py): --split, --eval-split or --test-split."""
    from training.splits import SplitSpec

    with pytest.raises(ValueError, match="expected time:FRACTION|fraction must be in"):
        SplitSpec.parse(text)


def test_engagements_of_held_out_pairs_and_of_the_future_stay_out_of_training(ds: Dataset) -> None:
    from training.splits import per_user_split

    assert len(ds.engagements)
    for train, test, before in (
        (*random_split(ds, 0.2, seed=1), None),
        (*per_user_split(ds, 0.2, seed=1), None),
        time_split(ds, 0.2),
    ):
        held = set(zip(test.src, test.dst))
        kept = set(zip(train.engagements.user_id, train.engagements.item_id))
        assert len(train.engagements) > 0.5 * len(ds.engagements)
        if before is None:
            assert not held & kept
        else:  # by time alone
            assert train.engagements.ts.max() < before
            assert len(train.engagements) == int((np.asarray(ds.engagements.ts) < before).sum())


def test_a_time_splits_training_part_does_not_depend_on_the_test_likes(ds: Dataset) -> None:
    """Engagements of held-out pairs were dropped also before the split time, so what users
    liked after it decided what the model trained on (an outside review: 1,770 of 1,802
    replayed feeds changed when only the test part did)."""
    train, test, split_time = time_split(ds, 0.2)
    late = np.flatnonzero(np.asarray(ds.likes.ts) >= split_time)
    other_items = list(ds.likes.dst)
    for i, j in zip(late, np.roll(late, 1)):  # the same test times, other items
        other_items[i] = ds.likes.dst[j]
    shuffled = ds.with_likes(Edges(ds.likes.src, other_items, ds.likes.ts))
    again, _, _ = time_split(shuffled, 0.2)
    assert list(zip(again.engagements.user_id, again.engagements.item_id, again.engagements.kind)) == list(
        zip(train.engagements.user_id, train.engagements.item_id, train.engagements.kind))
    # Undated engagements stay, but for a held-out pair's (it cannot be placed before the like).
    undated = dataclasses.replace(ds, engagements=ds.engagements.take(np.arange(len(ds.engagements))))
    undated.engagements.ts[:] = np.nan
    kept, held_out, _ = time_split(undated, 0.2)
    held = set(zip(held_out.src, held_out.dst))
    expected = sum(pair not in held for pair in zip(ds.engagements.user_id, ds.engagements.item_id))
    assert len(kept.engagements) == expected > 0


def test_a_time_split_trains_on_no_follow_or_friendship_made_after_it(ds: Dataset) -> None:
    """A follow made in the test window often precedes the likes it explains there; kept in
    training it would hand the followed-sellers source (and the ranker) the future."""
    follow_ts = np.array(ds.follows.ts, dtype=np.float64)
    follow_ts[:5] = np.nan  # undated follows are side information of no time: they stay
    dated = dataclasses.replace(ds, follows=Edges(ds.follows.src, ds.follows.dst, follow_ts))
    train, _, split_time = time_split(dated, 0.2)
    for name in ("follows", "friends"):
        before, after = getattr(dated, name), getattr(train, name)
        late = np.asarray(before.ts) >= split_time
        assert late.any(), name  # the generator dates some in the test window
        assert len(after) == len(before) - late.sum()
        assert not (np.asarray(after.ts) >= split_time).any()
    assert set(zip(dated.follows.src[:5], dated.follows.dst[:5])) <= set(zip(train.follows.src, train.follows.dst))
    per_user, _ = random_split(dated, 0.2, seed=1)
    assert per_user.follows is dated.follows and per_user.friends is dated.friends


def test_a_replay_of_undated_data_promotes_no_like_as_news():
    """Undated events are stored at time 0; replayed at 0 each friend's like would be news
    and jump the ranker's order. The replay clock puts them past the news window."""
    nan = float("nan")
    items = [("pop", "s1", nan, 5), ("f1", "s2", nan, 5)]
    likes = [(f"stranger{i}", "pop", nan) for i in range(5)] + [("bob", "f1", nan)]
    dataset = make_dataset(items, likes, friends=[("alice", "bob", nan)])
    store = MemoryStore.from_dataset(dataset, trending_refresh_seconds=0.0)
    by_popularity = LinearRanker.from_mapping({"popularity": 1.0})
    pipeline = build_feed_pipeline(store, None, by_popularity)
    assert [c.item_id for c in pipeline.run("alice", 2, 0.0).items] == ["f1", "pop"]  # news first at 0
    replay_now = evaluation_time(dataset)
    assert replay_now >= FeedSettings().fresh_window_seconds
    assert [c.item_id for c in pipeline.run("alice", 2, replay_now).items] == ["pop", "f1"]
