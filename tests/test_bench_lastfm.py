"""benchmarks.bench_lastfm end to end on a small Last.fm-shaped source with a published split.

The real files are exercised by tests/test_lastfm.py; this checks the benchmark's own
wiring: every protocol and split kind runs, the published split is evaluated on exactly
its test pairs, and the JSON report holds what the table printed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench_lastfm


def write_source(root, users=60, artists=40, per_user=12, seed=0):
    """user_artists.dat and user_friends.dat in HetRec's format, plus a 80/20 split of the
    pairs in SocialLGN's (indices in first-seen order, as theirs)."""
    rng = np.random.default_rng(seed)
    src, split = root / "src", root / "split"
    src.mkdir()
    split.mkdir()
    popularity = 1.0 / np.arange(1, artists + 1)
    listens = [(u, a, int(rng.integers(1, 500))) for u in range(2, users + 2)
               for a in 100 + rng.choice(artists, per_user, replace=False, p=popularity / popularity.sum())]
    (src / "user_artists.dat").write_text("userID\tartistID\tweight\n" + "".join(f"{u}\t{a}\t{w}\n" for u, a, w in listens))
    friends = {(u, v) for u, v in rng.integers(2, users + 2, size=(3 * users, 2)) if u != v}
    (src / "user_friends.dat").write_text("userID\tfriendID\n" + "".join(f"{u}\t{v}\n{v}\t{u}\n" for u, v in sorted(friends)))
    user_index = {str(u): i for i, u in enumerate(dict.fromkeys(u for u, _, _ in listens))}
    item_index = {str(a): i for i, a in enumerate(dict.fromkeys(a for _, a, _ in listens))}
    (split / "userReindex.json").write_text(json.dumps(user_index))
    (split / "itemReindex.json").write_text(json.dumps(item_index))
    is_test = rng.random(len(listens)) < 0.2
    for name, keep in (("train_set.txt", ~is_test), ("test_set.txt", is_test)):
        rows = [f"{user_index[str(u)]},{item_index[str(a)]}\n" for (u, a, _), k in zip(listens, keep) if k]
        (split / name).write_text("user,item\n" + "".join(rows))
    return str(src), str(split), int(is_test.sum())


def test_every_protocol_and_split_kind_runs_and_the_report_adds_up(tmp_path, capsys):
    src, split, published_test_pairs = write_source(tmp_path)
    out = tmp_path / "report.json"
    bench_lastfm.main(["--src", src, "--published-split", split, "--seeds", "0", "--k", "10", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["protocols"]) == {"binary", "weighted"}
    assert set(report["protocols"]["binary"]) == {"user", "random", "published"}
    assert set(report["protocols"]["weighted"]) == {"user", "random"}  # the published numbers are binary only
    published = report["protocols"]["binary"]["published"]["per_seed"]["SocialLGN's split"]
    assert published["test_pairs"] == published_test_pairs
    for protocol in report["protocols"].values():
        for kind in protocol.values():
            for method, metrics in kind["summary"].items():
                assert 0.0 <= metrics["ndcg@10"]["mean"] <= 1.0, method
            assert kind["summary"]["model"]["ndcg@10"]["mean"] > 0.0
    printed = capsys.readouterr().out
    # SocialLGN's numbers only beside the binary protocol on a split of their shape.
    assert printed.count("SocialLGN (published)") == 2
    assert "binary protocol, SocialLGN's published split" in printed


@pytest.mark.parametrize("change, message", [
    ({"--src": "{tmp}/nowhere"}, "--src {tmp}/nowhere: Last.fm source directory {tmp}/nowhere: no such directory"),
    ({"--published-split": "{tmp}/nowhere"}, "--published-split {tmp}/nowhere: userReindex.json: required file missing: {tmp}/nowhere/userReindex.json"),
    ({"--json": "{tmp}/nowhere/report.json"}, "argument --json: no directory {tmp}/nowhere to write {tmp}/nowhere/report.json into"),
])  # fmt: skip
def test_a_wrong_input_is_one_line_before_the_run(tmp_path, capsys, change, message):
    # A traceback each; the --json one after the whole run (minutes with five seeds), its figures lost with it.
    src, split, _ = write_source(tmp_path)
    flags = {"--src": src, "--published-split": split, "--seeds": "0", "--k": "10", "--json": str(tmp_path / "report.json")}
    flags.update({flag: value.format(tmp=tmp_path) for flag, value in change.items()})
    with pytest.raises(SystemExit) as stopped:
        bench_lastfm.main([text for pair in flags.items() for text in pair])
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1] == f"python -m benchmarks.bench_lastfm: error: {message.format(tmp=tmp_path)}"
    assert "ndcg@10" not in out  # refused before any seed ran


@pytest.mark.parametrize(("flag", "value", "said"), [
    ("--seeds", "0,x", "expected an integer, got 'x'"),
    ("--seeds", "-1", "must be >= 0, got -1"),
    ("--seeds", ",", "expected comma-separated whole numbers"),
    ("--k", "0", "must be >= 1, got 0"),
    ("--k", "10,a", "expected an integer, got 'a'"),
])
def test_a_bad_seed_or_cut_off_is_a_usage_error_naming_its_flag(tmp_path, capsys, flag, value, said):
    src, _, _ = write_source(tmp_path)
    with pytest.raises(SystemExit) as exited:
        bench_lastfm.main(["--src", src, flag, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and said in error


def test_cut_offs_without_10_still_print_the_per_seed_ndcg_at_10(tmp_path, capsys):
    src, _, _ = write_source(tmp_path)
    bench_lastfm.main(["--src", src, "--protocols", "binary", "--splits", "user", "--seeds", "0", "--k", "20"])
    printed = capsys.readouterr().out
    assert "binary user:0.2:0: ndcg@10" in printed and "ndcg@20" in printed


def test_a_method_one_seed_left_out_is_left_out_of_the_summary():
    """evaluate leaves out a baseline that shows no test user anything; summarise indexed
    every seed's report by the first seed's methods (a KeyError after the whole run)."""
    from types import SimpleNamespace

    row = {"precision@10": 0.1, "recall@10": 0.2, "ndcg@10": 0.3}
    reports = {0: SimpleNamespace(methods={"model": row, "friends_likes": row}), 1: SimpleNamespace(methods={"model": row})}
    assert list(bench_lastfm.summarise(reports, (10,))) == ["model"]
