"""training.artifact: publish / load round trip and the CURRENT switch."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil

import numpy as np
import pytest

from embeddings.index import build_index
from embeddings.model import EmbeddingModel
from ranking.ranker import DEFAULT_BLEND
from training.artifact import load_current, load_version, new_version, publish, set_current
from training.train import default_ranker_spec


def small_model(seed: int, kind: str = "flat") -> EmbeddingModel:
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((5, 4)).astype(np.float32)
    items = rng.standard_normal((7, 4)).astype(np.float32)
    return EmbeddingModel([f"u{i}" for i in range(5)], [f"ité{i}" for i in range(7)], users, items,
                          build_index(items, kind, hnsw_m=4), regularization=0.1, alpha=5.0)


def manifest(**extra) -> dict:
    return {"params": {"factors": 4}, "data_fingerprint": "abc", "metrics": {"model": {"ndcg@10": 0.1}},
            "ranker": default_ranker_spec(), **extra}


@pytest.mark.parametrize("kind", ["flat", "hnsw-mips", "ivfpq-ip"])
def test_round_trip(tmp_path, kind: str) -> None:
    model = small_model(0, kind)
    version_dir = publish(str(tmp_path), model, manifest())
    assert sorted(os.listdir(version_dir)) == ["factors.npz", "ids.npz", "index.faiss", "index.faiss.json",
                                               "manifest.json"]
    art = load_current(str(tmp_path))
    assert art.version == os.path.basename(version_dir) and art.path == version_dir
    assert art.manifest["data_fingerprint"] == "abc" and art.manifest["metrics"]["model"]["ndcg@10"] == 0.1
    assert art.manifest["created_at"].endswith("Z")
    assert art.ranker.to_mapping() == pytest.approx(DEFAULT_BLEND)
    loaded = art.model
    assert loaded.item_ids == model.item_ids and loaded.user_ids == model.user_ids  # non-ASCII ids survive
    assert loaded.index.kind == kind and loaded.alpha == 5.0 and loaded.regularization == 0.1
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    assert loaded.item_factors.dtype == np.float32
    vector = model.user_vector("u1", [])
    assert loaded.neighbours(vector, 3)[0] == model.neighbours(vector, 3)[0]
    np.testing.assert_array_equal(loaded.fold_in(["ité1"]), model.fold_in(["ité1"]))
    # ids are plain unicode arrays: loadable without pickle
    with np.load(os.path.join(version_dir, "ids.npz"), allow_pickle=False) as ids:
        assert ids["item_ids"].dtype.kind == "U"


def test_current_switches_and_versions_sort(tmp_path) -> None:
    first = publish(str(tmp_path), small_model(0), manifest())
    second = publish(str(tmp_path), small_model(1), manifest())
    assert os.path.basename(first) < os.path.basename(second) or first[:-7] == second[:-7]
    assert load_current(str(tmp_path)).path == second
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp dirs left
    set_current(str(tmp_path), os.path.basename(first))  # rollback
    assert load_current(str(tmp_path)).path == first
    assert load_version(second).model.user_factors.shape == (5, 4)


def test_missing_current_is_a_helpful_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no published model.*python -m training train"):
        load_current(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        set_current(str(tmp_path), "20990101T000000Z-000000")


def test_a_models_directory_that_is_a_file_or_a_current_that_is_a_directory_is_a_one_line_error(tmp_path) -> None:
    """--models naming a file (models/CURRENT itself, say) stopped the server with a
    NotADirectoryError traceback; a CURRENT that is a directory, with IsADirectoryError."""
    version_dir = publish(str(tmp_path / "models"), small_model(0), manifest())
    current = os.path.join(os.path.dirname(version_dir), "CURRENT")
    with pytest.raises(FileNotFoundError, match=rf"^models directory {current}: not a directory"):
        load_current(current)
    os.remove(current)
    os.mkdir(current)
    with pytest.raises(ValueError, match=rf"^{current}: cannot be read: Is a directory"):
        load_current(os.path.dirname(version_dir))


def test_a_version_that_does_not_exist_is_not_called_incomplete(tmp_path) -> None:
    """CURRENT naming a retired (deleted) version was reported as 'incomplete: manifest.json
    is missing', as if a publish had been cut short."""
    version_dir = publish(str(tmp_path), small_model(0), manifest())
    shutil.rmtree(version_dir)
    with pytest.raises(FileNotFoundError, match=rf"^model version {version_dir} does not exist$"):
        load_current(str(tmp_path))


def test_a_version_missing_the_item_knn_its_manifest_records_is_incomplete(tmp_path) -> None:
    """knn.npz is optional, so a version copied by hand without it (or with it not yet
    copied) loaded, and was served without its item-kNN source and in silence, though its
    manifest records one and its ranker was fitted with it."""
    import scipy.sparse as sp

    from embeddings.knn import ItemKNN

    model = small_model(0)
    model.item_knn = ItemKNN(model.item_ids, sp.identity(7, dtype=np.float32, format="csr"))
    version_dir = publish(str(tmp_path), model, manifest())
    assert load_version(version_dir).model.item_knn is not None
    os.remove(os.path.join(version_dir, "knn.npz"))
    with pytest.raises(FileNotFoundError, match=rf"^model version {version_dir} is incomplete: knn.npz is missing$"):
        load_version(version_dir)


def test_incomplete_version_and_bad_manifest(tmp_path) -> None:
    version_dir = publish(str(tmp_path), small_model(0), manifest())
    os.remove(os.path.join(version_dir, "factors.npz"))
    with pytest.raises(FileNotFoundError, match="factors.npz"):
        load_version(version_dir)
    with pytest.raises(ValueError, match="ranker"):
        publish(str(tmp_path), small_model(0), {"params": {}})


@pytest.mark.parametrize("name", ["manifest.json", "ids.npz", "factors.npz", "index.faiss"])
def test_a_damaged_file_is_named_in_one_error(tmp_path, name) -> None:
    """A file cut short gave a 41-line zipfile traceback, or a JSON error naming no file."""
    version_dir = publish(str(tmp_path), small_model(0), manifest())
    path = os.path.join(version_dir, name)
    with open(path, "rb") as file:
        head = file.read(50)
    with open(path, "wb") as file:
        file.write(head)
    with pytest.raises(ValueError, match=rf"^model version {version_dir}: {name} is damaged \("):
        load_version(version_dir)


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(5, "Input/output error")])
def test_a_file_of_a_version_that_cannot_be_read_is_named_in_one_error(tmp_path, monkeypatch, error) -> None:
    """A version file the server may not read, or that the disk fails to read, stopped the
    start with a bare PermissionError / OSError traceback (only FileNotFoundError and
    ValueError are one line)."""
    import training.artifact as artifact

    version_dir = publish(str(tmp_path), small_model(0), manifest())

    def unreadable(*args, **kwargs):
        raise error

    monkeypatch.setattr(artifact.np, "load", unreadable)
    with pytest.raises(ValueError, match=rf"^model version {version_dir}: ids.npz cannot be read \({type(error).__name__}: "):
        load_version(version_dir)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: [m], "is not a JSON object"),
    (lambda m: {k: v for k, v in m.items() if k != "version"}, "has no version"),
    (lambda m: {**m, "version": 7}, "has no version"),
    (lambda m: {**m, "model": "als"}, r"model is not a JSON object"),
])
def test_a_manifest_of_the_wrong_shape_is_an_error_naming_the_version(tmp_path, change, message) -> None:
    """A manifest.json that parses but is not what publish writes (edited by hand, another
    tool's) stopped the server with an AttributeError or KeyError traceback naming no file."""
    version_dir = publish(str(tmp_path), small_model(0), manifest())
    path = os.path.join(version_dir, "manifest.json")
    with open(path, encoding="utf-8") as file:
        written = json.load(file)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(change(written), file)
    with pytest.raises(ValueError, match=rf"^model version {version_dir}: manifest.json {message}"):
        load_version(version_dir)


@pytest.mark.parametrize(
    ("ranker", "message"),
    [
        ({"weights": {**DEFAULT_BLEND, "seller_collection_score": 0.5}, "bias": 0.0},
         r"manifest.json ranker: unknown ranker features: \['seller_collection_score'\] \(trained by a newer version\?"),
        (None, r"manifest.json has no ranker weights \(ranker.weights\)"),
        ({"bias": 0.0}, r"manifest.json has no ranker weights"),
        ({"weights": {"popularity": "high"}}, r"manifest.json ranker: could not convert string to float"),
    ],
)
def test_a_ranker_this_version_cannot_serve_is_an_error_naming_the_version(tmp_path, ranker, message) -> None:
    """A server started on a model of a newer trainer said only 'error: unknown ranker
    features: [...]', and on a manifest without a ranker printed a KeyError traceback."""
    version_dir = publish(str(tmp_path), small_model(0), manifest())
    path = os.path.join(version_dir, "manifest.json")
    with open(path) as f:
        data = json.load(f)
    data["ranker"] = ranker
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=rf"^model version {version_dir}: {message}"):
        load_version(version_dir)


def test_manifest_is_plain_json(tmp_path) -> None:
    version_dir = publish(str(tmp_path), small_model(0), manifest(extra=np.float32(1.5)))
    with open(os.path.join(version_dir, "manifest.json")) as f:
        data = json.load(f)
    assert data["extra"] == 1.5 and data["model"]["index"]["kind"] == "flat"
    assert data["ranker"]["features"][0] == "embedding_score"


def _set_current_repeatedly(models_dir: str, version: str, times: int, start, errors) -> None:
    start.wait()
    for _ in range(times):
        try:
            set_current(models_dir, version)
        except OSError as error:  # reported to the test, which fails on any
            errors.put(repr(error))
            return


def test_racing_writers_never_show_a_reader_an_empty_or_partial_current(tmp_path) -> None:
    versions = ["20990101T000000Z-aaaaaa", "20990101T000001Z-bbbbbb"]
    for version in versions:
        (tmp_path / version).mkdir()
        (tmp_path / version / "manifest.json").write_text("{}")
    set_current(str(tmp_path), versions[0])
    context = multiprocessing.get_context("fork")  # the writers need nothing but set_current
    start, errors = context.Event(), context.Queue()
    writers = [context.Process(target=_set_current_repeatedly, args=(str(tmp_path), v, 600, start, errors))
               for v in versions]
    for writer in writers:
        writer.start()
    start.set()
    seen: dict[str, int] = {}
    while any(w.is_alive() for w in writers):
        text = (tmp_path / "CURRENT").read_text()
        seen[text] = seen.get(text, 0) + 1
    for writer in writers:
        writer.join()
    reported = [errors.get() for _ in range(errors.qsize())]
    assert reported == [] and [w.exitcode for w in writers] == [0, 0]
    assert set(seen) <= {v + "\n" for v in versions}, {t: n for t, n in seen.items() if t.strip() not in versions}
    assert sum(seen.values()) > 100  # the reader did overlap the writers
    assert sorted(os.listdir(tmp_path)) == sorted(["CURRENT", *versions])  # no temporary file left


def test_publish_syncs_the_version_before_current_names_it(tmp_path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    fsync, rename, replace = os.fsync, os.rename, os.replace

    def record_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record(kind: str, move):
        def recorded(src, dst) -> None:
            events.append((kind, os.path.basename(dst)))
            move(src, dst)
        return recorded

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "rename", record("rename", rename))
    monkeypatch.setattr(os, "replace", record("replace", replace))
    version_dir = publish(str(tmp_path), small_model(0, "hnsw-mips"), manifest(), files={"evaluation.svg": b"<svg/>"})
    version, models_dir = os.path.basename(version_dir), str(tmp_path.resolve())

    staged = os.path.dirname(events[0][1])  # the temporary version directory
    files = [("fsync", os.path.join(staged, name)) for name in sorted(os.listdir(version_dir))]
    assert sorted(events[:len(files)]) == files  # every file, once
    current = events[len(files) + 3]  # CURRENT's temporary file
    assert events[len(files):] == [("fsync", staged), ("rename", version), ("fsync", models_dir),
                                   current, ("replace", "CURRENT"), ("fsync", models_dir)]
    assert current[0] == "fsync" and os.path.dirname(current[1]) == models_dir


def test_a_version_a_killed_writer_left_half_written_is_removed_by_the_next_publish(tmp_path) -> None:
    """A trainer killed while writing (SIGKILL: its own cleanup never runs) left its
    temporary version directory for ever, each as large as a model."""
    import socket
    import subprocess
    import sys

    from training.artifact import remove_abandoned_versions

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    host = socket.gethostname()
    abandoned = tmp_path / f".20261205T000000Z-aaaaaa@{host}@{int(dead.stdout)}@x1"
    writing = tmp_path / f".20261205T000000Z-bbbbbb@{host}@{os.getpid()}@x2"
    elsewhere = tmp_path / f".20261205T000000Z-cccccc@another.host@{int(dead.stdout)}@x3"
    for path in (abandoned, writing, elsewhere):
        path.mkdir()
        (path / "factors.npz").write_bytes(b"half")
    assert remove_abandoned_versions(str(tmp_path)) == [abandoned.name]
    assert not abandoned.exists() and writing.exists() and elsewhere.exists()


def _publish_then_hang(models_dir: str) -> None:
    import time

    os.chmod = lambda *_: time.sleep(60)  # this child only: it stops with its files written
    publish(models_dir, small_model(3), manifest())


def test_publish_after_a_writer_was_killed_mid_write_removes_what_it_left(tmp_path) -> None:
    import signal
    import time

    writer = multiprocessing.get_context("fork").Process(target=_publish_then_hang, args=(str(tmp_path),))
    writer.start()
    deadline = time.monotonic() + 30
    while not any(name.startswith(".") and (tmp_path / name / "manifest.json").exists() for name in os.listdir(tmp_path)):
        assert time.monotonic() < deadline, "the writer never wrote its files"
        time.sleep(0.02)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    version_dir = publish(str(tmp_path), small_model(4), manifest())
    assert sorted(os.listdir(tmp_path)) == sorted(["CURRENT", os.path.basename(version_dir)])


def test_versions_made_within_one_second_sort_in_the_order_they_were_made():
    # To the second, two versions of one second sorted by their hash: "newest first" (the
    # explorer's list, an arm pinning the older) was a coin toss, and a test flaked on it.
    from datetime import datetime, timedelta, timezone

    first = datetime(2026, 12, 6, 2, 15, 0, 1000, tzinfo=timezone.utc)
    names = [new_version(first + timedelta(milliseconds=step)) for step in (0, 1, 998)]
    assert sorted(names) == names and all(name.startswith("20261206T021500") for name in names)
    assert "20261206T021459Z-ffffff" < names[0] < "20261206T021501Z-000000"  # the older form sorts by time beside it
