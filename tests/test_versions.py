"""``python -m serving versions`` and ``retire``, on models directories of versions the trainer made."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from serving.__main__ import main
from serving.arms import load_arms, load_named_version, load_pinned, published_versions
from tests.feed_world import FAST_TRAINING
from training import artifact
from training.artifact import load_current, publish, set_current
from training.generate import generate
from training.train import default_ranker_spec, train


@pytest.fixture(scope="module")
def trained():
    return train(generate(users=150, sellers=15, items=400, seed=7), FAST_TRAINING)[0]


@pytest.fixture()
def models(trained, tmp_path) -> tuple[Path, list[str]]:
    """A models directory of 7 versions, oldest first, CURRENT at the newest."""
    directory = tmp_path / "models"
    names = [Path(publish(str(directory), trained, {"params": {}, "metrics": {"model": {"ndcg@10": 0.1 + i / 100}},
                                                   "ranker": default_ranker_spec()})).name for i in range(7)]
    return directory, names


def arms_pinning(tmp_path: Path, version: str) -> Path:
    path = tmp_path / "arms.toml"
    path.write_text(f'salt = "s"\n[[arm]]\nname = "control"\nshare = 0.5\n[[arm]]\nname = "candidate"\nshare = 0.5\nmodel = "{version}"\n')
    return path


def run(capsys, *argv: str) -> str:
    capsys.readouterr()  # what came before
    main(list(argv))
    return capsys.readouterr().out


def note_of(output: str, version: str) -> str:
    """The last column of ``version``'s row in a printed table."""
    row = next(line for line in output.splitlines() if line.startswith(version + " "))
    return row.split("  ")[-1].strip()


def test_versions_lists_newest_first_with_time_size_metric_and_current(models, capsys):
    directory, names = models
    output = run(capsys, "versions", "--models", str(directory))
    rows = output.splitlines()
    assert rows[0].split() == ["VERSION", "CREATED", "SIZE", "ndcg@10"]
    assert [row.split()[0] for row in rows[1:]] == names[::-1]
    newest = rows[1].split()
    assert newest[1].endswith("Z") and newest[3] in ("KB", "MB") and newest[4] == "0.1600" and newest[5] == "CURRENT"


def test_retire_keeps_the_newest_n_current_and_pinned_and_says_why(models, tmp_path, capsys):
    directory, names = models
    set_current(str(directory), names[1])  # rolled back
    arms = arms_pinning(tmp_path, names[2])
    output = run(capsys, "retire", "--models", str(directory), "--keep", "3", "--arms", str(arms))
    assert published_versions(str(directory)) == [names[6], names[5], names[4], names[2], names[1]]
    assert sorted(os.listdir(directory)) == sorted(["CURRENT", *published_versions(str(directory))])  # nothing hidden left
    assert note_of(output, names[1]) == "keep: CURRENT"
    assert note_of(output, names[2]) == f"keep: pinned by arm 'candidate' ({arms})"
    assert note_of(output, names[5]) == "keep: one of the newest 3"
    assert note_of(output, names[0]) == note_of(output, names[3]) == "retire"
    assert "retired 2 of 7 versions" in output
    # what a server loads from the directory still loads
    assert load_current(str(directory)).version == names[1]
    assert set(load_pinned(load_arms(str(arms)), str(directory))) == {names[2]}


def test_retire_keeps_five_by_default(models, capsys):
    directory, names = models
    run(capsys, "retire", "--models", str(directory))
    assert published_versions(str(directory)) == names[:1:-1]


def test_a_dry_run_changes_nothing(models, capsys):
    directory, names = models
    before = sorted((p.name, p.stat().st_mtime_ns) for p in directory.rglob("*"))
    output = run(capsys, "retire", "--models", str(directory), "--keep", "2", "--dry-run")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in directory.rglob("*")) == before
    assert [note_of(output, name) for name in names] == ["would retire"] * 5 + ["keep: one of the newest 2", "keep: CURRENT"]
    assert "dry run: would retire 5 of 7 versions" in output


def test_named_versions_are_retired_and_only_they_without_keep(models, capsys):
    directory, names = models
    run(capsys, "retire", "--models", str(directory), names[5], names[0])
    assert published_versions(str(directory)) == [names[6], *names[4:0:-1]]
    run(capsys, "retire", "--models", str(directory), "--keep", "5", names[4])  # among the newest 5 left, but named
    assert published_versions(str(directory)) == [names[6], names[3], names[2], names[1]]


@pytest.mark.parametrize("argv, message", [
    (["--keep", "-1"], "argument --keep: must be >= 0, got -1"),
    (["no-such-version"], "VERSION 'no-such-version': no such version directory"),
    (["CURRENT_VERSION"], "VERSION 'CURRENT_VERSION': not retired, it is CURRENT"),
    (["PINNED_VERSION", "--arms", "ARMS"], "VERSION 'PINNED_VERSION': not retired, it is pinned by arm 'candidate'"),
    (["--arms", "MISSING"], "--arms: MISSING: No such file or directory\n"),  # start_error's form, as serve's: no "[Errno 2]"
])
def test_a_refused_retire_names_the_flag_and_retires_nothing(models, tmp_path, capsys, argv, message):
    directory, names = models
    arms = arms_pinning(tmp_path, names[2])
    words = {"CURRENT_VERSION": names[6], "PINNED_VERSION": names[2], "ARMS": str(arms), "MISSING": str(tmp_path / "none.toml")}
    with pytest.raises(SystemExit) as exit:
        main(["retire", "--models", str(directory), "--keep", "0", *(words.get(word, word) for word in argv)])
    message = message.replace("CURRENT_VERSION", names[6]).replace("PINNED_VERSION", names[2]).replace("MISSING", words["MISSING"])
    assert exit.value.code == 2 and message in capsys.readouterr().err
    assert published_versions(str(directory)) == names[::-1]


def assert_warned_and_retire_stops(directory, message: str, capsys, *arms_args: str) -> None:
    """``versions`` warns with ``message`` and ``retire --keep 0`` stops on it (status 2)."""
    capsys.readouterr()
    main(["versions", "--models", str(directory), *arms_args])
    assert capsys.readouterr().err.startswith(f"warning: {message}")
    with pytest.raises(SystemExit) as exit:
        main(["retire", "--models", str(directory), "--keep", "0", *arms_args])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_current_naming_no_version_is_warned_by_versions_and_stops_retire(models, capsys):
    """A typo in a rollback's CURRENT: the servers kept serving what they had loaded, the
    listing showed no version as CURRENT without a word, and retire --keep 0 deleted them all."""
    directory, names = models
    (directory / "CURRENT").write_text(names[3][:-1] + "\n")
    message = f"{directory / 'CURRENT'} names {names[3][:-1]!r}, which is no version directory here"
    capsys.readouterr()
    main(["versions", "--models", str(directory)])
    listed = capsys.readouterr()
    assert [row.split()[0] for row in listed.out.splitlines()[1:]] == names[::-1]
    assert listed.err.startswith(f"warning: {message}")
    with pytest.raises(SystemExit) as exit:
        main(["retire", "--models", str(directory), "--keep", "0"])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
    assert published_versions(str(directory)) == names[::-1]



def test_a_current_naming_a_version_whose_ranker_the_servers_refuse_stops_retire(models, capsys):
    """A newer trainer's version (a ranker feature these servers do not know) made CURRENT:
    the servers refused it and kept serving the version before, which retire --keep 0 then
    listed as "would retire", leaving nothing to roll back to (found by the A/B review)."""
    directory, names = models
    newer = directory / "newer"
    shutil.copytree(directory / names[6], newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["ranker"]["weights"]["from_the_future"] = 1.0
    (newer / "manifest.json").write_text(json.dumps(manifest))
    (directory / "CURRENT").write_text("newer\n")
    message = f"{directory / 'CURRENT'} names 'newer', which is a version servers refuse (manifest.json ranker: unknown ranker features"
    assert_warned_and_retire_stops(directory, message, capsys)
    assert set(published_versions(str(directory))) == {*names, "newer"}


def test_an_arm_pinning_no_version_is_warned_by_versions_and_stops_retire(models, tmp_path, capsys):
    """As a CURRENT naming none: the listing said nothing of it, and retire went ahead,
    though the servers serve whatever they loaded before under that name."""
    directory, names = models
    arms = arms_pinning(tmp_path, names[2] + "x")
    message = f"{names[2] + 'x'!r}, pinned by arm 'candidate' ({arms}), is no version directory here"
    assert_warned_and_retire_stops(directory, message, capsys, "--arms", str(arms))
    assert published_versions(str(directory)) == names[::-1]


def test_an_arm_pinning_an_incomplete_version_is_warned_by_versions_and_stops_retire(models, tmp_path, capsys):
    """A version still being copied in, pinned already: the servers refused it and kept
    serving the arm's version before, and retire --keep 0 deleted that one, unprotected."""
    directory, names = models
    shutil.copytree(directory / names[6], directory / "copying", ignore=shutil.ignore_patterns("index.faiss*"))
    arms = arms_pinning(tmp_path, "copying")
    message = f"'copying', pinned by arm 'candidate' ({arms}), is a version servers refuse (index.faiss missing)"
    assert_warned_and_retire_stops(directory, message, capsys, "--arms", str(arms))
    assert set(published_versions(str(directory))) == {*names, "copying"}


def test_a_missing_models_directory_is_an_error_naming_the_flag(tmp_path, capsys):
    for command in ("versions", "retire"):
        with pytest.raises(SystemExit):
            main([command, "--models", str(tmp_path / "nowhere")])
        assert f"--models {tmp_path / 'nowhere'}: no such directory" in capsys.readouterr().err


def test_a_models_path_that_is_a_file_is_not_called_missing(tmp_path, capsys):
    (tmp_path / "models").write_text("")
    for command in ("versions", "retire"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--models", str(tmp_path / "models")])
        assert exited.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].endswith(f"--models {tmp_path / 'models'}: not a directory")


def test_the_models_and_arms_come_from_the_servers_config_file_relative_to_it(models, tmp_path, monkeypatch, capsys):
    directory, names = models
    arms_pinning(tmp_path, names[2])
    config = tmp_path / "feedrank.toml"
    config.write_text('models = "models"\narms = "arms.toml"\nport = 50051\n')  # the server's file, every key of it
    monkeypatch.chdir(directory)  # a relative path in the file is relative to the file, not to here
    monkeypatch.delenv("FEEDRANK_CONFIG", raising=False)
    output = run(capsys, "versions", "--config", str(config))
    assert note_of(output, names[2]) == f"pinned by arm 'candidate' ({tmp_path / 'arms.toml'})"
    run(capsys, "retire", "--config", str(config), "--keep", "1")
    assert published_versions(str(directory)) == [names[6], names[2]]


def test_a_flag_beats_its_variable_which_beats_the_config_file(models, tmp_path, monkeypatch, capsys):
    directory, names = models
    (tmp_path / "elsewhere").mkdir()
    config = tmp_path / "feedrank.toml"
    config.write_text('models = "nowhere"\n')
    monkeypatch.setenv("FEEDRANK_CONFIG", str(config))
    with pytest.raises(SystemExit):
        main(["versions"])
    assert f"{config}:1: key 'models' {tmp_path / 'nowhere'}: no such directory" in capsys.readouterr().err
    monkeypatch.setenv("FEEDRANK_MODELS", str(directory))
    assert note_of(run(capsys, "versions"), names[6]) == "CURRENT"
    assert run(capsys, "versions", "--models", str(tmp_path / "elsewhere")).splitlines() == ["VERSION  CREATED  SIZE  ndcg@10"]


def test_a_bad_config_file_or_no_models_directory_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FEEDRANK_CONFIG", raising=False)
    monkeypatch.delenv("FEEDRANK_MODELS", raising=False)
    config = tmp_path / "feedrank.toml"
    config.write_text('modles = "models"\n')
    for argv, message in ((["--config", str(config)], f"{config}:1: unknown key 'modles' (did you mean 'models'?)"),
                          ([], "--models is required (or FEEDRANK_MODELS, or 'models' in the --config file)")):
        with pytest.raises(SystemExit) as exit:
            main(["retire", *argv])
        assert exit.value.code == 2 and message in capsys.readouterr().err


def test_an_incomplete_version_is_kept_and_not_counted_among_the_newest(models, capsys):
    directory, names = models
    copying = directory / "copied-by-hand"  # a copy still under way: its index not there yet
    shutil.copytree(directory / names[6], copying, ignore=shutil.ignore_patterns("index.faiss*"))
    output = run(capsys, "retire", "--models", str(directory), "--keep", "2")
    assert note_of(output, "copied-by-hand") == "keep: incomplete: index.faiss missing"
    assert copying.is_dir() and set(published_versions(str(directory))) == {names[6], names[5], "copied-by-hand"}


def test_a_retire_that_died_halfway_leaves_no_version_a_reader_takes_and_the_next_one_finishes(models, monkeypatch, capsys):
    directory, names = models
    delete = shutil.rmtree

    def dies_halfway(path, *args, **kwargs) -> None:
        os.remove(os.path.join(path, "factors.npz"))
        raise OSError("killed")

    monkeypatch.setattr(artifact.shutil, "rmtree", dies_halfway)
    with pytest.raises(SystemExit, match="killed"):
        main(["retire", "--models", str(directory), names[0]])
    monkeypatch.setattr(artifact.shutil, "rmtree", delete)
    [leftover] = [name for name in os.listdir(directory) if name.startswith(".")]
    assert leftover.startswith(f".retired-{names[0]}-")
    assert published_versions(str(directory)) == names[:0:-1]  # the explorer's list, and what a name loads from
    with pytest.raises(FileNotFoundError):
        load_named_version(str(directory), leftover)
    assert names[0] not in run(capsys, "versions", "--models", str(directory))
    output = run(capsys, "retire", "--models", str(directory), "--keep", "6")
    assert f"removed {leftover}, left by a retire that did not finish" in output
    assert sorted(os.listdir(directory)) == sorted(["CURRENT", *names[1:]])


def test_a_version_the_system_refuses_to_move_is_one_line_without_errno(models, monkeypatch):
    # Regression: "error: V: [Errno 13] Permission denied: '/m/V' -> '/m/.retired-V-...'".
    directory, names = models
    rename = os.rename

    def refused(src, dst, *args, **kwargs):
        if os.fspath(src) == str(directory / names[0]):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(src), None, os.fspath(dst))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", refused)
    with pytest.raises(SystemExit) as exited:
        main(["retire", "--models", str(directory), names[0]])
    assert re.fullmatch(rf"error: {names[0]}: {re.escape(str(directory / names[0]))} -> "
                        rf"{re.escape(str(directory))}/\.retired-{names[0]}-[0-9a-f]+: Permission denied", exited.value.code)
    assert published_versions(str(directory)) == names[::-1]


def test_the_version_current_names_is_never_deleted_even_when_asked_directly(models):
    directory, names = models
    with pytest.raises(ValueError, match="is the one .*CURRENT names"):
        artifact.retire_version(str(directory), names[6])
    assert (directory / names[6]).is_dir()


def test_a_rollback_to_a_version_being_retired_wins_the_race(models, monkeypatch):
    """set_current found the version before retire renamed it, and wrote CURRENT just after:
    the version is given back rather than deleted under the CURRENT that names it."""
    directory, names = models
    fsync = artifact._fsync

    def rollback_lands(path: str) -> None:
        if any(name.startswith(artifact.RETIRED_PREFIX) for name in os.listdir(directory)):
            (directory / artifact.CURRENT).write_text(names[0] + "\n")
        fsync(path)

    monkeypatch.setattr(artifact, "_fsync", rollback_lands)
    with pytest.raises(ValueError, match="is the one .*CURRENT names"):
        artifact.retire_version(str(directory), names[0])
    assert artifact.load_current(str(directory)).path == str(directory / names[0])
