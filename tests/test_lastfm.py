"""training.lastfm on the real HetRec 2011 Last.fm 2K files, and fold-in for an unseen user.

The files are read in place from $FEEDRANK_SHARED_DATA/lastfm-2k (default ../shared/data next to
the repository; never copied into it). Without them these tests skip, except under CI,
where they fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import IN_CI, data_root
from training.lastfm import read_lastfm
from training.train import TrainParams, train

LASTFM = data_root() / "lastfm-2k"


@pytest.fixture(scope="module")
def lastfm():
    if not (LASTFM / "user_artists.dat").is_file():
        message = f"Last.fm 2K dataset not found at {LASTFM} (set FEEDRANK_SHARED_DATA to the folder holding lastfm-2k/)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return read_lastfm(str(LASTFM))


def test_row_counts_match_the_dataset_readme(lastfm):
    assert len(lastfm.likes) == 92_834  # user_artists.dat
    assert len(set(lastfm.likes.src)) == 1_892
    assert len(lastfm.items) == 17_632  # artists.dat; every listened artist is in it
    assert len(set(lastfm.likes.dst)) == 17_632
    assert len(lastfm.friends) == 25_434 // 2  # both directions in the file, one row per pair here
    assert lastfm.likes.weight.min() == 1 and lastfm.likes.weight.max() == 352_698
    assert lastfm.likes.weight.mean() == pytest.approx(745.2, abs=0.1)
    assert np.isnan(lastfm.likes.ts).all() and set(lastfm.items.seller_id) == {""}
    assert len(lastfm.follows) == 0


def test_a_converted_directory_loads_back_with_its_weights(lastfm, tmp_path):
    from training.dataset import load_dataset, write_dataset

    write_dataset(lastfm, str(tmp_path))
    again = load_dataset(str(tmp_path))
    assert again.fingerprint() == lastfm.fingerprint()
    np.testing.assert_array_equal(again.likes.weight, lastfm.likes.weight)


def test_fold_in_gives_a_sensible_neighbour_list_for_an_unseen_user(lastfm):
    # Hold ten users out of training entirely; fold each in from half of their artists.
    rng = np.random.default_rng(0)
    users = sorted(set(lastfm.likes.src))
    held_out = set(rng.choice(users, 10, replace=False).tolist())
    keep = [u not in held_out for u in lastfm.likes.src]
    from training.splits import _take

    train_part = lastfm.with_likes(_take(lastfm.likes, np.flatnonzero(keep)))
    model, _ = train(train_part, TrainParams(factors=32, regularization=30.0, alpha=1.5, knn="none", show_progress=False))
    artists: dict[str, list[str]] = {u: [] for u in held_out}
    for user_id, item_id in zip(lastfm.likes.src, lastfm.likes.dst):
        if user_id in held_out:
            artists[user_id].append(item_id)
    popular = [item for item, _ in sorted(
        ((i, c) for i, c in zip(*np.unique(train_part.likes.dst, return_counts=True))), key=lambda p: -p[1])]
    hits = popular_hits = 0
    for user_id, liked in artists.items():
        assert user_id not in model.user_row
        known, hidden = liked[: len(liked) // 2], set(liked[len(liked) // 2:])
        vector = model.user_vector(user_id, known)
        assert vector is not None and np.isfinite(vector).all()
        neighbours, scores = model.neighbours(vector, 50 + len(known))
        neighbours = [i for i in neighbours if i not in known][:50]
        assert list(scores) == sorted(scores, reverse=True)
        hits += len(hidden & set(neighbours))
        popular_hits += len(hidden & set([i for i in popular if i not in known][:50]))
    assert hits >= 20 and hits > 1.3 * popular_hits


@pytest.fixture(scope="module")
def lastfm_temporal(lastfm):
    return read_lastfm(str(LASTFM), temporal=True)


def test_temporal_reader_row_counts(lastfm_temporal):
    from datetime import datetime, timezone

    likes = lastfm_temporal.likes
    assert len(likes) == 71_064  # distinct (user, artist) pairs of the 186,479 tag assignments
    assert len(set(likes.src)) == 1_892 and len(set(likes.dst)) == 12_523
    assert len(lastfm_temporal.items) == 17_632 + 390  # tagged artists missing from artists.dat are added
    assert len(lastfm_temporal.friends) == 25_434 // 2
    assert np.isfinite(likes.ts).all() and likes.weight is None
    first_tag = {(u, a): t for u, a, t in zip(likes.src, likes.dst, likes.ts)}[("u2", "a52")]
    assert first_tag == datetime(2009, 4, 1, tzinfo=timezone.utc).timestamp()
    assert datetime.fromtimestamp(likes.ts.max(), timezone.utc).date().isoformat() == "2011-05-09"


def test_temporal_dataset_time_splits_and_round_trips(lastfm_temporal, tmp_path):
    from training.dataset import load_dataset, write_dataset
    from training.splits import default_split

    assert default_split(lastfm_temporal).kind == "time"
    write_dataset(lastfm_temporal, str(tmp_path))
    assert load_dataset(str(tmp_path)).fingerprint() == lastfm_temporal.fingerprint()
