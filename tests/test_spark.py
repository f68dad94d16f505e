"""The Spark engine (training.spark_engine) in local mode: the same interactions, item-kNN
and artifact as the implicit engine, served by the server, and the same feed quality.

Needs pyspark (the ``spark`` extra, which ``make test`` installs) and Java 17. Without
them these tests are skipped with the install hint; under CI=true they fail with it.
One SparkSession (local[2], small heap, no UI) serves the whole module.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from embeddings.knn import train_item_knn
from protos.feed.v1 import feed_pb2
from tests.feed_world import World, all_pages, build_world, running_server
from training.artifact import FACTORS, IDS, INDEX, KNN, MANIFEST, load_current, load_version
from training.dataset import write_dataset
from training.generate import generate
from training.params import TrainParams, interactions_of
from training.ranker_fit import RankerFitParams
from training.spark_engine import JAVA_HINT, PYSPARK_HINT, SparkSettings, java_executable, spark_engine
from training.train import train_and_publish

pytestmark = pytest.mark.slow

PARAMS = TrainParams(factors=16, iterations=12, show_progress=False)
RANKER = RankerFitParams(max_users=200)


def _require_spark() -> None:
    problem = None
    try:
        import pyspark  # noqa: F401
    except ImportError:
        problem = f"pyspark is not installed: {PYSPARK_HINT}"
    if problem is None and java_executable() is None:
        problem = f"Java 17 is missing: {JAVA_HINT}"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    _require_spark()
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]").appName("feedrank-tests")
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        settings = SparkSettings(partitions=2, checkpoint_dir=str(tmp_path_factory.mktemp("checkpoints")))
        with spark_engine(settings) as running:
            yield running
    finally:
        spark.stop()


@pytest.fixture(scope="module")
def dataset():
    return generate(users=400, sellers=40, items=1200, seed=3)


def test_interactions_are_weighed_in_spark_exactly_as_by_the_implicit_engine(engine, dataset) -> None:
    assert len(dataset.engagements) and len(dataset.follows)
    params = replace(PARAMS, recency_half_life_days=20.0, click_weight=0.5, view_weight=0.01)
    expected = interactions_of(dataset, params)
    built = engine.interactions(dataset, params)
    assert (built.user_ids, built.item_ids, built.seller_ids) == (expected.user_ids, expected.item_ids, expected.seller_ids)
    assert built.nnz == expected.matrix.nnz
    difference = abs(built.to_scipy() - expected.matrix)
    assert difference.max() <= 1e-5 * expected.matrix.max()
    # The fit part in the full data's layout: same rows and columns, fewer cells.
    half = dataset.with_likes(type(dataset.likes)(dataset.likes.src[::2], dataset.likes.dst[::2], dataset.likes.ts[::2]))
    part = engine.interactions(half, params, layout=built)
    assert part.user_ids == built.user_ids and abs(part.to_scipy() - interactions_of(half, params, expected).matrix).max() <= 1e-4
    # Confidence mapping: a view weighs 0.01, alpha * 0.01 < 1 cannot keep c = alpha * w on Spark.
    users, items, present = engine.train_als(built, replace(params, iterations=2))
    assert engine.last_als["clamped_confidences"] > 0 and engine.last_als["alpha"] == 1.0
    assert users.shape == (len(built.user_ids), 16) and items.dtype == np.float32 and present.all()
    for frame in (built.frame, part.frame):
        frame.unpersist()


def test_spark_gives_a_user_with_the_mean_number_of_ratings_implicits_penalty() -> None:
    """ALS-WR adds regParam x n to a row with n ratings, implicit adds lambda to every row. Matched
    on the total over users and items, a Last.fm user got five times lambda at lambda 80, and
    the served feed fell 7.5 % below implicit's."""
    from types import SimpleNamespace

    from training.spark_engine import SparkEngine

    interactions = SimpleNamespace(stats={"rows_with_data": 1_892, "columns_with_data": 15_000}, nnz=74_266)
    reg = SparkEngine.reg_param(None, interactions, 80.0)
    assert reg * (74_266 / 1_892) == pytest.approx(80.0)


@pytest.mark.parametrize("kind", ["cosine", "bm25"])
def test_item_knn_from_spark_cooccurrence_matches_implicit(engine, dataset, kind) -> None:
    params = replace(PARAMS, knn=kind, knn_k=20)
    built = engine.interactions(dataset, params)
    ours = engine.item_knn(built, params).similarity
    reference = train_item_knn(interactions_of(dataset, params).item_matrix, built.item_ids, kind, 20, show_progress=False).similarity
    both = (ours != 0).multiply(reference != 0)
    # Ties at the k-th neighbour may be broken differently; everything else is the same.
    assert both.nnz >= 0.99 * reference.nnz and abs(ours.nnz - reference.nnz) <= 0.01 * reference.nnz
    assert abs((ours - reference).multiply(both)).max() <= 1e-4
    built.frame.unpersist()


def test_item_knn_of_chosen_rows_equals_the_full_models_rows_and_leaves_the_rest_empty(engine, dataset) -> None:
    params = replace(PARAMS, knn="bm25", knn_k=20)
    built = engine.interactions(dataset, params)
    full = engine.item_knn(built, params).similarity
    chosen = np.random.default_rng(0).choice(built.n_items, built.n_items // 5, replace=False)
    part = engine.item_knn(built, params, rows=chosen).similarity
    for row in chosen.tolist():  # the same weights (equal ones may pick other neighbours at the k-th)
        np.testing.assert_allclose(np.sort(part[row].data), np.sort(full[row].data), rtol=1e-5)
    assert part[np.setdiff1d(np.arange(built.n_items), chosen)].nnz == 0 and part.nnz > 0
    # The pools' rows: what the sampled users liked, found in Spark as on the driver.
    users = sorted(set(dataset.likes.src))[:40]
    liked = engine._liked_columns(built, users)
    expected = interactions_of(dataset, params)  # the same layout (test above)
    columns = np.unique(expected.matrix[[expected.user_ids.index(u) for u in users]].indices)
    np.testing.assert_array_equal(liked, columns[columns < expected.n_items])
    built.frame.unpersist()


@pytest.fixture(scope="module")
def spark_world(engine, dataset, tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("spark-world")
    write_dataset(dataset, str(root / "data"))
    train_and_publish(str(root / "data"), str(root / "models"), PARAMS, ranker_params=RANKER, engine=engine)
    return World(dataset, root / "data", root / "models")


def test_spark_artifact_passes_the_same_validation_as_the_implicit_one(spark_world, tmp_path) -> None:
    train_and_publish(str(spark_world.data_dir), str(tmp_path), PARAMS, ranker_params=RANKER)
    spark_art, implicit_art = load_current(str(spark_world.models_dir)), load_current(str(tmp_path))
    for art in (spark_art, implicit_art):
        assert {MANIFEST, IDS, FACTORS, INDEX, KNN} <= set(os.listdir(art.path))
        load_version(art.path)  # the loader's checks: complete, index holds factors.npz's item factors
    s, i = spark_art.manifest, implicit_art.manifest
    assert set(s) == set(i) and set(s["data"]) == set(i["data"]) and set(s["model"]) == set(i["model"])
    assert set(s["ranker"]) == set(i["ranker"]) and s["ranker"]["features"] == i["ranker"]["features"]
    assert s["ranker"]["fit"]["objective"] == "pairwise" and s["engine"]["name"] == "spark" and i["engine"] == {"name": "implicit"}
    assert s["model"]["regularization"] == i["model"]["regularization"] and s["model"]["alpha"] == i["model"]["alpha"]
    assert s["engine"]["als"]["regParam"] > 0 and s["engine"]["als"]["implicitPrefs"] is True
    sm, im = spark_art.model, implicit_art.model
    assert sm.user_ids == im.user_ids and sm.item_ids == im.item_ids
    assert sm.user_factors.dtype == im.user_factors.dtype == np.float32
    assert sm.user_factors.shape == im.user_factors.shape and sm.item_factors.shape == im.item_factors.shape
    assert sm.index.kind == im.index.kind and sm.item_knn.similarity.shape == im.item_knn.similarity.shape
    assert np.isfinite(sm.user_factors).all() and np.abs(sm.item_factors).sum() > 0
    json.dumps(s)


def test_server_loads_the_spark_artifact_and_serves_a_feed_with_reasons(spark_world) -> None:
    with running_server(spark_world) as (server, stub):
        users = spark_world.dataset.user_ids()[:20]
        pages = [page for user in users for page in all_pages(stub, user, 10, 1)]
        assert {page.model_version for page in pages} == {load_current(str(spark_world.models_dir)).version}
        items = [item for page in pages for item in page.items]
        assert len(items) >= 100 and all(item.reasons for item in items)
        kinds = {reason.kind for item in items for reason in item.reasons}
        assert feed_pb2.REASON_KIND_SIMILAR_TO_LIKES in kinds and len(kinds) >= 3


def test_parity_of_the_served_feed_on_a_small_dataset(engine) -> None:
    """NDCG@10 of the served feed, Spark vs implicit, on one time split: within 10%
    (benchmarks/bench_spark.py parity holds larger datasets to 2%)."""
    from training.experiment import evaluate_split
    from training.splits import SplitSpec

    data = generate(users=1500, sellers=100, items=3000, seed=5, engagements=False)
    split = SplitSpec("time", 0.2)
    params = TrainParams(show_progress=False)
    implicit = evaluate_split(data, split, None, (10,), params, show_progress=False, ranker_params=RANKER,
                              compare_blend=False)
    spark = engine.evaluate_split(data, split, None, (10,), params, show_progress=False, ranker_params=RANKER,
                                  compare_blend=False)
    ours, theirs = spark.methods["model"]["ndcg@10"], implicit.methods["model"]["ndcg@10"]
    print(f"served NDCG@10: spark {ours:.4f}, implicit {theirs:.4f} ({ours / theirs - 1:+.2%})")
    assert theirs > 0.03
    assert abs(ours / theirs - 1.0) <= 0.10, (ours, theirs)


def test_spark_flags_build_the_session_settings_and_need_engine_spark() -> None:
    import argparse

    from training.arguments import spark_settings_from_args
    from training.train_command import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "m", "--engine", "spark", "--spark-master", "yarn",
                              "--spark-partitions", "400", "--spark-conf", "spark.executor.instances=50",
                              "--spark-conf", "spark.executor.extraJavaOptions=-Da=b"])
    settings = spark_settings_from_args(args)
    assert settings == SparkSettings(master="yarn", partitions=400, conf=(
        ("spark.executor.instances", "50"), ("spark.executor.extraJavaOptions", "-Da=b")))
    assert spark_settings_from_args(parser.parse_args(["--data", "d", "--out", "m"])) == SparkSettings()
    with pytest.raises(ValueError, match="--engine spark"):
        spark_settings_from_args(parser.parse_args(["--data", "d", "--out", "m", "--spark-master", "yarn"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--out", "m", "--spark-conf", "no-equals-sign"])
    with pytest.raises(ValueError, match="--als-bags 2: the spark engine fits one ALS model"):
        spark_settings_from_args(parser.parse_args(["--data", "d", "--out", "m", "--engine", "spark", "--als-bags", "2"]))


def test_missing_java_is_one_line_naming_the_package(monkeypatch, tmp_path) -> None:
    from training.spark_engine import SparkUnavailable, check_spark_available

    pytest.importorskip("pyspark")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(SparkUnavailable) as error:
        check_spark_available()
    assert JAVA_HINT in str(error.value) and "\n" not in str(error.value)


def test_bench_spark_offers_only_its_commands_and_keeps_the_child_command(capsys) -> None:
    from benchmarks.bench_spark import main

    with pytest.raises(SystemExit):
        main(["nosuch"])
    refused = capsys.readouterr().err
    assert "choose from 'parity', 'scale')" in refused and "run-one" not in refused
    with pytest.raises(SystemExit):
        main(["run-one"])  # scale's child process: its own flags are asked for
    assert "required: --engine, --data, --out" in capsys.readouterr().err


def test_a_spark_that_cannot_start_is_one_line(tmp_path) -> None:
    """A bad --spark-master, or a Java that cannot run Spark, failed inside Spark's Java with
    a Python and a Java stack trace; the master is now checked as a flag, and a gateway that
    does not start is one error line."""
    import stat
    import subprocess
    import sys

    from tests.conftest import REPO

    _require_spark()
    write_dataset(generate(users=30, sellers=3, items=40, seed=1), str(tmp_path / "data"))
    train = [sys.executable, "-m", "training", "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "models"),
             "--engine", "spark", "--no-progress"]
    done = subprocess.run([*train, "--spark-master", "bogus://nowhere"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "argument --spark-master: expected local, local[N], spark://HOST:PORT" in done.stderr
    fake_java = tmp_path / "jdk" / "bin" / "java"  # a Java that exits at once, as one too old or broken does
    fake_java.parent.mkdir(parents=True)
    fake_java.write_text("#!/bin/sh\necho 'Error: this is not the Java you want' >&2\nexit 1\n")
    fake_java.chmod(fake_java.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "jdk")}
    done = subprocess.run(train, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors and errors[0].startswith("error: Spark could not start (--spark-master local[*]): "), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "models" / "CURRENT").exists()


def test_a_child_started_as_pyspark_starts_java_survives_grpc_calls_in_flight(tmp_path) -> None:
    """pyspark starts its Java gateway with a preexec_fn, that is by fork(), which runs
    gRPC's fork handlers. With gRPC's fork support on (its default), the child restarted
    gRPC's threads, and they aborted it (SIGABRT, "epoll_wait error: Bad file descriptor")
    once subprocess closed their descriptors before exec: pyspark said "Java gateway process
    exited before sending its port number", and every test of this module errored in a CI
    worker that had run gRPC tests first. tests/conftest.py turns gRPC's fork support off."""
    world = build_world(tmp_path, users=100, sellers=10, items=300)
    user = world.dataset.user_ids()[0]

    def as_pyspark_does() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with running_server(world) as (_, stub):
        stop = threading.Event()

        def call_until_stopped() -> None:
            while not stop.is_set():
                stub.GetFeed(feed_pb2.GetFeedRequest(user_id=user, limit=5), timeout=10)

        callers = [threading.Thread(target=call_until_stopped) for _ in range(2)]
        for caller in callers:
            caller.start()
        try:
            statuses = Counter(
                subprocess.Popen(["true"], stdin=subprocess.PIPE, preexec_fn=as_pyspark_does).wait() for _ in range(300)
            )
        finally:
            stop.set()
            for caller in callers:
                caller.join()
    assert statuses == {0: 300}, f"exit statuses of the children: {dict(statuses)}"


def test_ctrl_c_in_train_on_spark_is_one_line_status_130_and_leaves_no_checkpoints(tmp_path) -> None:
    """Ctrl-C while a Spark job ran ended in a Py4JError traceback with status 1: pyspark's
    SIGINT handler cancelled the jobs through the Py4J connection the interrupted call was
    reading. It is "interrupted" and 130 now, as with the implicit engine; the checkpoint
    directory is removed, and nothing is published."""
    from tests.conftest import REPO

    _require_spark()
    write_dataset(generate(users=400, sellers=40, items=1200, seed=3), str(tmp_path / "data"))
    models, scratch = tmp_path / "models", tmp_path / "tmp"
    scratch.mkdir()
    argv = [sys.executable, "-m", "training", "train", "--data", str(tmp_path / "data"), "--out", str(models),
            "--engine", "spark", "--spark-master", "local[2]", "--spark-driver-memory", "1g",
            "--spark-conf", "spark.ui.enabled=false", "--iterations", "60"]
    with open(tmp_path / "stderr", "w+") as stderr:
        trainer = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env={**os.environ, "TMPDIR": str(scratch)})
        try:
            for line in trainer.stdout:
                if line.startswith("  ranker split"):  # the fit part's ALS on Spark next (60 sweeps)
                    break
            time.sleep(3)  # inside the ALS job
            trainer.send_signal(signal.SIGINT)
            assert trainer.wait(timeout=120) == 130
        finally:
            if trainer.poll() is None:
                trainer.kill()
                trainer.wait()
        stderr.seek(0)
        said = stderr.read()
    assert said.splitlines()[-1] == "interrupted" and "Traceback" not in said, said[-3000:]
    assert not models.exists() or not any(models.iterdir())
    assert not list(scratch.glob("feedrank-spark-checkpoints-*"))


def test_a_killed_spark_trainer_leaves_no_checkpoint_directory(tmp_path) -> None:
    """A trainer stopped by SIGTERM (timeout(1), a scheduler) or SIGKILL runs no cleanup:
    its temporary checkpoint directory, ALS's checkpointed factors, stayed behind in /tmp,
    one per killed run. It lives in Spark's own temporary directory now, which the JVM
    deletes when it exits, and it exits when the trainer's end of its stdin closes."""
    from tests.conftest import REPO

    _require_spark()
    write_dataset(generate(users=400, sellers=40, items=1200, seed=3), str(tmp_path / "data"))
    scratch = tmp_path / "tmp"  # Python's and Spark's temporary files, both
    scratch.mkdir()
    argv = [sys.executable, "-m", "training", "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "models"),
            "--engine", "spark", "--spark-master", "local[2]", "--spark-driver-memory", "1g",
            "--spark-conf", "spark.ui.enabled=false", "--spark-conf", f"spark.local.dir={scratch}", "--iterations", "60"]
    trainer = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "TMPDIR": str(scratch)})
    try:
        for line in trainer.stdout:
            if line.startswith("  ranker split"):  # the fit part's ALS on Spark next (60 sweeps, checkpointed every 10)
                break
        checkpoints = []
        deadline = time.monotonic() + 60
        while not any(path.is_file() for directory in checkpoints for path in directory.rglob("*")):
            assert time.monotonic() < deadline, "ALS wrote no checkpoint"
            time.sleep(0.2)
            checkpoints = list(scratch.rglob("feedrank-spark-checkpoints-*"))
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(timeout=60) == -signal.SIGTERM
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    deadline = time.monotonic() + 60
    while list(scratch.rglob("feedrank-spark-checkpoints-*")):
        assert time.monotonic() < deadline, f"left behind: {list(scratch.rglob('feedrank-spark-checkpoints-*'))}"
        time.sleep(0.5)


def _train_parser():
    import argparse

    from training.train_command import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_a_local_master_of_no_threads_is_refused_as_a_flag(capsys) -> None:
    """local[0] passed the flag's check, then Spark refused it after starting, with a Java stack trace."""
    parser = _train_parser()
    for master in ("local", "local[1]", "local[*]", "local[4,2]"):
        assert parser.parse_args(["--data", "d", "--out", "m", "--spark-master", master]).spark_master == master
    for master in ("local[0]", "local[00]", "local[2,0]"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data", "d", "--out", "m", "--spark-master", master])
        assert f"argument --spark-master: expected local, local[N], spark://HOST:PORT, yarn or k8s://..., got '{master}'" \
            in capsys.readouterr().err


def test_a_negative_knn_cap_is_refused_by_name(capsys) -> None:
    """--spark-knn-max-user-items -5 trained as if 0 (no cap) and wrote -5 in the manifest; it
    is a usage error at parsing."""
    from training.arguments import spark_settings_from_args

    parser = _train_parser()
    spark = ["--data", "d", "--out", "m", "--engine", "spark"]
    assert spark_settings_from_args(parser.parse_args([*spark, "--spark-knn-max-user-items", "0"])).knn_max_user_items == 0
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*spark, "--spark-knn-max-user-items", "-5"])
    assert exit_.value.code == 2
    assert "argument --spark-knn-max-user-items: must be >= 0, got -5" in capsys.readouterr().err


def test_a_memory_size_java_cannot_read_is_a_usage_error_naming_its_flag(capsys) -> None:
    """--spark-driver-memory lots started Spark's launcher, the JVM refused -Xmxlots, and the
    trainer's error blamed --spark-master: "Spark could not start (--spark-master local[*])"."""
    parser = _train_parser()
    for flag in ("--spark-driver-memory", "--spark-executor-memory"):
        for size in ("512m", "4g", "4G", "1t", "65536k"):
            assert getattr(parser.parse_args(["--data", "d", "--out", "m", flag, size]), flag[2:].replace("-", "_")) == size
        for size in ("lots", "4", "0g", "1.5g", "4gb", ""):
            with pytest.raises(SystemExit):
                parser.parse_args(["--data", "d", "--out", "m", flag, size])
            assert f"argument {flag}: expected a JVM size such as 512m or 4g, got '{size}'" in capsys.readouterr().err


def test_a_checkpoint_directory_spark_cannot_make_is_one_line_naming_the_flag(engine, tmp_path) -> None:
    """--spark-checkpoint-dir under a file (or in /proc, or read-only) ended in a Py4JJavaError
    traceback with Java's stack trace; it is the trainer's one error line now."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    wanted = blocker / "checkpoints"
    with pytest.raises(ValueError) as error:
        with spark_engine(SparkSettings(checkpoint_dir=str(wanted))):
            pass
    said = str(error.value)
    assert said.startswith(f"--spark-checkpoint-dir {wanted}: ") and "\n" not in said and ": :" not in said, said
    assert engine.spark.sparkContext.getCheckpointDir() == engine.checkpoint_dir  # the session's own is kept


@pytest.fixture(scope="module")
def trained_by_the_command(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One ``python -m training train --engine spark`` run, as a user types it (progress on,
    stderr not a terminal), with a checkpoint directory of its own; its output and root."""
    from tests.conftest import REPO

    _require_spark()
    root = tmp_path_factory.mktemp("spark-command")
    write_dataset(generate(users=400, sellers=40, items=1200, seed=3), str(root / "data"))
    done = subprocess.run([sys.executable, "-m", "training", "train", "--data", str(root / "data"),
                           "--out", str(root / "models"), "--engine", "spark", "--spark-master", "local[2]",
                           "--spark-driver-memory", "1g", "--spark-conf", "spark.ui.enabled=false",
                           "--spark-checkpoint-dir", str(root / "checkpoints"), "--iterations", "20", "--eval-split", "none"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "models" / "CURRENT").exists()
    return done, root


def test_a_run_removes_the_checkpoints_it_wrote_in_the_given_checkpoint_directory(trained_by_the_command) -> None:
    """Spark checkpoints ALS's factors every 10 sweeps into a directory of its own (a UUID)
    under --spark-checkpoint-dir, and never removes it: every run left its checkpoints there
    (on a cluster, where that is HDFS or S3, factor-sized files from each ALS of each run).
    The run removes its own directory; the given one stays, empty."""
    checkpoints = trained_by_the_command[1] / "checkpoints"
    assert checkpoints.is_dir() and not list(checkpoints.iterdir()), list(checkpoints.rglob("*"))[:5]


def test_sparks_progress_bars_are_off_when_stderr_is_not_a_terminal(trained_by_the_command) -> None:
    """Every command's progress bars are off when stderr is not a terminal (a bar redrawn with
    carriage returns is noise in a log file); Spark's stage bars were drawn anyway, whenever
    the step timings were on. The step timings stay."""
    done = trained_by_the_command[0]
    assert "[Stage " not in done.stderr, done.stderr[-2000:]
    assert any(line.startswith("als ") for line in done.stdout.splitlines()), done.stdout


def test_while_ctrl_c_cancels_spark_jobs_py4js_log_of_errors_the_interrupt_caused_is_dropped(caplog) -> None:
    """A Ctrl-C in CI left "ERROR:py4j.clientserver:Exception occurred while shutting down
    connection" and a traceback above "interrupted": Py4J logs on loggers of its own, which the
    root logger's filter never sees, and the error was a BrokenPipeError raised while the
    KeyboardInterrupt was handled, not the KeyboardInterrupt itself."""
    from training.spark_engine import CtrlCCancelsJobs

    def caused_by_the_interrupt() -> BaseException:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise BrokenPipeError(32, "Broken pipe")  # noqa: B904 (as Py4J's shutdown raises it)
        except BrokenPipeError as error:
            return error

    error = caused_by_the_interrupt()
    assert isinstance(error.__context__, KeyboardInterrupt)
    restore = signal.getsignal(signal.SIGINT)
    with caplog.at_level("ERROR"), CtrlCCancelsJobs(context=None, restore=restore):
        for name in ("py4j.clientserver", "py4j.java_gateway", ""):
            logging.getLogger(name).error("Exception occurred while shutting down connection", exc_info=error)
        logging.getLogger("py4j.clientserver").error("a failure of its own", exc_info=ValueError("not the interrupt's"))
    assert signal.getsignal(signal.SIGINT) is restore
    assert [record.getMessage() for record in caplog.records] == ["a failure of its own"]
