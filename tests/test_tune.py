"""training.tune: a seeded search on a validation split that never sees the test part."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

import training.tune
from ranking.feed import FeedSettings
from training.dataset import Edges, load_dataset, write_dataset
from training.experiment import evaluate_split
from training.generate import generate
from training.splits import SplitSpec, split_for_evaluation
from training.train import TrainParams
from training.tune import tune

SMALL = TrainParams(factors=16, iterations=5, knn_k=25, show_progress=False)


@pytest.fixture(scope="module")
def dataset():
    return generate(users=250, sellers=25, items=600, likes_per_user=12, seed=9)


def test_tune_is_no_worse_than_the_defaults_on_validation_and_never_reads_the_test_part(dataset, monkeypatch):
    test_split = SplitSpec("time", 0.2)
    _, test, _ = split_for_evaluation(dataset, test_split)
    test_pairs = set(zip(test.src, test.dst))
    seen: list[set[tuple[str, str]]] = []
    replayed: list[set[str]] = []

    def spying_evaluate_split(data, *args, **kwargs):
        seen.append(set(zip(data.likes.src, data.likes.dst)))
        report = evaluate_split(data, *args, **kwargs)
        replayed.append(set(report.methods))
        return report

    monkeypatch.setattr(training.tune, "evaluate_split", spying_evaluate_split)
    result = tune(dataset, test_split, trials=4, timeout=300, seed=1, base=SMALL, show_progress=False)
    assert len(result.trials) == 4 and len(seen) == 4 + (2 if result.confirmation else 0)
    assert all(not pairs & test_pairs for pairs in seen)
    assert result.validation.kind == "time"  # mirrors the test split
    assert result.value >= result.default_value
    assert result.trials[0]["value"] == result.default_value
    assert {"popularity", "als", "ease"} <= set(result.baselines)
    assert replayed[0] > {"model"} and replayed[1:] == [{"model"}] * (len(replayed) - 1)  # the baselines once: they do not change

    # Re-scored on the same validation split, the chosen parameters hold up against the defaults.
    tuning_part = split_for_evaluation(dataset, test_split)[0]

    def score(params, settings):
        report = evaluate_split(tuning_part, result.validation, None, (10,), params, settings, show_progress=False,
                                ranker_params=training.tune.RankerFitParams(seed=1), compare_blend=False, max_users=2000)
        return report.methods["model"]["ndcg@10"]
    assert score(result.params, result.settings) >= score(replace(SMALL, seed=1), FeedSettings()) - 0.005


# Weak defaults (few neighbours and listings, no item-kNN) that a few trials beat on the search split.
WEAK = replace(SMALL, knn="none")
WEAK_FEED = FeedSettings(neighbours=10, per_key_limit=5)


def _confirmed_tune(dataset, monkeypatch, confirmation_scores=None):
    """tune on WEAK defaults, recording each evaluation (likes, split); ``confirmation_scores``
    (best, defaults) replaces the two confirmation scores, to reach the rule's other side."""
    calls: list[tuple[set[tuple[str, str]], SplitSpec]] = []

    def spying_evaluate_split(data, split, *args, **kwargs):
        calls.append((set(zip(data.likes.src, data.likes.dst)), split))
        report = evaluate_split(data, split, *args, **kwargs)
        confirming = len(calls) - trials - 1
        if confirmation_scores is not None and confirming >= 0:
            report.methods["model"]["ndcg@10"] = confirmation_scores[confirming]
        return report

    trials = 5
    monkeypatch.setattr(training.tune, "evaluate_split", spying_evaluate_split)
    result = tune(dataset, SplitSpec("time", 0.2), trials=trials, timeout=300, seed=2, base=WEAK, settings=WEAK_FEED,
                  show_progress=False)
    return result, calls


def test_a_best_trial_is_confirmed_on_the_window_before_the_searchs(dataset, monkeypatch):
    result, calls = _confirmed_tune(dataset, monkeypatch)
    searched = len(result.trials)
    assert result.confirmation is not None and result.search_best > result.default_value
    # Two more feeds replayed (the best trial, the defaults) on the part before the search's
    # validation window: none of its likes is one the search validated on or trained past.
    tuning_part = split_for_evaluation(dataset, SplitSpec("time", 0.2))[0]
    window = split_for_evaluation(tuning_part, result.validation)[1]
    assert len(calls) == searched + 2
    for likes, split in calls[searched:]:
        assert split == result.validation and not likes & set(zip(window.src, window.dst))
        assert len(likes) < len(calls[0][0])
    confirmation = result.as_json()["confirmation"]
    assert confirmation["search_best"] == max(t["value"] for t in result.trials)
    won = confirmation["best"] >= confirmation["defaults"] * (1 + training.tune.MIN_CONFIRMED_GAIN)
    assert confirmation["kept"] == ("best trial" if won else "defaults")


@pytest.mark.parametrize(("elapsed", "trials", "timeout", "room"), [
    (0.0, [], 900.0, True),  # the defaults always run
    (700.0, [20.0, 30.0], 900.0, True),  # 700 + 30 + 2 * 25 = 780
    (840.0, [20.0, 30.0], 900.0, False),  # 840 + 30 + 50 = 920: the last trial and the confirmation would end past it
    (100.0, [100.0], 350.0, False),
])  # fmt: skip
def test_a_trial_starts_only_while_it_and_a_confirmation_fit_in_the_budget(elapsed, trials, timeout, room):
    assert training.tune.room_for_a_trial(elapsed, trials, timeout) is room


def test_the_whole_search_with_its_confirmation_ends_within_the_timeout(dataset, monkeypatch):
    # optuna's timeout only stops new trials: the last one and the confirmation's two
    # replays ran past it (823 s of 900 on Last.fm). Here each replay "takes" 100 s.
    clock = [0.0]

    def slow_evaluate_split(*args, **kwargs):
        clock[0] += 100.0
        return evaluate_split(*args, **kwargs)

    monkeypatch.setattr(training.tune.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(training.tune, "evaluate_split", slow_evaluate_split)
    result = tune(dataset, SplitSpec("time", 0.2), trials=6, timeout=450.0, seed=2, base=WEAK, settings=WEAK_FEED,
                  show_progress=False)
    assert len(result.trials) == 2 and clock[0] <= 450.0


def test_a_best_trial_that_loses_the_confirmation_gives_way_to_the_defaults(dataset, monkeypatch):
    result, _ = _confirmed_tune(dataset, monkeypatch, confirmation_scores=(0.01, 0.02))
    assert result.confirmation is not None and not result.confirmation.kept_best
    assert result.value == result.default_value < result.search_best
    assert (result.settings.neighbours, result.settings.per_key_limit) == (WEAK_FEED.neighbours, WEAK_FEED.per_key_limit)
    assert (result.params.knn, result.params.iterations) == (WEAK.knn, WEAK.iterations)
    assert result.as_json()["confirmation"]["kept"] == "defaults"


@pytest.mark.parametrize(("best", "kept_best"), [(0.1009, False), (0.1011, True)])
def test_a_confirmation_win_inside_the_spread_between_seeds_keeps_the_defaults(dataset, monkeypatch, best, kept_best):
    result, _ = _confirmed_tune(dataset, monkeypatch, confirmation_scores=(best, 0.1))
    assert result.confirmation.kept_best is kept_best
    assert (result.value == result.default_value) is not kept_best


def test_a_per_user_split_is_confirmed_on_another_seeds_draw(dataset):
    part, split = training.tune.confirmation_split(dataset, SplitSpec("user", 0.2, 4))
    assert part is dataset and split == SplitSpec("user", 0.2, 5)


def test_the_tune_command_writes_params_that_train_reads(dataset, tmp_path, capsys):
    from training.__main__ import main
    from training.artifact import load_current

    write_dataset(dataset, str(tmp_path / "data"))
    main(["tune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "params.json"), "--trials", "2",
          "--no-progress", "--seed", "3"])
    chosen = json.loads((tmp_path / "params.json").read_text())
    assert set(chosen) >= {"train", "feed", "validation", "trials"}
    assert chosen["train"]["seed"] == 3  # the trials' seed: train reproduces the chosen one
    assert chosen["validation"]["test_split_set_aside"] == "time:0.2"
    main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "models"), "--params",
          str(tmp_path / "params.json"), "--eval-split", "none", "--no-progress", "--iterations", "5"])
    manifest = load_current(str(tmp_path / "models")).manifest
    for key, value in chosen["train"].items():
        if key != "iterations":
            assert manifest["params"][key] == value, key
    assert manifest["params"]["iterations"] == 5  # an explicit flag wins over the file
    assert manifest["feed"]["sources"] == chosen["feed"]["sources"]
    assert manifest["feed"]["neighbours"] == chosen["feed"]["neighbours"]


def test_the_baselines_left_out_are_named_with_why(dataset, tmp_path, capsys):
    """As evaluate's table: on data without follows there is no followed-sellers baseline to
    beat, and tune says so rather than leave it silently out of validation.baselines."""
    from training.__main__ import main

    no_follows = replace(dataset, follows=Edges(src=[], dst=[], ts=np.empty(0)))
    write_dataset(no_follows, str(tmp_path / "data"))
    main(["tune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "params.json"), "--trials", "1", "--no-progress"])
    validation = json.loads((tmp_path / "params.json").read_text())["validation"]
    assert validation["baselines_left_out"] == {"followed_sellers": "no follows in the training data"}
    assert "followed_sellers" not in validation["baselines"]
    assert "baselines left out: followed_sellers (no follows in the training data)" in capsys.readouterr().out


def test_a_broken_params_file_names_line_and_column(tmp_path, capsys):
    from training.__main__ import main

    bad = tmp_path / "params.json"
    bad.write_text('{"train": {"factors": 16,,}}')
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--params", str(bad)])
    assert f"error: --params {bad}: line 1 column 26: " in capsys.readouterr().err
    bad.write_text('{"train": {"fators": 16}}')
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--params", str(bad)])
    assert f"error: --params {bad}: train.fators: no flag sets it" in capsys.readouterr().err


def test_data_too_thin_for_a_ranker_is_tuned_under_the_blend_and_keeps_the_defaults(tmp_path, capsys):
    """No trial can fit a ranker on three likes: each is scored as train would publish it,
    under the hand-set blend, and the search ends with the defaults instead of an error."""
    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock\n" + "".join(f"i{k},s0,{1_700_000_000 + k},1\n" for k in range(5)))
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\na,i0,1700000001\nb,i1,1700000002\nc,i0,1700000003\nd,i2,1700000004\n")
    result = tune(load_dataset(str(tmp_path)), SplitSpec("time", 0.25), trials=3, timeout=300, base=SMALL, show_progress=False)
    assert len(result.trials) == 3 and all(math.isfinite(trial["value"]) for trial in result.trials)
    assert result.confirmation is None
    # Regression: tune printed 'ndcg@10 1.0000' here without saying it was one user's.
    assert result.as_json()["validation"]["users"] == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ranker: cannot fit")]
    assert len(warnings) == 3 and all(line.endswith("using the hand-set blend") for line in warnings)


def test_data_too_thin_for_a_validation_split_is_one_error_line_before_any_trial(tmp_path, capfd):
    """Regression: two likes left the validation split empty, and the first trial failed
    inside optuna, which printed its traceback before the error line."""
    from training.__main__ import main

    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\nu1,a,1700000000\nu2,b,1700000001\n")
    with pytest.raises(SystemExit) as stopped:
        main(["tune", "--data", str(tmp_path), "--out", str(tmp_path / "p.json"), "--test-split", "none", "--no-progress"])
    assert stopped.value.code == ("error: the validation split time:0.2 of the 2 likes tuned on holds out no like: "
                                  "no trial could be scored (a larger dataset)")
    assert capfd.readouterr().err == "" and not (tmp_path / "p.json").exists()


def test_required_sources_run_in_every_trial_and_are_not_searched(dataset, monkeypatch):
    used: list[tuple[str, ...]] = []

    def recording_evaluate_split(data, split, test, ks, params, settings, **kwargs):
        used.append(settings.sources)
        return evaluate_split(data, split, test, ks, params, settings, **kwargs)

    monkeypatch.setattr(training.tune, "evaluate_split", recording_evaluate_split)
    required = ("followed_sellers", "friend_likes")
    result = tune(dataset, SplitSpec("time", 0.2), trials=5, timeout=300, seed=3, base=SMALL, show_progress=False,
                  required_sources=required)
    assert len(used) == 5 + (2 if result.confirmation else 0)  # the trials, then any confirmation
    assert all(set(required) <= set(sources) for sources in used)
    assert set(required) <= set(result.settings.sources)
    assert not any(f"source_{name}" in trial["params"] for trial in result.trials for name in required)


def test_an_unknown_required_source_is_named_before_any_work(tmp_path, capsys):
    from training.__main__ import main

    with pytest.raises(SystemExit) as stopped:
        main(["tune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "p.json"), "--require-sources",
              "friend_likes,friends"])
    assert stopped.value.code == 2
    assert ("error: argument --require-sources: unknown sources friends; choose from followed_sellers"
            in capsys.readouterr().err)


def test_a_seed_past_the_samplers_range_is_named_before_any_work_and_its_largest_runs(dataset, tmp_path, capsys):
    """--seed 4294967296 loaded the data, then optuna's sampler refused it as
    'error: Seed must be between 0 and 2**32 - 1', naming no flag."""
    from training.__main__ import main

    write_dataset(dataset, str(tmp_path / "data"))
    with pytest.raises(SystemExit) as stopped:
        main(["tune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "p.json"), "--seed", str(2**32)])
    assert stopped.value.code == 2
    assert "error: argument --seed: must be <= 4294967295, got 4294967296" in capsys.readouterr().err
    main(["tune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "p.json"), "--trials", "1",
          "--eval-users", "50", "--no-progress", "--seed", str(2**32 - 1)])
    assert json.loads((tmp_path / "p.json").read_text())["train"]["seed"] == 2**32 - 1


def test_tune_stops_on_ctrl_c_with_one_line_and_no_optuna_report(dataset, tmp_path, monkeypatch, capfd):
    """Ctrl-C in the second trial: optuna would log it as a failed trial with a traceback."""
    from training.__main__ import main

    calls = []

    def interrupted_in_the_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate_split(*args, **kwargs)

    write_dataset(dataset, str(tmp_path / "data"))
    monkeypatch.setattr(training.tune, "evaluate_split", interrupted_in_the_second_trial)
    with pytest.raises(SystemExit) as stopped:
        main(["tune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "p.json"), "--trials", "3", "--no-progress"])
    assert stopped.value.code == 130 and len(calls) == 2
    err = capfd.readouterr().err.splitlines()
    assert err[-1] == "interrupted" and len(err) == 2
    assert err[0].startswith("tune interrupted after ") and err[0].endswith(f"nothing chosen; {tmp_path / 'p.json'} was not written")
    assert not (tmp_path / "p.json").exists()
    # A file from an earlier run is kept, and said not to be this run's result.
    (tmp_path / "p.json").write_text("{}")
    calls.clear()
    with pytest.raises(SystemExit):
        main(["tune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "p.json"), "--trials", "3", "--no-progress"])
    assert f"{tmp_path / 'p.json'} is left as it was, from an earlier run" in capfd.readouterr().err
    assert (tmp_path / "p.json").read_text() == "{}"


def test_the_validation_split_takes_the_shape_it_is_told(dataset, monkeypatch):
    # Regression: with --test-split none (tuning for a published split) the validation was per
    # user or by time whatever the split the parameters would be judged on.
    import training.ranker_fit
    from training.splits import validation_split

    kinds: list[str | None] = []

    def recording(train, fraction, seed, kind=None):
        kinds.append(kind)
        return validation_split(train, fraction, seed, kind)

    monkeypatch.setattr(training.ranker_fit, "validation_split", recording)
    result = tune(dataset, None, trials=1, timeout=300, seed=1, base=SMALL, show_progress=False, validation_kind="random")
    assert result.validation.kind == "random"
    assert kinds and set(kinds) == {"random"}  # each trial's ranker too


class _Stop(Exception):
    pass


@pytest.mark.parametrize("seed", [0, 3, 2**32 - 1])
@pytest.mark.parametrize("test_split_flag, evaluate_split_flag", [("auto", None), ("user:0.2", "user:0.2")])
def test_the_test_part_tune_sets_aside_is_the_one_evaluate_tests_on_whatever_the_seed(dataset, tmp_path, monkeypatch, seed,
                                                                      test_split_flag, evaluate_split_flag):
    """--seed seeds the search and its validation split, never the test split: with it, a
    tuned choice would be judged by `evaluate` on likes it was tuned on."""
    import numpy as np

    from training.__main__ import main
    from training.dataset import Edges
    from training.experiment import evaluation_parts

    untimed = dataset.with_likes(Edges(dataset.likes.src, dataset.likes.dst, np.full(len(dataset.likes), np.nan)))
    write_dataset(untimed, str(tmp_path / "data"))
    set_aside: list[SplitSpec] = []

    def recording_tune(data, test_split, *args, **kwargs):
        set_aside.append(test_split)
        raise _Stop

    monkeypatch.setattr(training.tune, "tune", recording_tune)
    with pytest.raises(_Stop):
        main(["tune", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "p.json"), "--seed", str(seed),
              "--test-split", test_split_flag])
    loaded = load_dataset(str(tmp_path / "data"))
    tuned_test = split_for_evaluation(loaded, set_aside[0])[1]
    evaluate_spec = SplitSpec.parse(evaluate_split_flag) if evaluate_split_flag else None
    evaluated_test = evaluation_parts(loaded, evaluate_spec, None, None)[1]
    assert len(evaluated_test) and list(zip(tuned_test.src, tuned_test.dst)) == list(zip(evaluated_test.src, evaluated_test.dst))


def test_als_regularization_is_searched_per_unit_of_alpha_and_the_defaults_trial_reproduces_it():
    """ALS's loss over alpha depends on 1 / alpha and regularization / alpha: the search samples
    those two, so its good region is a box rather than a diagonal; the defaults' trial still
    gives back the defaults' regularization."""
    import optuna

    from ranking.feed import FeedSettings
    from training.ranker_fit import RankerFitParams
    from training.tune import REGULARIZATION_PER_ALPHA_RANGE, SearchSpace, as_trial_values, suggest

    space = SearchSpace(weighted=False, timed=False)
    base = TrainParams(regularization=80.0, alpha=20.0)
    values = as_trial_values(base, FeedSettings(), RankerFitParams(), space)
    assert "regularization" not in values and values["regularization_per_alpha"] == pytest.approx(4.0)
    params, _, _ = suggest(optuna.trial.FixedTrial(values), base, FeedSettings(), RankerFitParams(), space)
    assert (params.alpha, params.regularization) == (20.0, pytest.approx(80.0))

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    low, high = REGULARIZATION_PER_ALPHA_RANGE
    for _ in range(50):
        params, _, _ = suggest(study.ask(), base, FeedSettings(), RankerFitParams(), space)
        assert low * 0.999 <= params.regularization / params.alpha <= high * 1.001


def test_a_trial_whose_als_overflows_is_skipped_not_the_end_of_the_search(tmp_path, capfd):
    """Like weights of 1e30 train under the defaults (--weight-transform log), but a trial that
    samples the raw transform overflows ALS's float32 solve. Regression: that trial stopped
    the whole search, after optuna's traceback, with advice to change flags tune does not take."""
    from training.__main__ import main

    items = "".join(f"i{k},s{k % 3},{1_700_000_000 + k},5\n" for k in range(10))
    likes = "".join(f"u{u},i{(u + 3 * j) % 10},{1_700_000_000 + 3600 * (u * 4 + j)},1e30\n" for u in range(8) for j in range(4))
    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock\n" + items)
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts,weight\n" + likes)
    main(["tune", "--data", str(tmp_path), "--out", str(tmp_path / "p.json"), "--trials", "2", "--seed", "0"])
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "failed" not in err.replace("ALS failed", "")
    assert "trial   1  skipped: ALS failed (NaN encountered in factors)" in out
    chosen = json.loads((tmp_path / "p.json").read_text())
    assert chosen["train"]["weight_transform"] == "log"


def test_a_catalogue_of_which_no_item_can_be_served_is_tuned_with_the_trainers_warning(tmp_path, capfd):
    """Regression: every item out of stock, every trial scored 0 and tune wrote the defaults
    as its choice ('ndcg@10 0.0000, defaults 0.0000') without a word on why; train warns."""
    from training.__main__ import main

    items = "".join(f"i{k},s{k % 3},{1_700_000_000 + k},0\n" for k in range(10))
    likes = "".join(f"u{u},i{(u + 3 * j) % 10},{1_700_000_000 + 3600 * (u * 4 + j)}\n" for u in range(8) for j in range(4))
    (tmp_path / "items.csv").write_text("item_id,seller_id,created_at,stock\n" + items)
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\n" + likes)
    main(["tune", "--data", str(tmp_path), "--out", str(tmp_path / "p.json"), "--trials", "1", "--no-progress"])
    err = capfd.readouterr().err
    assert "warning: no item of 10 can be served now (10 out of stock)" in err


def test_a_test_split_that_leaves_nothing_to_tune_on_says_so(tmp_path, capfd):
    """Regression: --test-split random:0.99 set aside all 32 likes, and the error blamed the
    validation split of 'the 0 likes tuned on', advising 'a larger dataset'."""
    from training.__main__ import main

    likes = "".join(f"u{u},i{(u + 3 * j) % 10},{1_700_000_000 + 3600 * (u * 4 + j)}\n" for u in range(8) for j in range(4))
    (tmp_path / "likes.csv").write_text("user_id,item_id,ts\n" + likes)
    with pytest.raises(SystemExit) as stopped:
        main(["tune", "--data", str(tmp_path), "--out", str(tmp_path / "p.json"), "--test-split", "random:0.99", "--no-progress"])
    assert stopped.value.code == ("error: --test-split random:0.99:0 sets aside all 32 likes: none is left to tune on "
                                  "(a smaller fraction, or --test-split none)")
    assert capfd.readouterr().err == "" and not (tmp_path / "p.json").exists()
