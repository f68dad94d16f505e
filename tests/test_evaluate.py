"""Offline evaluation: the replayed feed against the baselines on generated data."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from ranking.features import FEATURE_NAMES
from ranking.feed import FeedSettings
from stores.memory import MemoryStore
from training.arguments import parse_ks
from training.dataset import DatasetError, Edges, load_dataset, write_dataset
from training.evaluate import cap_grid_settings, evaluate_cap_grid, pipeline_recommender, read_test_file
from training.experiment import evaluate_split, evaluation_parts, warnings_on_test_pairs
from training.generate import generate
from training.splits import SplitSpec, split_for_evaluation
from training.train import TrainParams

PARAMS = TrainParams(factors=32, iterations=10, show_progress=False)


@pytest.fixture(scope="module")
def report():
    dataset = generate(users=1500, sellers=150, items=4000, seed=21)
    return evaluate_split(dataset, SplitSpec("time", 0.2), None, (10, 20), PARAMS, show_progress=False)


def test_the_served_feed_beats_popularity_by_a_wide_margin(report):
    model, popularity = report.methods["model"], report.methods["popularity"]
    assert model["ndcg@10"] >= 3 * popularity["ndcg@10"]
    assert model["recall@20"] >= popularity["recall@20"] + 0.05


def test_the_learned_ranker_beats_every_single_source_baseline_and_the_hand_set_blend(report):
    model = report.methods["model"]
    for name in ("popularity", "followed_sellers", "friends_likes", "als", "item_knn", "ease"):
        assert model["ndcg@10"] >= 1.2 * report.methods[name]["ndcg@10"], name
        assert model["recall@20"] >= 1.1 * report.methods[name]["recall@20"], name
    assert model["ndcg@10"] >= 1.1 * report.methods["blend"]["ndcg@10"]


def test_every_baseline_is_reported_with_every_metric(report):
    assert list(report.methods) == [
        "model", "popularity", "followed_sellers", "friends_likes", "als", "item_knn", "ease", "blend"
    ]
    for metrics in report.methods.values():
        assert {"precision@10", "recall@10", "ndcg@10", "precision@20", "recall@20", "ndcg@20"} <= set(metrics)
    payload = json.loads(json.dumps(report.as_json()))
    assert set(payload["baselines"]) == {"popularity", "followed_sellers", "friends_likes", "als", "item_knn", "ease", "blend"}
    assert payload["ranker"]["features"] == list(FEATURE_NAMES)
    assert 0 < payload["coverage"] <= 1
    assert report.summary_line() in report.table().splitlines()


def test_the_model_is_compared_with_each_method_user_by_user(report):
    """The difference of the table's two means, and an interval that says whether it is more than the users sampled."""
    for name, metrics in report.methods.items():
        if name == "model":
            continue
        for k in (10, 20):
            d = report.paired[name][f"ndcg@{k}"]
            assert d.difference == pytest.approx(report.methods["model"][f"ndcg@{k}"] - metrics[f"ndcg@{k}"])
            assert d.low < d.difference < d.high and d.users == report.test_users
    assert report.paired["popularity"]["ndcg@10"].low > 0 and report.paired["popularity"]["ndcg@10"].p_value < 0.001
    payload = json.loads(json.dumps(report.as_json()))
    assert payload["paired"]["blend"]["ndcg@10"]["ci95"] == [report.paired["blend"]["ndcg@10"].low, report.paired["blend"]["ndcg@10"].high]
    assert "model minus each method, paired over the same" in report.table()


def test_split_specs_and_cutoffs_parse_or_explain():
    assert SplitSpec.parse("random:0.2:7") == SplitSpec("random", 0.2, 7)
    assert SplitSpec.parse("time:0.1") == SplitSpec("time", 0.1)
    assert parse_ks("20,10") == (10, 20)
    for bad in ("random", "time:x", "later:0.2"):
        with pytest.raises(ValueError, match="expected time:FRACTION"):
            SplitSpec.parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="positive integers"):
        parse_ks("ten")


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_bad_cut_offs_are_a_usage_error_naming_k(command, capsys):
    """Checked after parsing, --k was an exit 1 without the usage line, where every other flag is a 2."""
    from training.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main([command, "--data", "d", *(["--out", "o"] if command == "train" else []), "--k", "0,10"])
    assert stopped.value.code == 2
    assert "argument --k: expected comma-separated positive integers, got '0,10'" in capsys.readouterr().err


def test_a_bad_test_file_row_names_line_and_column(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("user_id,item_id\nu1,i1\nu2,\n")
    with pytest.raises(DatasetError) as error:
        read_test_file(str(path))
    assert (error.value.file, error.value.line, error.value.column) == ("test.csv", 3, "item_id")


def test_a_test_file_is_read_as_a_dataset_file_is(tmp_path):
    path = tmp_path / "test.csv"
    # A BOM, columns by name in any order, an extra column, ids with spaces around them.
    path.write_bytes("\ufeffts,item_id,user_id\n5, i2 ,u1 \n\n6,i3,\tu2\n".encode())
    warnings: list[str] = []
    pairs = read_test_file(str(path), warnings)
    assert (pairs.src, pairs.dst) == (["u1", "u2"], ["i2", "i3"])
    assert warnings == ["test.csv: ignored column 'ts' (not one of user_id, item_id)"]


def test_a_test_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "test.csv"
    path.write_bytes(b"user_id,item_id\nu1,i1\nu2,caf\xe9\n")
    with pytest.raises(DatasetError) as error:
        read_test_file(str(path))
    assert (error.value.file, error.value.line) == ("test.csv", 3) and "not UTF-8" in str(error.value)


def test_a_test_file_without_pairs_is_an_error(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("user_id,item_id\n\n")
    with pytest.raises(DatasetError) as error:
        read_test_file(str(path))
    assert str(error.value) == "test.csv: no test pairs (nothing after the header row)"


def test_test_pairs_no_feed_can_hit_are_warned_about(tmp_path, capsys):
    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock\ni1,s1,1,1\ni2,s1,1,1\ni3,s1,1,1\n")
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i1,1\nu2,i2,1\n")
    train = load_dataset(str(tmp_path))
    test = Edges(["u1", "u1", "u2", "u2", "u3", "u3"], ["i1", "i3", "i2", "i9", "i3", "i3"], np.full(6, np.nan))
    expected = [
        "2 of 5 test pairs are training likes too (they count as misses: a feed never shows an item its user already likes)",
        "1 of 5 test pairs have an item that is nowhere in the training data (they count as misses: no feed can show it)",
        "1 of 3 test users are nowhere in the training data (no likes, follows, friends or engagements to go on)",
    ]
    assert warnings_on_test_pairs(train, test) == expected
    evaluation_parts(train, None, test, None)
    assert capsys.readouterr().err.splitlines() == [f"warning: {line}" for line in expected]
    assert warnings_on_test_pairs(train, Edges(["u1"], ["i3"], np.zeros(1))) == []


def test_test_users_without_a_training_like_are_counted_as_cold_starts(tmp_path):
    # Regression: with one like per user a time split holds out whole users, and the table
    # read as the model's quality while every test user's feed was a cold start.
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\n" + "".join(f"u{k},i{k % 4},{1_700_000_000 + k}\n" for k in range(20)))
    report = evaluate_split(load_dataset(str(tmp_path)), SplitSpec("time", 0.2), None, (10,), PARAMS, show_progress=False)
    assert (report.test_users, report.cold_test_users, report.as_json()["cold_test_users"]) == (4, 4, 4)
    assert report.summary_line().endswith(", 4 test users without a training like (cold starts)")
    one = dataclasses.replace(report, test_users=1, test_pairs=1, unseen_test_items=0, cold_test_users=1, test_users_total=1)
    assert one.summary_line() == ("1 test user, 1 test pair, 0 test pairs with an item unseen in training (counted as misses), "
                                  "1 test user without a training like (cold starts)")
    warm = evaluate_split(generate(users=60, sellers=6, items=80, seed=3), SplitSpec("user", 0.2), None, (10,), PARAMS,
                          show_progress=False)  # a per-user split keeps every test user's other likes in training
    assert warm.cold_test_users == 0 and "cold starts" not in warm.table()


def test_baselines_recommend_only_what_a_feed_can_show(tmp_path):
    # Regression: the baselines skipped only items out of stock, liked or own, so popularity
    # recommended items no feed shows (kept out of the feed, a seller away, hidden by the
    # user) and could score test likes the served feed had no way to reach.
    from training.evaluate import Eligibility, popularity_baseline

    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock,feed_eligible\n"
                                        + "".join(f"i{k},s{k},1,1,{int(k != 1)}\n" for k in range(7)))
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\n" + "".join(
        f"u{u},i{k},{10 + u}\n" for k in range(7) for u in range(10 - k)))  # i0 the most liked, i6 the least
    (tmp_path / "sellers.csv").write_text("seller_id,vacation_until\ns2,inf\ns3,50\n")  # s3 is back at now = 51
    (tmp_path / "not_interested_items.csv").write_text("user_id,item_id,ts\nv,i0,1\n")
    (tmp_path / "not_interested_sellers.csv").write_text("user_id,seller_id,ts\nv,s4,1\n")
    train = load_dataset(str(tmp_path))
    recommend = popularity_baseline(train, Eligibility(train, now=51.0))
    assert recommend("v", 10) == ["i3", "i5", "i6"]
    assert recommend("w", 10) == ["i0", "i3", "i4", "i5", "i6"]


def test_baselines_skip_items_resting_after_views_without_engagement_as_the_feed_does(tmp_path):
    # Regression: the served feed hides an item viewed fatigue_hide_views times without
    # engagement (SeenTooOftenFilter) while the baselines still recommended it.
    from ranking.feed import DEFAULT_RANKER
    from ranking.store import VIEW_WINDOW_SECONDS
    from training.evaluate import Eligibility, popularity_baseline

    hide_after = FeedSettings().fatigue_hide_views
    now = 10 * VIEW_WINDOW_SECONDS
    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock\n" + "".join(f"i{k},s{k},1,1\n" for k in range(4)))
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\n" + "".join(
        f"u{u},i{k},{10 + u}\n" for k in range(4) for u in range(6 - k)))  # i0 the most liked
    views = [("v", "i0", now - 100 - n) for n in range(hide_after)]  # resting
    views += [("v", "i1", now - 2 * VIEW_WINDOW_SECONDS - n) for n in range(hide_after)]  # rested since
    views += [("v", "i2", now - 100 - n) for n in range(hide_after)]  # then bought: cleared
    views += [("w", "i0", now - 100 - n) for n in range(hide_after - 1)]  # one view short
    (tmp_path / "engagements.csv").write_text("user_id,item_id,kind,ts\n" + "".join(
        f"{u},{i},view,{ts:.0f}\n" for u, i, ts in views) + f"v,i2,purchase,{now - 10:.0f}\n")
    train = load_dataset(str(tmp_path))
    recommend = popularity_baseline(train, Eligibility(train, now, hide_after))
    assert recommend("v", 10) == ["i1", "i2", "i3"]
    assert recommend("w", 10) == ["i0", "i1", "i2", "i3"]
    assert popularity_baseline(train, Eligibility(train, now))("v", 10) == ["i0", "i1", "i2", "i3"]
    feed = pipeline_recommender(train, None, DEFAULT_RANKER, now, FeedSettings())
    assert "i0" not in feed("v", 10) and "i0" in feed("w", 10)


def test_the_plot_is_a_png_bar_chart(report, tmp_path):
    pytest.importorskip("matplotlib")
    from training.evaluate import plot_report

    path = tmp_path / "metrics.png"
    plot_report(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- diversity caps (issue 9) ------------------------------------------------------------

CAP_USERS = 120  # test users replayed per cap setting: enough pages, a few seconds in all


def with_replay_of_fewer_users(report, n_users=CAP_USERS, **changes):
    """A shallow copy of ``report`` whose replay covers the first ``n_users`` test users only."""
    replay = report.replay
    users = sorted(replay.relevant)[:n_users]
    small = copy.copy(report)
    small.replay = dataclasses.replace(
        replay, relevant={u: replay.relevant[u] for u in users}, pages={u: replay.pages[u] for u in users}, **changes
    )
    return small


@pytest.fixture(scope="module")
def capped(report):
    small = with_replay_of_fewer_users(report)
    evaluate_cap_grid(small)
    return small


def grid_row(report, max_per_seller, max_per_category):
    (row,) = [
        r for r in report.cap_grid
        if (r["max_per_seller"], r["max_per_category"]) == (max_per_seller, max_per_category)
    ]
    return row


def replace_caps(max_per_seller, max_per_category):
    return FeedSettings(max_per_seller=max_per_seller, max_per_category=max_per_category)


def test_the_cap_grid_varies_both_caps_around_the_configured_ones():
    settings = FeedSettings()  # seller cap 2, no category cap
    grid = [(s.max_per_seller, s.max_per_category) for s in cap_grid_settings(settings, 20)]
    assert grid == [(2, 0), (2, 1), (2, 2), (1, 0), (20, 0), (20, 1)]
    assert all(s.neighbours == settings.neighbours for s in cap_grid_settings(settings, 20))
    # A seller cap of 30 is off on a page of 20: the "off" settings are the configured seller cap's.
    odd = [(s.max_per_seller, s.max_per_category) for s in cap_grid_settings(replace_caps(30, 3), 20)]
    assert odd == [(30, 3), (30, 0), (30, 1), (30, 2), (1, 0)]


def test_a_category_cap_of_one_spreads_each_page_over_more_categories(capped):
    depth = 20
    uncapped, one = grid_row(capped, 2, 0), grid_row(capped, 2, 1)
    assert grid_row(capped, 2, 0)["configured"] and not one["configured"]
    assert one[f"categories@{depth}"] > uncapped[f"categories@{depth}"] + 0.3
    assert grid_row(capped, 2, 2)[f"categories@{depth}"] > uncapped[f"categories@{depth}"]
    # The configured row is the main table's "model" row, replayed on fewer users.
    assert 0 < uncapped["ndcg@10"] and uncapped[f"sellers@{depth}"] > 0
    # A seller cap of 1 gives one seller per item; without a seller cap pages hold fewer sellers.
    assert grid_row(capped, 1, 0)[f"sellers@{depth}"] == pytest.approx(grid_row(capped, 1, 0)[f"items@{depth}"])
    assert grid_row(capped, 20, 0)[f"sellers@{depth}"] < grid_row(capped, 1, 0)[f"sellers@{depth}"]


def test_every_page_under_a_category_cap_holds_at_most_that_many_items_per_category(capped):
    replay = capped.replay
    category_of = dict(zip(replay.train.items.item_id, replay.train.items.category))
    store = MemoryStore.from_dataset(replay.train)
    for cap in (1, 2):
        settings = dataclasses.replace(replay.settings, max_per_category=cap)
        recommend = pipeline_recommender(replay.train, replay.model, replay.ranker, replay.now, settings, store=store)
        worst = 0
        for user_id in sorted(replay.relevant)[:100]:
            page = recommend(user_id, 20)
            counts = Counter(category_of[item] for item in page if category_of[item])
            worst = max(worst, max(counts.values(), default=0))
        assert worst == cap  # never over the cap, and the cap is reached


def test_the_cap_grid_is_not_replayed_where_no_item_has_a_seller_or_a_category(report):
    """On Last.fm every setting gave the model row's pages again: 6 equal rows, 116 s."""
    train = report.replay.train
    bare = dataclasses.replace(train, items=dataclasses.replace(
        train.items, seller_id=[""] * len(train.items), category=[""] * len(train.items)))  # fmt: skip
    small = with_replay_of_fewer_users(report, train=bare)
    assert evaluate_cap_grid(small) == [] and small.cap_grid == []
    assert small.table().splitlines()[-1] == (
        "diversity caps: not replayed (no item has a seller or a category, so no cap can change a page)")


def test_the_table_and_the_json_carry_the_diversity_caps_block(capped, report):
    text = capped.table()
    assert "diversity caps" in text
    block = text[text.index("diversity caps"):].splitlines()
    assert "categories@20" in block[1] and "ndcg@10" in block[1]
    assert len(block) == 2 + len(capped.cap_grid) + 1
    assert block[2].split()[:2] == ["2*", "off"]
    assert any(line.split()[:2] == ["off", "1"] for line in block)
    payload = json.loads(json.dumps(capped.as_json()))
    assert [(r["max_per_seller"], r["max_per_category"]) for r in payload["cap_grid"]] == [
        (2, 0), (2, 1), (2, 2), (1, 0), (20, 0), (20, 1)
    ]
    # The report the grid was computed from is untouched: no block, no JSON key.
    assert "diversity caps" not in report.table() and "cap_grid" not in report.as_json()


def test_the_cap_grid_still_reports_on_data_without_categories(report):
    train = report.replay.train
    no_categories = dataclasses.replace(train, items=dataclasses.replace(train.items, category=[""] * len(train.items)))
    small = with_replay_of_fewer_users(report, 50, train=no_categories)
    rows = evaluate_cap_grid(small)
    assert rows and all("categories@20" not in row for row in rows)  # 0 in every row would measure nothing
    block = small.table()[small.table().index("diversity caps"):].splitlines()
    assert "categories@20" not in block[1] and "sellers@20" in block[1]
    # No category to cap: a category cap changes nothing. (Both rows are replayed on the
    # data without categories; the configured row, cap 0, reuses the main replay's pages,
    # which were ranked with categories: category_affinity saw them.)
    for key in ("ndcg@10", "precision@20", "items@20", "sellers@20"):
        assert grid_row(small, 2, 1)[key] == grid_row(small, 2, 2)[key], key
    assert "diversity caps" in small.table()


def test_the_cap_grid_has_no_sellers_column_on_data_without_sellers(report):
    """As the main table (sellers@K: not measured), not a column of zeros."""
    train = report.replay.train
    no_sellers = dataclasses.replace(train, items=dataclasses.replace(train.items, seller_id=[""] * len(train.items)))
    small = with_replay_of_fewer_users(report, 50, train=no_sellers)
    rows = evaluate_cap_grid(small)
    assert rows and all("sellers@20" not in row and "categories@20" in row for row in rows)
    block = small.table()[small.table().index("diversity caps"):].splitlines()
    assert "sellers@20" not in block[1] and "categories@20" in block[1]
    assert all(len(line.split()) == len(block[1].split()) - 2 for line in block[2:-1])  # the headers' two-word caps labels


def test_the_evaluate_command_has_the_cap_grid_flag():
    from training.__main__ import build_parser

    parser, _ = build_parser()
    assert parser.parse_args(["evaluate", "--data", "d"]).cap_grid is True
    assert parser.parse_args(["evaluate", "--data", "d", "--no-cap-grid"]).cap_grid is False


def test_the_rankers_validation_mirrors_the_split_unless_told_its_shape(tmp_path, capsys, monkeypatch):
    # Regression: evaluate --test fitted the ranker on a per-user validation whatever the test
    # file's shape (a published split of all pairs at random), and no flag could say otherwise.
    import training.ranker_fit
    from training.__main__ import main
    from training.ranker_fit import RankerFitParams
    from training.splits import validation_split

    dataset = generate(users=120, sellers=12, items=300, seed=5)
    assert evaluation_parts(dataset, SplitSpec("user", 0.2), None, None)[3].validation_kind == "user"
    told = RankerFitParams(validation_kind="random")
    assert evaluation_parts(dataset, SplitSpec("user", 0.2), None, told)[3].validation_kind == "random"
    train, test, _ = split_for_evaluation(dataset, SplitSpec("random", 0.2, 0))
    assert evaluation_parts(train, None, test, told)[3].validation_kind == "random"

    kinds: list[str | None] = []

    def recording(train, fraction, seed, kind=None):
        kinds.append(kind)
        return validation_split(train, fraction, seed, kind)

    monkeypatch.setattr(training.ranker_fit, "validation_split", recording)
    untimed = train.with_likes(Edges(train.likes.src, train.likes.dst, np.full(len(train.likes), np.nan)))
    write_dataset(untimed, str(tmp_path / "data"))
    (tmp_path / "test.csv").write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in zip(test.src, test.dst)))
    common = ["evaluate", "--data", str(tmp_path / "data"), "--no-cap-grid", "--no-blend", "--no-progress", "--factors", "8",
              "--iterations", "3"]
    main([*common, "--test", str(tmp_path / "test.csv"), "--ranker-validation-split", "random"])
    assert kinds == ["random"]
    assert "test pairs are training likes" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main([*common, "--ranker-validation-split", "time"])
    assert "--ranker-validation-split time: " in f"{refused.value}{capsys.readouterr().err}"


def test_the_report_names_its_test_part_and_why_a_default_split_is_what_it_is(tmp_path):
    # Regression: without --split, likes tied at one time were split per user instead of by
    # time, and the table (and --json) said nothing of it: the reader took user:0.2:0 numbers
    # for a time split's.
    rows = "".join(f"u{u},i{(u + k) % 9},{1_700_000_000 + k}\n" for u in range(30) for k in range(5))
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\n" + rows)
    timed = load_dataset(str(tmp_path))
    report = evaluate_split(timed, None, None, (10,), PARAMS, show_progress=False, compare_blend=False, baselines=False)
    assert report.test_part == "time:0.2, the likes from 2023-11-14T22:13:24Z on (the default: every like has a time)"
    assert f"test part: {report.test_part}" in report.table().splitlines()
    assert json.loads(json.dumps(report.as_json()))["test_part"] == report.test_part
    tied = timed.with_likes(Edges(timed.likes.src, timed.likes.dst, np.full(len(timed.likes), 1_700_000_000.0)))
    report = evaluate_split(tied, None, None, (10,), PARAMS, show_progress=False, compare_blend=False, baselines=False)
    assert report.test_part == ("user:0.2:0 (the default: not time:0.2, as 150 of 150 likes are at or after its split "
                                "time 2023-11-14T22:13:20Z (ties), so it would hold out 100% of them, not the latest 20%)")
    explicit = evaluate_split(tied, SplitSpec("random", 0.2, 3), None, (10,), PARAMS, show_progress=False,
                              compare_blend=False, baselines=False)
    assert explicit.test_part == "random:0.2:3"
    given = evaluate_split(tied, None, Edges(["u1"], ["i0"], np.zeros(1)), (10,), PARAMS, show_progress=False,
                           compare_blend=False, baselines=False)
    assert given.test_part == "the test pairs given (--test)"


def test_test_pairs_no_feed_can_show_their_user_are_counted(tmp_path):
    # Regression: a test like of an item sold out, kept out of the feed or of a seller away is
    # a miss for every method, and so is one of the user's own listing or of a seller they hid;
    # the summary said nothing of them (on a hand-built Last.fm dataset whose items' seller is
    # their first tagger, 1033 of 4744 time-split test pairs, 989 of them own listings).
    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock,feed_eligible\n"
                                        "i1,s1,1,1,1\ni2,s1,1,0,1\ni3,s2,1,1,0\ni4,s3,1,1,1\ni5,s1,1,1,1\n"
                                        "i6,u1,1,1,1\ni7,s4,1,1,1\n")
    (tmp_path / "sellers.csv").write_text("seller_id,vacation_until\ns3,inf\n")
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i1,1\nu2,i1,1\nu2,i5,1\nu2,i6,1\n")
    (tmp_path / "not_interested_sellers.csv").write_text("user_id,seller_id,ts\nu1,s4,1\n")
    test = Edges(["u1"] * 6 + ["u2"], ["i2", "i3", "i4", "i5", "i6", "i7", "i7"], np.zeros(7))
    report = evaluate_split(load_dataset(str(tmp_path)), None, test, (10,), PARAMS, show_progress=False,
                            compare_blend=False, baselines=False)
    assert (report.unshowable_test_pairs, report.as_json()["unshowable_test_pairs"]) == (5, 5)
    assert report.summary_line().endswith(", 5 test pairs no feed can show their user (an item out of stock, kept "
                                          "out of the feed or of a seller away, or the user's own, already liked or "
                                          "hidden by them: misses for every method)")


def test_coverage_is_the_share_of_what_some_evaluated_user_may_be_shown(tmp_path):
    # Regression: coverage@K divided by every item of the training catalogue, also those no
    # feed could show any test user (out of stock, kept out of the feed, a seller away, or
    # each test user's own, liked or hidden), so a method showing everything it may scored
    # under 1, by how much depending on the data's stock and not on the method.
    from ranking.feed import DEFAULT_RANKER
    from training.evaluate import Eligibility, evaluate

    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock,feed_eligible\n"
                                        "i0,s0,1,1,1\ni1,s0,1,0,1\ni2,s0,1,1,0\ni3,u1,1,1,1\ni4,s1,1,1,1\n"
                                        "i5,s1,1,1,1\ni6,s2,1,1,1\ni7,s3,1,1,1\n")
    (tmp_path / "sellers.csv").write_text("seller_id,vacation_until\ns2,inf\n")
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i4,1\nu2,i3,1\nu3,i0,1\n")
    (tmp_path / "not_interested_sellers.csv").write_text("user_id,seller_id,ts\nu1,s3,1\nu2,s3,1\n")
    train = load_dataset(str(tmp_path))
    now = 2.0
    eligible = Eligibility(train, now)

    def everything(user_id, k):
        return [item for item in train.items.item_id if eligible.ok(user_id, item)][:k]

    test = Edges(["u1", "u2"], ["i5", "i5"], np.zeros(2))
    report = evaluate(train, test, None, DEFAULT_RANKER, (10,), now=now, extra_methods={"everything": everything},
                      show_progress=False, baselines=False)
    # i0, i4 (u2 may see it) and i5: i1 is out of stock, i2 out of the feed, i3 u1's own and
    # liked by u2, i6's seller away, i7's seller hidden by both test users.
    assert report.methods["everything"]["coverage@10"] == 1.0
    assert (report.as_json()["recommendable_items"], report.as_json()["catalogue_items"]) == (3, 8)
    assert ("coverage@10: the share of the 3 items some test user may be shown (of 8 listed) that are in some test "
            "user's top 10") in report.table().splitlines()

    def all_but_i4(user_id, k):
        return [item for item in everything(user_id, k) if item != "i4"]

    report = evaluate(train, test, None, DEFAULT_RANKER, (10,), now=now, extra_methods={"all_but_i4": all_but_i4},
                      show_progress=False, baselines=False)
    assert report.methods["all_but_i4"]["coverage@10"] == pytest.approx(2 / 3)


def test_sellers_at_k_averages_over_every_test_user_as_precision_does(tmp_path):
    # Regression: sellers@K averaged over the non-empty pages only, while precision, recall
    # and NDCG average over every test user (one shown nothing scores 0).
    from ranking.feed import DEFAULT_RANKER
    from training.evaluate import evaluate

    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock\ni0,s0,1,1\ni1,s1,1,1\ni2,s2,1,1\n")
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i2,1\nu2,i2,1\n")
    train = load_dataset(str(tmp_path))

    def only_u1(user_id, k):
        return ["i0", "i1"] if user_id == "u1" else []

    test = Edges(["u1", "u2"], ["i0", "i0"], np.zeros(2))
    report = evaluate(train, test, None, DEFAULT_RANKER, (10,), now=2.0, extra_methods={"only_u1": only_u1},
                      show_progress=False, baselines=False)
    metrics = report.methods["only_u1"]
    assert metrics["precision@10"] == pytest.approx((1 / 10 + 0) / 2)
    assert metrics["sellers@10"] == pytest.approx((2 + 0) / 2)


def test_the_json_names_the_parameters_its_numbers_were_measured_under(tmp_path, capsys):
    # Regression: two --json files of runs with another --seed, --factors or pool size were
    # indistinguishable: the file held the test part and the metrics, not what was trained.
    # The printed table said neither.
    from training.__main__ import main

    write_dataset(generate(users=120, sellers=12, items=300, seed=5), str(tmp_path / "data"))
    main(["evaluate", "--data", str(tmp_path / "data"), "--no-cap-grid", "--no-blend", "--no-progress", "--factors", "8",
          "--iterations", "3", "--seed", "3", "--neighbours", "40", "--json", str(tmp_path / "report.json")])
    payload = json.loads((tmp_path / "report.json").read_text())
    assert (payload["params"]["seed"], payload["params"]["factors"], payload["params"]["iterations"]) == (3, 8, 3)
    assert "show_progress" not in payload["params"]
    assert payload["feed"]["neighbours"] == 40 and isinstance(payload["feed"]["sources"], list)
    trained = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trained with: ")]
    assert trained == ["trained with: ALS 8 factors, regularization 80, alpha 20, 3 sweeps, like weights log, "
                       "item-kNN auto, EASE λ 50, seed 3 (--json records every parameter)"], trained


def test_baselines_without_a_signal_are_left_out_and_said_so():
    """Regression: on data without follows (Last.fm) the table printed a followed_sellers row of
    zeros, and a paired difference against it, as if the baseline had been measured."""
    from training.dataset import _empty_edges

    dataset = dataclasses.replace(generate(users=120, sellers=10, items=200, seed=5),
                                  follows=_empty_edges(), friends=_empty_edges())
    report = evaluate_split(dataset, SplitSpec("user", 0.2), None, (10,), PARAMS, show_progress=False, compare_blend=False)
    assert "followed_sellers" not in report.methods and "friends_likes" not in report.methods
    assert {"popularity", "als", "ease"} <= set(report.methods)
    assert report.baselines_left_out == {"followed_sellers": "no follows in the training data",
                                         "friends_likes": "no friendships in the training data"}
    assert set(report.paired) == set(report.methods) - {"model"}
    table = report.table().splitlines()
    assert not any(line.startswith(("followed_sellers", "friends_likes")) for line in table)
    assert ("baselines left out: followed_sellers (no follows in the training data); "
            "friends_likes (no friendships in the training data)") in table
    payload = json.loads(json.dumps(report.as_json()))
    assert set(payload["baselines"]) == set(report.methods) - {"model"}
    assert payload["baselines_left_out"] == report.baselines_left_out


def test_a_baseline_that_recommends_nothing_to_any_test_user_is_left_out():
    """Follows there are, but none of a test user: the followed_sellers row would be zeros."""
    dataset = generate(users=120, sellers=10, items=200, seed=5)
    split = SplitSpec("user", 0.2)
    test_users = set(split_for_evaluation(dataset, split)[1].src)
    keep = [user not in test_users for user in dataset.follows.src]
    follows = Edges([u for u, k in zip(dataset.follows.src, keep) if k], [s for s, k in zip(dataset.follows.dst, keep) if k],
                    dataset.follows.ts[np.array(keep, bool)])
    report = evaluate_split(dataclasses.replace(dataset, follows=follows), split, None, (10,), PARAMS,
                            show_progress=False, compare_blend=False)
    assert "followed_sellers" not in report.methods and "friends_likes" in report.methods
    assert report.baselines_left_out == {
        "followed_sellers": f"it recommends nothing to any of the {report.test_users} test users"}
    assert not report.baselines_left_out.keys() & report.paired.keys()


def test_sellers_at_k_is_not_measured_when_no_item_has_a_seller(tmp_path):
    # Regression: on Last.fm (artists, no sellers) every row's sellers@20 was 0.0000.
    from ranking.feed import DEFAULT_RANKER
    from training.evaluate import evaluate

    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i2,1\nu2,i2,1\nu1,i1,1\n")
    train = load_dataset(str(tmp_path))
    assert not any(train.items.seller_id)
    test = Edges(["u1", "u2"], ["i0", "i1"], np.zeros(2))
    report = evaluate(train, test, None, DEFAULT_RANKER, (10,), now=2.0, show_progress=False)
    assert report.methods and not any("sellers@10" in metrics for metrics in report.methods.values())
    table = report.table().splitlines()
    assert "sellers@10" not in table[0] and "sellers@10: not measured (no item has a seller)" in table
    assert json.loads(json.dumps(report.as_json()))["sellers_not_measured"] == "no item has a seller"


def test_the_item_knn_baseline_left_out_without_an_item_to_item_model_is_said_so():
    # Regression: with --knn none the item_knn row vanished from the table without a word.
    report = evaluate_split(generate(users=120, sellers=10, items=200, seed=5), SplitSpec("user", 0.2), None, (10,),
                            dataclasses.replace(PARAMS, knn="none"), show_progress=False, compare_blend=False)
    assert "item_knn" not in report.methods and "als" in report.methods
    assert report.baselines_left_out == {"item_knn": "no item-to-item model was trained (--knn none)"}
    assert "baselines left out: item_knn (no item-to-item model was trained (--knn none))" in report.table().splitlines()


@pytest.mark.parametrize("content", [None, "user_id,item_id\nu1,i1\nu2\n"])
def test_a_missing_or_malformed_test_file_is_refused_before_the_dataset_is_loaded(tmp_path, capsys, monkeypatch, content):
    # Regression: evaluate loaded the whole dataset (minutes at a million users) before it
    # found that the --test file did not exist or had a bad row.
    import training.dataset
    from training.__main__ import main

    def not_yet(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the test file was read")

    monkeypatch.setattr(training.dataset, "load_dataset", not_yet)
    path = tmp_path / "test.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "--data", str(tmp_path), "--test", str(path), "--no-progress"])
    err = f"{stopped.value.code}\n{capsys.readouterr().err}"
    assert f"error: --test {path}: test.csv" in err
    assert ("test.csv:3: column 'item_id'" in err) if content else ("No such file or directory" in err)


def test_the_tables_columns_line_up_with_their_header_when_every_method_name_is_short(tmp_path):
    # Regression: the name column was as wide as the longest method name, so with only
    # "model" (or only "blend" in the paired table) the header's "method" pushed its
    # columns one character right of the numbers under them.
    from ranking.feed import DEFAULT_RANKER
    from training.evaluate import evaluate

    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i2,1\nu2,i2,1\nu1,i1,1\nu2,i3,1\n")
    train = load_dataset(str(tmp_path))
    test = Edges(["u1", "u2"], ["i3", "i1"], np.zeros(2))
    report = evaluate(train, test, None, DEFAULT_RANKER, (10,), now=2.0, show_progress=False, baselines=False,
                      extra_methods={"top": lambda user_id, k: ["i3", "i1"]})
    lines = report.table().splitlines()
    header, model, top = lines[0], lines[1], lines[2]
    assert len(header) == len(model) == len(top)
    paired = report.paired_table()  # the name column as wide as its header "method" too
    assert paired[1].startswith("method ") and paired[2].startswith("top    +")


def test_the_paired_tables_columns_line_up_with_their_headers(report):
    # Regression: the header's columns were 34 characters wide and every cell 36
    # ("+0.1671 [+0.1599, +0.1744] p < 0.001"), so each header stood 2 characters per
    # column left of its numbers.
    lines = report.paired_table()
    header, rows = lines[1], lines[2:]
    assert {len(row) for row in rows} == {len(header)}
    for k in report.ks:  # each header ends where its cells end
        end = header.index(f"ndcg@{k}") + len(f"ndcg@{k}")
        assert all(row[end - 1] != " " and (end == len(row) or row[end] == " ") for row in rows)


def test_the_tables_line_up_at_a_cut_off_of_100_or_more(tmp_path):
    # Regression: columns were 12 characters wide (13 in the caps block), and precision@100
    # (categories@100) one more, so from K = 100 every header stood right of its numbers.
    from ranking.feed import DEFAULT_RANKER
    from training.evaluate import evaluate

    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock,category\n"
                                        + "".join(f"i{n},s{n % 3},1,1,c{n % 2}\n" for n in range(6)))
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,i0,1\nu2,i0,1\nu1,i1,1\nu2,i2,1\n")
    train = load_dataset(str(tmp_path))
    test = Edges(["u1", "u2"], ["i3", "i4"], np.zeros(2))
    report = evaluate(train, test, None, DEFAULT_RANKER, (10, 100), now=2.0, show_progress=False, baselines=False,
                      cap_grid=True)
    lines = report.table().splitlines()
    assert len(lines[0]) == len(lines[1]) and lines[0].endswith("sellers@100")
    block = report.cap_grid_table()
    assert {len(line) for line in block[1:-1]} == {len(block[1])}


@pytest.mark.parametrize("split", ["time:0.99", "user:0.99", "random:0.99"])
def test_a_split_that_leaves_no_training_like_is_an_error_not_a_table_of_zeros(split, tmp_path, capsys):
    """One like held out whole left the model nothing to learn from: the evaluation printed
    zeros for the feed (and left out every baseline) as if it had measured something."""
    from training.__main__ import main

    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "likes.csv").write_text("user_id,item_id,ts\nu1,i1,100\n")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--data", str(tmp_path / "one"), "--split", split, "--no-progress"])
    assert f"the split {split}" in str(exit_.value.code)
    assert "left no training likes: nothing to train on" in str(exit_.value.code)
    assert "precision@10" not in capsys.readouterr().out
