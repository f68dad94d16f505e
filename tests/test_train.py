"""training.train end to end on a small hand-built dataset."""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import pytest

from tests.test_embeddings import two_communities
from training.arguments import params_from_args
from training.artifact import load_current
from training.train import TrainParams, train
from training.train_command import add_arguments


def test_train_on_small_dataset() -> None:
    params = TrainParams(factors=8, iterations=8, show_progress=False)
    model, info = train(two_communities(), params)
    assert info["users"] == 60 and info["items"] == 40 and info["sellers"] == 2
    assert info["index_kind"] == "flat" and set(info["timings"]) == {"interactions", "als", "index"}
    assert model.user_factors.shape == (60, 8) and model.item_factors.dtype == np.float32
    ids, _ = model.neighbours(model.user_vector("u02", []), 5)
    assert all(i.startswith("a") for i in ids)


def test_cli_flags_have_defaults_and_help() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "m", "--factors", "16", "--follow-weight", "0",
                              "--index", "hnsw-mips", "--no-progress"])
    params = params_from_args(args)
    assert params == TrainParams(factors=16, follow_weight=0.0, index="hnsw-mips", show_progress=False)
    assert all(action.help for action in parser._actions)


def test_run_publishes_a_loadable_version(tmp_path) -> None:
    from training.dataset import write_dataset
    from training.train import train_and_publish

    dataset = two_communities()
    write_dataset(dataset, str(tmp_path / "data"))
    calls = []
    version_dir = train_and_publish(
        str(tmp_path / "data"), str(tmp_path / "models"), TrainParams(factors=8, iterations=5, show_progress=False),
        evaluate_fn=lambda ds, model: calls.append(len(model.item_ids)) or {"als": {"ndcg@10": 0.5}},
    )
    assert calls == [40]
    art = load_current(str(tmp_path / "models"))
    assert art.path == version_dir and os.path.isdir(version_dir)
    assert art.manifest["data_fingerprint"] == dataset.fingerprint()
    assert art.manifest["metrics"] == {"als": {"ndcg@10": 0.5}}
    assert art.manifest["params"]["factors"] == 8 and "show_progress" not in art.manifest["params"]
    assert set(art.manifest["timings"]) >= {"load", "als", "index", "evaluate"}
    assert art.model.user_vector("u00", []) is not None


@pytest.mark.parametrize("kind", ["hnsw-mips", "ivfpq-ip"])
def test_train_with_hnsw(kind: str) -> None:
    model, info = train(two_communities(), TrainParams(factors=8, iterations=5, index=kind, show_progress=False))
    assert info["index_kind"] == kind and len(model.neighbours(model.user_vector("u01", []), 5)[0]) == 5


def test_auto_knn_is_resolved_once_on_the_whole_matrix_for_the_ranker_and_the_served_model(tmp_path, monkeypatch) -> None:
    """Near the limit the ranker's fit part (fewer likes) could resolve "auto" to EASE while
    the whole matrix resolves to cosine: the ranker would learn weights for another model's
    similarities. One resolution, named in the manifest, rules that out."""
    import embeddings.knn
    import training.train
    from embeddings.knn import ease_item_count
    from ranking.feed import FeedSettings
    from training.dataset import write_dataset
    from training.generate import generate
    from training.params import interactions_of
    from training.ranker_fit import RankerFitParams, fit_ranker
    from training.splits import validation_split
    from training.train import train_and_publish

    dataset = generate(users=150, sellers=10, items=300, seed=3)
    write_dataset(dataset, str(tmp_path / "data"))
    params = TrainParams(factors=8, iterations=5, show_progress=False)
    assert params.knn == "auto"
    whole = interactions_of(dataset, params)
    split = RankerFitParams()
    fit_part = validation_split(dataset, split.validation_fraction, split.seed, split.validation_kind)[0]
    qualifying = ease_item_count(whole.item_matrix)
    in_fit_part = ease_item_count(interactions_of(fit_part, params, whole).item_matrix)
    assert in_fit_part < qualifying
    kinds: list[str] = []

    def recording(user_items, item_ids, kind, *args, **kwargs):
        kinds.append(kind)
        return real(user_items, item_ids, kind, *args, **kwargs)

    real = embeddings.knn.train_item_knn
    monkeypatch.setattr(embeddings.knn, "train_item_knn", recording)
    monkeypatch.setattr(training.train, "train_item_knn", recording)
    for limit, expected in ((qualifying, "ease"), (in_fit_part, "cosine")):
        monkeypatch.setattr(embeddings.knn, "EASE_AUTO_MAX_ITEMS", limit)
        kinds.clear()
        _, _, warm = fit_ranker(dataset, params, FeedSettings(), RankerFitParams(), whole)  # as evaluate_split calls them
        train(dataset, params, whole, initial=warm)
        assert kinds == [expected, expected]  # the ranker's fit-part model, then the served one
        kinds.clear()
        train_and_publish(str(tmp_path / "data"), str(tmp_path / f"models-{limit}"), params)
        assert kinds == [expected, expected]
        assert load_current(str(tmp_path / f"models-{limit}")).manifest["params"]["knn"] == expected


def test_the_trainer_says_what_auto_resolved_to(tmp_path, capsys) -> None:
    from training.dataset import write_dataset
    from training.train import train_and_publish

    write_dataset(two_communities(), str(tmp_path / "data"))
    train_and_publish(str(tmp_path / "data"), str(tmp_path / "models"), TrainParams(factors=8, iterations=5))
    assert "item-kNN       auto -> ease" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--sources", "--fallback-sources"])
def test_an_unknown_source_flag_is_named_before_any_work(flag, tmp_path, capsys):
    from training.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m"), flag, "trending,trendy"])
    assert f"argument {flag}: unknown sources trendy; choose from followed_sellers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "flag", "value", "says"),
    [
        ("train", "--factors", "0", "must be >= 1, got 0"),
        ("train", "--factors", "2.5", "expected an integer, got '2.5'"),
        ("train", "--regularization", "-1", "must be >= 0, got -1"),
        ("train", "--alpha", "nan", "expected a finite number, got 'nan'"),
        ("train", "--ease-l2", "0", "must be > 0, got 0"),
        ("train", "--ranker-validation", "1", "must be < 1, got 1"),
        ("train", "--max-per-seller", "0", "must be >= 1, got 0"),
        ("train", "--eval-split", "time:1.5", "fraction must be in (0, 1), got 1.5"),
        ("evaluate", "--split", "banana", "expected time:FRACTION, user:FRACTION[:SEED] or random:FRACTION[:SEED], got 'banana'"),
        ("tune", "--test-split", "user:0", "fraction must be in (0, 1), got 0.0"),
        ("train", "--eval-split", "random:0.2:-5", "the seed must be 0 or more, got -5 in 'random:0.2:-5'"),
        ("evaluate", "--split", "user:0.2:-1", "the seed must be 0 or more, got -1 in 'user:0.2:-1'"),
        ("tune", "--test-split", "user:0.2:-1", "the seed must be 0 or more, got -1 in 'user:0.2:-1'"),
    ],
)
def test_a_hyperparameter_out_of_range_is_named_before_any_work(command, flag, value, says, tmp_path, capsys):
    """ALS with 0 factors once published a model, NaN alpha ended in implicit's traceback,
    and a bad split was reported without its flag (or as --split): now argparse names the
    flag, before the data is read."""
    from training.__main__ import main

    out = [] if command == "evaluate" else ["--out", str(tmp_path / "m")]
    with pytest.raises(SystemExit):
        main([command, "--data", str(tmp_path / "missing"), *out, flag, value])
    assert f"argument {flag}: {says}" in capsys.readouterr().err


def test_als_that_overflows_to_nan_is_one_error_line_naming_the_flags(tmp_path, capsys):
    """A like weight of 1e20 under --weight-transform raw (or an --alpha of 1e15) made implicit's ALS
    diverge to NaN factors, and the command ended in implicit's ModelFitError traceback."""
    from training.__main__ import main
    from training.dataset import Edges, write_dataset

    data = two_communities()
    weights = np.ones(len(data.likes))
    weights[0] = 1e20
    likes = Edges(data.likes.src, data.likes.dst, data.likes.ts, weights)
    write_dataset(dataclasses.replace(data, likes=likes), str(tmp_path / "data"))
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "models"), "--weight-transform", "raw",
              "--factors", "8", "--eval-split", "none", "--no-progress"])
    assert str(stopped.value.code).startswith(
        "error: ALS failed (NaN encountered in factors): confidences up to 2e+21 (alpha 20 x the largest cell weight, "
        "1e+20) and regularization 80 overflow its float32 solve; lower --alpha or --regularization, or use "
        "--weight-transform log")
    assert not (tmp_path / "models" / "CURRENT").exists()
    main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "models"),  # log2(1 + 1e20) trains
          "--factors", "8", "--eval-split", "none", "--no-progress"])
    assert load_current(str(tmp_path / "models")).manifest["params"]["weight_transform"] == "log"


def test_a_dataset_without_likes_is_refused_and_the_current_model_kept(tmp_path, capsys):
    """An export that came out empty once published an empty model as CURRENT, exit 0."""
    from training.__main__ import main
    from training.dataset import write_dataset

    write_dataset(two_communities(), str(tmp_path / "data"))
    main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "models"), "--factors", "8", "--no-progress"])
    published = load_current(str(tmp_path / "models")).path
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "likes.csv").write_text("user_id,item_id,ts\n")
    for command, out in [("train", str(tmp_path / "models")), ("tune", str(tmp_path / "params.json")), ("evaluate", None)]:
        with pytest.raises(SystemExit) as exit_:
            main([command, "--data", str(tmp_path / "empty"), *(["--out", out] if out else []), "--no-progress"])
        assert "the likes table holds no like: there is nothing to learn from" in str(exit_.value.code)
    assert load_current(str(tmp_path / "models")).path == published
    assert not (tmp_path / "params.json").exists()


def test_nothing_to_evaluate_is_an_error_not_a_table_of_zeros(tmp_path, capsys):
    from training.__main__ import main

    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "likes.csv").write_text("user_id,item_id,ts\nu1,i1,100\n")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--data", str(tmp_path / "one"), "--no-progress"])
    assert "left no test likes: nothing to evaluate" in str(exit_.value.code)
    # The trainer still publishes a model then, without metrics, and says why.
    main(["train", "--data", str(tmp_path / "one"), "--out", str(tmp_path / "models"), "--no-progress"])
    assert load_current(str(tmp_path / "models")).manifest["metrics"] == {}
    assert "nothing to evaluate" in capsys.readouterr().err


@pytest.mark.parametrize("servable, says", [
    ("none in stock", "no item of 40 can be served now (40 out of stock)"),
    # Regression: every seller away, or a mix of reasons, trained without a word, though no feed shows an item.
    ("sellers away", "no item of 40 can be served now (40 their seller away)"),
    ("mixed", "no item of 40 can be served now (20 out of stock, 20 kept out of the feed (feed_eligible 0), 40 their seller away)"),
    ("one back", None),
])
def test_a_catalogue_of_which_no_item_can_be_served_trains_with_a_warning(servable, says, tmp_path, capsys):
    from training.dataset import Sellers, write_dataset
    from training.train import train_and_publish

    dataset = two_communities()
    sellers = sorted(set(dataset.items.seller_id))
    if servable == "none in stock":
        dataset.items.stock[:] = 0
    else:
        until = [np.inf] * len(sellers)
        if servable == "mixed":
            dataset.items.stock[:20] = 0
            dataset.items.feed_eligible[20:] = False
        if servable == "one back":
            until[0] = 1.0
        dataset = dataclasses.replace(dataset, sellers=Sellers(sellers, np.asarray(until)))
    write_dataset(dataset, str(tmp_path / "data"))
    train_and_publish(str(tmp_path / "data"), str(tmp_path / "models"), TrainParams(factors=8, iterations=5, show_progress=False))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "can be served" in line]
    until = "feeds stay empty until items are restocked, listed, made feed-eligible or their sellers are back"
    assert warnings == ([] if says is None else [f"warning: {says}: {until}"])


def test_the_same_data_and_seed_give_the_same_model_bit_for_bit(tmp_path) -> None:
    """implicit's ALS solves each row on its own, whichever thread takes it, so training
    with every core is as reproducible as with one: a data scientist who trains twice gets
    the same factors, index, item-kNN and ranker (measured on Last.fm and the 20k-user
    benchmark data too, benchmarks/README.md)."""
    from training.dataset import write_dataset
    from training.generate import generate
    from training.train import train_and_publish

    write_dataset(generate(users=600, sellers=40, items=1500, seed=3), str(tmp_path / "data"))
    versions = [train_and_publish(str(tmp_path / "data"), str(tmp_path / f"models-{run}"), TrainParams(show_progress=False))
                for run in range(2)]
    for name in ("factors.npz", "ids.npz", "knn.npz", "index.faiss"):
        first, second = ((tmp_path / version / name).read_bytes() for version in versions)
        assert first == second, name
    first, second = (load_current(str(tmp_path / f"models-{run}")).manifest["ranker"] for run in range(2))
    assert first["weights"] == second["weights"] and first["bias"] == second["bias"]
