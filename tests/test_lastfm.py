"""training.lastfm on the real HetRec 2011 Last.fm 2K files, and fold-in for an unseen user.

The files are read in place from $FEEDRANK_SHARED_DATA/lastfm-2k (default ../shared/data next to
the repository; never copied into it). Without them these tests skip, except under CI,
where they fail.
"""

from __future__ import annotations

import json
import re

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


def _write_published_split(root, train_rows, test_rows, users=None, items=None):
    """A tiny Last.fm source (3 users, 4 artists) and a split of it in SocialLGN's format."""
    src, split = _write_source(root), root / "split"
    split.mkdir()
    (split / "userReindex.json").write_text(json.dumps(users or {"2": 0, "3": 1, "7": 2}))
    (split / "itemReindex.json").write_text(json.dumps(items or {"10": 0, "11": 1, "12": 2, "13": 3}))
    for name, rows in (("train_set.txt", train_rows), ("test_set.txt", test_rows)):
        (split / name).write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    return str(src), str(split)


def _write_source(root):
    """A tiny Last.fm source: 3 users, 4 artists, one friendship."""
    src = root / "src"
    src.mkdir()
    (src / "user_artists.dat").write_text(
        "userID\tartistID\tweight\n" + "".join(f"{u}\t{a}\t{w}\n" for u, a, w in LISTENS))
    (src / "user_friends.dat").write_text("userID\tfriendID\n2\t3\n3\t2\n")
    return src


LISTENS = [(2, 10, 5), (2, 11, 1), (2, 12, 3), (3, 10, 2), (3, 13, 9), (7, 12, 4)]
TRAIN_ROWS = [(0, 0), (0, 2), (1, 3), (2, 2)]  # indices: user 0 = u2, item 3 = a13
TEST_ROWS = [(0, 1), (1, 0)]


def test_a_published_split_cuts_the_listens_as_its_files_say(tmp_path):
    from training.evaluate import read_test_file
    from training.lastfm import add_arguments, run, split_as_published

    src, split = _write_published_split(tmp_path, TRAIN_ROWS, TEST_ROWS)
    train_part, test = split_as_published(read_lastfm(src, binary=True), split)
    assert sorted(zip(train_part.likes.src, train_part.likes.dst)) == [("u2", "a10"), ("u2", "a12"), ("u3", "a13"), ("u7", "a12")]
    assert sorted(zip(test.src, test.dst)) == [("u2", "a11"), ("u3", "a10")]
    assert len(train_part.friends) == 1 and len(train_part.items) == 4

    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    run(parser.parse_args(["--src", src, "--binary", "--published-split", split, "--out", str(out)]))
    written = read_test_file(str(out / "test_pairs.csv"))
    assert sorted(zip(written.src, written.dst)) == [("u2", "a11"), ("u3", "a10")]
    from training.dataset import load_dataset

    assert len(load_dataset(str(out)).likes) == 4
    # Converted again into the same directory without the split, every listen is a like: the
    # old test pairs, now in the training likes, must not be left for `evaluate --test`.
    run(parser.parse_args(["--src", src, "--binary", "--out", str(out)]))
    assert len(load_dataset(str(out)).likes) == 6
    assert not (out / "test_pairs.csv").exists()


@pytest.mark.parametrize("train_rows, test_rows, users, message", [
    (TRAIN_ROWS + [(1, 1)], TEST_ROWS, None, "train_set.txt:6: column 'user': u3 never listened to a11"),
    (TRAIN_ROWS, TEST_ROWS + [(0, 0)], None, "test_set.txt:4: column 'user': the pair u2,a10 is also in train_set.txt"),
    (TRAIN_ROWS, TEST_ROWS + [(1, 0)], None, "test_set.txt:4: column 'user': the pair u3,a10 is twice"),
    (TRAIN_ROWS, [(0, 1), (5, 0)], None, "test_set.txt:3: column 'user': index 5 is not in userReindex.json"),
    (TRAIN_ROWS, [(0, 1), (1, 9)], None, "test_set.txt:3: column 'item': index 9 is not in itemReindex.json"),
    (TRAIN_ROWS, [(0, 1)], None, "train_set.txt: 1 likes of user_artists.dat are in neither part (the first: u3,a10)"),
    (TRAIN_ROWS, TEST_ROWS, {"2": 0, "3": "one"}, "userReindex.json:1: column '<file>': expected a JSON object"),
])
def test_a_published_split_that_does_not_fit_the_data_names_file_line_and_column(tmp_path, train_rows, test_rows, users, message):
    from training.dataset import DatasetError
    from training.lastfm import split_as_published

    src, split = _write_published_split(tmp_path, train_rows, test_rows, users=users)
    with pytest.raises(DatasetError, match="^" + re.escape(message)):
        split_as_published(read_lastfm(src, binary=True), split)


def test_a_published_index_that_is_not_json_names_its_line(tmp_path):
    from training.dataset import DatasetError
    from training.lastfm import split_as_published

    src, split = _write_published_split(tmp_path, TRAIN_ROWS, TEST_ROWS)
    (tmp_path / "split" / "itemReindex.json").write_text('{"10": 0,\n "11": }')
    with pytest.raises(DatasetError, match=r"^itemReindex.json:2: column '<json>': not valid JSON: Expecting value \(column 8\)"):
        split_as_published(read_lastfm(src, binary=True), split)


def test_a_byte_that_is_not_utf8_names_file_line_and_character(tmp_path):
    from training.dataset import DatasetError

    src = _write_source(tmp_path)
    (src / "artists.dat").write_bytes("id\tname\turl\tpictureURL\n10\tBjörk\tu\tp\n11\tCafé\tu\tp\n"
                                      .encode().replace("é".encode(), b"\x99"))
    with pytest.raises(DatasetError, match="^" + re.escape("artists.dat:3: column '<text>': not valid utf-8: byte 0x99 at character 7")):
        read_lastfm(str(src))
    (src / "artists.dat").write_text("id\tname\turl\tpictureURL\n10\tBjörk\tu\tp\n", encoding="utf-8")
    assert read_lastfm(str(src)).items.item_id[0] == "a10"  # UTF-8, as the real artists.dat is, still reads


@pytest.mark.parametrize("file, text, message", [
    ("user_artists.dat", "userID\tartistID\tweight\n2\t10\t5\n\n2\t11\tx\n",
     "user_artists.dat:4: column 'weight': expected an integer, got 'x'"),
    ("user_artists.dat", "userID\tartistID\tweight\n\n2\t10\t5\n2\t11\t0\n",
     "user_artists.dat:4: column 'weight': expected a positive listening count, got 0"),
    ("user_friends.dat", "userID\tfriendID\n2\t3\n\n\n3\tu2\n", "user_friends.dat:5: column 'friendID': expected an integer"),
])
def test_a_bad_value_after_a_blank_line_names_its_own_line(tmp_path, file, text, message):
    """Blank lines are skipped, and were not counted: the error named a line above the bad value."""
    from training.dataset import DatasetError

    src = _write_source(tmp_path)
    (src / file).write_text(text)
    with pytest.raises(DatasetError, match="^" + re.escape(message)):
        read_lastfm(str(src))


@pytest.mark.parametrize("text, got", [
    ("2\t10\t5\n2\t11\t1\n", "'2\\t10\\t5'"),  # its first row was taken for the header and dropped
    ("", "an empty file"),  # read as no listens: a dataset without a like
    ("userID,artistID,weight\n2,10,5\n", "'userID,artistID,weight'"),
])
def test_a_source_file_without_its_header_names_the_header_expected(tmp_path, text, got):
    from training.dataset import DatasetError

    src = _write_source(tmp_path)
    (src / "user_artists.dat").write_text(text)
    with pytest.raises(DatasetError) as info:
        read_lastfm(str(src))
    assert str(info.value) == f"user_artists.dat:1: column 'userID': expected the header userID, artistID, weight (tab-separated), got {got}"
    (src / "user_artists.dat").write_text("\ufeffuserID\tartistID\tweight\n2\t10\t5\n")  # a BOM is no part of it
    assert read_lastfm(str(src)).likes.src == ["u2"]


@pytest.mark.parametrize("day, month, year, column, message", [
    (1, 13, 2009, "month", "not a date: 2009-13-1 (month must be in 1..12)"),
    (1, 4, 0, "year", "not a date: 0-4-1 (year 0 is out of range)"),
    (31, 4, 2009, "day", "not a date: 2009-4-31 (day is out of range for month)"),
])
def test_a_tag_date_that_is_no_date_names_the_column_at_fault(tmp_path, day, month, year, column, message):
    """Every one was reported in column 'day'."""
    from training.dataset import DatasetError

    src = _write_source(tmp_path)
    (src / "user_taggedartists.dat").write_text("userID\tartistID\ttagID\tday\tmonth\tyear\n2\t10\t1\t1\t4\t2009\n"
                                                f"2\t11\t1\t{day}\t{month}\t{year}\n")
    with pytest.raises(DatasetError) as info:
        read_lastfm(str(src), temporal=True)
    assert str(info.value) == f"user_taggedartists.dat:3: column {column!r}: {message}"


@pytest.mark.parametrize("year", [209, 6009])
def test_a_tag_year_outside_the_accepted_times_is_located_in_the_source(tmp_path, year):
    """It converted, and the dataset written then failed to load at a line of likes.csv."""
    from training.dataset import ACCEPTED_TIMES, DatasetError

    src = _write_source(tmp_path)
    (src / "user_taggedartists.dat").write_text("userID\tartistID\ttagID\tday\tmonth\tyear\n2\t10\t1\t1\t4\t1956\n"
                                                f"2\t11\t1\t1\t4\t{year}\n")
    with pytest.raises(DatasetError) as info:
        read_lastfm(str(src), temporal=True)
    assert str(info.value) == (f"user_taggedartists.dat:3: column 'year': {year:04}-04-01 is outside the accepted times, "
                               f"{ACCEPTED_TIMES}")


def test_a_listening_count_too_large_for_a_weight_is_located(tmp_path):
    """It ended in an OverflowError traceback."""
    from training.dataset import DatasetError

    src = _write_source(tmp_path)
    (src / "user_artists.dat").write_text("userID\tartistID\tweight\n2\t10\t5\n2\t11\t" + "9" * 400 + "\n")
    with pytest.raises(DatasetError) as info:
        read_lastfm(str(src))
    assert str(info.value) == ("user_artists.dat:3: column 'weight': expected a positive listening count, got a number of "
                               "400 digits, past what a weight (a float64) holds")


def test_a_missing_friend_file_is_an_error(tmp_path):
    from training.dataset import DatasetError

    src = _write_source(tmp_path)
    (src / "user_friends.dat").unlink()
    with pytest.raises(DatasetError, match="^user_friends.dat: required file missing: .*user_friends.dat$"):
        read_lastfm(str(src))


def test_a_source_that_is_not_a_directory_is_named(tmp_path):
    from training.dataset import DatasetError

    missing = tmp_path / "nonexistent"
    with pytest.raises(DatasetError, match=f"^Last.fm source directory {re.escape(str(missing))}: no such directory$"):
        read_lastfm(str(missing))
    missing.write_text("")
    with pytest.raises(DatasetError, match="^Last.fm source directory .*: not a directory$"):
        read_lastfm(str(missing))


@pytest.mark.parametrize("out, message", [
    ("file", "argument --out: {tmp}/file exists and is not a directory"),
    ("file/sub", "argument --out: {tmp}/file exists and is not a directory"),
], ids=["a file", "under a file"])
def test_an_out_that_is_a_file_is_refused_before_reading(tmp_path, capsys, out, message):
    from training.__main__ import main

    (tmp_path / "file").write_text("keep me")
    with pytest.raises(SystemExit) as exited:
        main(["lastfm", "--src", str(tmp_path / "nonexistent"), "--out", str(tmp_path / out)])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: " + message.format(tmp=tmp_path))
    assert (tmp_path / "file").read_text() == "keep me"


def test_an_empty_published_split_is_a_usage_error_not_the_flag_not_given(tmp_path, capsys):
    """--published-split "$SPLIT" of an unset variable converted every listen, with no test pairs, as
    if the flag had not been given."""
    from training.__main__ import main

    src = _write_source(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["lastfm", "--src", str(src), "--binary", "--published-split", "", "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: argument --published-split: expected a path, got an empty one")
    assert not (tmp_path / "out").exists()


def test_a_published_split_with_temporal_is_a_usage_error(tmp_path, capsys):
    from training.__main__ import main

    src, split = _write_published_split(tmp_path, TRAIN_ROWS, TEST_ROWS)
    with pytest.raises(SystemExit) as exited:
        main(["lastfm", "--src", src, "--published-split", split, "--temporal", "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "python -m training lastfm: error: argument --temporal: not allowed with argument --published-split"
    assert not (tmp_path / "out").exists()


def _pairs(edges) -> set[tuple[str, str]]:
    return set(zip(edges.src, edges.dst))


def test_an_exported_split_reads_back_as_evaluates_own_split(tmp_path):
    # benchmarks.sociallgn_split writes evaluate's split for SocialLGN's code; read back by
    # the published-split reader it must be the very split evaluate scores the feed on.
    from benchmarks.sociallgn_split import write_split
    from training.lastfm import split_as_published
    from training.splits import SplitSpec, split_for_evaluation

    src, out = str(_write_source(tmp_path)), tmp_path / "lastfm"
    spec = SplitSpec("user", 0.5, 3)
    counts = write_split(src, spec, str(out))
    dataset = read_lastfm(src, binary=True)
    train, test, _ = split_for_evaluation(dataset, spec)
    assert counts == {"train": len(train.likes), "test": len(test), "trust": 2} and len(test) > 0
    train_back, test_back = split_as_published(dataset, str(out))
    assert _pairs(test_back) == _pairs(test) and _pairs(train_back.likes) == _pairs(train.likes)
    assert json.loads((out / "userReindex.json").read_text()) == {"2": 0, "3": 1, "7": 2}
    assert json.loads((out / "itemReindex.json").read_text()) == {"10": 0, "11": 1, "12": 2, "13": 3}
    assert (out / "trust.txt").read_text() == "user,friend\n0,1\n1,0\n"


def test_an_export_refuses_a_folder_holding_another_splits_graph(tmp_path):
    from benchmarks.sociallgn_split import main

    out = tmp_path / "lastfm"
    out.mkdir()
    (out / "interaction_adj_mat.npz").write_bytes(b"")
    assert main(["--src", str(_write_source(tmp_path)), "--out", str(out)]) == 1
    assert not (out / "train_set.txt").exists()


def test_the_exported_per_user_split_of_the_real_data_has_the_row_counts(lastfm, tmp_path):
    from benchmarks.sociallgn_split import write_split
    from training.splits import SplitSpec

    counts = write_split(str(LASTFM), SplitSpec("user", 0.2, 0), str(tmp_path))
    assert counts == {"train": 74_266, "test": 18_568, "trust": 25_434}


def test_an_export_to_a_path_that_is_a_file_is_one_line(tmp_path, capsys):
    from benchmarks.sociallgn_split import main

    out = tmp_path / "taken"
    out.write_text("")
    assert main(["--src", str(_write_source(tmp_path)), "--out", str(out)]) == 1
    assert capsys.readouterr().err.startswith("sociallgn_split: ") and out.read_text() == ""
