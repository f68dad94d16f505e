"""benchmarks.bench_pools: its validation split has the shape of the test split it stands for."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks import bench_pools
from training.generate import generate
from training.splits import SplitSpec, split_for_evaluation


@pytest.fixture(scope="module")
def undated():
    """Generated likes with their times dropped: no split defaults to time, and every
    user has the same number of likes, so a per-user cut holds out the same share of each."""
    import dataclasses

    import numpy as np

    ds = generate(users=300, sellers=20, items=600, likes_per_user=10, seed=3, engagements=False)
    return dataclasses.replace(ds, likes=dataclasses.replace(ds.likes, ts=np.full(len(ds.likes), np.nan)))


@pytest.mark.parametrize("kind", ["random", "user"])
def test_the_validation_split_takes_the_test_splits_shape(undated, kind: str) -> None:
    split = SplitSpec.parse(f"{kind}:0.2:0")
    train_part, test, _ = split_for_evaluation(undated, split)
    fit_part, valid, _ = bench_pools.validation_parts(undated, split, 0.2, seed=1)
    assert not set(zip(valid.src, valid.dst)) & set(zip(test.src, test.dst))
    assert len(fit_part.likes) + len(valid) == len(train_part.likes)
    held = Counter(valid.src)
    exact = all(held[user] == int(0.2 * n + 0.5) for user, n in Counter(train_part.likes.src).items())
    # A per-user validation holds out the rounded fifth of every user's likes; a random one
    # (SocialLGN's shape: a user holds out 0 to many) does not.
    assert exact == (kind == "user")


@pytest.mark.parametrize(("argv", "said"), [
    (["--validation", "1.5"], "argument --validation: must be < 1, got 1.5"),
    (["--users", "-3"], "argument --users: must be >= 0, got -3"),
    (["--tolerance", "x"], "argument --tolerance: expected a number, got 'x'"),
    (["--split", "time:0.2"], "--split time:0.2: a time split needs a ts on every like"),
])
def test_a_bad_flag_is_a_usage_error_naming_it_before_any_training(undated, tmp_path, capsys, argv, said):
    from training.dataset import write_dataset

    write_dataset(undated, str(tmp_path / "data"))
    args = ["--data", str(tmp_path / "data"), "--split", "user:0.2:0", *argv]
    with pytest.raises(SystemExit) as exited:
        bench_pools.main(args)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err
