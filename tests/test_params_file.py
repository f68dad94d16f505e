"""`train|evaluate --params FILE`: every value passes its flag's own checks, and a key or
section that would be ignored is an error naming it, before any work."""

from __future__ import annotations

import json

import pytest

from training.__main__ import main
from training.arguments import params_file_defaults


def refused(tmp_path, capsys, content: str | bytes, command: str = "train") -> str:
    """stderr of ``command`` with ``content`` as its params file; it must stop at parsing (status 2)."""
    path = tmp_path / "params.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = [command, "--data", str(tmp_path / "missing"), "--params", str(path)]
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--out", str(tmp_path / "models")] if command == "train" else argv)
    assert stopped.value.code == 2
    assert not (tmp_path / "models").exists()
    return capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ({"train": {"factors": 0}}, "train.factors: must be >= 1, got 0"),
    ({"train": {"alpha": -1.0}}, "train.alpha: must be > 0, got -1.0"),
    ({"train": {"regularization": -5}}, "train.regularization: must be >= 0, got -5"),
    ({"train": {"knn_k": 0}}, "train.knn_k: must be >= 1, got 0"),
    ({"train": {"factors": 8.7}}, "train.factors: expected an integer, got '8.7'"),
    ('{"train": {"factors": 1e400}}', "train.factors: expected an integer"),
    ('{"train": {"alpha": 1e400}}', "train.alpha: expected a finite number"),
    ({"train": {"factors": True}}, "train.factors: expected an integer, got 'true'"),
    ({"train": {"factors": None}}, "train.factors: expected an integer, got 'null'"),
    ({"train": {"knn": "bogus"}}, "train.knn: invalid choice: 'bogus'"),
    ({"feed": {"max_per_seller": 0}}, "feed.max_per_seller: must be >= 1, got 0"),
    ({"feed": {"sources": []}}, "feed.sources: no source: every feed would be empty"),
    ({"ranker": {"drop_features": ["bogus"]}}, "ranker.drop_features: unknown features ['bogus']"),
    ({"feed": {"sources": [1, 2]}}, "feed.sources: expected a list of names (strings), got [1, 2]"),
])
def test_a_value_gets_its_flags_own_check_and_the_error_names_file_and_key(tmp_path, capsys, content, message):
    text = content if isinstance(content, str) else json.dumps(content)
    for command in ("train", "evaluate"):
        assert f"error: --params {tmp_path / 'params.json'}: {message}" in refused(tmp_path, capsys, text, command)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "expected a JSON object of sections (train, feed, ranker), got a list"),
    ('{"train": [1, 2]}', "train: expected an object of flag values, got a list"),
    ('{"feed": 3}', "feed: expected an object of flag values, got a number"),
    (b'{"train": {"knn": "\xff"}}', "line 1 column 20: not UTF-8"),
    ('{"train": {"factors": 16,,}}', "line 1 column 26: Expecting property name"),
    ('{"trian": {"factors": 16}}', "unknown section 'trian'; the flags' values go in train, feed, ranker"),
    ('{"train": {"fators": 16}}', "train.fators: no flag sets it; choose from factors, regularization"),
    ('{"feed": {"ef_search": 16}}', "feed.ef_search: no flag sets it; choose from max_per_seller"),
    ('{"train": {"factors": 8}, "train": {"alpha": 5}}', "key 'train' is given twice in one object (JSON keeps only the last)"),
    ('{"train": {"factors": 8, "factors": 9}}', "key 'factors' is given twice in one object"),
])
def test_a_malformed_file_or_an_ignored_key_is_named(tmp_path, capsys, content, message):
    assert f"error: --params {tmp_path / 'params.json'}: {message}" in refused(tmp_path, capsys, content)


@pytest.mark.parametrize("field", ["like_weight", "hnsw_m", "ef_construction", "show_progress"])
def test_a_train_param_no_flag_sets_is_refused_not_ignored(tmp_path, capsys, field):
    assert f"train.{field}: no flag sets it" in refused(tmp_path, capsys, json.dumps({"train": {field: 1}}))


def test_a_params_path_that_is_no_file_is_named(tmp_path, capsys):
    for path, what in ((tmp_path, "Is a directory"), (tmp_path / "absent.json", "No such file or directory")):
        with pytest.raises(SystemExit):
            main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--params", str(path)])
        assert f"error: --params {path}: {what}" in capsys.readouterr().err


@pytest.mark.parametrize("command, flag", [("train", "--params"), ("evaluate", "--params"), ("evaluate", "--test")])
def test_an_empty_path_is_refused_not_taken_for_the_flag_not_given(tmp_path, capsys, command, flag):
    """--params "$PARAMS" of an unset variable trained with the defaults and published them as
    CURRENT, without a word; evaluate --test "" evaluated on the default split instead."""
    out = ["--out", str(tmp_path / "models")] if command == "train" else []
    with pytest.raises(SystemExit) as stopped:
        main([command, "--data", str(tmp_path / "missing"), *out, flag, ""])
    assert stopped.value.code == 2
    assert f"error: argument {flag}: expected a path, got an empty one" in capsys.readouterr().err


def test_values_are_converted_as_on_the_command_line_and_tunes_report_is_ignored(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({
        "train": {"factors": 32, "regularization": 5, "knn": "ease"},
        "feed": {"sources": ["trending", "item_knn"], "neighbours": 40},
        "ranker": {"drop_features": []},
        "validation": {"split": "time:0.2"}, "confirmation": None, "trials": [{"number": 0}], "seconds": 1.5,
    }))
    assert params_file_defaults(str(path)) == {
        "factors": 32, "regularization": 5.0, "knn": "ease", "sources": ("trending", "item_knn"), "neighbours": 40,
        "drop_features": (),
    }
